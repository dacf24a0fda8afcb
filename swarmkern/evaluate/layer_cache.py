"""Cache of the frozen lower layers' outputs across evaluator calls.

The layers below the first adapted layer compute the same thing for every particle and every call on
the same examples (LoRA particles adapt only the layers above). The evaluator therefore keeps the hidden
states entering the first adapted layer, per batch of examples, and on a later call with the same batch
skips the lower layers: only the embeddings (cheap) and the adapted layers run.

Keys are the batch's content (token ids and mask, hashed), so a dataset split, a request set or a
batching of them is its own entry and nothing can be served to the wrong inputs; the cache lives in one
evaluator (one model, one dtype, one device). Memory is bounded by `limit_bytes` (least recently used
entries are evicted first; an entry larger than the limit is not kept). Full-weight particles change the
lower layers, so their evaluator has no cache.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["LowerLayerCache", "DEFAULT_LIMIT_BYTES", "SkipLayer"]

DEFAULT_LIMIT_BYTES = 512 * 2**20  # 512 MiB: the demo's 200 questions x ~30 tokens x 576 (fp32) take ~14 MB


class LowerLayerCache:
    """LRU map: batch key -> hidden states [n, T, H] entering the first adapted layer."""

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.limit_bytes = int(limit_bytes)
        self._data: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(ids: torch.Tensor, mask: torch.Tensor) -> bytes:
        """A digest of the batch's token ids and mask (shapes included)."""
        h = hashlib.blake2b(digest_size=20)
        for t in (ids, mask):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        return h.digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: bytes, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if size > self.limit_bytes or key in self._data:
            return
        self._data[key] = hidden
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
