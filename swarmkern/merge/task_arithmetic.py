"""Task arithmetic (Ilharco et al. 2023): a scaled weighted sum of task vectors.

A LoRA adapter already is a task vector (the base model is the all-zero adapter), so the merged adapter
is scaling * sum_k w_k tau_k. Matches `peft.utils.merge_utils.task_arithmetic` for scaling 1.
"""
from __future__ import annotations

import torch

from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment
from .weights import expert_weights

__all__ = ["task_arithmetic", "TaskArithmetic"]


def task_arithmetic(block: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * block[k]: block [K, n], weights [K] -> [n]."""
    return (block * weights.to(block.dtype).unsqueeze(1)).sum(dim=0)


@register_method("task_arithmetic")
class TaskArithmetic(StaticMerge):
    """scaling * sum_k w_k tau_k with w_k = `weights` (default 1). The default `scaling` is a grid
    chosen by dev utility (4 evaluations), since the right strength depends on K and the experts."""
    type: str = "task_arithmetic"
    weights: list[float] | None = None
    scaling: float | list[float] = [0.3, 0.5, 0.7, 1.0]

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        return task_arithmetic(block, expert_weights(self.weights, ctx.K, default=1.0,
                                                     where=f"{self.name}.weights"))
