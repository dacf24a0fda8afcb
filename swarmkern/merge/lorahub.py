"""LoraHub-style search (Huang et al. 2024): gradient-free optimisation of the K mixing weights with
nevergrad's NGOpt, each candidate the expert mixture sum_k w_k tau_k (A and B mixed with the same
weights, as LoraHub), minimising -utility + an L1 penalty on the weights. nevergrad is an optional
dependency: `pip install nevergrad`."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from .base import MergeContext, MergeMethod, MethodResult
from .registry import register_method

__all__ = ["LoraHub"]


@register_method("lorahub")
class LoraHub(MergeMethod):
    """NGOpt over weights in [lower, upper]^K (LoraHub: [-1.5, 1.5], start at 0, L1 0.05), spending
    `budget` dev evaluations (default: the compare budget, i.e. the swarm's count), `batch` at a time
    (LoraHub: 1, sequential; NGOpt then runs Cobyla for small budgets. With batch > 1 NGOpt picks a
    MetaModel that nevergrad 1.0.12 breaks under numpy 2: use optimizer NgIohTuned or CMA)."""
    type: str = "lorahub"
    lower: float = -1.5
    upper: float = 1.5
    init: Literal["zeros", "uniform"] = Field("zeros", description="start at the base model (LoraHub) "
                                                                     "or at the uniform soup")
    l1: float = Field(0.05, ge=0, description="weight of mean|w| added to -utility")
    optimizer: str = Field("NGOpt", description="any nevergrad optimizer name")
    budget: int | None = Field(None, gt=0, description="dev evaluations (default: the compare budget)")
    batch: int = Field(1, gt=0, description="candidates asked before telling (num_workers) and scored per "
                                            "utility call; LoraHub: 1")
    searches = True

    def run(self, ctx: MergeContext) -> MethodResult:
        try:
            import nevergrad as ng
        except ImportError:
            raise RuntimeError("lorahub needs nevergrad: pip install nevergrad") from None
        if self.optimizer not in ng.optimizers.registry:
            raise ValueError(f"{self.name}.optimizer: unknown nevergrad optimizer {self.optimizer!r}")
        if not self.lower < self.upper:
            raise ValueError(f"{self.name}: lower must be < upper")
        K, budget = ctx.K, self.budget or ctx.budget
        batch = self.batch
        init = np.zeros(K) if self.init == "zeros" else np.full(K, 1.0 / K)
        param = ng.p.Array(init=np.clip(init, self.lower, self.upper), lower=self.lower, upper=self.upper)
        param.random_state = np.random.RandomState(ctx.seed % (2 ** 32))
        opt = ng.optimizers.registry[self.optimizer](parametrization=param, budget=budget, num_workers=batch)
        best_w, best_u, trace = None, float("-inf"), []
        spent = 0
        while spent < budget:
            try:
                cands = [opt.ask() for _ in range(min(batch, budget - spent))]
            except TypeError as err:  # nevergrad 1.0.12's MetaModel (NGOpt with batch > 1) vs numpy 2
                raise RuntimeError(f"{self.name}: nevergrad {self.optimizer} failed ({err}); with batch > 1 "
                                   "use optimizer: NgIohTuned or CMA") from None
            w = torch.tensor(np.stack([c.value for c in cands]), dtype=torch.float32)
            scores = ctx.score(ctx.mix(w))
            spent += len(cands)
            for c, wi, u in zip(cands, w, scores.tolist()):
                opt.tell(c, -u + self.l1 * float(wi.abs().mean()))
                trace.append(u)
                if u > best_u:
                    best_u, best_w = u, wi
        if best_w is None:
            raise ValueError(f"{self.name}: budget must be at least 1")
        row = ctx.mix(best_w.unsqueeze(0))[0]
        return MethodResult(row, dev=best_u, info={"weights": [round(float(x), 6) for x in best_w],
                                                   "budget": budget, "best_at": trace.index(best_u) + 1})
