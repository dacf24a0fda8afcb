"""Registry of utilities (objectives). A utility type is a pydantic config class plus a builder:

    @register_utility("my_metric")
    class MyMetric(UtilityConfig):
        threshold: float = 0.5                      # fields validate the YAML `utility:` section
        def build(self, pool, split):               # one scorer per split ("dev" or "test")
            return lambda particles: ...            # particles: [B, D] rows -> [B] scores
    (or a protocol.Utility with optional capabilities: predictions, ensembles, finalize)

`build_utility(spec, pool)` validates a YAML mapping ({"type": name, ...}) and returns a BuiltUtility
with .dev (used by the search) and .test (used only for the report; None when no test split).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from swarmkern.configfile import first_error
from .protocol import Ensembling, Finalizing, Predicting, Utility, as_utility

ScoreFn = Callable[[torch.Tensor], "torch.Tensor | list[float]"]

UTILITIES: dict[str, type["UtilityConfig"]] = {}


class UtilityConfig(BaseModel):
    """Base of every utility config: unknown fields are errors."""
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    type: str
    splits: ClassVar[tuple[str, ...]] = ("dev", "test")

    def has_split(self, split: str) -> bool:
        return split == "dev"

    def build(self, pool: Any, split: str) -> "Utility | ScoreFn":  # pragma: no cover - abstract
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
    dev: Utility
    test: Utility | None = None
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
    """Validate and build both splits; each scorer is checked against the protocol (protocol.py): a
    Utility as it is, a plain function wrapped (score only), anything else a one-line error."""
    cfg = parse_utility_config(spec)
    dev = as_utility(cfg.build(pool, "dev"), f"utility {cfg.type} [dev]")
    test = as_utility(cfg.build(pool, "test"), f"utility {cfg.type} [test]") if cfg.has_split("test") else None
    evaluators = list((getattr(cfg, "_state", None) or {}).get("evaluators", ()))
    for scorer in (dev, test):
        if evaluators and scorer is not None and not hasattr(scorer, "evaluators"):
            scorer.evaluators = evaluators  # whose caches a search saves (utilities/caches.py)
    built = BuiltUtility(cfg, dev, test)
    built.finalizers.extend(fn.finalize for fn in (dev, test) if isinstance(fn, Finalizing))
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

    def build(self, pool: Any, split: str) -> Utility:
        fn = self._resolve()
        kwargs = dict(self.kwargs if split == "dev" or self.test_kwargs is None else self.test_kwargs)
        if self._takes_split():
            kwargs["split"] = split
        name = f"python[{split}]"
        # what the callable offers, checked once here against the structural protocols below
        if isinstance(fn, _EnsemblesLike):
            return _PythonEnsembling(fn, kwargs, name)
        if isinstance(fn, _PredictsLike):
            return _PythonPredicting(fn, kwargs, name)
        return _PythonScorer(fn, kwargs, name)


@runtime_checkable
class _PredictsLike(Protocol):
    """A user's callable object with per-example predictions (the Predicting capability's methods;
    example_scores and example_ids are optional)."""
    def predict(self, particles: torch.Tensor) -> Any: ...
    def score(self, preds: Any) -> Any: ...


@runtime_checkable
class _EnsemblesLike(_PredictsLike, Protocol):
    def ensemble(self, preds: Any, how: str = "auto") -> tuple[float, str]: ...


@runtime_checkable
class _IdsLike(Protocol):
    example_ids: Any


@runtime_checkable
class _ExampleScoresLike(Protocol):
    def example_scores(self, preds: Any) -> Any: ...


class _PythonScorer(Utility):
    """A `python` utility: fn(particles, **kwargs) -> [B]."""

    def __init__(self, fn: Callable, kwargs: dict[str, Any], name: str):
        self.fn, self.kwargs, self.name = fn, kwargs, name

    def evaluate(self, particles: torch.Tensor):
        return self.fn(particles, **self.kwargs)


class _PythonPredicting(Predicting, _PythonScorer):
    """A `python` utility whose callable object also predicts (forwarded without the kwargs)."""
    evaluate = _PythonScorer.evaluate  # the callable's own score, with its kwargs

    def predict(self, particles: torch.Tensor):
        return self.fn.predict(particles)

    def score(self, preds: Any) -> torch.Tensor:
        return torch.as_tensor(self.fn.score(preds), dtype=torch.float64)

    def example_scores(self, preds: Any) -> torch.Tensor | None:
        if not isinstance(self.fn, _ExampleScoresLike):
            return None
        out = self.fn.example_scores(preds)
        return None if out is None else torch.as_tensor(out, dtype=torch.float64)

    @property
    def example_ids(self) -> list[str]:
        return [str(i) for i in self.fn.example_ids] if isinstance(self.fn, _IdsLike) else []


class _PythonEnsembling(Ensembling, _PythonPredicting):
    evaluate = _PythonScorer.evaluate

    def ensemble(self, preds: Any, how: str = "auto") -> tuple[float, str]:
        value, used = self.fn.ensemble(preds, how)
        return float(value), str(used)
