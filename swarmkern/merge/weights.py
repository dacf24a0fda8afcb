"""Per-expert weight lists from configs."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["expert_weights"]


def expert_weights(values: Sequence[float] | None, k: int, *, default: float, where: str) -> torch.Tensor:
    """values (one per expert) or `default` for each of k experts -> float32 [k]; a wrong length is an
    error naming the config field `where`."""
    if values is None:
        return torch.full((k,), float(default), dtype=torch.float32)
    if len(values) != k:
        raise ValueError(f"{where}: expected {k} weights (one per expert), got {len(values)}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)
