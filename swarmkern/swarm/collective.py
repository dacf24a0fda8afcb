"""The seam between the search and process groups.

A process holds the rows of a set of particles (`owned`); everything global goes through a
`Collective`: the scores of all particles (all-gather), the global best row (broadcast from the
process that owns it) and the global worst row. `LocalCollective` is the one-process identity; a
torch.distributed implementation (swarmkern/distributed.py) provides the same four methods.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Collective(Protocol):
    rank: int
    world_size: int

    def owned(self, n_particles: int) -> range:
        """The global particle indices whose rows this process holds (a contiguous block)."""

    def owner(self, particle: int, n_particles: int) -> int:
        """The rank that holds particle `particle`'s rows."""

    def all_gather_scores(self, local: torch.Tensor, n_particles: int) -> torch.Tensor:
        """Per-particle float64 values of the owned block [n_owned] -> all particles [P], in order."""

    def broadcast_row(self, row: torch.Tensor | None, owner: int, out: torch.Tensor | None) -> torch.Tensor:
        """A [D] row held by `owner` (row is None elsewhere) on every process. With out=None the
        result may alias `row` (one process: no copy); with `out` it is copied into `out`."""


def block_partition(n_particles: int, world_size: int, rank: int) -> range:
    """Contiguous blocks, the first n % world ranks one larger."""
    base, extra = divmod(n_particles, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class LocalCollective:
    """One process holds every particle: all operations are the identity."""
    rank = 0
    world_size = 1

    def owned(self, n_particles: int) -> range:
        return range(n_particles)

    def owner(self, particle: int, n_particles: int) -> int:
        return 0

    def all_gather_scores(self, local: torch.Tensor, n_particles: int) -> torch.Tensor:
        return local

    def broadcast_row(self, row: torch.Tensor | None, owner: int, out: torch.Tensor | None) -> torch.Tensor:
        assert row is not None
        if out is None:
            return row
        return out.copy_(row)
