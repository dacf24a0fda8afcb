"""Registry of utilities (objectives). A utility type is a pydantic config class plus a builder:

    @register_utility("my_metric")
    class MyMetric(UtilityConfig):
        threshold: float = 0.5                      # fields validate the YAML `utility:` section
        def build(self, pool, split) -> ScoreFn:    # one scorer per split ("dev" or "test")
            return lambda particles: ...            # particles: [B, D] rows -> [B] scores

`build_utility(spec, pool)` validates a YAML mapping ({"type": name, ...}) and returns a BuiltUtility
with .dev (used by the search) and .test (used only for the report; None when no test split).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from swarmkern.configfile import first_error

ScoreFn = Callable[[torch.Tensor], "torch.Tensor | list[float]"]

UTILITIES: dict[str, type["UtilityConfig"]] = {}


class UtilityConfig(BaseModel):
    """Base of every utility config: unknown fields are errors."""
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    type: str
    splits: ClassVar[tuple[str, ...]] = ("dev", "test")

    def has_split(self, split: str) -> bool:
        return split == "dev"

    def build(self, pool: Any, split: str) -> ScoreFn:  # pragma: no cover - abstract
        raise NotImplementedError


def register_utility(name: str):
    def deco(cls: type[UtilityConfig]) -> type[UtilityConfig]:
        if name in UTILITIES:
            raise ValueError(f"utility type {name!r} is already registered")
        UTILITIES[name] = cls
        return cls
    return deco


@dataclass
class BuiltUtility:
    config: UtilityConfig
    dev: ScoreFn
    test: ScoreFn | None = None
    finalizers: list[Callable[[Path], None]] = field(default_factory=list)

    def finalize(self, output_dir: Path) -> None:
        """Let utilities write their own outputs (e.g. a Pareto front) at the end of a run."""
        for fn in self.finalizers:
            fn(Path(output_dir))


def parse_utility_config(spec: dict | UtilityConfig) -> UtilityConfig:
    if isinstance(spec, UtilityConfig):
        return spec
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"utility: expected a mapping with a 'type' field (one of {sorted(UTILITIES)}), got {spec!r}")
    _load_builtin_utilities()
    kind = spec["type"]
    if kind not in UTILITIES:
        raise ValueError(f"utility.type: unknown utility {kind!r}; known: {', '.join(sorted(UTILITIES))}")
    try:
        return UTILITIES[kind].model_validate(spec)
    except ValidationError as err:
        raise ValueError(first_error(err, "utility")) from None


def build_utility(spec: dict | UtilityConfig, pool: Any) -> BuiltUtility:
    cfg = parse_utility_config(spec)
    dev = cfg.build(pool, "dev")
    test = cfg.build(pool, "test") if cfg.has_split("test") else None
    built = BuiltUtility(cfg, dev, test)
    for fn in (dev, test):
        fin = getattr(fn, "finalize", None)
        if callable(fin):
            built.finalizers.append(fin)
    return built


def _load_builtin_utilities() -> None:
    """Import the modules that register the built-in utility types (cheap; heavy deps load lazily)."""
    importlib.import_module("swarmkern.utilities.builtin")


@register_utility("python")
class PythonUtility(UtilityConfig):
    """Any Python callable: `function: "package.module:name"`, called as fn(particles, **kwargs)
    (plus split=... when it takes a `split` argument) and returning one score per particle."""
    type: str = "python"
    function: str
    kwargs: dict[str, Any] = {}
    test_kwargs: dict[str, Any] | None = None

    def has_split(self, split: str) -> bool:
        return split == "dev" or self.test_kwargs is not None or self._takes_split()

    def _resolve(self) -> Callable:
        module, _, name = self.function.partition(":")
        if not name:
            raise ValueError(f"utility.function: expected 'module:name', got {self.function!r}")
        try:
            obj = importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"utility.function: cannot import {module!r}: {err}") from None
        for part in name.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"utility.function: {module!r} has no attribute {name!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ValueError(f"utility.function: {self.function!r} is not callable")
        return obj

    def _takes_split(self) -> bool:
        try:
            return "split" in inspect.signature(self._resolve()).parameters
        except (TypeError, ValueError):
            return False

    def build(self, pool: Any, split: str) -> ScoreFn:
        fn = self._resolve()
        kwargs = dict(self.kwargs if split == "dev" or self.test_kwargs is None else self.test_kwargs)
        if self._takes_split():
            kwargs["split"] = split
        def score(particles):
            return fn(particles, **kwargs)
        # a callable object may also give per-example predictions for the ensemble baseline
        # (merge/ensemble.py: `ensemble`, or `predict` + `score_predictions`); forwarded as they are
        for attr in ("ensemble", "predict", "score_predictions"):
            if callable(getattr(fn, attr, None)):
                setattr(score, attr, getattr(fn, attr))
        return score
