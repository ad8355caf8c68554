#!/usr/bin/env bash
# The one-shot IPC all-reduce (tests/gpu/allreduce) on the 2-GPU machine in one call: configures build-gpu as
# scripts/gpu_tp.sh does, builds only this suite's two targets, then under mpirun -np 2: the benchmark (us per call,
# graphed, PDL on), the test, two small cases under compute-sanitizer memcheck (memory errors only: NCCL's
# initialization makes API calls that fail by design), and the benchmark with PDL off.
# Full logs in $OUT; a summary is printed.
#   bash scripts/gpu_allreduce.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=${OUT:-out}
mkdir -p "$out"
nvidia-smi -L | tee "$out/cards.txt"
nvidia-smi topo -m > "$out/topo.txt" 2>&1 && head -3 "$out/topo.txt"

start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ4TP_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  > "$out/configure.log" 2>&1 || { tail -20 "$out/configure.log"; exit 1; }
cmake --build build-gpu --target test_ipc_all_reduce bench_ipc_all_reduce -j "$(nproc)" > "$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

plain() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }  # gtest colours its output even into a file under mpirun

mpirun=(mpirun --allow-run-as-root --oversubscribe -np 2 -x NCCL_NVLS_ENABLE -x Q4TP_PDL)
status=0

bench() {  # bench LOG: the benchmark under the current Q4TP_PDL, its table printed
  timeout 60 "${mpirun[@]}" build-gpu/tests/bench_ipc_all_reduce 200 > "$out/$1" 2>&1 || { status=1; tail -15 "$out/$1"; }
  grep "\[ bench" "$out/$1"
}

echo "=== benchmark, PDL on"
export Q4TP_PDL=1
bench bench_pdl.log

echo "=== test_ipc_all_reduce (mpirun -np 2)"
rc=0
timeout 150 "${mpirun[@]}" build-gpu/tests/test_ipc_all_reduce > "$out/test.log" 2>&1 || rc=$?
[ $rc = 0 ] || { status=1; echo "test exit status $rc"; }
plain "$out/test.log" | grep -E "^\[ seed|^\[       OK|^\[  FAILED|^\[  PASSED|^\[  SKIPPED|^\[rank" | head -40
plain "$out/test.log" | awk '/Failure|failed at/ {n = 1} n && c < 60 {print; c++}'

echo "=== memcheck (two small cases)"
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
filter="IpcAllReduceTest.NegativeZeroPartials_AreSummedAsZero:IpcAllReduceTest.Launchers_RejectBadArgumentsWithoutLaunching"
timeout 90 "${mpirun[@]}" "$sanitizer" --tool memcheck --report-api-errors no --error-exitcode 1 \
  build-gpu/tests/test_ipc_all_reduce --gtest_filter="$filter" > "$out/memcheck.log" 2>&1 || { status=1; tail -30 "$out/memcheck.log"; }
plain "$out/memcheck.log" | grep -E "ERROR SUMMARY|^\[       OK|^\[  FAILED|^\[  PASSED" | head -10

echo "=== benchmark, PDL off"
export Q4TP_PDL=0
bench bench_nopdl.log

echo "total $(( $(date +%s) - start )) s, status $status"
exit $status
