"""The best single expert by dev utility (K evaluations)."""
from __future__ import annotations

import torch

from .base import MergeContext, MergeMethod, MethodResult
from .registry import register_method

__all__ = ["BestSingle"]


@register_method("best_single")
class BestSingle(MergeMethod):
    """The expert with the highest dev utility (first one on ties)."""
    type: str = "best_single"

    def run(self, ctx: MergeContext) -> MethodResult:
        scores = ctx.expert_scores()
        best = int(torch.argmax(scores))
        return MethodResult(ctx.experts[best].clone(), dev=float(scores[best]),
                            info={"expert": ctx.names[best],
                                  "expert_dev": dict(zip(ctx.names, scores.tolist()))})
