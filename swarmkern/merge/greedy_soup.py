"""Greedy soup (Wortsman et al. 2022, Algorithm 1): visit the experts from best to worst dev utility and
add each one to the soup (a uniform average of its ingredients) when the soup's dev utility does not drop.
K evaluations to rank the experts plus K - 1 for the candidate soups."""
from __future__ import annotations

import torch

from .base import MergeContext, MergeMethod, MethodResult
from .registry import register_method

__all__ = ["greedy_soup", "GreedySoup"]


def greedy_soup(experts: torch.Tensor, expert_scores: torch.Tensor, score, *,
                strict: bool = False) -> tuple[list[int], float, torch.Tensor]:
    """Ingredients (expert indices, in the order added), the final soup's score and the soup [D] (fp32).
    experts [K, D]; expert_scores [K]; score(row [1, D]) -> [1]. strict: add only on improvement."""
    order = torch.argsort(expert_scores, descending=True, stable=True).tolist()
    ingredients, best = [order[0]], float(expert_scores[order[0]])
    total = experts[order[0]].float().clone()
    for k in order[1:]:
        candidate = (total + experts[k].float()) / (len(ingredients) + 1)
        s = float(score(candidate.unsqueeze(0))[0])
        if s > best or (not strict and s == best):
            ingredients.append(k)
            total += experts[k].float()
            best = s
    return ingredients, best, total / len(ingredients)


@register_method("greedy_soup")
class GreedySoup(MergeMethod):
    """Greedy soup by dev utility; `strict`: require a strict improvement to add an ingredient
    (default: not worse, as the paper's Algorithm 1)."""
    type: str = "greedy_soup"
    strict: bool = False

    def run(self, ctx: MergeContext) -> MethodResult:
        ingredients, dev, soup = greedy_soup(ctx.experts, ctx.expert_scores(), ctx.score, strict=self.strict)
        return MethodResult(soup.to(ctx.experts.dtype), dev=dev, info={"ingredients": [ctx.names[i] for i in ingredients]})
