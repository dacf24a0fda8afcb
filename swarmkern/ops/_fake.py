"""Fake (meta) implementations of the swarmkern ops, so that torch.compile / torch.export can trace
calls without running them (one per schema in csrc/ops.cpp). Imported by _extension once the C++
schemas are registered."""
from __future__ import annotations

import torch


@torch.library.register_fake("swarmkern::pso_step_")
def _pso_step_fake(x, v, pbest, gbest, gworst, coef, step) -> None:
    torch._check(v.shape == x.shape and pbest.shape == x.shape, lambda: "pso_step_: x, v, pbest shapes differ")
    return None


@torch.library.register_fake("swarmkern::pso_step_random_")
def _pso_step_random_fake(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset, r_lo, r_hi,
                          normalize) -> None:
    torch._check(v.shape == x.shape and pbest.shape == x.shape, lambda: "pso_step_random_: shapes differ")
    return None


@torch.library.register_fake("swarmkern::combine")
def _combine_fake(src, weights):
    torch._check(weights.shape[1] == src.shape[0], lambda: "combine: weights must be [M, K] for src [K, D]")
    return src.new_empty((weights.shape[0], src.shape[1]))


@torch.library.register_fake("swarmkern::combine_out")
def _combine_out_fake(src, weights, out) -> None:
    return None


@torch.library.register_fake("swarmkern::merge_ties_disjoint")
def _merge_ties_disjoint_fake(trimmed, weights, method):
    torch._check(weights.shape[0] == trimmed.shape[0], lambda: "merge_ties_disjoint: weights must be [K]")
    return trimmed.new_empty((trimmed.shape[1],))


@torch.library.register_fake("swarmkern::merge_dare")
def _merge_dare_fake(src, weights, density, seed, offset, ties, method):
    torch._check(weights.shape[0] == src.shape[0], lambda: "merge_dare: weights must be [K]")
    return src.new_empty((src.shape[1],))
