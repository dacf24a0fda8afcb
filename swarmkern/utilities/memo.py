"""Per-particle predictions remembered by the particle's content.

A run scores the same particle more than once: the swarm scores the experts in its first round, the
end-of-search reports predict the experts, the personal bests and the global best again, and
`swarmkern compare` then scores the experts once more for best_single, greedy soup and the prediction
ensemble. Each of those is a full pass of the model over the split. The built-in utilities therefore
keep each particle's predictions under a digest of its weights (bytes, dtype and length) and serve a
particle seen before without running the model.

Why this is safe: a utility's predictions are a function of the particle's weights and the split.
Why the content and not the row's index: rows move between buffers (x, personal bests, the global best,
a baseline's merged row) and only their content says they are the same particle. Bounded by a number
of rows (least recently used evicted first); `memo_rows: 0` in a utility's config turns it off.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import xxhash

from .protocol import Predictions

__all__ = ["PredictionMemo", "DEFAULT_MEMO_ROWS", "row_digest"]

DEFAULT_MEMO_ROWS = 256  # a multiple-choice row of 500 four-choice questions is 16 KB of predictions


def row_digest(row: torch.Tensor) -> bytes:
    """A digest of one particle's weights: dtype, length and bytes. XXH3-128 (not a cryptographic hash:
    nobody chooses the particles to collide, and an accidental collision has odds of 2^-128) runs at
    memory speed: on a full-weight 135M fp32 particle it is 0.2% of one evaluation where blake2b was 3%
    (benchmarks/results/memo_digest_cpu.md)."""
    h = xxhash.xxh3_128(f"{row.dtype}:{row.numel()}:".encode())
    h.update(row.detach().contiguous().cpu().view(torch.uint8).numpy().data)
    return h.digest()


class PredictionMemo:
    """LRU map: particle digest -> that particle's one-row Predictions."""

    def __init__(self, max_rows: int = DEFAULT_MEMO_ROWS):
        self.max_rows = int(max_rows)
        self._data: OrderedDict[bytes, Predictions] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def predict(self, particles: torch.Tensor, predict: Callable[[torch.Tensor], Predictions]) -> Predictions:
        """predict(particles), running `predict` only on the rows not seen before (each distinct row
        once, in one call); the result lists every row of `particles` in order."""
        if self.max_rows <= 0:
            return predict(particles)
        keys = [row_digest(r) for r in particles]
        known: dict[bytes, Predictions] = {}
        missing: dict[bytes, int] = {}  # digest -> first row with it
        for i, k in enumerate(keys):
            hit = self._data.get(k)
            if hit is not None:
                self._data.move_to_end(k)
                known[k] = hit
            elif k not in missing:
                missing[k] = i
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = list(missing.values())
            fresh = predict(particles if len(rows) == len(keys) else particles[rows])
            if len(fresh) != len(rows):
                raise ValueError(f"predictions hold {len(fresh)} particles, {len(rows)} were asked")
            for j, k in enumerate(missing):
                known[k] = fresh.take([j])
                self._put(k, known[k])
            if len(rows) == len(keys):  # nothing served from the memo: the fresh result is the answer
                return fresh
        return type(known[keys[0]]).join([known[k] for k in keys])

    def state(self) -> list[tuple[bytes, Predictions]]:
        """The entries in LRU order (oldest first), for a search's snapshot (see utilities/caches.py)."""
        return list(self._data.items())

    def load_state(self, entries: list[tuple[bytes, Predictions]]) -> None:
        self._data = OrderedDict(entries)
        while len(self._data) > self.max_rows:
            self._data.popitem(last=False)

    def _put(self, key: bytes, preds: Predictions) -> None:
        self._data[key] = preds
        while len(self._data) > self.max_rows:
            self._data.popitem(last=False)
