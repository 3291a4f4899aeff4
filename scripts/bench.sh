#!/usr/bin/env bash
# The main job: `python -m regnet_kernels bench` in the project's own environment.
#   bash scripts/bench.sh                          # sensible defaults for this machine
#   bash scripts/bench.sh --model regnet_y_400mf --quick
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test,bench
cd "$ROOT"
if [ -z "${TRITON_INTERPRET+x}" ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export TRITON_INTERPRET=1
    fi
fi
exec "$PY" -m regnet_kernels bench "$@"
