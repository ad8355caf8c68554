#!/usr/bin/env bash
# Runs every test that needs no GPU: installs dependencies, builds everything with warnings as errors,
# runs ctest without the gpu label, then rebuilds the loader suites under ASan+UBSan and runs them, and
# checks the layering rules. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh -DQ4TP_WERROR=ON
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build -LE gpu --output-on-failure -j "$(nproc)"

# Loader suites again under AddressSanitizer and UndefinedBehaviorSanitizer (malformed-file handling).
scripts/setup.sh --no-install --build-dir build-asan -DQ4TP_SANITIZE=ON -DQ4TP_WERROR=ON -DCMAKE_BUILD_TYPE=Debug \
  > /dev/null
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan -L loaders --output-on-failure -j "$(nproc)"

scripts/check_layering.sh
