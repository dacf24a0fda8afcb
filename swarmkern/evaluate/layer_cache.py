"""Cache of the frozen lower layers' outputs across evaluator calls, one entry per example.

The layers below the first adapted layer compute the same thing for every particle and every call on
the same examples (LoRA particles adapt only the layers above). The evaluator therefore keeps the hidden
states entering the first adapted layer and on a later call skips the lower layers: only the embeddings
(cheap) and the adapted layers run.

Entries are per example, not per batch: how examples are grouped into forward passes depends on the
particle count (micro_batch // particles per pass), so a baseline with 1 particle or an ensemble with 3
after a 12-particle search would miss every batch-keyed entry. An example's real positions do not depend
on its batch (pads are masked, positions count real tokens only), so its entry holds just those, [L, H],
and a batch is rebuilt from its examples' entries with zeros at the pads, wherever its padding puts them.

An entry's key is the example's content: its real token ids and how many of them come before the
positions the states cover (a continuation pass covers only the continuation, after its context), hashed;
nothing is served to other inputs. The cache lives in one evaluator (one model, one dtype, one device).
A batch is served only when every example is cached; otherwise its lower layers run and every example is
recorded. Memory is bounded by `limit_bytes` (least recently used entries are evicted first; an entry
larger than the limit is not kept). Full-weight particles change the lower layers, so their evaluator has
no cache.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LowerLayerCache", "BatchKeys", "DEFAULT_LIMIT_BYTES", "SkipLayer"]

DEFAULT_LIMIT_BYTES = 512 * 2**20  # 512 MiB: the demo's 200 questions x ~30 tokens x 576 (fp32) take ~14 MB


@dataclass
class BatchKeys:
    """The entry keys of a batch's n examples and where their real tokens are among the T_h positions the
    hidden states [n, T_h, H] cover: real [n, T_h] bool."""
    keys: list[bytes]
    real: torch.Tensor


class LowerLayerCache:
    """LRU map: example key -> hidden states [L, H] at the example's L real positions, entering the first
    adapted layer. Counters: `hits` / `misses` count batches (served from the cache / lower layers run),
    `evictions` count entries (examples)."""

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.limit_bytes = int(limit_bytes)
        self._data: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def keys(ids: torch.Tensor, mask: torch.Tensor, covered: int) -> BatchKeys:
        """Keys of the n examples of ids, mask [n, T], whose hidden states cover the last `covered` columns:
        a digest of each row's real ids and of how many of them lie before those columns."""
        ids_np = ids.detach().to("cpu", torch.int64).numpy()
        real_np = mask.detach().cpu().numpy() != 0
        before = real_np[:, :real_np.shape[1] - covered].sum(1)
        keys = []
        for row, real, b in zip(ids_np, real_np, before.tolist()):
            h = hashlib.blake2b(int(b).to_bytes(8, "little"), digest_size=20)
            h.update(row[real].tobytes())
            keys.append(h.digest())
        return BatchKeys(keys, mask[:, mask.shape[1] - covered:] != 0)

    def get(self, *batches: BatchKeys) -> list[torch.Tensor] | None:
        """Each batch's hidden states [n, T_h, H] (zeros at pads) when every example of every batch is
        cached, else None: batches asked together are served together (a context prefill and its
        continuation pass) or not at all, and count as hits or misses together."""
        if not all(k in self._data for b in batches for k in b.keys):
            self.misses += len(batches)
            return None
        self.hits += len(batches)
        out = []
        for b in batches:
            entries = []
            for k in b.keys:
                self._data.move_to_end(k)
                entries.append(self._data[k])
            hidden = entries[0].new_zeros(*b.real.shape, entries[0].shape[-1])
            hidden[b.real] = torch.cat(entries)  # row-major: example i's real positions in order
            out.append(hidden)
        return out

    def put(self, batch: BatchKeys, hidden: torch.Tensor) -> None:
        """Record every example of hidden [n, T_h, H]: its real positions, cloned (the padded batch is
        not kept alive)."""
        lengths = batch.real.sum(1).tolist()
        for k, h in zip(batch.keys, hidden[batch.real].split(lengths)):
            size = h.numel() * h.element_size()
            if k in self._data:
                self._data.move_to_end(k)
            elif size <= self.limit_bytes:
                self._data[k] = h.clone()
                self.bytes += size
        self._shrink()

    def resize(self, limit_bytes: int) -> None:
        self.limit_bytes = int(limit_bytes)
        self._shrink()

    def _shrink(self) -> None:
        while self.bytes > self.limit_bytes and self._data:
            _, old = self._data.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
            self.evictions += 1

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def state(self) -> list[tuple[bytes, torch.Tensor]]:
        """The entries in LRU order (oldest first), for a search's snapshot: a resumed search must see
        the entries the uninterrupted one saw (recomputed in other batches they may differ in the last bit)."""
        return [(k, v.cpu()) for k, v in self._data.items()]

    def load_state(self, entries: list[tuple[bytes, torch.Tensor]], device: torch.device | str = "cpu") -> None:
        self.clear()
        for k, v in entries:
            self._data[k] = v.to(device)
            self.bytes += v.numel() * v.element_size()
        self._shrink()


class SkipLayer(nn.Module):
    """Stands in for lower decoder layer `layer_idx` while cached states are served: returns its input
    hidden states unchanged (as a tensor, or a tuple of `tuple_len` like the layer returned). Given a KV
    cache it appends a placeholder of one [B, 1, T, 1] zero per step, so the cache's length (which the
    decoder reads from its first layer to build masks and positions) stays right; the upper layers'
    entries are real. Attributes the decoder reads from its layers come from the real layer."""

    def __init__(self, layer: nn.Module, layer_idx: int, tuple_len: int | None):
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: no parameters are registered twice
        self.layer_idx = layer_idx
        self._tuple_len = tuple_len

    def forward(self, *args, **kwargs):
        from transformers.cache_utils import Cache

        h = args[0] if args else kwargs["hidden_states"]
        for v in (*args[1:], *kwargs.values()):
            if isinstance(v, Cache):
                placeholder = h.new_zeros(h.shape[0], 1, h.shape[1], 1)
                v.update(placeholder, placeholder, self.layer_idx)
                break
        return h if self._tuple_len is None else (h,) + (None,) * (self._tuple_len - 1)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)
