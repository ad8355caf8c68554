#!/usr/bin/env bash
# A/B of run-time switches on the GPU machine in one call: builds the benchmarks, then for each setting (an
# environment assignment such as Q4TP_GEMV_PLAN=waves:264, or "base" for none) runs the GEMV micro-benchmark
# (m = 1, --quick) and q4tp-bench on synthetic act-order models at TP=1 and, with 2+ GPUs, TP=2. All settings run
# on the same card in the same call, so their numbers compare. A table of decode "best" tokens/s per setting is
# printed last; logs go to $OUT.
#   bash scripts/gpu_ab.sh [--models "llama2-70b llama2-13b"] [--no-micro] SETTING...
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_lib.sh  # also sets the environment every GPU command needs
out=${OUT:-out}
mkdir -p "$out"
models="llama2-70b llama2-13b"
micro=1
while [ $# -gt 0 ]; do
  case "$1" in
    --models) models=$2; shift 2 ;;
    --no-micro) micro=0; shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- base
gpus=$(nvidia-smi -L | tee "$out/cards.txt" | wc -l)
gpu_build "$out/build.log" q4tp-bench bench_gptq_gemv || exit 1

: > "$out/ab.jsonl"; : > "$out/micro.txt"
for setting in "$@"; do
  env_args=()
  mpi_env=()
  if [ "$setting" != base ]; then env_args=("$setting"); mpi_env=(-x "${setting%%=*}"); fi
  echo "=== $setting"
  if [ "$micro" = 1 ]; then
    env "${env_args[@]}" build-gpu/bin/bench_gptq_gemv --quick > /tmp/micro.txt 2>&1; { echo "=== $setting"; cat /tmp/micro.txt; } >> "$out/micro.txt"
    grep -E "GEMVs per token" /tmp/micro.txt
  fi
  for model in $models; do
    for np in 1 $([ "$gpus" -ge 2 ] && echo "$gpus"); do
      : > /tmp/ab-run.jsonl
      ( [ ${#env_args[@]} -eq 0 ] || export "${env_args[@]}"
        mpirun_n "$np" "${mpi_env[@]}" build-gpu/bin/q4tp-bench --synthetic "$model" --act-order --repeats 2 \
          --log-level warn --json /tmp/ab-run.jsonl ) > /tmp/ab-run.txt 2>&1 < /dev/null || { echo "$setting $model TP=$np failed"; tail -5 /tmp/ab-run.txt; }
      [ -s /tmp/ab-run.jsonl ] && tail -1 /tmp/ab-run.jsonl | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["setting"]=sys.argv[1]; print(json.dumps(r))' "$setting" >> "$out/ab.jsonl"
      grep -E "gen best" /tmp/ab-run.txt | sed "s/^/$model TP=$np: /"
    done
  done
done
head -1 "$out/cards.txt"
python3 - "$out/ab.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = sorted({(r['model'], r['tp']) for r in rows})
settings = list(dict.fromkeys(r['setting'] for r in rows))
print(f"{'setting':28}" + "".join(f"{m.replace(' act-order', '')[:10] + ' TP' + str(t):>16}" for m, t in keys))
for s in settings:
    cells = []
    for k in keys:
        r = next((r for r in rows if r['setting'] == s and (r['model'], r['tp']) == k), None)
        cells.append(f"{r['best_tps']:9.1f}/{r['prompt_tps']:6.0f}" if r else f"{'-':>16}")
    print(f"{s:28}" + "".join(f"{c:>16}" for c in cells))
print("(decode best tokens/s / prompt tokens/s)")
PY
