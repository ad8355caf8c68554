#!/usr/bin/env bash
# Enforces docs/design.md's layering: each layer includes only itself and the layers below it, and only
# parallel/ includes <nccl.h> or <mpi.h>. Prints each violation and exits non-zero if there is any.
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
check() {  # check DIR ALLOWED_PREFIX...
  local dir=$1; shift
  local pattern
  pattern=$(printf '|%s' "$@"); pattern=${pattern:1}
  while IFS= read -r line; do
    echo "layering: $line"; status=1
  done < <(grep -rnE '#include "(core/base|core/model|kernels|parallel|loaders|launch)/' "$dir" \
             | grep -vE "#include \"($pattern)/")
}
check core/base core/base
check loaders core/base loaders
check kernels core/base kernels
check parallel core/base parallel
check core/model core/base core/model kernels parallel loaders

while IFS= read -r line; do
  echo "layering: NCCL/MPI outside parallel/: $line"; status=1
done < <(grep -rnE '#include <(nccl|mpi)\.h>' core kernels loaders launch examples 2>/dev/null)

[ $status = 0 ] && echo "layering: ok"
exit $status
