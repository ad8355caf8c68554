#!/usr/bin/env bash
# q4tp-bench's speedup against one GPU (issue 5): a TP=1 run appends its JSON row, a TP=2 run under mpirun finds it
# and reports speedup, efficiency and prompt speedup, in the table and in its own JSON row. On the CPU backend with a
# fixture, so CI runs it (label mpi). Usage: bench_speedup.sh BENCH_BINARY MODEL_DIR
set -euo pipefail
bench=$1
model=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
args=(--model "$model" --device cpu --prompt-tokens 24 --gen-tokens 4 --repeats 1 --batch-tokens 16
      --json "$dir/rows.jsonl" --log-level warn)
"$bench" "${args[@]}" > "$dir/tp1.txt"
grep -q "speedup" "$dir/tp1.txt" && { echo "FAIL: a TP=1 run reports a speedup"; exit 1; }
mpirun --allow-run-as-root --oversubscribe -np 2 "$bench" "${args[@]}" > "$dir/tp2.txt"
cat "$dir/tp2.txt"
grep -Eq "^speedup over 1 GPU \(TP=1 row of .*\): best [0-9.]+x \([0-9]+% efficiency\), prompt [0-9.]+x$" "$dir/tp2.txt" ||
  { echo "FAIL: no speedup line at TP=2"; exit 1; }
[ "$(wc -l < "$dir/rows.jsonl")" = 2 ] || { echo "FAIL: expected 2 JSON rows"; cat "$dir/rows.jsonl"; exit 1; }
python3 - "$dir/rows.jsonl" <<'PY'
import json, sys
tp1, tp2 = [json.loads(l) for l in open(sys.argv[1])]
assert tp1["tp"] == 1 and "speedup_best" not in tp1, tp1
assert tp2["tp"] == 2, tp2
want = tp2["best_tps"] / tp1["best_tps"]
assert abs(tp2["speedup_best"] - want) < 1e-3 * want + 1e-3, (tp2["speedup_best"], want)
assert abs(tp2["efficiency"] - want / 2) < 1e-3 * want + 1e-3, tp2["efficiency"]
assert abs(tp2["speedup_prompt"] - tp2["prompt_tps"] / tp1["prompt_tps"]) < 1e-2, tp2["speedup_prompt"]
print("PASS: speedup", round(tp2["speedup_best"], 3), "efficiency", round(tp2["efficiency"], 3))
PY
