"""Sparsification of stacked task tensors: magnitude trim (TIES), outlier trim (Breadcrumbs) and
the seeded random drop of DARE.

Every function takes the K experts' copies of one tensor stacked as rows of a [K, n] block and
treats each row on its own, as `peft.utils.merge_utils.prune` does for each task tensor.
"""
from __future__ import annotations

import torch

from ..ops.philox import UNIFORM_SCALE, philox4x32, split_seed

__all__ = ["magnitude_trim", "outlier_trim", "dare_keep_mask", "dare_drop", "DARE_STREAM"]

# Philox counter word 3 for DARE draws, so that DARE masks never coincide with the swarm's own streams
# (which put the iteration number there) for the same seed. ASCII "DARE".
DARE_STREAM = 0x44415245
_CHUNK = 1 << 20  # elements per Philox batch: bounds the int64 temporaries of the reference


def magnitude_trim(block: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = int(density * n) largest-magnitude entries of each row, zero the rest.

    block: [K, n]. Returns [K, n]. density >= 1 returns the block unchanged; same selection rule as
    `peft.utils.merge_utils.magnitude_based_pruning` (torch.topk on |x|).
    """
    if density >= 1:
        return block
    if density < 0:
        raise ValueError(f"density must be >= 0, got {density}")
    n = block.shape[1]
    k = int(density * n)
    if k == 0:
        return torch.zeros_like(block)
    # Fast path: the k-th largest magnitude as a threshold (quickselect). Where a row has duplicates at
    # the threshold the kept count differs from k and that row takes torch.topk, as PEFT does, so the
    # selection always equals PEFT's.
    mag = block.abs()
    thr = torch.kthvalue(mag, n - k + 1, dim=1, keepdim=True).values
    keep = mag >= thr
    out = torch.where(keep, block, torch.zeros((), dtype=block.dtype, device=block.device))
    for r in (keep.sum(dim=1) != k).nonzero().flatten().tolist():
        idx = torch.topk(mag[r], k=k, largest=True).indices
        out[r].zero_()
        out[r, idx] = block[r, idx]
    return out


def outlier_trim(block: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs' mask: per row, drop the top `gamma` fraction by magnitude (outliers) and the
    smallest entries, keeping int(density * n) entries just below the outliers.

    block: [K, n] -> [K, n]. With n_top = int(gamma * n) and n_keep = int(density * n), the kept entries
    are ranks n_top .. n_top + n_keep - 1 in descending |x| (n_top shrinks when the two do not fit).
    """
    if not 0 <= density <= 1 or not 0 <= gamma <= 1:
        raise ValueError(f"density and gamma must be in [0, 1], got {density}, {gamma}")
    n = block.shape[1]
    n_keep = int(density * n)
    n_top = min(int(gamma * n), n - n_keep)
    out = torch.zeros_like(block)
    if n_keep == 0:
        return out
    order = torch.argsort(block.abs(), dim=1, descending=True, stable=True)
    idx = order[:, n_top:n_top + n_keep]
    return out.scatter_(1, idx, block.gather(1, idx))


def dare_keep_mask(k: int, offset: int, numel: int, density: float, seed: int,
                   device: torch.device | str = "cpu", expert_offset: int = 0) -> torch.Tensor:
    """The DARE keep mask of experts expert_offset .. expert_offset + k - 1 over flat elements
    [offset, offset + numel): bool [k, numel].

    Element j of expert e is kept when u < density, u = (word >> 8) * 2^-24 and word is word (j mod 4) of
    Philox-4x32-10(key = seed, counter = (j // 4 mod 2^32, j // 4 >> 32, e, DARE_STREAM)). The mask depends
    only on (seed, expert, element index), never on how the buffer is chunked or on process count.
    """
    out = torch.empty((k, numel), dtype=torch.bool, device=device)
    key = split_seed(seed)
    experts = torch.arange(expert_offset, expert_offset + k, dtype=torch.int64, device=device).unsqueeze(1)
    threshold = torch.tensor(density, dtype=torch.float32)
    for start in range(0, numel, _CHUNK):
        stop = min(start + _CHUNK, numel)
        j0, j1 = offset + start, offset + stop
        groups = torch.arange(j0 >> 2, ((j1 - 1) >> 2) + 1, dtype=torch.int64, device=device).unsqueeze(0)
        words = philox4x32((groups & 0xFFFFFFFF, groups >> 32, experts, torch.tensor(DARE_STREAM)), key)
        words = words.reshape(k, -1)[:, (j0 & 3):(j0 & 3) + (stop - start)]
        u = (words >> 8).to(torch.float32) * UNIFORM_SCALE
        out[:, start:stop] = u < threshold
    return out


def dare_drop(block: torch.Tensor, keep: torch.Tensor, density: float, rescale: bool = True) -> torch.Tensor:
    """DARE's drop and rescale: block * keep (/ density when rescale). block, keep: [K, n] -> [K, n].
    Same arithmetic as `peft.utils.merge_utils.random_pruning` given the same mask."""
    if not 0 < density <= 1:
        raise ValueError(f"DARE density must be in (0, 1], got {density}")
    dropped = block * keep.to(block.dtype)
    return dropped / density if rescale else dropped
