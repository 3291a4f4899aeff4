#!/usr/bin/env bash
# The GPU kit: build, GPU tests, compute-sanitizer, benchmarks and a per-kernel profile in one command,
# results (at most 8 files) in OUTDIR. See regnet_kernels/benchmark/gpu_kit.py.
#   bash scripts/gpu_check.sh OUTDIR             # full kit, ~8 minutes on an H100/H200
#   bash scripts/gpu_check.sh OUTDIR --quick     # ~3-minute subset
#   bash scripts/gpu_check.sh OUTDIR --dry-run   # same steps at tiny sizes, on CPU too (CI runs this)
# On a GPU machine it uses the system python3 as it is (CUDA torch, Triton, nvcc; no network, no venv);
# a dry run without a GPU uses the project's environment (scripts/_env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ]; then echo "usage: bash scripts/gpu_check.sh OUTDIR [--quick|--dry-run|--tune]" >&2; exit 2; fi
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    source "$ROOT/scripts/_env.sh" test,bench
fi
cd "$ROOT"
exec "$PY" -m regnet_kernels.benchmark.gpu_kit "$@"
