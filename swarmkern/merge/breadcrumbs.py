"""Model Breadcrumbs (Davari & Belilovsky 2024): per tensor, mask both the largest-magnitude outliers
and the small entries of each task vector, then sum the masked task vectors."""
from __future__ import annotations

import torch

from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment
from .sparsify import outlier_trim
from .task_arithmetic import task_arithmetic
from .weights import expert_weights

__all__ = ["breadcrumbs_merge", "Breadcrumbs"]


def breadcrumbs_merge(block: torch.Tensor, weights: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """block [K, n], weights [K] -> [n]: sum_k w_k * outlier_trim(block, density, gamma)[k]."""
    return task_arithmetic(outlier_trim(block, density, gamma), weights)


@register_method("breadcrumbs")
class Breadcrumbs(StaticMerge):
    """Drop the top `gamma` (default 0.01) of each tensor by magnitude, keep the next `density`
    (default 0.9), sum with `weights` (default 1/K each), times `scaling`."""
    type: str = "breadcrumbs"
    density: float = 0.9
    gamma: float = 0.01
    weights: list[float] | None = None

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        w = expert_weights(self.weights, ctx.K, default=1.0 / ctx.K, where=f"{self.name}.weights")
        return breadcrumbs_merge(block, w, self.density, self.gamma)
