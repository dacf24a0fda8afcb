"""The pure-PyTorch reference of every swarm op: the spec that each fused backend must reproduce.

Math is fp32 whatever the storage dtype (fp32, bf16, fp16); results are rounded to the storage dtype
once, on store. The order of operations below is part of the spec: fp32 backends built with
-ffp-contract=off reproduce it bit for bit.
"""
from __future__ import annotations

import torch

from .philox import element_uniforms


def pso_step_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
              gworst: torch.Tensor, coef: torch.Tensor, step: float) -> None:
    """In place, for every particle i (rows of x, v, pbest: [P, D]; gbest, gworst: [D]; coef: [P, 4]):
        v_i <- c_v*v_i + c_p*(pbest_i - x_i) + c_g*(gbest - x_i) + c_w*(x_i - gworst)
        x_i <- x_i + step * v_i          (with the fp32 v_i, before it is rounded for storage)
    """
    xf, vf, pf = x.float(), v.float(), pbest.float()
    gf, wf = gbest.float().unsqueeze(0), gworst.float().unsqueeze(0)
    c = coef.float()
    c_v, c_p, c_g, c_w = (c[:, i:i + 1] for i in range(4))
    v_new = c_v * vf + c_p * (pf - xf) + c_g * (gf - xf) + c_w * (xf - wf)
    x_new = xf + torch.tensor(step, dtype=torch.float32) * v_new
    v.copy_(v_new)
    x.copy_(x_new)


def pso_step_random_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
                     gworst: torch.Tensor, phi: torch.Tensor, step: float, seed: int, iteration: int,
                     particle_offset: int = 0, r_lo: float = 0.0, r_hi: float = 1.0,
                     normalize: bool = True, random_inertia: bool = True) -> None:
    """Per-element random coefficients (classic PSO). For particle i (global index
    particle_offset + i) and element j, Philox-4x32-10 with key = seed and counter
    (j mod 2^32, j >> 32, particle, iteration) gives four uniforms u_0..u_3 in [0, 1);
    r_k = r_lo + (r_hi - r_lo) * u_k, and with phi [P, 4] = (phi_v, phi_p, phi_g, phi_w):
        a, b, c, d = r_0*phi_v, r_1*phi_p, r_2*phi_g, r_3*phi_w   (a = phi_v without random_inertia:
                                                                the classic constant inertia weight)
        n = a*v + b*(pbest - x) + c*(gbest - x) + d*(x - gworst)
        v <- n / (a + b + c + d)  if normalize (0 where the sum is 0), else n
        x <- x + step * v
    """
    P, D = x.shape
    particles = torch.arange(particle_offset, particle_offset + P, dtype=torch.int64, device=x.device).unsqueeze(1)
    elements = torch.arange(D, dtype=torch.int64, device=x.device).unsqueeze(0)
    u = element_uniforms(seed, iteration, particles, elements)  # [P, D, 4]
    lo = torch.tensor(r_lo, dtype=torch.float32)
    span = torch.tensor(r_hi - r_lo, dtype=torch.float32)
    r = lo + span * u
    ph = phi.float().unsqueeze(1)  # [P, 1, 4]
    a, b, c, d = (r[..., k] * ph[..., k] for k in range(4))
    if not random_inertia:  # u_0 is still drawn (the streams do not depend on the flag), just unused
        a = ph[..., 0].expand_as(b)
    xf, vf, pf = x.float(), v.float(), pbest.float()
    gf, wf = gbest.float().unsqueeze(0), gworst.float().unsqueeze(0)
    n = a * vf + b * (pf - xf) + c * (gf - xf) + d * (xf - wf)
    if normalize:
        total = a + b + c + d
        n = torch.where(total != 0, n / torch.where(total != 0, total, torch.ones_like(total)), torch.zeros_like(n))
    x_new = xf + torch.tensor(step, dtype=torch.float32) * n
    v.copy_(n)
    x.copy_(x_new)


def combine(src: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[m] = sum_k weights[m, k] * src[k], accumulated in fp32 in the order k = 0..K-1.
    src [K, D], weights [M, K] -> out [M, D] in src's dtype (or out's, when given)."""
    K, D = src.shape
    w = weights.float()
    acc = torch.zeros((w.shape[0], D), dtype=torch.float32, device=src.device)
    for k in range(K):
        acc = acc + w[:, k:k + 1] * src[k].float().unsqueeze(0)
    if out is None:
        return acc.to(src.dtype)
    out.copy_(acc)
    return out
