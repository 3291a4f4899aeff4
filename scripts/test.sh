#!/usr/bin/env bash
# Run the test suite in the project's own environment (created on first use).
#   bash scripts/test.sh                # everything that can run here (GPU tests skip without a GPU)
#   bash scripts/test.sh -k conv -x     # any pytest arguments
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test,bench
cd "$ROOT"
# Triton kernels run on CPU tensors through the interpreter; harmless on a GPU machine only
# for CPU tensors, so the default is decided by whether a GPU is present.
if [ -z "${TRITON_INTERPRET+x}" ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export TRITON_INTERPRET=1
    fi
fi
exec "$PY" -m pytest "$@"
