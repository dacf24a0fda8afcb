"""`swarm.update: classic`: textbook global-best PSO through the fused per-element kernel."""
from __future__ import annotations

import statistics

import pytest
import torch

from swarmkern.objectives import neg_rastrigin, neg_sphere
from swarmkern.ops.philox import element_uniforms
from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.randomness import element_seed


def test_classic_sets_its_defaults_and_rejects_conflicts():
    cfg = SwarmConfig(update="classic")
    assert (cfg.step, cfg.step_factor, cfg.repel, cfg.randomness) == (1.0, 1.0, False, "element")
    assert SwarmConfig(update="classic", step=0.5).step == 0.5  # a named field wins
    assert SwarmConfig().repel and SwarmConfig().randomness == "particle"  # model_swarms untouched
    with pytest.raises(ValueError, match="repel"):
        SwarmConfig(update="classic", repel=True)
    with pytest.raises(ValueError, match="randomness"):
        SwarmConfig(update="classic", randomness="particle")
    with pytest.raises(ValueError, match="bounds"):
        SwarmConfig(bounds=(1.0, -1.0))
    # a dumped classic config validates again to itself (checkpoints, resume)
    assert SwarmConfig.model_validate(cfg.model_dump(mode="json")) == cfg


class Recorder:
    """neg-sphere utility that keeps a float64 copy of every batch it scores."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.double().clone())
        return neg_sphere(x)


def test_two_iterations_follow_the_textbook_rule():
    """x_{t+1} = x_t + v_{t+1}, v_{t+1} = w v_t + c1 r1 (p_t - x_t) + c2 r2 (g_t - x_t), r per element from
    the documented Philox stream; no normalisation, no random factor on w, no repel, no step decay."""
    P, D, w, c1, c2, seed = 5, 33, 0.9, 0.5, 0.3, 4
    start = torch.randn(P, D, generator=torch.Generator().manual_seed(0))
    rec = Recorder()
    cfg = SwarmConfig(update="classic", phi_v=w, phi_p=c1, phi_g=c2, max_iters=2, patience=50,
                      velocity_init="random", seed=seed, progress=False, checkpoint=False, restart=False)
    Swarm(cfg, start, rec).run()
    x0, x1, x2 = rec.seen
    # velocity_init random: v_i = x_j - x_i for the swarm's partner j; recover it from the first move
    u = [element_uniforms(element_seed(seed), t, torch.arange(P).unsqueeze(1), torch.arange(D).unsqueeze(0)).double()
         for t in (1, 2)]
    f0, f1 = -neg_sphere(x0), -neg_sphere(x1)
    g0 = x0[int(torch.argmin(f0))]
    pull1 = c2 * u[0][..., 2] * (g0 - x0)  # p0 = x0: the cognitive term is 0 at the first step
    v0 = (x1 - x0 - pull1) / w
    assert all(any(torch.allclose(v0[i], x0[j] - x0[i], atol=1e-5) for j in range(P) if j != i) for i in range(P))
    v1 = x1 - x0
    p1 = torch.where((f1 < f0).unsqueeze(1), x1, x0)
    g1 = p1[int(torch.argmin(torch.minimum(f0, f1)))]
    v2 = w * v1 + c1 * u[1][..., 1] * (p1 - x1) + c2 * u[1][..., 2] * (g1 - x1)
    torch.testing.assert_close(x2, x1 + v2, atol=2e-5, rtol=0)


def test_bounds_keep_every_evaluated_particle_inside():
    rec = Recorder()
    start = torch.rand(6, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = SwarmConfig(update="classic", phi_v=1.2, phi_p=2.0, phi_g=2.0, bounds=(-1.0, 1.0), max_iters=15,
                      patience=100, restart=False, progress=False, checkpoint=False)
    Swarm(cfg, start, rec).run()
    moved = torch.cat(rec.seen[1:])
    assert moved.min() >= -1.0 and moved.max() <= 1.0
    assert ((moved == 1.0) | (moved == -1.0)).any(), "these coefficients overshoot: some coordinates are clipped"


@pytest.mark.parametrize("objective", [neg_sphere, neg_rastrigin], ids=["sphere", "rastrigin"])
def test_classic_beats_the_model_swarms_defaults_on_benchmark_functions(objective):
    """20 particles, 100 evaluations, D = 30, 3 seeds: the classic update ends lower (median)."""
    def final(settings, seed):
        start = torch.rand(20, 30, generator=torch.Generator().manual_seed(seed)) * 10.24 - 5.12
        cfg = SwarmConfig(**settings, max_iters=99, patience=200, seed=seed, progress=False, checkpoint=False,
                          bounds=(-5.12, 5.12))
        return -Swarm(cfg, start, objective).run().best_utility

    classic = dict(update="classic", phi_v=0.9, phi_p=0.5, phi_g=0.3, restart=False, velocity_init="zero")
    ours = statistics.median(final(classic, s) for s in range(3))
    default = statistics.median(final({}, s) for s in range(3))
    assert ours < 0.8 * default, (ours, default)
