#!/usr/bin/env bash
# Installs q4tp's dependencies on a fresh Debian/Ubuntu machine (apt; the CUDA toolkit is taken as present
# under /usr/local/cuda, as NVIDIA ships it) and builds every target into build/ (tools in build/bin/).
#   scripts/setup.sh [--no-install] [--build-dir DIR] [extra cmake -D options...]
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
build_dir=build
cmake_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --build-dir) build_dir="$2"; shift ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) cmake_args+=("$1") ;;
  esac
  shift
done

packages=(build-essential cmake ninja-build pkg-config libsentencepiece-dev libhdf5-dev libgtest-dev
          nlohmann-json3-dev libopenmpi-dev openmpi-bin)
if [ "$install" = 1 ]; then
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if ! command -v nvcc >/dev/null 2>&1; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
  else
    echo "setup: nvcc not found: install the CUDA toolkit (expected under /usr/local/cuda)" >&2
    exit 1
  fi
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
jobs=$(nproc)
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j "$jobs"
echo "setup: built into $build_dir/bin" >&2
