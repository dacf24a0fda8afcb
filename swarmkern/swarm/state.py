"""The swarm's state: this process's rows of x, v, pbest, the global worst row, and the global
bookkeeping (identical on every process: it is computed from all-gathered scores).

gbest is never stored on its own on one process: it is a view of the owning particle's pbest row
(with several processes, a buffer filled by broadcast from the owner).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from swarmkern.streaming import block_columns, column_blocks, mapped_tensor

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
    """Rows `owned` (global particle indices) of x, v, pbest: [n_owned, D]; gworst: [D].

    storage "memory": ordinary tensors on `device`. storage "mmap": every buffer is a MAP_SHARED
    mapping of a file in `directory` (`<name>-rank<r>.bin`, raw row-major numbers; CPU only), so the
    swarm may be larger than RAM; the search then walks the buffers in column blocks of `block`
    columns (`column_blocks`) and never makes a full-size temporary. The mapped files are the live
    state, overwritten in place every iteration: they are not checkpoints (after a crash in the middle
    of an iteration they hold a mix of two iterations); resume overwrites them from a snapshot.
    """

    def __init__(self, owned: range, dim: int, dtype: torch.dtype, device: torch.device | str, *,
                 storage: str = "memory", directory: Path | None = None, rank: int = 0, block: int | None = None,
                 fresh: bool = True):
        n = len(owned)
        self.owned = owned
        self.dim = dim
        self.storage = storage
        self.directory = directory
        self.rank = rank
        self.fresh = fresh  # mmap: start from new (all-zero) files rather than reuse the existing ones
        if storage == "mmap":
            if torch.device(device).type != "cpu":
                raise ValueError(f"swarm.storage: mmap keeps the buffers in host files; device {device} needs storage: memory")
            if directory is None:
                raise ValueError("swarm.storage: mmap needs an output directory for the mapped files")
            self.block = block or block_columns(max(1, n), torch.empty(0, dtype=dtype).element_size())
        else:
            self.block = block
        self.x = self._buffer("x", (n, dim), dtype, device)
        self.v = self._buffer("v", (n, dim), dtype, device)
        self.pbest = self._buffer("pbest", (n, dim), dtype, device)
        self.gworst = self._buffer("gworst", (dim,), dtype, device)
        self.gbest_buffer: torch.Tensor | None = None  # only with several processes (make_gbest_buffer)
        self.gbest: torch.Tensor = self.gworst          # re-pointed by the search after the first evaluation

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        if self.storage == "mmap":
            path = self.directory / f"{name}-rank{self.rank}.bin"
            if self.fresh:
                path.unlink(missing_ok=True)
            return mapped_tensor(path, shape, dtype, create=True)
        return torch.zeros(shape, dtype=dtype, device=device) if name == "v" else torch.empty(shape, dtype=dtype, device=device)

    def make_gbest_buffer(self) -> torch.Tensor:
        if self.gbest_buffer is None:
            self.gbest_buffer = self._buffer("gbest", (self.dim,), self.x.dtype, self.x.device)
        return self.gbest_buffer

    def blocks(self) -> Iterator[tuple[int, int]]:
        """The column ranges the search walks the buffers in (one range for storage: memory)."""
        return column_blocks(self.dim, self.block)

    def local(self, particle: int) -> int | None:
        """Row of global particle `particle` in this process's buffers, or None."""
        return particle - self.owned.start if particle in self.owned else None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"x": self.x, "v": self.v, "pbest": self.pbest, "gworst": self.gworst}
