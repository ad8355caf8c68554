#!/usr/bin/env bash
# Runs a job in which one rank fails and checks the failure semantics of docs/design.md: the whole job ends
# non-zero within 10 s (no rank left hanging in a collective) and stderr says which rank failed and why. The
# command may be any job (fail_rank, or a tool that refuses its input after the job started).
#   run_fail_rank.sh NP EXPECTED_REGEX MPIRUN_AND_COMMAND...
set -uo pipefail
np=$1 expected=$2
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

start=$(date +%s%N)
timeout 20 "$@" >"$dir/out" 2>&1
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$dir/out"
echo "run_fail_rank: np=$np exit status $rc after $elapsed_ms ms"

status=0
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "run_fail_rank: FAIL: the job hung and was killed by timeout 20"; status=1
elif [ "$rc" -eq 0 ]; then
  echo "run_fail_rank: FAIL: the job exited 0 although rank 1 failed"; status=1
fi
if [ "$elapsed_ms" -ge 10000 ]; then
  echo "run_fail_rank: FAIL: the job took $elapsed_ms ms to end, expected under 10000"; status=1
fi
if ! grep -Eq -- "$expected" "$dir/out"; then
  echo "run_fail_rank: FAIL: the output does not match '$expected'"; status=1
fi
if grep -q "finished an all-reduce that rank 1 never joined" "$dir/out"; then
  echo "run_fail_rank: FAIL: a rank finished an all-reduce without rank 1"; status=1
fi
[ $status = 0 ] && echo "run_fail_rank: ok"
exit $status
