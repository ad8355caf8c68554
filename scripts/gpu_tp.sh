#!/usr/bin/env bash
# Tensor parallelism on a multi-GPU machine in one call: build, the NCCL and TP=2 model suites, every single-GPU
# `gpu` suite (the model suite again over all GPUs when there are more than 2), then q4tp-bench at TP=1, 2, 4, ...
# up to the GPU count (mpirun -np N) for the synthetic Llama-2 shapes. --bench-only skips the suites and tools
# (not the all-GPU model suite). JSON lines in
# $OUT/scaling.jsonl (tools/plot_scaling.py draws the chart); a table is printed last.
#   bash scripts/gpu_tp.sh [--tests-only | --bench-only] [--by-binary] [--memcheck] [bench model names...]
#   (default models: llama2-70b llama2-13b llama2-7b, act-order). --by-binary runs each gpu test executable once
#   instead of one process per test case as ctest does (same tests, a quarter of the time: CUDA starts once) and
#   checks the number of cases each ran; --memcheck adds compute-sanitizer memcheck on the kernel suites.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh  # also sets the environment every GPU command needs
out=${OUT:-out}
mkdir -p "$out"
tests_only=0
bench_only=0
by_binary=0
memcheck=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tests-only) tests_only=1; shift ;;
    --bench-only) bench_only=1; shift ;;
    --by-binary) by_binary=1; shift ;;
    --memcheck) memcheck=1; shift ;;
    *) break ;;
  esac
done
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(llama2-70b llama2-13b llama2-7b)
gpus=$(nvidia-smi -L | tee "$out/cards.txt" | wc -l)

gpu_build "$out/build.log" || exit 1

status=0
if [ "$bench_only" = 1 ]; then
  : > "$out/tests.log"
elif [ "$by_binary" = 1 ]; then
  # The distinct commands behind ctest's gpu tests, each run once (stdin closed: mpirun would swallow the list).
  # Each line: the number of ctest cases of that executable (0 where ctest has one entry for it), a tab, the command.
  ctest --test-dir build-gpu -L gpu --show-only=json-v1 | python3 -c '
import json, shlex, sys
order, cases = [], {}
for t in json.load(sys.stdin)["tests"]:
    command = t.get("command", [])
    at = next((i for i, a in enumerate(command) if "/tests/" in a), None)
    if at is None:
        continue
    if command[at].startswith("TEST_EXECUTABLE="):
        # CMake 4 runs each discovered gtest case through a script: cmake -D TEST_EXECUTABLE=path -D TEST_FILTER=...
        args = [command[at].split("=", 1)[1]]
    else:
        # CMake 3 passes the case filter on the command line; other tests (scripts) keep their whole command.
        args, skip = [], False
        for a in command:
            if skip:
                skip = False
            elif a == "--gtest_filter":
                skip = True
            elif not a.startswith("--gtest_filter="):
                args.append(a)
    key = " ".join(shlex.quote(a) for a in args)  # the cases of one executable collapse into one command
    if key not in cases:
        order.append(key)
        cases[key] = 0
    cases[key] += 1
# One ctest entry may be a whole executable (the mpirun suites, scripts) or its only case: no count to check then.
print("\n".join(f"{cases[k] if cases[k] > 1 else 0}\t{k}" for k in order))' > /tmp/gpu-test-commands.txt
  cp /tmp/gpu-test-commands.txt "$out/tests.log"
  echo "$(wc -l < /tmp/gpu-test-commands.txt) gpu test executables"

  total=0
  while IFS=$'\t' read -r cases command; do
    name=$(grep -o '[^ ]*/tests/[^ ]*' <<< "$command" | head -1); name=${name##*/}
    (eval "$command") < /dev/null > /tmp/gpu-test-run.log 2>&1
    rc=$?
    cat /tmp/gpu-test-run.log >> "$out/tests.log"
    # gtest's summary line (the mpirun suites print it from rank 0 only).
    ran=$(sed 's/\x1b\[[0-9;]*m//g' /tmp/gpu-test-run.log | sed -n 's/^\[==========\] \([0-9]*\) tests\? from .* ran.*/\1/p' | tail -1)
    ran=${ran:-0}
    total=$((total + ran))
    if [ "$rc" != 0 ]; then
      echo "$name: FAILED ($ran cases ran)"; status=1
    elif [ "$cases" != 0 ] && [ "$ran" != "$cases" ]; then
      echo "$name: ran $ran cases, ctest lists $cases"; status=1
    elif [ "$ran" = 0 ]; then
      echo "$name: passed: $(tail -1 /tmp/gpu-test-run.log | cut -c1-100)"  # a script, not a gtest executable
    else
      echo "$name: $ran passed"
    fi
  done < /tmp/gpu-test-commands.txt
  echo "gpu test cases run: $total"
else
  ctest --test-dir build-gpu -L gpu -j 1 --output-on-failure > "$out/tests.log" 2>&1 || status=1
fi
grep -E "tests passed|\[ tp|\[ cuda|\[ skip" "$out/tests.log" | sort | uniq
grep -E "\(Failed\)|\(Timeout\)|\(Exception\)" "$out/tests.log" | head -20
# The first failure's details, if any.
awk '/Failure|FAILED  \]/ {print; n++} n >= 12 {exit}' "$out/tests.log"

grep -E "\[ ppl|\[ tp|\[ cuda" "$out/tests.log" | sort | uniq | head -20
if [ "$memcheck" = 1 ]; then
  # The single-GPU kernel suites (the TP suite needs mpirun); output in memcheck.log.
  : > "$out/memcheck.log"
  memcheck_first_cases "$out/memcheck.log" $(ls build-gpu/tests/test_cuda_* | grep -v '_tp$') \
    build-gpu/tests/test_gptq_gemv build-gpu/tests/test_pdl || status=1
fi
# ctest's model suite runs at TP=2; with more GPUs it runs again over all of them (TP=N logits and greedy tokens
# against TP=1, fused all-reduce against NCCL, perplexity).
if [ "$gpus" -gt 2 ]; then
  if mpirun_n "$gpus" build-gpu/tests/test_cuda_tp < /dev/null > /tmp/tp-all.log 2>&1; then
    echo "test_cuda_tp at TP=$gpus: passed"
  else
    echo "test_cuda_tp at TP=$gpus: FAILED"; tail -20 /tmp/tp-all.log; status=1
  fi
  cat /tmp/tp-all.log >> "$out/tests.log"
  grep -E "^\[ (tp|ppl) " /tmp/tp-all.log | sort | uniq
fi
[ "$bench_only" = 1 ] || {
# The tools on the embedded model, on one GPU and tensor parallel: the README's first command, seeded sampling
# (every rank must print the same text: rank 0 prints), perplexity of the held-out text. Output in $out/tools.txt.
{
  echo "=== q4tp-generate (README, CUDA)"
  build-gpu/bin/q4tp-generate -m models/tiny-llama -p "A list in Python" -n 64
  echo; echo "=== q4tp-generate TP=$gpus, --temperature 0.8 --seed 7"
  mpirun_n "$gpus" build-gpu/bin/q4tp-generate -m models/tiny-llama -p "A list in Python" -n 48 --temperature 0.8 --seed 7
  for np in 1 "$gpus"; do
    echo; echo "=== q4tp-perplexity TP=$np"
    mpirun_n "$np" build-gpu/bin/q4tp-perplexity -m models/tiny-llama \
      --text tests/data/perplexity/heldout.txt --add-bos
  done
} > "$out/tools.txt" 2>&1 || status=1
grep -iE "perplexity|tokens/s|error" "$out/tools.txt" | head -12
}
[ "$tests_only" = 1 ] && exit $status
# Each run's table goes to $out/bench.txt (one file: the device returns at most 8).
bench() {  # label, command...
  local label=$1; shift
  { echo "=== $label"; "$@" 2>&1; } > /tmp/bench-run.txt
  local rc=$?
  cat /tmp/bench-run.txt >> "$out/bench.txt"
  grep -E "gen best|memory|all-reduce" /tmp/bench-run.txt | sed "s/^/$label: /"
  return $rc
}
for model in "${models[@]}"; do
  bench "$model TP=1" build-gpu/bin/q4tp-bench --synthetic "$model" --act-order --repeats 2 --json "$out/scaling.jsonl" \
    --log-level warn || { status=1; tail -3 /tmp/bench-run.txt; }
  for ((np = 2; np <= gpus; np *= 2)); do  # 2, 4, 8 GPUs as far as the machine has them
    bench "$model TP=$np" mpirun_n "$np" build-gpu/bin/q4tp-bench --synthetic "$model" --act-order --repeats 2 \
      --json "$out/scaling.jsonl" --log-level warn ||
      { status=1; tail -5 /tmp/bench-run.txt; }
  done
done
head -1 "$out/cards.txt"
python3 - "$out/scaling.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = {r['model']: r for r in rows if r['tp'] == 1}
print(f"{'model':22} {'TP':>2} {'prompt t/s':>10} {'best t/s':>9} {'worst t/s':>9} {'speedup':>7} {'eff':>5} {'AR us/tok':>9} {'GB/GPU':>7} {'engine':>7}")
for r in rows:
    b = base.get(r['model'])
    sp = r['best_tps'] / b['best_tps'] if b else float('nan')
    print(f"{r['model']:22} {r['tp']:2d} {r['prompt_tps']:10.0f} {r['best_tps']:9.1f} {r['worst_tps']:9.1f} {sp:7.2f} "
          f"{100*sp/r['tp']:4.0f}% {r.get('allreduce_us_per_token', 0):9.0f} {r['device_used_gb']:7.2f} {r.get('engine_gb', 0):7.2f}")
PY
exit $status
