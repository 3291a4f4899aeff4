# Sourced by scripts/bench.sh and scripts/test.sh: create or reuse the project's virtual
# environment and install what it needs. Safe to run repeatedly; reinstalls only when the
# packaging files change.
#
# - CPU-only machine: a fresh venv with torch pinned to the local CPU wheel (torch==2.13.0);
#   an unpinned torch would pull gigabytes of CUDA packages.
# - Machine whose system Python already has a CUDA build of torch: the venv sees the system
#   site-packages and keeps that torch (and triton) instead of installing another.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REGNET_KERNELS_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_PIN="${REGNET_KERNELS_TORCH:-torch==2.13.0}"
RK_PIP_FLAGS="${RK_PIP_FLAGS:--q}"

_log() { echo "[regnet_kernels env] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON_BIN" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        _log "system torch has CUDA: creating $VENV with system site-packages"
        "$PYTHON_BIN" -m venv --system-site-packages "$VENV"
    else
        _log "creating $VENV"
        "$PYTHON_BIN" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"

# One stamp per extra set, keyed on the files that decide what gets installed.
_extras="${1:-test,bench}"
# (csrc/ and CMakeLists.txt too: the editable install compiles the CUDA extension from them)
_hash="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/scripts/_env.sh" "$ROOT/CMakeLists.txt" \
    $(find "$ROOT/csrc" -type f 2>/dev/null | sort) 2>/dev/null | sha256sum | cut -c1-16)"
_stamp="$VENV/.regnet-kernels-${_extras//,/-}-$_hash"
if [ ! -f "$_stamp" ]; then
    if ! "$PY" -c "import torch" 2>/dev/null; then
        _log "installing $TORCH_PIN"
        "$PY" -m pip install $RK_PIP_FLAGS "$TORCH_PIN"
    fi
    _log "installing regnet_kernels[$_extras] (editable)"
    "$PY" -m pip install $RK_PIP_FLAGS -e "$ROOT[$_extras]"
    if [[ ",$_extras," == *",test,"* ]]; then
        # torchvision and timm are test oracles only (never runtime dependencies). Their
        # PyPI wheels would drag in a CUDA torch, so install them without dependencies and
        # add the few pure-Python packages they import.
        if ! "$PY" -c "import torchvision, timm" 2>/dev/null; then
            _log "installing torchvision + timm (--no-deps) as test oracles"
            "$PY" -m pip install $RK_PIP_FLAGS pillow pyyaml huggingface_hub safetensors || true
            "$PY" -m pip install $RK_PIP_FLAGS --no-deps torchvision timm || _log "torchvision/timm unavailable: their tests will skip"
        fi
    fi
    rm -f "$VENV"/.regnet-kernels-"${_extras//,/-}"-*
    touch "$_stamp"
fi
export PATH="$VENV/bin:$PATH"

# Without a GPU, Triton kernels run on CPU tensors through the interpreter (decided here, once, so the
# test and bench commands agree; an explicit TRITON_INTERPRET wins).
if [ -z "${TRITON_INTERPRET+x}" ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export TRITON_INTERPRET=1
    fi
fi
