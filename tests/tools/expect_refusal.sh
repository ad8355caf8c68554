#!/usr/bin/env bash
# A command that must be refused: it exits non-zero within 120 s and prints a line matching the expected message.
# Usage: expect_refusal.sh REGEX COMMAND [ARGS...]   (prints PASS and the matching line, or FAIL and the output)
set -uo pipefail
want=$1
shift
out=$(timeout 120 "$@" 2>&1 < /dev/null)
rc=$?
if [ "$rc" = 0 ]; then
  echo "FAIL: exit status 0, expected a refusal"; echo "$out"; exit 1
fi
if [ "$rc" = 124 ]; then
  echo "FAIL: still running after 120 s"; echo "$out"; exit 1
fi
line=$(grep -E -m1 -- "$want" <<< "$out") || { echo "FAIL: exit status $rc but no line matches '$want'"; echo "$out"; exit 1; }
echo "PASS (exit status $rc): $line"
