#!/usr/bin/env bash
# Create ./.venv and install facelt (editable) with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# dependencies come from pyproject.toml (torch, numpy, faiss-cpu, opencv, onnx, onnxruntime, ...);
# torch/torchvision resolve to the local wheels where this machine provides them
.venv/bin/python -m pip install -q -e '.[dev]'
