"""The searching methods (LoraHub/nevergrad, CMA-ES) and the prediction ensemble on synthetic utilities."""
from __future__ import annotations

import pytest
import torch

from swarmkern.merge import MergeContext, parse_method_config, whole
from swarmkern.merge.ensemble import combine_predictions
from swarmkern.utilities.protocol import ClassScores, Ensembling

TARGET_W = torch.tensor([0.7, -0.2, 0.5])


def _ctx(budget=40, seed=0):
    experts = torch.eye(3, 6) + 0.1 * torch.arange(18, dtype=torch.float32).reshape(3, 6) / 18
    target = TARGET_W @ experts
    calls = []

    def dev(rows):
        calls.append(rows.shape[0])
        return -(rows.float() - target).pow(2).sum(1)

    return MergeContext(experts=experts, segments=whole(6), dev=dev, budget=budget, seed=seed, batch_size=5), calls


@pytest.mark.parametrize("spec,batch", [("lorahub", 1), ({"type": "lorahub", "optimizer": "NgIohTuned", "batch": 4}, 4),
                                        ("evolutionary", 5), ({"type": "evolutionary", "recipe": "dare_ties"}, 5)])
def test_searches_spend_exactly_the_budget_and_improve(spec, batch):
    kind = spec if isinstance(spec, str) else spec["type"]
    pytest.importorskip("nevergrad" if kind == "lorahub" else "cma")
    ctx, calls = _ctx(budget=37)
    ctx.begin()
    res = parse_method_config(spec).run(ctx)
    assert ctx.evaluations == 37 and sum(calls) == 37 and max(calls) == batch
    start = float(ctx.score(ctx.mix(torch.full((1, 3), 1 / 3)))[0])  # the uniform soup
    assert res.dev > start
    assert float(ctx.score(res.row.unsqueeze(0))[0]) == pytest.approx(res.dev)  # the row is what was scored


@pytest.mark.parametrize("kind", ["lorahub", "evolutionary"])
def test_searches_are_reproducible_by_seed(kind):
    pytest.importorskip("nevergrad" if kind == "lorahub" else "cma")
    a = parse_method_config(kind).run(_ctx(seed=5)[0])
    b = parse_method_config(kind).run(_ctx(seed=5)[0])
    c = parse_method_config(kind).run(_ctx(seed=6)[0])
    assert torch.equal(a.row, b.row) and a.info["weights"] == b.info["weights"]
    if kind == "evolutionary":  # (LoraHub's sequential NGOpt runs a deterministic Cobyla here)
        assert a.info["weights"] != c.info["weights"]


def test_cma_finds_the_target_mixture_with_enough_budget():
    pytest.importorskip("cma")
    ctx, _ = _ctx(budget=400)
    res = parse_method_config({"type": "evolutionary", "sigma": 0.5}).run(ctx)
    assert torch.allclose(torch.tensor(res.info["weights"]), TARGET_W, atol=0.05)


def test_combine_predictions_by_hand():
    # two experts, one example, three classes (log-likelihoods)
    preds = torch.log(torch.tensor([[[0.6, 0.3, 0.1]], [[0.1, 0.5, 0.4]]]))
    mean = combine_predictions(preds, "mean_prob")
    assert torch.allclose(mean.exp(), torch.tensor([[0.35, 0.4, 0.25]], dtype=torch.float64))
    votes = combine_predictions(torch.log(torch.tensor([[[0.6, 0.3, 0.1]], [[0.1, 0.5, 0.4]], [[0.2, 0.7, 0.1]]])), "vote")
    assert int(votes.argmax()) == 1


class _PredictingUtility(Ensembling):
    """A utility with per-example predictions: example i's correct class is i % 2; expert k's logits
    favour class k on every example."""
    answers = torch.tensor([0, 1, 0, 1])
    example_ids = ["0", "1", "2", "3"]

    def predict(self, rows):
        return ClassScores(torch.stack([
            torch.log_softmax(torch.tensor([[r[0].item(), r[1].item()]] * 4, dtype=torch.float64), -1) for r in rows]))

    def example_scores(self, preds):
        return (preds.scores.argmax(-1) == self.answers).double()

    def score(self, preds):
        return self.example_scores(preds).mean(1)

    def ensemble(self, preds, how="auto"):
        how = "mean_prob" if how == "auto" else how
        return float(self.score(ClassScores(combine_predictions(preds.scores, how)[None]))[0]), how


def test_ensemble_uses_the_utility_predictions():
    util = _PredictingUtility()
    experts = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # favour class 0, class 1, no preference
    ctx = MergeContext(experts=experts, segments=whole(2), dev=util, test=util)
    ctx.begin()
    res = parse_method_config({"type": "ensemble", "k": 2}).run(ctx)
    # every expert scores 0.5 alone; the top 2 by dev (stable order: 0, 1) averaged favour class 0
    assert res.info["experts"] == ["expert_0", "expert_1"] and res.info["source"] == "utility"
    assert res.dev == 0.5 and res.test == 0.5 and res.row is None and ctx.evaluations == 3 + 2
