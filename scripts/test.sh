#!/usr/bin/env bash
# Run every test suite: the main suite, the Triton kernels under the interpreter (their own process,
# TRITON_INTERPRET=1 must be set before triton is imported) and the CUDA compile check.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# the test tools, Triton and lm-eval come with `scripts/setup.sh --dev` (plain setup.sh leaves them out)
python -c "import pytest, pytest_benchmark, triton, lm_eval" 2>/dev/null || scripts/setup.sh --dev
export OMP_WAIT_POLICY=PASSIVE
python -m pytest -q tests --ignore=tests/triton "$@"
if [ -d tests/triton ]; then
  TRITON_INTERPRET=1 python -m pytest -q tests/triton
fi
if [ -x scripts/check_cuda_compile.sh ]; then
  scripts/check_cuda_compile.sh
fi
