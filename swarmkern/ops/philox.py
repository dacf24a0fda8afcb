"""Philox-4x32-10 counter-based random numbers in pure PyTorch (the spec for every backend).

All arithmetic is done on int64 tensors that hold uint32 values, splitting each 32x32-bit product
into 16-bit halves so that nothing overflows int64. The same (key, counter) gives the same four
32-bit words here, in the C++/CUDA kernels (swarmkern/philox.h) and in Triton (tl.philox).
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 round multipliers (Random123)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
UNIFORM_SCALE = 2.0 ** -24  # uniform = (word >> 8) * 2^-24, exact in fp32, in [0, 1)


def _mulhilo(m: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * c, m a uint32 constant, c uint32 in int64."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    c_hi, c_lo = c >> 16, c & 0xFFFF
    low = m_lo * c_lo
    mid = m_hi * c_lo + m_lo * c_hi
    lo_full = low + ((mid & 0xFFFF) << 16)
    lo = lo_full & _MASK32
    hi = (m_hi * c_hi + (mid >> 16) + (lo_full >> 32)) & _MASK32
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...] | torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox-4x32-10. counter: four broadcastable int64 tensors of uint32 values (or a [..., 4]
    tensor); key: two uint32 ints. Returns an int64 tensor [..., 4] of uint32 words."""
    if isinstance(counter, torch.Tensor):
        counter = tuple(counter[..., i] for i in range(4))
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in counter))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def split_seed(seed: int) -> tuple[int, int]:
    """A 64-bit seed as the Philox key (lo, hi)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & _MASK32, seed >> 32


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64 tensor) -> float32 uniforms in [0, 1) with 24 random bits."""
    return (words >> 8).to(torch.float32) * UNIFORM_SCALE


def element_uniforms(seed: int, iteration: int, particles: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    """The per-element stream of pso_step_random_: counter (elem lo, elem hi, particle, iteration),
    key = seed. particles [P, 1] and elements [1, D] int64 broadcast to [P, D]; returns [P, D, 4]."""
    counter = (elements & _MASK32, elements >> 32, particles & _MASK32, torch.as_tensor(int(iteration) & _MASK32))
    return uniform_from_words(philox4x32(counter, split_seed(seed)))
