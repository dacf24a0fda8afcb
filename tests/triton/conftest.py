"""The Triton tests run in their own pytest process (scripts/test.sh):

    TRITON_INTERPRET=1 python -m pytest -q tests/triton     # kernels interpreted on CPU tensors
    python -m pytest -q tests/triton                        # on a machine with a CUDA GPU: compiled kernels

TRITON_INTERPRET must be set before triton is first imported: @triton.jit decides at decoration time
whether a kernel is compiled or interpreted. Without it and without a GPU every test here is skipped
with that reason; if it is set but triton was imported before it was, the run stops with an error.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

_INTERPRET_ENV = os.environ.get("TRITON_INTERPRET", "0") == "1"
_TRITON_WAS_IMPORTED = "triton" in sys.modules

from swarmkern.ops import triton_backend as tb  # noqa: E402

if _INTERPRET_ENV and not tb.INTERPRET:
    raise pytest.UsageError(
        "tests/triton: TRITON_INTERPRET=1 is set but triton was imported before it took effect "
        f"(triton already imported before conftest: {_TRITON_WAS_IMPORTED}); run this folder in its own "
        "process: TRITON_INTERPRET=1 python -m pytest -q tests/triton")

SKIP_REASON = None if tb.AVAILABLE else (
    f"Triton backend unavailable ({tb.REASON}); run `TRITON_INTERPRET=1 python -m pytest -q tests/triton` "
    "in its own process (scripts/test.sh does), or run on a machine with a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        item.add_marker(pytest.mark.triton)
        if SKIP_REASON and "no_backend_needed" not in item.keywords:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        if "gpu" in item.keywords and (tb.INTERPRET or not torch.cuda.is_available()):
            item.add_marker(pytest.mark.skip(reason="needs compiled Triton kernels on a CUDA GPU "
                                                    "(TRITON_INTERPRET unset)"))


def pytest_configure(config):
    config.addinivalue_line("markers", "no_backend_needed: runs even where the Triton backend is unavailable")


def pytest_report_header(config):
    return f"swarmkern triton backend: available={tb.AVAILABLE} interpret={tb.INTERPRET} ({tb.REASON})"


@pytest.fixture
def device() -> torch.device:
    """Where the kernels take their tensors: CPU under the interpreter, else the GPU."""
    return torch.device(tb.DEVICE_TYPE)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    yield
