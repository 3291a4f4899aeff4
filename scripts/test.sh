#!/usr/bin/env bash
# Run the test suite in the project's own environment (created on first use).
#   bash scripts/test.sh                # everything that can run here (GPU tests skip without a GPU)
#   bash scripts/test.sh -k conv -x     # any pytest arguments
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test,bench
cd "$ROOT"
exec "$PY" -m pytest "$@"
