#!/usr/bin/env bash
# The main job: `python -m regnet_kernels bench` in the project's own environment.
#   bash scripts/bench.sh                          # sensible defaults for this machine
#   bash scripts/bench.sh --model regnet_y_400mf --quick
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test,bench
cd "$ROOT"
exec "$PY" -m regnet_kernels bench "$@"
