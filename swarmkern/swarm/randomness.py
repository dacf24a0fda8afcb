"""Every random draw of the search, from the counter-based Philox-4x32-10 generator.

A draw is a pure function of (seed, purpose, particle, iteration, draw index): the Philox key is the
64-bit seed and the counter is (purpose, particle, iteration, draw). So a particle's numbers do not
depend on how many processes share the swarm, in which order things are drawn, or whether the run was
resumed: a checkpoint needs only (seed, iteration). Each call below returns tiny host tensors.
"""
from __future__ import annotations

from enum import IntEnum

import torch

from swarmkern.ops import philox4x32, split_seed, uniform_from_words


class Purpose(IntEnum):
    """First counter word: which decision a draw is for (never reuse or renumber)."""
    COEFFICIENTS = 1      # r_v, r_p, r_g, r_w of particle i at iteration t
    CROSSOVER = 2         # parents and w1 of child c (particle index c, iteration 0)
    VELOCITY_PARTNER = 3  # j of the random initial velocity v_i = x_j - x_i
    DROP_ITERATION = 4    # dropK: skip iteration t's evaluation
    DROP_PARTICLE = 5     # dropN: skip particle i's evaluation at iteration t
    ELEMENT_SEED = 6      # the key of the per-element kernel stream (pso_step_random_)
    SWEEP = 7             # a sweep's random configuration c (keyed by the sweep's own seed)
    SELECT_SPLIT = 8      # example e's key when a select split is carved from dev (keyed by select_seed)


def uniforms(seed: int, purpose: Purpose, particles: torch.Tensor | list[int] | range, iteration: int,
             draw: int = 0) -> torch.Tensor:
    """Four uniforms in [0, 1) per particle: float64 [len(particles), 4] (24 random bits each)."""
    p = torch.as_tensor(list(particles) if not isinstance(particles, torch.Tensor) else particles,
                        dtype=torch.int64)
    counter = (torch.full_like(p, int(purpose)), p & 0xFFFFFFFF,
               torch.full_like(p, int(iteration) & 0xFFFFFFFF), torch.full_like(p, int(draw) & 0xFFFFFFFF))
    return uniform_from_words(philox4x32(counter, split_seed(seed))).to(torch.float64)


def coefficient_factors(seed: int, particles: torch.Tensor | list[int] | range, iteration: int,
                        r_lo: float, r_hi: float) -> torch.Tensor:
    """r_v, r_p, r_g, r_w ~ U(r_lo, r_hi) for each particle at an iteration: float64 [n, 4]."""
    return r_lo + (r_hi - r_lo) * uniforms(seed, Purpose.COEFFICIENTS, particles, iteration)


def distinct_pair(u0: float, u1: float, n: int) -> tuple[int, int]:
    """Two distinct indices in [0, n) from two uniforms: uniform over ordered pairs, no rejection."""
    a = min(int(u0 * n), n - 1)
    b = min(int(u1 * (n - 1)), n - 2)
    return a, b + (b >= a)


def other_index(u: float, i: int, n: int) -> int:
    """An index in [0, n) other than i, uniformly."""
    j = min(int(u * (n - 1)), n - 2)
    return j + (j >= i)


def element_seed(seed: int) -> int:
    """The 64-bit key of the per-element coefficient stream, derived from the run seed so that it
    never overlaps the host draws (which share the run seed as their key)."""
    w = philox4x32((torch.tensor([int(Purpose.ELEMENT_SEED)]), torch.tensor([0]), torch.tensor([0]),
                    torch.tensor([0])), split_seed(seed))[0]
    return int(w[0]) | (int(w[1]) << 32)
