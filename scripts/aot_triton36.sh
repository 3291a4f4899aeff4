#!/usr/bin/env bash
# Compile every planned Triton kernel with Triton 3.6 (what the GPU machines carry, beside torch 2.11),
# on a CPU machine, and fail on any compile error: an API difference from the Triton we develop with
# would otherwise break the first GPU run.
#
#   scripts/aot_triton36.sh [aot options...]     # default: regnet_y_400mf, both modes, bf16, sm_90
#
# A throwaway venv ($AOT36_VENV, default /tmp/regnet-kernels-triton36) gets triton==3.6.0 only; torch
# and the rest come from the project's venv through a .pth file placed *after* the venv's own
# site-packages, so Triton 3.6 shadows the project's Triton while torch stays the project's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PY="${PYTHON:-$ROOT/.venv/bin/python}"
VENV="${AOT36_VENV:-/tmp/regnet-kernels-triton36}"
TRITON_VERSION="${AOT36_TRITON:-3.6.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$BASE_PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import triton, sys; sys.exit(triton.__version__ != '$TRITON_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install -q "triton==$TRITON_VERSION"
fi
BASE_SITE="$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
VENV_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$BASE_SITE" > "$VENV_SITE/zz_regnet_kernels_base.pth"

"$VENV/bin/python" -c "import triton, torch; print('triton', triton.__version__, '| torch', torch.__version__)"
unset TRITON_INTERPRET
cd "$ROOT"
if [ "$#" -eq 0 ]; then
    set -- --model regnet_y_400mf --mode both --dtype bf16 --arch sm_90 --out aot-triton36
fi
# --strict: exit 1 on a compile error (and on spills / dots without tensor cores, as the CI gate)
PYTHONPATH="$ROOT" "$VENV/bin/python" -m regnet_kernels aot --strict "$@"
