"""DARE (Yu et al. 2024): drop each entry of each task tensor with probability 1 - density and rescale
the survivors by 1 / density, then merge linearly (dare_linear) or with TIES' sign election and disjoint
mean (dare_ties).

The drop mask comes from the project's counter-based Philox stream (sparsify.dare_keep_mask), so a merge
is a pure function of (experts, seed): reproducible across runs, chunkings, processes and backends.
Given the same mask, results equal `peft.utils.merge_utils.dare_linear` / `dare_ties`.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from . import kernels
from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment
from .sparsify import dare_drop, dare_keep_mask
from .task_arithmetic import task_arithmetic
from .ties import SignMethod, disjoint_merge, elect_sign
from .weights import expert_weights

__all__ = ["dare_merge", "DareLinear", "DareTies"]


def dare_merge(block: torch.Tensor, weights: torch.Tensor, density: float, seed: int, offset: int = 0,
               ties: bool = False, majority_sign_method: SignMethod = "total", *,
               fused: bool | None = None) -> torch.Tensor:
    """DARE over one tensor whose entries sit at flat indices [offset, offset + n) of each expert:
    block [K, n], weights [K] -> [n].
    linear: sum_k w_k m_k x_k / density; ties: signs elected on m_k x_k / density (unweighted), then the
    disjoint mean of the weighted survivors. m_k = dare_keep_mask(seed) row k.
    fused: one pass in C++ with the Philox stream drawn in the kernel (None: when built and on CPU)."""
    if not 0 < density <= 1:
        raise ValueError(f"DARE density must be in (0, 1], got {density}")
    if kernels.use_fused(fused, block):
        return kernels.dare_merge(block, weights, density, seed, offset, ties, majority_sign_method)
    keep = dare_keep_mask(block.shape[0], offset, block.shape[1], density, seed, block.device)
    dropped = dare_drop(block, keep, density, rescale=True)
    if not ties:
        return task_arithmetic(dropped, weights)
    return disjoint_merge(dropped, weights, elect_sign(dropped, majority_sign_method))


class _Dare(StaticMerge):
    density: float = 0.5
    weights: list[float] | None = None
    seed: int | None = None  # None: the compare run's seed
    ties: ClassVar[bool] = False

    def default_weight(self, k: int) -> float:
        return 1.0

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        w = expert_weights(self.weights, ctx.K, default=self.default_weight(ctx.K), where=f"{self.name}.weights")
        seed = ctx.seed if self.seed is None else self.seed
        return dare_merge(block, w, self.density, seed, segment.offset, self.ties,
                          getattr(self, "majority_sign_method", "total"))


@register_method("dare_linear")
class DareLinear(_Dare):
    """DARE then a weighted sum: `density` kept (default 0.5), `weights` (default 1/K each, so the
    expectation equals the uniform soup), times `scaling`; `seed` defaults to the run's seed."""
    type: str = "dare_linear"

    def default_weight(self, k: int) -> float:
        return 1.0 / k


@register_method("dare_ties")
class DareTies(_Dare):
    """DARE then TIES' sign election and disjoint mean: `density` kept (default 0.5), `weights`
    (default 1), `majority_sign_method`, `scaling`; `seed` defaults to the run's seed."""
    type: str = "dare_ties"
    majority_sign_method: SignMethod = "total"
    ties: ClassVar[bool] = True
