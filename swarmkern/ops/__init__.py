"""The op surface: one function per op, several backends behind it.

    pso_step_(x, v, pbest, gbest, gworst, coef, step, *, backend=None)
    pso_step_random_(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset=0,
                     r_lo=0.0, r_hi=1.0, normalize=True, *, backend=None)
    combine(src, weights, out=None, *, backend=None)

backend=None picks the fastest available backend for the tensors' device; "reference" is the
pure-PyTorch spec (swarmkern/ops/reference.py).
(Bootstrap version: only the reference backend is wired; compiled backends plug in here.)
"""
from __future__ import annotations

from . import reference
from .philox import philox4x32, element_uniforms, split_seed, uniform_from_words

__all__ = ["pso_step_", "pso_step_random_", "combine", "philox4x32", "element_uniforms",
           "split_seed", "uniform_from_words", "reference"]


def pso_step_(x, v, pbest, gbest, gworst, coef, step, *, backend=None):
    reference.pso_step_(x, v, pbest, gbest, gworst, coef, step)


def pso_step_random_(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset=0,
                     r_lo=0.0, r_hi=1.0, normalize=True, *, backend=None):
    reference.pso_step_random_(x, v, pbest, gbest, gworst, phi, step, seed, iteration,
                               particle_offset, r_lo, r_hi, normalize)


def combine(src, weights, out=None, *, backend=None):
    return reference.combine(src, weights, out)
