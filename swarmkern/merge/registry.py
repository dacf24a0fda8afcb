"""Registry of composition methods. A method is one small module:

    @register_method("my_merge")
    class MyMerge(StaticMerge):                 # or MergeMethod for anything that is not per tensor
        strength: float = 0.5                   # fields validate the YAML entry {type: my_merge, ...}
        def merge_block(self, block, segment, ctx):   # block [K, n] -> [n]
            return self.strength * block.mean(0)

`parse_method_config({"type": ..., ...})` validates one entry of `compare.methods` with one-line errors.
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from swarmkern.configfile import first_error

__all__ = ["METHODS", "register_method", "parse_method_config", "available_methods"]

METHODS: dict[str, type] = {}

# Modules that register the built-in methods; imported on first use (cheap, no heavy deps at import).
_BUILTIN = ("soup", "task_arithmetic", "ties", "dare", "breadcrumbs", "slerp", "best_single",
            "greedy_soup", "lorahub", "evolutionary", "ensemble")


def register_method(name: str):
    def deco(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = cls
        return cls
    return deco


def _load_builtin() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"swarmkern.merge.{mod}")


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


def parse_method_config(spec: Any, where: str = "compare.methods"):
    """A YAML entry -> a validated method config. spec: a mapping with `type`, or a bare method name."""
    from .base import MergeMethod
    if isinstance(spec, MergeMethod):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"{where}: expected a method name or a mapping with 'type', got {spec!r}")
    _load_builtin()
    kind = spec["type"]
    if kind not in METHODS:
        raise ValueError(f"{where}.type: unknown method {kind!r}; known: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[kind].model_validate(spec)
    except ValidationError as err:
        raise ValueError(first_error(err, where)) from None
