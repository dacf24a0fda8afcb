"""How a prediction ensemble combines its members' per-example predictions (the math only; the
utilities produce the predictions and score the combined ones, swarmkern.merge.ensemble runs it).

Members always come in rank order (best dev utility first); that order breaks every tie.
- class scores [M, N, C] (e.g. choice log-likelihoods): mean of the softmax probabilities, or votes;
- discrete answers (a parsed letter, a normalised exact-match string; None = no answer): majority vote;
- free text (responses a reward model or a judge scores): the consensus response, i.e. the member's
  response with the highest mean token-F1 agreement with the other members' responses (minimum Bayes
  risk selection). There is no "average" of free text, and choosing by the reward itself would let the
  ensemble peek at its own score.
"""
from __future__ import annotations

from collections import Counter
from typing import Hashable, Literal, Sequence

import torch

__all__ = ["combine_class_scores", "majority_vote", "consensus_responses", "token_f1"]


def combine_class_scores(preds: torch.Tensor, how: Literal["mean_prob", "vote"] = "mean_prob") -> torch.Tensor:
    """preds [M, N, C] per-class scores (log-likelihoods; -inf pads) of M members -> combined [N, C].
    mean_prob: log of the mean of softmax probabilities; vote: votes per class (ties: the higher mean
    probability wins)."""
    probs = torch.softmax(preds.double(), dim=-1)
    mean = probs.mean(dim=0)
    if how == "mean_prob":
        return mean.clamp(min=1e-300).log()
    if how == "vote":
        votes = torch.nn.functional.one_hot(preds.argmax(-1), preds.shape[-1]).sum(0).double()
        return votes + mean * 1e-3  # mean prob < 1 only breaks ties between equal vote counts
    raise ValueError(f"ensemble.combine: expected 'mean_prob' or 'vote', got {how!r}")


def majority_vote(answers: Sequence[Sequence[Hashable | None]]) -> list[Hashable | None]:
    """answers[m][n]: member m's answer to example n (None: it gave none) -> the most frequent answer per
    example; ties go to the answer of the best-ranked member among the tied; None only if nobody answered."""
    if not answers:
        raise ValueError("ensemble: no members to vote")
    n = len(answers[0])
    if any(len(a) != n for a in answers):
        raise ValueError("ensemble: members answered different numbers of examples")
    out: list[Hashable | None] = []
    for i in range(n):
        given = [a[i] for a in answers if a[i] is not None]
        if not given:
            out.append(None)
            continue
        counts = Counter(given)
        top = max(counts.values())
        out.append(next(g for g in given if counts[g] == top))  # `given` is in rank order
    return out


def token_f1(a: str, b: str) -> float:
    """Bag-of-words F1 of two texts (lower-cased whitespace tokens); two empty texts agree fully."""
    ta, tb = a.lower().split(), b.lower().split()
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def consensus_responses(responses: Sequence[Sequence[str]]) -> list[str]:
    """responses[m][n]: member m's response to prompt n -> per prompt, the member response that agrees
    most (mean token F1) with the other members' responses; ties go to the best-ranked member."""
    if not responses:
        raise ValueError("ensemble: no members to combine")
    M, n = len(responses), len(responses[0])
    if any(len(r) != n for r in responses):
        raise ValueError("ensemble: members answered different numbers of prompts")
    out = []
    for i in range(n):
        texts = [r[i] for r in responses]
        if M == 1:
            out.append(texts[0])
            continue
        agreement = [sum(token_f1(texts[m], texts[o]) for o in range(M) if o != m) for m in range(M)]
        best = max(agreement)
        out.append(texts[agreement.index(best)])  # index() finds the best-ranked of the tied
    return out
