"""Top-k prediction ensemble: the k best experts by dev utility each predict, and their predictions are
combined per example (not a weight merge; the paper reports it as a baseline). Inference cost: k forward
passes per question.

Uses only the utility protocol (swarmkern/utilities/protocol.py): the dev/test scorers must be
`Ensembling` (every built-in utility is): `preds = scorer.predict(top-k rows)` in one batched pass, then
`scorer.ensemble(preds, combine)`. Multiple choice (log-likelihood) combines choice probabilities
(`mean_prob`, its `auto`) or votes; generated answers (multiple choice "generate", exact match) take a
majority vote; free-text responses (reward model, LLM judge) keep the consensus response per prompt; a
multi-task utility ensembles each task its own way (utilities/ensemble.py has the math).

A utility that only scores (e.g. a plain `python` function) cannot be ensembled; then `dev` (and
optionally `test`) name a multiple-choice JSONL, scored with the built-in `multiple_choice` utility
(log-likelihood, or `loglik_norm` with length_normalize) on the pool's base model (or `model`).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..utilities.ensemble import combine_class_scores
from ..utilities.protocol import Ensembling
from .base import MergeContext, MergeMethod, MethodResult
from .registry import register_method

__all__ = ["combine_predictions", "TopKEnsemble"]


combine_predictions = combine_class_scores  # [M, N, C] per-class scores -> [N, C] (mean_prob or vote)


@register_method("ensemble")
class TopKEnsemble(MergeMethod):
    """The `k` best experts by dev utility (K evaluations), predictions combined by `combine` ("auto":
    the utility's own rule). `dev` / `test` / `model`: a multiple-choice JSONL and base model used only
    when the utility itself gives no predictions."""
    type: str = "ensemble"
    k: int = Field(3, ge=1)
    combine: Literal["auto", "mean_prob", "vote"] = "auto"
    length_normalize: bool = False
    dev: str | None = None
    test: str | None = None
    model: str | None = None

    def _scorers(self, ctx: MergeContext) -> tuple[Ensembling, Ensembling | None, str]:
        """(dev, test, source): the utility's own scorers, or the multiple-choice fallback's."""
        if isinstance(ctx.dev, Ensembling):
            test = ctx.test if isinstance(ctx.test, Ensembling) else None
            return ctx.dev, test, "utility"
        if not self.dev:
            raise ValueError(f"{self.name}: the utility gives no per-example predictions and no "
                             "multiple-choice dev file is configured (set dev: path.jsonl on the method)")
        if getattr(ctx, "pool", None) is None:
            raise ValueError(f"{self.name}: the multiple-choice fallback needs the expert pool")
        from ..utilities import build_utility

        spec: dict[str, Any] = {"type": "multiple_choice", "dev": self.dev, "model": self.model,
                                "scoring": "loglik_norm" if self.length_normalize else "loglik"}
        if self.test:
            spec["test"] = self.test
        built = build_utility(spec, ctx.pool)
        return built.dev, built.test, "multiple_choice"

    def run(self, ctx: MergeContext) -> MethodResult:
        k = min(self.k, ctx.K)
        top = torch.argsort(ctx.expert_scores(), descending=True, stable=True)[:k].tolist()
        rows = ctx.experts[top]
        dev_scorer, test_scorer, source = self._scorers(ctx)
        dev, how = dev_scorer.ensemble(dev_scorer.predict(rows), self.combine)
        ctx.evaluations += k  # the k experts' dev predictions: one evaluation each
        test = None if test_scorer is None else test_scorer.ensemble(test_scorer.predict(rows), self.combine)[0]
        return MethodResult(None, dev=float(dev), test=None if test is None else float(test),
                            info={"experts": [ctx.names[i] for i in top], "combine": how, "source": source})

