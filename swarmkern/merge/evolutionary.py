"""Evolutionary merge over mixing weights (EvolMerge / Akiba et al. 2024 style): CMA-ES (the `cma`
package) searching the recipe's parameters to maximise dev utility within a fixed evaluation budget.

recipe "linear": K mixing weights, candidate = sum_k w_k tau_k.
recipe "dare_ties": K weights + one DARE density (mergekit-evolve's favourite recipe), candidate =
DARE-TIES(weights, density) with the run's seed.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from .base import MergeContext, MergeMethod, MethodResult
from .dare import DareTies
from .registry import register_method

__all__ = ["EvolutionaryMerge"]


@register_method("evolutionary")
class EvolutionaryMerge(MergeMethod):
    """CMA-ES from the uniform soup (weights 1/K, density 0.5) with step `sigma`, weights bounded to
    [lower, upper] (density to [0.05, 1]); `popsize` default: CMA-ES's 4 + 3 ln(n)."""
    type: str = "evolutionary"
    recipe: Literal["linear", "dare_ties"] = "linear"
    sigma: float = Field(0.3, gt=0)
    lower: float = -1.0
    upper: float = 2.0
    popsize: int | None = Field(None, ge=2)
    budget: int | None = Field(None, gt=0, description="dev evaluations (default: the compare budget)")
    searches = True

    def _rows(self, ctx: MergeContext, X: list[np.ndarray]) -> torch.Tensor:
        K = ctx.K
        if self.recipe == "linear":
            return ctx.mix(torch.tensor(np.stack(X), dtype=torch.float32))
        rows = []
        for x in X:
            m = DareTies(weights=[float(v) for v in x[:K]], density=float(np.clip(x[K], 0.05, 1.0)))
            rows.append(m.merge(ctx)[0])
        return torch.stack(rows)

    def run(self, ctx: MergeContext) -> MethodResult:
        try:
            import cma
        except ImportError:
            raise RuntimeError("evolutionary needs the cma package: pip install cma") from None
        if not self.lower < self.upper:
            raise ValueError(f"{self.name}: lower must be < upper")
        K, budget = ctx.K, self.budget or ctx.budget
        x0 = [1.0 / K] * K
        lo, hi = [self.lower] * K, [self.upper] * K
        if self.recipe == "dare_ties":
            x0, lo, hi = x0 + [0.5], lo + [0.05], hi + [1.0]
        opts = {"bounds": [lo, hi], "seed": ctx.seed % (2 ** 31 - 1) + 1, "verbose": -9}
        if self.popsize:
            opts["popsize"] = self.popsize
        es = cma.CMAEvolutionStrategy(x0, self.sigma, opts)
        best_x, best_u, spent, generations = None, float("-inf"), 0, 0
        while spent < budget:
            X = es.ask()
            take = X[:budget - spent]
            scores = []
            for i in range(0, len(take), ctx.batch_size):  # one utility call per batch_size candidates
                scores.extend(ctx.score(self._rows(ctx, take[i:i + ctx.batch_size])).tolist())
            spent += len(take)
            for x, u in zip(take, scores):
                if u > best_u:
                    best_u, best_x = u, np.asarray(x)
            if len(take) < len(X):
                break  # the budget ends inside this generation: nothing to tell
            es.tell(X, [-u if np.isfinite(u) else 1e300 for u in scores])
            generations += 1
        if best_x is None:
            raise ValueError(f"{self.name}: budget must be at least 1")
        row = self._rows(ctx, [best_x])[0]
        info = {"recipe": self.recipe, "weights": [round(float(v), 6) for v in best_x[:K]],
                "generations": generations, "budget": budget}
        if self.recipe == "dare_ties":
            info["density"] = float(np.clip(best_x[K], 0.05, 1.0))
        return MethodResult(row, dev=best_u, info=info)
