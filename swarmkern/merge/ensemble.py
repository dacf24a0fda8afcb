"""Top-k prediction ensemble: the k best experts by dev utility each predict, and their predictions are
combined per example (not a weight merge; the paper reports it as a baseline).

Needs per-example predictions, which a score-only utility cannot give. Sources, in order:
1. the utility's scorers have `ensemble(members [k, D], how) -> (score, how used)`: every built-in
   utility does. Multiple choice (log-likelihood) combines choice probabilities (`mean_prob`) or votes;
   generated answers (multiple choice "generate", exact match) take a majority vote; free-text responses
   (reward model, LLM judge) keep the consensus response per prompt; a multi-task utility ensembles each
   task its own way and combines the task scores (utilities/ensemble.py has the math);
2. the scorers expose `predict(particles [B, D]) -> [B, N, C]` (a score per example and class, e.g.
   log-likelihood of each choice; -inf pads) and `score_predictions(pred [N, C]) -> float` (e.g. a
   Python utility's callable object);
3. otherwise, a multiple-choice JSONL dataset (`dev` / `test` files of {"question", "choices",
   "answer"}, from the utility config or this method's own fields) scored by log-likelihood with the
   project's batched evaluator, with the multiple_choice utility's prompt template and continuation
   format when that is the utility (its "generate" scoring is replaced by log-likelihood here); the
   utility value is then accuracy.
Combination: mean of the experts' per-example probabilities (softmax over classes) or majority `vote`.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..utilities.ensemble import combine_class_scores
from .base import MergeContext, MergeMethod, MethodResult
from .registry import register_method

__all__ = ["combine_predictions", "TopKEnsemble"]


combine_predictions = combine_class_scores  # [M, N, C] per-class scores -> [N, C] (mean_prob or vote)


class _MultipleChoice:
    """Fallback source: log-likelihood of every choice of a multiple-choice JSONL, per expert."""

    def __init__(self, ctx: MergeContext, method: "TopKEnsemble"):
        cfg = getattr(ctx.utility, "config", None)
        self.files = {"dev": method.dev or getattr(cfg, "dev", None), "test": method.test or getattr(cfg, "test", None)}
        if not self.files["dev"]:
            raise ValueError(f"{method.name}: the utility exposes no per-example predictions and no "
                             "multiple-choice dev file is configured (set dev: path.jsonl on the method)")
        self.cfg, self.method, self.pool = cfg, method, getattr(ctx, "pool", None)
        self._cache: dict[str, tuple] = {}

    def _data(self, split: str):
        if split not in self._cache:
            from ..data import MultipleChoiceExample, load_jsonl
            from ..evaluate.base import encode_requests
            from ..utilities.common import particle_evaluator
            if self.pool is None:
                raise ValueError(f"{self.method.name}: the multiple-choice fallback needs the expert pool")
            ev = particle_evaluator(self.pool, model=self.method.model or getattr(self.cfg, "model", None),
                                    tokenizer=getattr(self.cfg, "tokenizer", None),
                                    dtype=getattr(self.cfg, "dtype", "float32"),
                                    device=getattr(self.cfg, "device", "auto"))
            limit = getattr(self.cfg, "max_examples" if split == "dev" else "max_test_examples", None)
            exs = load_jsonl(self.files[split], MultipleChoiceExample, limit=limit)
            C = max(len(e.choices) for e in exs)
            # the multiple_choice utility's own prompt and continuation format when it is the utility
            prompt = getattr(self.cfg, "_prompt", None) if getattr(self.cfg, "type", "") == "multiple_choice" else None
            cont_fmt = getattr(self.cfg, "continuation", " {choice}") if prompt else " {choice}"
            ctxs, conts, where = [], [], []
            for i, e in enumerate(exs):
                for c, choice in enumerate(e.choices):
                    ctxs.append(prompt(e) if prompt else f"Question: {e.question}\nAnswer:")
                    conts.append(cont_fmt.format(choice=choice, letter=chr(ord("A") + c)))
                    where.append((i, c))
            reqs = encode_requests(ev.tokenizer, ctxs, conts, max_length=getattr(self.cfg, "max_length", None))
            answers = torch.tensor([e.answer for e in exs])
            self._cache[split] = (ev, reqs, where, len(exs), C, answers)
        return self._cache[split]

    def predict(self, rows: torch.Tensor, split: str) -> torch.Tensor:
        ev, reqs, where, N, C, _ = self._data(split)
        ll = ev.loglikelihood(rows, reqs, micro_batch=getattr(self.cfg, "micro_batch", 64))  # [B, E]
        if self.method.length_normalize or getattr(self.cfg, "scoring", None) == "loglik_norm":
            ll = ll / torch.tensor([n for n in reqs.n_cont], dtype=torch.float64)
        out = torch.full((rows.shape[0], N, C), float("-inf"), dtype=torch.float64)
        idx = torch.tensor(where)
        out[:, idx[:, 0], idx[:, 1]] = ll
        return out

    def score(self, combined: torch.Tensor, split: str) -> float:
        answers = self._data(split)[5]
        return float((combined.argmax(-1) == answers).double().mean())

    def has(self, split: str) -> bool:
        return bool(self.files.get(split))


class _UtilityPredictions:
    """Source 1: the utility's own scorers expose predict / score_predictions."""

    def __init__(self, ctx: MergeContext):
        self.fns = {"dev": ctx.dev, "test": ctx.test}

    @staticmethod
    def supports(fn: Any) -> bool:
        return fn is not None and callable(getattr(fn, "predict", None)) and \
            callable(getattr(fn, "score_predictions", None))

    def predict(self, rows: torch.Tensor, split: str) -> torch.Tensor:
        return torch.as_tensor(self.fns[split].predict(rows), dtype=torch.float64)

    def score(self, combined: torch.Tensor, split: str) -> float:
        return float(self.fns[split].score_predictions(combined))

    def has(self, split: str) -> bool:
        return self.supports(self.fns[split])


@register_method("ensemble")
class TopKEnsemble(MergeMethod):
    """The `k` best experts by dev utility (K evaluations), predictions combined by `combine`.
    `dev` / `test` / `model`: multiple-choice files and base model for the fallback source (default:
    the utility config's own)."""
    type: str = "ensemble"
    k: int = Field(3, ge=1)
    combine: Literal["mean_prob", "vote"] = "mean_prob"
    length_normalize: bool = False
    dev: str | None = None
    test: str | None = None
    model: str | None = None

    def run(self, ctx: MergeContext) -> MethodResult:
        k = min(self.k, ctx.K)
        top = torch.argsort(ctx.expert_scores(), descending=True, stable=True)[:k].tolist()
        rows = ctx.experts[top]
        info: dict[str, Any] = {"experts": [ctx.names[i] for i in top]}
        if callable(getattr(ctx.dev, "ensemble", None)):
            dev, info["combine"] = ctx.dev.ensemble(rows, self.combine)
            ctx.evaluations += k  # the k experts' dev predictions: one evaluation each
            test = ctx.test.ensemble(rows, self.combine)[0] if callable(getattr(ctx.test, "ensemble", None)) else None
            return MethodResult(None, dev=float(dev), test=test, info={**info, "source": "utility"})
        source: Any = _UtilityPredictions(ctx) if _UtilityPredictions.supports(ctx.dev) else _MultipleChoice(ctx, self)
        dev = source.score(combine_predictions(source.predict(rows, "dev"), self.combine), "dev")
        ctx.evaluations += k
        test = None
        if source.has("test"):
            test = source.score(combine_predictions(source.predict(rows, "test"), self.combine), "test")
        return MethodResult(None, dev=dev, test=test,
                            info={**info, "combine": self.combine,
                                  "source": "utility" if isinstance(source, _UtilityPredictions) else "multiple_choice"})
