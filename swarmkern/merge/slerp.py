"""Spherical linear interpolation, per tensor: pairwise (SLERP, as mergekit) and multi-model (the
weighted spherical mean of K directions, which reduces to pairwise SLERP for K = 2 and equal norms)."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import PrivateAttr

from .base import MergeContext, StaticMerge
from .registry import register_method
from .segments import Segment
from .weights import expert_weights

__all__ = ["slerp", "spherical_mean", "Slerp", "MultiSlerp"]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """SLERP from a (t=0) to b (t=1) over flattened tensors a, b [n] -> [n] (fp32 math, fp64 angles).
    The angle comes from the normalised vectors; the result s0*a + s1*b combines the originals, so it
    interpolates magnitudes too. Nearly (anti)parallel or zero vectors fall back to linear interpolation."""
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if na < eps or nb < eps:
        return torch.lerp(a.float(), b.float(), t)
    dot = torch.dot(a64 / na, b64 / nb).clamp(-1.0, 1.0)
    if dot.abs() > dot_threshold:
        return torch.lerp(a.float(), b.float(), t)
    theta = torch.arccos(dot)
    s0 = torch.sin((1 - t) * theta) / torch.sin(theta)
    s1 = torch.sin(t * theta) / torch.sin(theta)
    return (s0 * a64 + s1 * b64).float()


def spherical_mean(block: torch.Tensor, weights: torch.Tensor, *, iters: int = 100, tol: float = 1e-10,
                   eps: float = 1e-8) -> torch.Tensor:
    """Multi-model SLERP: the weighted Fréchet (Karcher) mean of the rows' directions on the unit sphere,
    scaled by the weighted mean of their norms. block [K, n], weights [K] (normalised to sum 1) -> [n].

    Fixed-point iteration of the exponential / log maps from the normalised Euclidean mean. For K = 2,
    weights (1 - t, t) and equal norms it equals slerp(block[0], block[1], t). Rows of zero norm are
    ignored for the direction; if every row is zero the result is zero.
    """
    x = block.double()
    w = weights.double().to(x.device)
    if float(w.sum()) == 0:
        raise ValueError("spherical_mean: the weights sum to zero")
    w = w / w.sum()
    norms = x.norm(dim=1)
    live = norms > eps
    if not bool(live.any()):
        return torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    u, wl = x[live] / norms[live].unsqueeze(1), w[live] / w[live].sum()
    m = (wl.unsqueeze(1) * u).sum(0)
    if float(m.norm()) < eps:  # antipodal directions: no unique mean; start from the heaviest one
        m = u[int(torch.argmax(wl))].clone()
    m = m / m.norm()
    for _ in range(iters):
        cos = (u @ m).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        perp = u - cos.unsqueeze(1) * m.unsqueeze(0)
        pn = perp.norm(dim=1)
        scale = torch.where(pn > 1e-15, theta / pn.clamp(min=1e-300), torch.zeros_like(pn))
        step = (wl * scale).unsqueeze(1).mul(perp).sum(0)  # weighted mean of the log maps at m
        s = float(step.norm())
        if s < tol:
            break
        m = torch.cos(torch.tensor(s, dtype=torch.float64)) * m + torch.sin(torch.tensor(s, dtype=torch.float64)) * step / s
        m = m / m.norm()
    return (m * (w * norms).sum()).float()


def _expert_index(ref: int | str, names: list[str], where: str) -> int:
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise ValueError(f"{where}: expert index {ref} out of range 0..{len(names) - 1}")
        return ref
    if ref not in names:
        raise ValueError(f"{where}: no expert named {ref!r}; experts: {', '.join(names)}")
    return names.index(ref)


@register_method("slerp")
class Slerp(StaticMerge):
    """Pairwise SLERP of two experts per tensor at `t` (0: the first, 1: the second). `experts`: two
    names or indices; default the two best by dev utility (K evaluations), best first."""
    type: str = "slerp"
    experts: list[int | str] | None = None
    t: float = 0.5
    _pair: list[int] | None = PrivateAttr(default=None)

    def prepare(self, ctx: MergeContext) -> dict[str, Any]:
        if self.experts is None:
            order = torch.argsort(ctx.expert_scores(), descending=True).tolist()
            if len(order) < 2:
                raise ValueError("slerp needs at least two experts")
            pair = order[:2]
        else:
            if len(self.experts) != 2:
                raise ValueError(f"{self.name}.experts: expected two experts, got {len(self.experts)}")
            pair = [_expert_index(e, ctx.names, f"{self.name}.experts") for e in self.experts]
        self._pair = pair
        return {"experts": [ctx.names[i] for i in pair], "t": self.t}

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        i, j = self._pair
        return slerp(block[i], block[j], self.t)


@register_method("multislerp")
class MultiSlerp(StaticMerge):
    """Multi-model SLERP: per tensor, the weighted spherical mean of all K experts (`weights`,
    default uniform)."""
    type: str = "multislerp"
    weights: list[float] | None = None

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        w = expert_weights(self.weights, ctx.K, default=1.0, where=f"{self.name}.weights")
        return spherical_mean(block, w)
