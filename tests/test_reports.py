"""swarm/reports.py: the paper's reports, on a tiny utility whose answers can be worked out by hand.

The tiny utility: a particle x [D] answers example n (n < D) with 1 when x[n] > threshold, else 0; the
right answer is always 1, so its accuracy is the fraction of coordinates above the threshold. Its
ensemble is a majority vote of the members' answers (ties: the first member, i.e. the best one).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.reports import (Projection, emergence, top_k_ensembles, weak_to_strong,
                                     weak_to_strong_rate)
from swarmkern.utilities.protocol import Answers, Ensembling


class Threshold(Ensembling):
    def __init__(self, threshold: float = 0.0, name: str = "threshold"):
        self.threshold, self.name = threshold, name
        self.predicted_rows = 0

    def predict(self, particles: torch.Tensor) -> Answers:
        self.predicted_rows += particles.shape[0]
        return Answers([[int(v > self.threshold) for v in row.tolist()] for row in particles.float()])

    def example_scores(self, preds: Answers) -> torch.Tensor:
        return torch.tensor(preds.answers, dtype=torch.float64)

    def score(self, preds: Answers) -> torch.Tensor:
        return self.example_scores(preds).mean(1)

    @property
    def example_ids(self) -> list[str]:
        return [f"q{n}" for n in range(8)]

    def ensemble(self, preds: Answers, how: str = "auto") -> tuple[float, str]:
        votes = torch.tensor(preds.answers, dtype=torch.float64)  # [k, N]
        ones, k = votes.sum(0), votes.shape[0]
        answer = torch.where(2 * ones > k, 1.0, torch.where(2 * ones < k, 0.0, votes[0]))
        return float(answer.mean()), "vote"


def test_top_k_ensembles_by_hand():
    u = Threshold()
    preds = Answers([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]])
    got = top_k_ensembles(u, preds, [0, 1, 2], ks=(1, 2, 3, 5))
    # k=1: p0 alone 2/4; k=2: p0+p1 agree on q0, tie on q1/q2 -> p0's answers: 2/4; k=3: majority 1,1,1,0
    assert {k: v["score"] for k, v in got.items()} == {"1": 0.5, "2": 0.5, "3": 0.75}
    assert got["3"]["particles"] == [0, 1, 2] and got["3"]["how"] == "vote"
    assert "5" not in got  # k > P is left out
    # best-first order matters: p2 then p1 tie-break to p2
    assert top_k_ensembles(u, preds, [2, 1, 0], ks=(2,))["2"]["score"] == 0.5


def test_emergence_by_hand():
    initial = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]])
    best = torch.tensor([1.0, 1, 0, 1])
    got = emergence(initial, best, ["a", "b", "c", "d"])
    assert got == {"examples": 4, "best_right": 3, "some_starting_particle_right": 2, "emerged": 2,
                   "emerged_ids": ["b", "d"], "lost": 1}
    with pytest.raises(ValueError, match="0/1"):
        emergence(initial * 0.5, best, ["a", "b", "c", "d"])


def test_weak_to_strong_rate():
    runs = [(0, 4), (2, 4), (3, 5), (2, 5)]  # outside the top half: 2*rank >= P -> the 2nd and 3rd
    summaries = [{"best_particle_initial_rank": r, "n_particles": p, "best_particle_initial_utility": 0.1}
                 for r, p in runs]
    assert [weak_to_strong(s)["started_outside_top_half"] for s in summaries] == [False, True, True, False]
    assert weak_to_strong_rate(summaries) == {"searches": 4, "outside_top_half": 2, "fraction": 0.5}
    assert weak_to_strong_rate([])["fraction"] is None


def test_projection_by_hand():
    """Experts (3,0,..), (-3,0,..), (0,1,..): the first direction is +x (variance 18), the second +y
    (variance 2/3, about the mean y = 1/3)."""
    rows = torch.zeros(3, 5)
    rows[0, 0], rows[1, 0], rows[2, 1] = 3.0, -3.0, 1.0
    proj = Projection.of_rows(rows, chunk=2)  # chunks that split D
    torch.testing.assert_close(proj.coords(rows), torch.tensor([[3.0, -1 / 3], [-3.0, -1 / 3], [0.0, 2 / 3]],
                                                               dtype=torch.float64), atol=1e-6, rtol=0)
    assert proj.explained == pytest.approx([18 / (18 + 2 / 3), (2 / 3) / (18 + 2 / 3)])
    x = torch.tensor([[1.0, 2.0, 5.0, 5.0, 5.0]])  # off-plane coordinates do not count
    torch.testing.assert_close(proj.coords(x), torch.tensor([[1.0, 2.0 - 1 / 3]], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    two = Projection.of_rows(rows[:2])  # two experts: one direction, the second is 0
    assert two.explained[1] == 0.0 and float(two.directions[1].abs().sum()) == 0.0


def _start(P=6, D=8, seed=0):
    return torch.randn(P, D, generator=torch.Generator().manual_seed(seed)) - 0.3


def test_end_of_search_reports_match_hand_computation(tmp_path):
    start = _start(seed=1)  # this start lets one dev and two test examples emerge within 6 iterations
    dev, test = Threshold(0.0, "dev"), Threshold(0.25, "test")
    cfg = SwarmConfig(max_iters=6, patience=50, progress=False, report_pbest_test=True, report_ensemble_k=(1, 3, 5, 10),
                      batch_size=4)  # the starting particles are rebuilt in batches of 4 and 2
    sw = Swarm(cfg, start, dev, test_utility=test, output_dir=tmp_path)
    result = sw.run()
    rep = json.loads((tmp_path / "reports.json").read_text())
    assert json.loads((tmp_path / "summary.json").read_text())["reports"] == rep
    assert (tmp_path / "trajectory.png").stat().st_size > 1000

    pbest, book = sw.buffers.pbest.float(), sw.book
    P = pbest.shape[0]
    order = sorted(range(P), key=lambda i: (-book.u_pbest[i], i))
    assert rep["ensembles"]["order"] == order
    for split, u in (("dev", dev), ("test", test)):
        answers = (pbest > u.threshold).double()
        for k in (1, 3, 5):
            votes = answers[order[:k]]
            ones = votes.sum(0)
            maj = torch.where(2 * ones > k, 1.0, torch.where(2 * ones < k, 0.0, votes[0]))
            assert rep["ensembles"][split][str(k)]["score"] == pytest.approx(float(maj.mean()))
        assert "10" not in rep["ensembles"][split]  # k <= P only
        # emergence: no starting point above the threshold at n, the final best above it
        best = result.best.float() > u.threshold
        none_started = ~(start > u.threshold).any(0)
        ids = [f"q{n}" for n in range(8) if best[n] and none_started[n]]
        assert rep["emergence"][split]["emerged_ids"] == ids
        assert rep["emergence"][split]["emerged"] == len(ids)
        assert rep["emergence"][split]["best_right"] == int(best.sum())
    assert (rep["emergence"]["dev"]["emerged"], rep["emergence"]["test"]["emerged"]) == (1, 2)
    assert rep["pbest_test_utilities"] == pytest.approx((pbest > 0.25).double().mean(1).tolist())
    assert rep["weak_to_strong"]["initial_rank"] == result.summary["best_particle_initial_rank"]
    # the reports' dev predictions: the top min(10, P) personal bests, the best, the P starting particles
    assert dev.predicted_rows - result.summary["evaluations"] == P + 1 + P

    # trajectory: pca_xy of every particle each iteration; iteration 0 = the starting points' coordinates
    proj = Projection.of_rows(start)
    assert len(sw.history) == 7 and all(len(h["pca_xy"]) == P for h in sw.history)
    torch.testing.assert_close(torch.tensor(sw.history[0]["pca_xy"], dtype=torch.float64), proj.coords(start),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(sw.history[-1]["pca_xy"], dtype=torch.float64), proj.coords(sw.buffers.x),
                               atol=1e-4, rtol=1e-4)
    assert rep["trajectory"]["explained_variance"] == pytest.approx(proj.explained)
    assert rep["trajectory"]["best_xy"] == pytest.approx(proj.coords(result.best.unsqueeze(0))[0].tolist(), abs=1e-4)


def test_nothing_emerges_without_an_iteration():
    """max_iters 0: the best is a starting particle, so nothing can emerge (and lost is 0 too)."""
    start = torch.full((4, 8), -1.0)
    start[0, :3] = 1.0  # particle 0 answers q0..q2 right; nobody answers q3..q7
    start[1, 3] = 2.0   # particle 1 answers q3 only: worse than particle 0
    cfg = SwarmConfig(max_iters=0, patience=50, progress=False, report_trajectory=False, report_ensemble_k=())
    rep = Swarm(cfg, start, Threshold(0.0)).run().summary["reports"]
    assert rep["emergence"]["dev"] == {"examples": 8, "best_right": 3, "some_starting_particle_right": 4,
                                       "emerged": 0, "emerged_ids": [], "lost": 1}
    assert "trajectory" not in rep and "ensembles" not in rep


def test_plain_function_utility_skips_prediction_reports(tmp_path):
    cfg = SwarmConfig(max_iters=2, patience=50, progress=False, report_pbest_test=True)
    fn = lambda x: -(x.double() ** 2).sum(1)  # noqa: E731
    rep = Swarm(cfg, _start(), fn, test_utility=fn, output_dir=tmp_path).run().summary["reports"]
    assert "ensembles" not in rep and "emergence" not in rep
    assert "per-example predictions" in rep["skipped"]["ensembles_and_emergence"]
    assert len(rep["pbest_test_utilities"]) == 6  # scored through the plain function
    assert math.isclose(max(rep["pbest_test_utilities"]), max(Swarm.resume(tmp_path, fn).book.u_pbest))


def test_reports_of_a_multiple_choice_search_on_a_tiny_model(tmp_path):
    """Through the CLI with the built-in multiple_choice utility (the utility's own prediction API):
    a one-member ensemble scores the global best's utility, and emergence's `best_right` is the best's
    accuracy times the number of examples, on dev and test."""
    pytest.importorskip("peft")
    pytest.importorskip("tokenizers")
    import yaml
    from click.testing import CliRunner

    from swarmkern.cli import main
    from swarmkern.testing import cached_tiny_setup

    d = cached_tiny_setup(reward=False, judge=False)
    config = {"experts": {"paths": [str(p) for p in d.expert_dirs]},
              "swarm": {"n_particles": 5, "max_iters": 2, "patience": 3, "seed": 1, "progress": False,
                        "report_ensemble_k": [1, 3, 10]},
              "utility": {"type": "multiple_choice", "dev": str(d.data["mc_dev"]), "test": str(d.data["mc_test"])},
              "output": {"dir": str(tmp_path / "run")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["search", str(tmp_path / "c.yaml"), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rep = summary["reports"]
    assert set(rep["ensembles"]["dev"]) == {"1", "3"} and set(rep["ensembles"]["test"]) == {"1", "3"}
    assert rep["ensembles"]["dev"]["1"]["score"] == pytest.approx(summary["best_dev_utility"])
    assert rep["ensembles"]["test"]["1"]["score"] == pytest.approx(summary["test_utility"])
    for split, value in (("dev", summary["best_dev_utility"]), ("test", summary["test_utility"])):
        em = rep["emergence"][split]
        assert em["best_right"] == round(value * em["examples"])
        assert len(em["emerged_ids"]) == em["emerged"] <= em["best_right"]
    assert (tmp_path / "run" / "trajectory.png").exists()


def test_projection_coordinates_do_not_depend_on_the_sharding():
    """A row's coordinates are the same bits whether it is projected alone, in a group of 3 or with all
    (torch.distributed runs shard the particles); D spans several chunks with a ragged tail."""
    g = torch.Generator().manual_seed(5)
    proj = Projection.of_rows(torch.randn(4, 70_001, generator=g))
    x = torch.randn(7, 70_001, generator=g)
    every = proj.coords(x)
    assert torch.equal(every, torch.cat([proj.coords(x[i:i + 1]) for i in range(7)]))
    assert torch.equal(every, torch.cat([proj.coords(x[i:i + 3]) for i in range(0, 7, 3)]))
    exact = x.double() @ proj.directions.double().T - proj.offset
    torch.testing.assert_close(every, exact, rtol=1e-5, atol=1e-4)


def test_a_non_finite_expert_does_not_break_the_trajectory(tmp_path):
    """An expert with an inf entry: the PCA counts it as 0, that particle's coordinates are null while
    it sits there, the plot is still drawn and summary.json stays strict JSON."""
    start = _start(P=4)
    start[2, 0] = math.inf
    score = lambda x: torch.where(torch.isfinite(x).all(1), -(x.double() ** 2).sum(1), math.nan)  # noqa: E731
    sw = Swarm(SwarmConfig(max_iters=2, patience=50, progress=False, velocity_init="zero"), start, score,
               output_dir=tmp_path)
    sw.run()
    assert sw.history[0]["pca_xy"][2] == [None, None] and None not in sw.history[0]["pca_xy"][0]
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert (tmp_path / "trajectory.png").exists()
