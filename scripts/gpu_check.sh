#!/usr/bin/env bash
# The GPU machine's whole check in one call (docs/gpu-machine.md): build everything, run every `gpu` test,
# memcheck the kernel suites on small cases, then benchmark the synthetic Llama-2 shapes with q4tp-bench.
# Logs and JSON lines go to $OUT (or out/); a short table is printed last.
#   bash scripts/gpu_check.sh [--no-bench] [--bench-only] [bench model names...]
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh  # also sets the environment every GPU command needs
out=${OUT:-out}
mkdir -p "$out"

run_tests=1; run_bench=1; models=()
for arg in "$@"; do
  case "$arg" in
    --no-bench) run_bench=0 ;;
    --bench-only) run_tests=0 ;;
    *) models+=("$arg") ;;
  esac
done
[ ${#models[@]} -gt 0 ] || models=(llama2-7b llama2-13b llama2-70b)

nvidia-smi -L | tee "$out/cards.txt"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
start=$(date +%s)
gpu_build "$out/build.log" || exit 1
echo "build: $(( $(date +%s) - start )) s"

status=0
if [ "$run_tests" = 1 ]; then
  ctest --test-dir build-gpu -L gpu --output-on-failure -j 1 > "$out/gpu-tests.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|\[ golden|\[ cuda" "$out/gpu-tests.log"
  grep -E "^\s+[0-9]+ - .*\(Failed|Exception|Timeout" "$out/gpu-tests.log" | head -30
  : > "$out/memcheck.log"
  memcheck_first_cases "$out/memcheck.log" build-gpu/tests/test_cuda_* || status=1
fi

if [ "$run_bench" = 1 ]; then
  for model in "${models[@]}"; do
    for act in "" "--act-order"; do
      build-gpu/bin/q4tp-bench --synthetic "$model" $act --repeats 2 --json "$out/bench.jsonl" --log-level warn \
        > "$out/bench-$model$act.txt" 2>&1 || { status=1; tail -5 "$out/bench-$model$act.txt"; }
    done
  done
  echo "commit $commit, $(head -1 "$out/cards.txt")"
  python3 - "$out/bench.jsonl" <<'PY'
import json, sys
print(f"{'model':28} {'prompt t/s':>10} {'best t/s':>9} {'worst t/s':>9} {'best GB/s':>9} {'% 3.35TB/s':>10} {'GB used':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['model']:28} {r['prompt_tps']:10.0f} {r['best_tps']:9.1f} {r['worst_tps']:9.1f} {r['best_gbps']:9.0f} "
          f"{100*r['best_gbps']/3350:9.1f}% {r['device_used_gb']:8.2f}")
PY
fi
exit $status
