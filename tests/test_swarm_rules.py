"""Each rule of docs/ALGORITHM.md, checked on small swarms with recording / scripted utilities."""
from __future__ import annotations

import math

import pytest
import torch

from swarmkern.ops import reference
from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.randomness import Purpose, coefficient_factors, uniforms


class Recorder:
    """A utility that records every batch it scores; scores come from `score(rows, call)`."""

    def __init__(self, score):
        self.score = score
        self.calls: list[torch.Tensor] = []
        self.results: list[torch.Tensor] = []

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(self.score(rows, len(self.calls)), dtype=torch.float64)
        self.calls.append(rows.clone())
        self.results.append(out.clone())
        return out


def sphere_score(rows, call):
    return -(rows.double() ** 2).sum(1)


def cfg(**kw) -> SwarmConfig:
    base = dict(progress=False, seed=3)
    base.update(kw)
    return SwarmConfig(**base)


def points(k=6, d=40, seed=0):
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def test_one_iteration_is_the_reference_update():
    """x_1 = x_0 + step * v_1 with v_1 from ops.reference.pso_step_ and the drawn coefficients."""
    rec = Recorder(sphere_score)
    sw = Swarm(cfg(max_iters=0, velocity_init="zero"), points(), rec)
    sw.run()
    x0, v0 = sw.buffers.x.clone(), sw.buffers.v.clone()
    p0, g0, w0 = sw.buffers.pbest.clone(), sw.best.clone(), sw.buffers.gworst.clone()
    rec2 = Recorder(sphere_score)
    sw2 = Swarm(cfg(max_iters=1, velocity_init="zero"), points(), rec2)
    sw2.run()
    coef = sw2.coefficients(1)
    x, v = x0.clone(), v0.clone()
    reference.pso_step_(x, v, p0, g0, w0, coef, 1.0)
    assert torch.equal(rec2.calls[1], x)
    # the coefficients: r ~ U(0,1) per particle from Philox, times phi, normalised to sum 1
    r = coefficient_factors(3, range(6), 1, 0.0, 1.0)
    a = r * torch.tensor([0.4, 0.3, 0.3, 0.3], dtype=torch.float64)
    assert torch.allclose(coef.double(), a / a.sum(1, keepdim=True), atol=1e-7)
    assert torch.allclose(coef.sum(1), torch.ones(6))


def test_coefficient_options():
    sw = Swarm(cfg(randomness="off", repel=False), points(), sphere_score)
    c = sw.coefficients(5)
    assert torch.allclose(c, torch.tensor([[0.4, 0.3, 0.3, 0.0]]).expand(6, 4) / 1.0)
    sw = Swarm(cfg(r_range=(0.5, 0.5)), points(), sphere_score)
    assert torch.allclose(sw.coefficients(2), torch.tensor([0.4, 0.3, 0.3, 0.3]).expand(6, 4) / 1.3)
    # per particle: the same factors whatever set of particles is drawn (process-count independence)
    full = coefficient_factors(9, range(8), 4, 0.0, 1.0)
    assert torch.equal(coefficient_factors(9, [5, 6], 4, 0.0, 1.0), full[5:7])
    assert not torch.equal(full, coefficient_factors(9, range(8), 5, 0.0, 1.0))
    lo_hi = coefficient_factors(9, range(1000), 1, 0.2, 0.7)
    assert lo_hi.min() >= 0.2 and lo_hi.max() < 0.7


def test_strict_improvement_and_gbest_is_a_pbest_view():
    # particle 0 scores 1.0 at init and again 1.0 afterwards: equal is not an improvement
    def score(rows, call):
        out = torch.zeros(rows.shape[0], dtype=torch.float64) - 5
        out[0] = 1.0
        if call == 2:
            out[1] = 3.0  # particle 1 improves at iteration 2
        return out

    rec = Recorder(score)
    sw = Swarm(cfg(max_iters=3, restart=False), points(4), rec)
    res = sw.run()
    assert torch.equal(sw.buffers.pbest[0], rec.calls[0][0])  # still the initial location
    assert torch.equal(sw.buffers.pbest[1], rec.calls[2][1])  # the improving location
    assert torch.equal(sw.buffers.pbest[2], rec.calls[0][2])  # -5 every time: never improves
    assert res.best_index == 1 and res.best_utility == 3.0
    assert sw.best.data_ptr() == sw.buffers.pbest[1].data_ptr()  # no copy of g
    assert torch.equal(res.best, rec.calls[2][1])


def test_gbest_ties_keep_the_first_reaching_particle():
    def score(rows, call):
        out = torch.zeros(rows.shape[0], dtype=torch.float64)
        if call == 1:
            out[:] = torch.tensor([0.0, 2.0, 2.0, 0.0])
        if call == 2:
            out[:] = torch.tensor([2.0, 0.0, 0.0, 0.0])  # equal to g: g stays particle 1
        return out

    sw = Swarm(cfg(max_iters=2, restart=False), points(4), Recorder(score))
    assert sw.run().best_index == 1


def test_gworst_is_the_worst_location_ever_evaluated():
    rec = Recorder(lambda rows, call: torch.randn(rows.shape[0], generator=torch.Generator().manual_seed(call),
                                                  dtype=torch.float64))
    sw = Swarm(cfg(max_iters=6, restart=False), points(5), rec)
    sw.run()
    allrows = torch.cat(rec.calls)
    allscores = torch.cat(rec.results)
    worst = allscores.min()
    assert sw.book.u_worst == float(worst)
    candidates = [allrows[i] for i in range(len(allrows)) if allscores[i] == worst]
    assert any(torch.equal(sw.buffers.gworst, c) for c in candidates)
    # gworst is a copy: later moves of that particle do not change it
    assert sw.buffers.gworst.data_ptr() not in {sw.buffers.x[i].data_ptr() for i in range(5)}


def test_gworst_ties_first_at_init_last_afterwards():
    def score(rows, call):
        if call == 0:
            return torch.tensor([-1.0, -1.0, 0.0, 0.0])
        if call == 1:
            return torch.tensor([-2.0, 0.0, -2.0, 0.0])
        return torch.zeros(rows.shape[0])

    rec = Recorder(score)
    sw = Swarm(cfg(max_iters=0), points(4), rec)
    sw.run()
    assert sw.book.gworst_index == 0 and torch.equal(sw.buffers.gworst, rec.calls[0][0])
    rec = Recorder(score)
    sw = Swarm(cfg(max_iters=1), points(4), rec)
    sw.run()
    assert sw.book.gworst_index == 2 and torch.equal(sw.buffers.gworst, rec.calls[1][2])


def test_restart_timing_and_effect():
    """patience 3 * restart_patience 0.67 = 2.01: a particle whose pbest is 3 evaluations old
    (counting the one that found it) restarts before iteration 3's update, and every iteration after
    until it improves. With only inertia and cognitive pulls, a restarted particle stays at pbest."""
    def score(rows, call):
        out = torch.zeros(rows.shape[0], dtype=torch.float64)
        if call >= 1:
            out[0] = float(call)  # particle 0 improves every iteration: never restarts
        if call == 5:
            out[1] = 1.0  # particle 1 improves at iteration 5
        return out

    rec = Recorder(score)
    c = cfg(max_iters=6, patience=3, restart_patience=0.67, phi_g=0.0, phi_w=0.0, randomness="off")
    sw = Swarm(c, points(3), rec)
    sw.run()
    restarts = {h["iteration"]: h["restarts"] for h in sw.history}
    assert restarts == {0: [], 1: [], 2: [], 3: [1, 2], 4: [1, 2], 5: [1, 2], 6: [2]}
    for t in (3, 4, 5):  # restarted at its pbest (the initial location) with v = 0: stays there
        assert torch.equal(rec.calls[t][1], rec.calls[0][1])
    assert torch.equal(rec.calls[6][2], rec.calls[0][2])


def test_restart_can_be_disabled():
    sw = Swarm(cfg(max_iters=5, patience=2, restart=False), points(3), lambda r: torch.zeros(r.shape[0]))
    sw.run()
    assert all(h["restarts"] == [] for h in sw.history)


@pytest.mark.parametrize("mode, expected", [("reference", 2 + 4 - 1), ("iterations", 2 + 4)])
def test_patience_stop(mode, expected):
    def score(rows, call):
        return torch.full((rows.shape[0],), 1.0 if call >= 2 else 0.0, dtype=torch.float64)

    res = Swarm(cfg(max_iters=100, patience=4, patience_mode=mode), points(3), Recorder(score)).run()
    assert res.stop_reason == "patience" and res.iterations == expected


def test_patience_never_changing_and_max_iters():
    flat = Swarm(cfg(max_iters=100, patience=5), points(3), lambda r: torch.zeros(r.shape[0])).run()
    assert flat.stop_reason == "patience" and flat.iterations == 5
    res = Swarm(cfg(max_iters=7, patience=50), points(3), sphere_score_fn).run()
    assert res.stop_reason == "max_iters" and res.iterations == 7
    zero = Swarm(cfg(max_iters=0), points(3), sphere_score_fn).run()
    assert zero.iterations == 0 and zero.stop_reason == "max_iters"


def sphere_score_fn(rows):
    return -(rows.double() ** 2).sum(1)


def test_step_decay_with_floor():
    sw = Swarm(cfg(max_iters=12, patience=100, step=0.8, step_factor=0.7, min_step=0.1), points(3), sphere_score_fn)
    sw.run()
    steps = [h["step"] for h in sw.history[1:]]
    expect, s = [], 0.8
    for _ in range(12):
        expect.append(s)
        s = max(s * 0.7, 0.1)
    assert steps == expect and steps[-1] == 0.1 and sw.book.step == 0.1


def test_crossover_children():
    K, N = 5, 400
    sw = Swarm(cfg(n_particles=N, max_iters=0, crossover_weight=(0.0, 2.0)), points(K, 8), sphere_score_fn)
    W = sw.coef_weights
    assert W.shape == (N, K) and torch.equal(W[:K], torch.eye(K, dtype=torch.float64))
    assert torch.allclose(W.sum(1), torch.ones(N, dtype=torch.float64))  # affine: weights sum to 1
    w1 = torch.tensor([o["w1"] for o in sw.origins[K:]])
    assert w1.min() >= 0 and w1.max() < 2 and 0.4 < (w1 > 1).double().mean() < 0.6
    for c, o in enumerate(sw.origins[K:], start=K):
        a, b = o["parents"]
        assert a != b and a < c and b < c
        assert torch.allclose(W[c], o["w1"] * W[a] + (1 - o["w1"]) * W[b])
    assert any(max(o["parents"]) >= K for o in sw.origins[K:])  # children can be parents
    sw.run()
    pts = points(K, 8)
    for c in (K, K + 1, N - 1):
        assert torch.allclose(sw.buffers.pbest[c], W[c].float() @ pts, atol=1e-4)
    narrow = Swarm(cfg(n_particles=50, crossover_weight=(0.25, 0.75)), points(K, 8), sphere_score_fn)
    assert all(0.25 <= o["w1"] < 0.75 for o in narrow.origins[K:])
    with pytest.raises(ValueError, match="n_particles"):
        Swarm(cfg(n_particles=3), points(K, 8), sphere_score_fn)


def test_include_base_is_an_all_zero_particle():
    sw = Swarm(cfg(include_base=True, n_particles=8, max_iters=0), points(3), sphere_score_fn)
    res = sw.run()
    assert sw.origins[3] == {"kind": "base", "name": "base"}
    assert torch.count_nonzero(sw.buffers.pbest[3]) == 0
    assert res.best_index == 3  # -|0|^2 = 0 is the sphere's optimum


@pytest.mark.parametrize("mode", ["random", "zero", "best"])
def test_velocity_init(mode):
    pts = points(5)
    sw = Swarm(cfg(max_iters=0, velocity_init=mode), pts, sphere_score_fn)
    sw.run()
    x, v = sw.buffers.x, sw.buffers.v
    if mode == "zero":
        assert torch.count_nonzero(v) == 0
    elif mode == "best":
        assert torch.equal(v, sw.best.unsqueeze(0) - x) and torch.count_nonzero(v[sw.book.gbest_index]) == 0
    else:
        u = uniforms(3, Purpose.VELOCITY_PARTNER, range(5), 0)[:, 0]
        partners = set()
        for i in range(5):
            j = [j for j in range(5) if j != i and torch.allclose(v[i], x[j] - x[i], atol=1e-6)]
            assert len(j) == 1
            partners.add(j[0])
            assert j[0] == min(int(u[i] * 4), 3) + (min(int(u[i] * 4), 3) >= i)
        assert len(partners) > 1


def test_drop_k_skips_whole_iterations():
    rec = Recorder(sphere_score)
    sw = Swarm(cfg(max_iters=4, drop_k=1.0, patience=100), points(4), rec)
    sw.run()
    assert len(rec.calls) == 1  # only the initial evaluation
    assert all(h["skipped"] == [0, 1, 2, 3] for h in sw.history[1:])
    assert all(h["utilities"] == sw.history[0]["utilities"] for h in sw.history)
    assert sw.book.since_best == [5, 5, 5, 5] and sw.book.skipped_total == 16


def test_drop_n_skips_particles_and_keeps_their_scores():
    rec = Recorder(sphere_score)
    P = 10
    sw = Swarm(cfg(max_iters=20, drop_n=0.4, patience=100, restart=False), points(P), rec)
    sw.run()
    skipped_total = 0
    for t, h in enumerate(sw.history[1:], start=1):
        expected = [i for i in range(P) if float(uniforms(3, Purpose.DROP_PARTICLE, [i], t)[0, 0]) < 0.4]
        assert h["skipped"] == expected
        assert rec.calls[t].shape[0] == P - len(expected)  # only evaluated rows reach the utility
        for i in expected:
            assert h["utilities"][i] == sw.history[t - 1]["utilities"][i]
        skipped_total += len(expected)
    assert 0.25 < skipped_total / (20 * P) < 0.55 and sw.book.skipped_total == skipped_total


def test_nonfinite_utilities_are_worst_and_reported(tmp_path):
    def score(rows, call):
        out = -(rows.double() ** 2).sum(1)
        if call == 1:
            out[0] = math.nan
            out[1] = math.inf
        return out

    sw = Swarm(cfg(max_iters=2, restart=False), points(4), Recorder(score), output_dir=tmp_path)
    res = sw.run()
    assert res.summary["nonfinite_utilities"] == 2 and sw.history[1]["nonfinite"] == 2
    assert sw.history[1]["utilities"][0] is None and sw.book.u_worst == -math.inf
    assert sw.history[1]["utilities"][1] is None and sw.book.u_pbest[0] > -math.inf  # the initial pbest stays
    import json
    assert json.loads((tmp_path / "summary.json").read_text())["nonfinite_utilities"] == 2


def test_nonfinite_location_never_becomes_gworst():
    def score(rows):
        out = torch.zeros(rows.shape[0], dtype=torch.float64)
        bad = ~torch.isfinite(rows).all(1)
        out[bad] = math.nan
        return out

    pts = points(4)
    pts[2, 0] = math.inf
    sw = Swarm(cfg(max_iters=0, velocity_init="zero"), pts, score)
    res = sw.run()
    assert res.summary["nonfinite_locations"] == 1
    assert bool(torch.isfinite(sw.buffers.gworst).all()) and sw.book.gworst_index != 2


def test_batch_size_and_row_views():
    seen = []

    def score(rows):
        seen.append((rows.shape[0], rows.is_contiguous(), rows.untyped_storage().data_ptr()))
        return -(rows.double() ** 2).sum(1)

    sw = Swarm(cfg(max_iters=2, batch_size=3), points(7), score)
    sw.run()
    assert [s[0] for s in seen] == [3, 3, 1] * 3
    assert all(s[2] == sw.buffers.x.untyped_storage().data_ptr() for s in seen)  # views of x, no copies


def test_utility_returning_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="returned 1 scores for 4 particles"):
        Swarm(cfg(), points(4), lambda rows: [0.0]).run()


def test_element_randomness_runs_and_is_deterministic():
    a = Swarm(cfg(max_iters=5, randomness="element", patience=100), points(4), sphere_score_fn)
    ra = a.run()
    b = Swarm(cfg(max_iters=5, randomness="element", patience=100), points(4), sphere_score_fn)
    rb = b.run()
    c = Swarm(cfg(max_iters=5, patience=100), points(4), sphere_score_fn)
    c.run()
    assert torch.equal(a.buffers.x, b.buffers.x) and ra.best_utility == rb.best_utility
    assert not torch.equal(a.buffers.x, c.buffers.x)
