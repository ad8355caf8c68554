#!/usr/bin/env bash
# Builds and runs GPU test suites on the device machine:
#   bash scripts/gpu_suite.sh <suite-folder under tests/gpu> [test binary names...]
# Without binary names, every q4tp_add_gtest NAME in tests/gpu/<suite>/CMakeLists.txt is used. Each binary runs in
# full, then once more under compute-sanitizer memcheck limited to a couple of small cases: the gtest filter in
# Q4TP_SANITIZE_FILTER, or by default the first two tests the binary lists.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh

suite=${1:?usage: scripts/gpu_suite.sh <suite-folder> [test binary names...]}
shift
suite=${suite#tests/gpu/}
suite=${suite%/}
binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  mapfile -t binaries < <(grep -o 'NAME [A-Za-z0-9_]*' "tests/gpu/${suite}/CMakeLists.txt" | cut -d' ' -f2)
fi
if [ ${#binaries[@]} -eq 0 ]; then
  echo "gpu_suite.sh: no test binaries named and none found in tests/gpu/${suite}/CMakeLists.txt" >&2
  exit 2
fi

nvidia-smi -L || true

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ4TP_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 > /dev/null
cmake --build build-gpu --target "${binaries[@]}" -j "$(nproc)"

sanitizer=$(sanitizer_path)
status=0
for b in "${binaries[@]}"; do
  echo "=== ${b}"
  "build-gpu/tests/${b}" || status=1
  filter=${Q4TP_SANITIZE_FILTER:-}
  [ -n "${filter}" ] || filter=$(first_cases "build-gpu/tests/${b}" 2)
  echo "=== ${b} under compute-sanitizer memcheck (--gtest_filter=${filter})"
  "${sanitizer}" --tool memcheck --error-exitcode 1 "build-gpu/tests/${b}" --gtest_filter="${filter}" || status=1
done
exit ${status}
