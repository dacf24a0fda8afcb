"""The caches a utility keeps between calls, named so that a search can save and restore them.

A model utility keeps two: its prediction memo (memo.py: a particle's predictions by its content) and
its evaluator's lower-layer cache (evaluate/layer_cache.py: an example's frozen-layer outputs). Both
serve values computed in some earlier batch. On a CPU (and in bf16 anywhere) a value computed in
another batch shape can differ in its last bits, so a resumed search that started with empty caches
would recompute them in other batches and could take another path. The search therefore saves these
caches with each snapshot and, when it has them, resumes from the snapshot by re-evaluating the
iterations after it (swarm/search.py) instead of replaying them.

    caches = collect({"dev": dev_utility, "test": test_utility})   # {name: cache}, enabled ones only
    saved = {name: c.state() for name, c in caches.items()}
    restore(caches, saved)
"""
from __future__ import annotations

from typing import Any, Mapping

from .memo import PredictionMemo

__all__ = ["collect", "restore"]


def collect(utilities: Mapping[str, Any]) -> dict[str, Any]:
    """The enabled caches of the utilities (role -> utility; None skipped), each once, by a name that
    the same utilities built again in another process give again."""
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(u: Any, where: str) -> None:
        memo = getattr(u, "memo", None)
        if isinstance(memo, PredictionMemo) and memo.max_rows > 0 and id(memo) not in seen:
            seen.add(id(memo))
            found[f"memo/{where}"] = memo
        for i, ev in enumerate(getattr(u, "evaluators", None) or ()):
            cache = getattr(ev, "layer_cache", None)
            if cache is not None and cache.limit_bytes > 0 and id(cache) not in seen:
                seen.add(id(cache))
                found[f"layers/{where}/{i}"] = _OnDevice(cache, ev.device)
        for name, sub in (getattr(u, "scorers", None) or {}).items():
            walk(sub, f"{where}.{name}")

    for role, u in utilities.items():
        if u is not None:
            walk(u, role)
    return found


def restore(caches: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """Load saved states into the caches of the same names (a lower-layer cache onto its evaluator's
    device); a cache with no saved state is emptied, so that both runs start from the same state."""
    for name, cache in caches.items():
        cache.load_state(saved.get(name, []))


class _OnDevice:
    """A lower-layer cache with its evaluator's device: saved on the CPU, restored onto the device."""

    def __init__(self, cache: Any, device: Any):
        self.cache, self.device = cache, device

    def state(self) -> Any:
        return self.cache.state()

    def load_state(self, entries: Any) -> None:
        self.cache.load_state(entries, device=self.device)
