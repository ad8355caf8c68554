# Helpers shared by the GPU machine's scripts (sourced, not run): the build, mpirun and compute-sanitizer steps
# that gpu_check.sh, gpu_tp.sh, gpu_ab.sh and gpu_suite.sh would otherwise each spell out.

# NVLink multicast stays off on the lent machines (docs/gpu-machine.md); commands run as root there, which Open MPI
# refuses unless told.
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# gpu_build LOG [TARGET...]: configures build-gpu (Release, warnings as errors, sm_90) and builds the targets
# (everything when none are named), output in LOG; on failure prints the log's tail and returns 1.
gpu_build() {
  local log=$1
  shift
  local targets=()
  [ $# -gt 0 ] && targets=(--target "$@")
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ4TP_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    > /dev/null || return 1
  cmake --build build-gpu -j "$(nproc)" "${targets[@]}" > "$log" 2>&1 || { tail -40 "$log"; return 1; }
}

# mpirun_n N COMMAND...: N ranks as root, with NCCL's NVLink multicast switch passed to every rank.
mpirun_n() {
  local n=$1
  shift
  mpirun --allow-run-as-root -np "$n" -x NCCL_NVLS_ENABLE "$@"
}

# first_cases BINARY N: a gtest filter naming the first N cases the binary lists ("Suite." lines, then indented
# case names).
first_cases() {
  "$1" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}' | head -n "$2" | paste -sd: -
}

sanitizer_path() {
  command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
}

# memcheck_first_cases LOG BINARY...: compute-sanitizer memcheck on each binary's first 3 cases, output appended
# to LOG; prints "memcheck NAME: clean" or FAILED with the tail of its output; returns 1 if any failed.
memcheck_first_cases() {
  local log=$1 sanitizer t failed=0
  shift
  sanitizer=$(sanitizer_path)
  for t in "$@"; do
    [ -x "$t" ] || continue
    if "$sanitizer" --tool memcheck --error-exitcode 1 "$t" --gtest_filter="$(first_cases "$t" 3)" \
        < /dev/null > /tmp/memcheck-run.log 2>&1; then
      echo "memcheck $(basename "$t"): clean"
    else
      echo "memcheck $(basename "$t"): FAILED"; tail -20 /tmp/memcheck-run.log; failed=1
    fi
    cat /tmp/memcheck-run.log >> "$log"
  done
  return $failed
}
