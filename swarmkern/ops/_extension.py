"""Loading the compiled operator libraries (swarmkern._C, swarmkern._C_cuda) and the Triton module.

Each loader runs at most once and records (available, reason) so that `swarmkern info` and
`backend_summary()` can say which backend is used and why. Nothing here raises: a missing or broken
compiled part only makes its backend unavailable.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` after installing torch"


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str


# Results of the loaders, computed once. A plain dict rather than functools.lru_cache: torch.compile
# traces through lru_cache wrappers (it would re-run the imports) but reads a filled dict as a constant.
_STATUS: dict[str, BackendStatus] = {}
_TRITON: dict[str, ModuleType | None] = {}


def cpu_status() -> BackendStatus:
    """The C++ CPU library (also holds the op schemas that the CUDA library implements)."""
    if "cpu" not in _STATUS:
        _STATUS["cpu"] = _load_cpu()
    return _STATUS["cpu"]


def cuda_status() -> BackendStatus:
    """The CUDA library: needs the CPU library (schemas), a CUDA build of torch and a visible GPU."""
    if "cuda" not in _STATUS:
        _STATUS["cuda"] = _load_cuda()
    return _STATUS["cuda"]


def triton_status() -> BackendStatus:
    """Imports the Triton module on first call (only when the Triton backend is asked about)."""
    if "triton" not in _STATUS:
        _TRITON["module"], _STATUS["triton"] = _load_triton()
    return _STATUS["triton"]


def triton_module() -> ModuleType:
    status = triton_status()
    module = _TRITON.get("module")
    if module is None or not status.available:
        raise RuntimeError(f"swarmkern: the triton backend is unavailable: {status.reason}")
    return module


def _load_cpu() -> BackendStatus:
    try:
        importlib.import_module("swarmkern._C")
    except ImportError as exc:
        missing = "No module named" in str(exc)
        why = "not built" if missing else f"failed to load ({exc})"
        return BackendStatus(False, f"C++ extension swarmkern._C {why}; {_BUILD_HINT}")
    from . import _fake  # noqa: F401  (fake implementations for torch.compile, once the schemas exist)

    info = torch.ops.swarmkern.build_info()
    return BackendStatus(True, f"C++ extension ({info})")


def _load_cuda() -> BackendStatus:
    if not cpu_status().available:
        return BackendStatus(False, "needs the C++ extension swarmkern._C, which is unavailable")
    if not torch.version.cuda:
        return BackendStatus(False, f"torch {torch.__version__} is a CPU-only build")
    try:
        importlib.import_module("swarmkern._C_cuda")
    except ImportError as exc:
        missing = "No module named" in str(exc)
        why = ("not built (needs nvcc at install time; see README 'Building with CUDA')" if missing
               else f"failed to load ({exc})")
        return BackendStatus(False, f"CUDA extension swarmkern._C_cuda {why}")
    if not torch.cuda.is_available():
        return BackendStatus(False, "CUDA extension built, but no GPU is visible")
    # Not get_device_name(): that would initialise CUDA at import time (bad before fork()).
    return BackendStatus(True, f"CUDA extension ({torch.cuda.device_count()} GPU(s) visible)")


def _load_triton() -> tuple[ModuleType | None, BackendStatus]:
    try:
        module = importlib.import_module("swarmkern.ops.triton_backend")
    except Exception as exc:  # ImportError, or triton failing inside its own import
        return None, BackendStatus(False, f"swarmkern.ops.triton_backend not importable ({type(exc).__name__}: {exc})")
    available = bool(getattr(module, "AVAILABLE", False))
    reason = str(getattr(module, "REASON", "")) or ("Triton" if available else "unavailable")
    return module, BackendStatus(available, reason)



def triton_interpreter() -> bool:
    """Triton's CPU interpreter is on (it must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"
