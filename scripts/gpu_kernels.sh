#!/usr/bin/env bash
# The one script that builds, checks and times the CUDA GPTQ GEMV on the GPU machine, in a single call:
# configure + build the targets it needs, the CPU layout tests, the GPU tests, compute-sanitizer (memcheck and
# racecheck) on the small cases, the SASS facts of the kernel, then the micro-benchmark, whose short table comes last.
# Full logs go to $OUT (or build-gpu/logs when $OUT is unset).
#
# --variants: afterwards, A/B the GEMV's build-time tuning knobs (in-flight loads per lane : CTAs per SM, see
# kernels/cuda/gptq_gemv.cu), each through the GPU tests and the quick bench (m = 1), and, when a snapshot of an
# earlier kernel sits in .gemv_baseline/ (kernels/cuda/gptq_gemv.{h,cu}, common/, quant/), that baseline too, all
# on the same card in the same call.
set -uo pipefail
variants=0
[ "${1:-}" = "--variants" ] && variants=1
export NCCL_NVLS_ENABLE=0

cd "$(dirname "$0")/.."
LOG="${OUT:-build-gpu/logs}"
mkdir -p "$LOG"
fail=0
step() { printf '\n=== %s ===\n' "$*"; }

step "card"
nvidia-smi -L
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader

step "build"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ4TP_WERROR=ON >"$LOG/build.log" 2>&1 ||
    { tail -30 "$LOG/build.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target test_gptq_prepare test_gptq_gemv bench_gptq_gemv \
    >>"$LOG/build.log" 2>&1 || { grep -E "error|FAILED" "$LOG/build.log" | head -30; exit 1; }
echo "built"

step "SASS facts (gptq_gemv_kernel<1>)"
obj=$(find build-gpu -name 'gptq_gemv.cu.o' | head -1)
if command -v cuobjdump >/dev/null && [ -n "$obj" ]; then
    cuobjdump -res-usage "$obj" 2>&1 | grep -A1 -E "gptq_(gemv_kernel|dequant)" | grep -oE "REG:[0-9]+|STACK:[0-9]+|SHARED:[0-9]+|LOCAL:[0-9]+" |
        paste -sd' ' | fold -w 120
    cuobjdump -sass "$obj" >build-gpu/gptq_gemv.sass 2>&1
    awk '/Function : .*gptq_gemv_kernelILi1E/{f=1;next} /Function :/{f=0} f' build-gpu/gptq_gemv.sass >"$LOG/k1.sass"
    for op in HMMA LDG.E.128 LDG.E.64 LDS.128 LOP3 HFMA2 HADD2 HMUL2 PRMT LDL STL BAR; do
        printf '%s=%s ' "$op" "$(grep -c "$op" "$LOG/k1.sass")"
    done
    echo
fi

step "CPU tests (layout, plan, argument checks)"
build-gpu/tests/test_gptq_prepare --gtest_brief=1 >"$LOG/test_prepare.log" 2>&1 || fail=1
tail -3 "$LOG/test_prepare.log"

step "GPU tests"
timeout 420 build-gpu/tests/test_gptq_gemv --gtest_brief=1 >"$LOG/test_gemv.log" 2>&1 || fail=1
grep -E "seed|margin|FAILED|Failure|PASSED|tests ran|error" "$LOG/test_gemv.log" | head -40

step "compute-sanitizer memcheck (small cases)"
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/test_gptq_gemv --gtest_brief=1 \
    --gtest_filter='*SmallShapes*:*InPlaceResidual*:*SharedWorkspace*' >"$LOG/memcheck.log" 2>&1 || fail=1
grep -E "ERROR SUMMARY|PASSED|FAILED|tests ran" "$LOG/memcheck.log" | head -10

step "compute-sanitizer racecheck (shared memory, small cases)"
timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 build-gpu/tests/test_gptq_gemv --gtest_brief=1 \
    --gtest_filter='GptqDequantTest.BitExact_SmallShapes:GptqGemvTest.InPlaceResidual*' >"$LOG/racecheck.log" 2>&1 ||
    fail=1
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED|tests ran" "$LOG/racecheck.log" | head -10

step "benchmark"
timeout 300 build-gpu/bin/bench_gptq_gemv >"$LOG/bench.log" 2>&1 || { fail=1; tail -5 "$LOG/bench.log"; }
sed -n '1,2p' "$LOG/bench.log"
sed -n '/^== GPTQ/,$p' "$LOG/bench.log"
if [ "$variants" = 1 ]; then
    step "variants (quick bench: m = 1; tests per variant)"
    summary() { grep -E "^summary" "$1" | sed 's/^summary (GEMV us per token, m=1, in-order\/act-order)://'; }
    if [ -d .gemv_baseline ]; then
        nvcc -std=c++17 -O3 -arch=sm_90 -I.gemv_baseline -I. -o build-gpu/bench_baseline \
            tests/gpu/gptq/bench_gptq_gemv.cu .gemv_baseline/kernels/cuda/gptq_gemv.cu build-gpu/lib/libq4tp_base.a \
            -lcublas >>"$LOG/variants.log" 2>&1 &&
            build-gpu/bench_baseline --quick >build-gpu/bench_baseline.log 2>&1 &&
            { cat build-gpu/bench_baseline.log >>"$LOG/variants.log"; echo "baseline: $(summary build-gpu/bench_baseline.log)"; } ||
            echo "baseline: build or run failed"
    fi
    build-gpu/bin/bench_gptq_gemv --quick >build-gpu/bench_default_quick.log 2>&1
    echo "default 8:2: $(summary build-gpu/bench_default_quick.log)"
    for v in 8:3 6:3 4:4; do
        inflight=${v%:*}
        ctas=${v#*:}
        dir=build-gpu-v$inflight$ctas
        cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQ4TP_WERROR=ON \
            -DCMAKE_CUDA_FLAGS="-DQ4TP_GPTQ_GEMV_IN_FLIGHT=$inflight -DQ4TP_GPTQ_GEMV_CTAS_PER_SM=$ctas" \
            >>"$LOG/variants.log" 2>&1 &&
            cmake --build "$dir" -j "$(nproc)" --target test_gptq_gemv bench_gptq_gemv >>"$LOG/variants.log" 2>&1 ||
            { echo "$v: build failed"; continue; }
        tests=$(timeout 300 "$dir/tests/test_gptq_gemv" --gtest_brief=1 2>&1 | tee -a "$LOG/variants.log" |
            grep -E "PASSED|FAILED" | paste -sd' ')
        "$dir/bin/bench_gptq_gemv" --quick >"$dir/bench_quick.log" 2>&1
        cat "$dir/bench_quick.log" >>"$LOG/variants.log"
        echo "$v: tests [$tests] $(summary "$dir/bench_quick.log")"
    done
fi
[ "$fail" = 0 ] && echo "gpu_kernels: all steps passed" || echo "gpu_kernels: SOME STEP FAILED (logs in $LOG)"
exit "$fail"
