"""The fused CPU merge kernels (csrc/cpu/merge_ties.cpp, merge_dare.cpp), behind Python functions
whose pure-PyTorch counterparts in ties.py / dare.py are the spec.

The kernels are the ops swarmkern::merge_ties_disjoint and swarmkern::merge_dare of swarmkern._C
(schemas in csrc/ops.cpp, fakes in swarmkern/ops/_fake.py, built by setup.py with every other kernel).
When that extension is missing, `available()` is False and every caller uses the pure path.
"""
from __future__ import annotations

import torch

from ..ops import _extension

__all__ = ["available", "use_fused", "ties_disjoint_merge", "dare_merge"]

_SIGN_METHODS = {"total": 0, "frequency": 1}


def available() -> bool:
    """True when swarmkern._C (which holds the merge ops) is loaded."""
    return _extension.cpu_status().available


def use_fused(fused: bool | None, t: torch.Tensor) -> bool:
    """fused=None: use the kernel when built and t is a CPU fp32/bf16/fp16 tensor; True: require it."""
    ok_tensor = t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if fused is None:
        return ok_tensor and available()
    if fused and not available():
        raise RuntimeError(f"the fused merge kernels are unavailable: {_extension.cpu_status().reason}")
    if fused and not ok_tensor:
        raise ValueError(f"the fused merge kernels need a CPU float tensor, got {t.dtype} on {t.device}")
    return bool(fused)


def ties_disjoint_merge(trimmed: torch.Tensor, weights: torch.Tensor, majority_sign_method: str = "total") -> torch.Tensor:
    """Fused elect_sign + disjoint_merge: trimmed [K, n], weights [K] -> [n] (trimmed's dtype, fp32 math)."""
    if majority_sign_method not in _SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    return torch.ops.swarmkern.merge_ties_disjoint(_rows(trimmed), weights.to(torch.float32).contiguous(),
                                                   _SIGN_METHODS[majority_sign_method])


def dare_merge(src: torch.Tensor, weights: torch.Tensor, density: float, seed: int, offset: int = 0,
               ties: bool = False, majority_sign_method: str = "total") -> torch.Tensor:
    """Fused DARE (Philox mask drawn in the kernel) + linear or TIES merge: src [K, n] at flat offset
    `offset`, weights [K] -> [n]. Same result as the pure dare.dare_merge(fused=False)."""
    if majority_sign_method not in _SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if seed >= 1 << 63:  # the schema's int is signed 64-bit; the kernel reads the same 64 bits unsigned
        seed -= 1 << 64
    return torch.ops.swarmkern.merge_dare(_rows(src), weights.to(torch.float32).contiguous(), float(density),
                                          seed, int(offset), bool(ties), _SIGN_METHODS[majority_sign_method])


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()
