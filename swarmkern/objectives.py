"""Generic test functions for the search engine: every function takes particles [B, D] and returns
[B] float64 values. Utilities are maximised, so use the `neg_` versions as utilities, e.g.

    utility: {type: python, function: "swarmkern.objectives:neg_rastrigin", kwargs: {shift: 1.0}}

`shift` moves the optimum from the origin to (shift, ..., shift). Rows are processed in chunks of
`chunk` elements so that 10^7-dimensional particles need little extra memory.
"""
from __future__ import annotations

import math

import torch

__all__ = ["sphere", "rastrigin", "neg_sphere", "neg_rastrigin"]


def _rowwise(particles: torch.Tensor, fn, chunk: int) -> torch.Tensor:
    if particles.dim() != 2:
        raise ValueError(f"particles must be [B, D], got shape {list(particles.shape)}")
    out = torch.zeros(particles.shape[0], dtype=torch.float64, device=particles.device)
    for s in range(0, particles.shape[1], chunk):
        out += fn(particles[:, s:s + chunk].to(torch.float64)).sum(dim=1)
    return out.cpu()


def sphere(particles: torch.Tensor, shift: float = 0.0, chunk: int = 1 << 20) -> torch.Tensor:
    """sum_j (x_j - shift)^2; minimum 0 at x = shift. [B, D] -> [B]."""
    return _rowwise(particles, lambda x: (x - shift) ** 2, chunk)


def rastrigin(particles: torch.Tensor, shift: float = 0.0, a: float = 10.0, chunk: int = 1 << 20) -> torch.Tensor:
    """a*D + sum_j (z_j^2 - a*cos(2*pi*z_j)), z = x - shift; minimum 0 at x = shift. [B, D] -> [B]."""
    return _rowwise(particles, lambda x: (x - shift) ** 2 - a * torch.cos(2 * math.pi * (x - shift)) + a, chunk)


def neg_sphere(particles: torch.Tensor, shift: float = 0.0, chunk: int = 1 << 20) -> torch.Tensor:
    """-sphere (a utility: higher is better, maximum 0)."""
    return -sphere(particles, shift, chunk)


def neg_rastrigin(particles: torch.Tensor, shift: float = 0.0, a: float = 10.0, chunk: int = 1 << 20) -> torch.Tensor:
    """-rastrigin (a utility: higher is better, maximum 0)."""
    return -rastrigin(particles, shift, a, chunk)
