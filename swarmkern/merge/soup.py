"""Uniform soup (Wortsman et al. 2022): the plain average of the experts."""
from __future__ import annotations

import torch

from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment

__all__ = ["UniformSoup"]


@register_method("uniform_soup")
class UniformSoup(StaticMerge):
    """The mean of the K experts, per tensor (lora space: A and B averaged separately)."""
    type: str = "uniform_soup"

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        return block.mean(dim=0)
