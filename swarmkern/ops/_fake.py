"""Fake (meta) implementations of the swarmkern ops, so that torch.compile / torch.export can trace
calls without running them. Imported by _extension once the C++ schemas are registered."""
from __future__ import annotations

import torch


@torch.library.register_fake("swarmkern::pso_step_")
def _pso_step_fake(x, v, pbest, gbest, gworst, coef, step) -> None:
    torch._check(v.shape == x.shape and pbest.shape == x.shape, lambda: "pso_step_: x, v, pbest shapes differ")
    return None


@torch.library.register_fake("swarmkern::pso_step_random_")
def _pso_step_random_fake(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset, r_lo, r_hi,
                          normalize, random_inertia=True) -> None:
    torch._check(v.shape == x.shape and pbest.shape == x.shape, lambda: "pso_step_random_: shapes differ")
    return None


@torch.library.register_fake("swarmkern::combine")
def _combine_fake(src, weights):
    torch._check(weights.shape[1] == src.shape[0], lambda: "combine: weights must be [M, K] for src [K, D]")
    return src.new_empty((weights.shape[0], src.shape[1]))


@torch.library.register_fake("swarmkern::combine_out")
def _combine_out_fake(src, weights, out) -> None:
    return None
