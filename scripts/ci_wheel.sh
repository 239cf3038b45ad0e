#!/usr/bin/env bash
# The wheel is the product: build it, install it into a fresh virtual environment (torch
# 2.13 CPU first, so pip does not pull a CUDA build), and run a reduced demo and a
# report from an empty folder, far from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip wheel -q --no-deps -w "$WORK/dist" . 2>&1 | grep -v '^WARNING' || true
WHEEL=$(ls "$WORK"/dist/mansu_audit-*.whl)
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING' || true
"$WORK/venv/bin/python" -m pip install -q "$WHEEL" 2>&1 | grep -v '^WARNING' || true
cd "$WORK"
if "$WORK/venv/bin/python" -c "import methods" 2>/dev/null; then
  echo "the wheel installed a top-level package 'methods'" >&2; exit 1
fi
"$WORK/venv/bin/mansu-audit" --version
"$WORK/venv/bin/mansu-audit" evaluate --model reference --benchmark synthhazard --quantizers int8 --json > eval.json
"$WORK/venv/bin/mansu-audit" demo --methods ga --quantizers int8 --out demo --quiet
CERT=$(dirname "$(ls demo/*/certificate.json | head -1)")
"$WORK/venv/bin/mansu-audit" report "$CERT"
test -s "$CERT/index.html"
test -s demo/index.html
echo "wheel check passed: demo, evaluate and report ran from the installed wheel in $(pwd)"
cd "$ROOT"
