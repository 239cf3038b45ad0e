#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with torch (CPU wheel 2.13.0 when
# torch is absent: an unpinned torch may pull a multi-GB CUDA build) and this package
# with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import mansu_audit, torch; print(f'mansu-audit {mansu_audit.__version__} ready (torch {torch.__version__})')"
