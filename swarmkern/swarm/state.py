"""The swarm's state: this process's rows of x, v, pbest, the global worst row, and the global
bookkeeping (identical on every process: it is computed from all-gathered scores).

gbest is never stored on its own on one process: it is a view of the owning particle's pbest row
(with several processes, a buffer filled by broadcast from the owner).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

STATE_VERSION = 1


@dataclass
class Bookkeeping:
    """Global, per-particle and per-run counters. Scores are float64; -inf marks non-finite utilities."""
    n_particles: int
    iteration: int = 0
    step: float = 1.0
    u_now: list[float] = field(default_factory=list)        # last score of each particle (carried when skipped)
    u_pbest: list[float] = field(default_factory=list)      # utility of each personal best
    since_best: list[int] = field(default_factory=list)     # evaluations since pbest was found, that one included
    gbest_index: int = 0
    gworst_index: int = 0                                   # the particle whose location gworst copied
    u_worst: float = float("inf")
    g_history: list[float] = field(default_factory=list)    # gbest utility after each iteration (0 = initial)
    origins: list[dict[str, Any]] = field(default_factory=list)
    initial_utilities: list[float] = field(default_factory=list)
    initial_test_utilities: list[float] | None = None
    nonfinite_total: int = 0      # utilities that came back NaN/inf (counted as -inf)
    nonfinite_rows_total: int = 0  # evaluated locations that were themselves NaN/inf
    restarts_total: int = 0
    evaluations_total: int = 0
    skipped_total: int = 0
    wall_seconds: float = 0.0
    history_bytes: int = 0
    stop_reason: str | None = None

    @property
    def u_gbest(self) -> float:
        return self.u_pbest[self.gbest_index]

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Bookkeeping":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class SwarmBuffers:
    """Rows `owned` (global particle indices) of x, v, pbest: [n_owned, D]; gworst: [D]."""

    def __init__(self, owned: range, dim: int, dtype: torch.dtype, device: torch.device | str):
        n = len(owned)
        self.owned = owned
        self.x = torch.empty(n, dim, dtype=dtype, device=device)
        self.v = torch.zeros(n, dim, dtype=dtype, device=device)
        self.pbest = torch.empty(n, dim, dtype=dtype, device=device)
        self.gworst = torch.empty(dim, dtype=dtype, device=device)
        self.gbest_buffer: torch.Tensor | None = None  # only with several processes
        self.gbest: torch.Tensor = self.gworst          # re-pointed by the search after the first evaluation

    def local(self, particle: int) -> int | None:
        """Row of global particle `particle` in this process's buffers, or None."""
        return particle - self.owned.start if particle in self.owned else None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "v": self.v, "pbest": self.pbest, "gworst": self.gworst}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, buf in self.tensors().items():
            src = tensors[name]
            if src.shape != buf.shape or src.dtype != buf.dtype:
                raise ValueError(f"checkpoint tensor {name!r} is {list(src.shape)} {src.dtype}, "
                                 f"expected {list(buf.shape)} {buf.dtype}")
            buf.copy_(src)
