"""TIES-merging (Yadav et al. 2023): trim each task tensor to its largest-magnitude entries, elect a
sign per entry, and average only the entries that agree with it (disjoint mean).

Matches `peft.utils.merge_utils.ties` on identical inputs (tests/test_merge_peft.py).
"""
from __future__ import annotations

from typing import Literal

import torch

from . import kernels
from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment
from .sparsify import magnitude_trim
from .weights import expert_weights

__all__ = ["elect_sign", "disjoint_merge", "ties_merge", "Ties"]

SignMethod = Literal["total", "frequency"]


def elect_sign(block: torch.Tensor, method: SignMethod = "total") -> torch.Tensor:
    """The elected sign of each entry: block [K, n] -> [n] of +1/-1 (+1 on a tie).
    "total": the sign of the column sum (mass); "frequency": the sign with more votes."""
    if method == "total":
        mass = block.sum(dim=0)
    elif method == "frequency":
        mass = block.sign().sum(dim=0)
    else:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {method!r}")
    return torch.where(mass >= 0, 1.0, -1.0).to(block.dtype)


def disjoint_merge(block: torch.Tensor, weights: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean of the weighted entries whose sign equals the elected one: block [K, n], weights [K],
    sign [n] -> [n]; sum_k w_k x_k [sign(x_k) = s] / max(1, #{k: sign(x_k) = s}). Zeros never count."""
    agree = block.sign() == sign.unsqueeze(0)
    total = (block * weights.to(block.dtype).unsqueeze(1) * agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1).to(block.dtype)


def ties_merge(block: torch.Tensor, weights: torch.Tensor, density: float,
               majority_sign_method: SignMethod = "total", *, fused: bool | None = None) -> torch.Tensor:
    """TIES over one tensor: block [K, n], weights [K] -> [n]. Trim per row (top int(density*n) by
    magnitude), elect signs on the trimmed unweighted rows, disjoint mean of the weighted rows.
    fused: use the C++ sign-election + disjoint-mean kernel (None: when built and on CPU)."""
    trimmed = magnitude_trim(block, density)
    if kernels.use_fused(fused, trimmed):
        return kernels.ties_disjoint_merge(trimmed, weights, majority_sign_method)
    return disjoint_merge(trimmed, weights, elect_sign(trimmed, majority_sign_method))


@register_method("ties")
class Ties(StaticMerge):
    """TIES: `density` of each tensor kept (per tensor, as PEFT), sign election by `majority_sign_method`,
    disjoint mean weighted by `weights` (default 1 each), times `scaling`.
    density is validated in [0, 1]."""
    type: str = "ties"
    density: float = 0.2
    majority_sign_method: SignMethod = "total"
    weights: list[float] | None = None

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        w = expert_weights(self.weights, ctx.K, default=1.0, where=f"{self.name}.weights")
        return ties_merge(block, w, self.density, self.majority_sign_method)
