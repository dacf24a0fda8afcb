"""The utility protocol: what a built utility scorer is, and its optional capabilities.

A built scorer (what `UtilityConfig.build(pool, split)` returns) is a `Utility`:

    scorer(particles [B, D]) -> torch.Tensor [B] float64     # higher is better
    scorer.name: str

Optional capabilities are declared by subclassing (checked with isinstance when the utility is built,
never discovered with getattr):

- `Predicting`: per-example predictions of every particle in one batched pass
      scorer.predict(particles [B, D]) -> Predictions      # opaque, indexable by particle: preds[idx]
      scorer.score(preds) -> [B] float64                   # score(predict(x)) equals scorer(x)
      scorer.example_scores(preds) -> [B, N] float64 | None  # per-example contribution when the utility
                                                           #   is a mean over N examples, else None
      scorer.example_ids -> list[str]                      # stable ids of the N examples
- `Ensembling` (implies Predicting): combine B particles' predictions (best first) per example into one
  answer and score it:  scorer.ensemble(preds, how="auto") -> (score, how used)
- `Finalizing`: scorer.finalize(output_dir) writes extra outputs at the end of a run.

A plain function `f(particles) -> scores` is also accepted by `as_utility` (wrapped, no capabilities).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import torch

__all__ = ["Utility", "Predicting", "Ensembling", "Finalizing", "FunctionUtility", "as_utility",
           "Predictions", "ClassScores", "Answers", "Responses", "TaskPredictions", "capabilities"]


# -- predictions --------------------------------------------------------------------------------
def _indices(idx: Any, n: int) -> list[int]:
    """Particle indices from an int, a slice, a list or a tensor (bool masks included)."""
    if isinstance(idx, int):
        return [range(n)[idx]]
    if isinstance(idx, slice):
        return list(range(n))[idx]
    t = torch.as_tensor(idx)
    if t.dtype == torch.bool:
        t = t.nonzero()[:, 0]
    return [range(n)[int(i)] for i in t.reshape(-1).tolist()]


class Predictions(ABC):
    """Per-example predictions of B particles, owned by the utility that made them. preds[idx] (an int,
    slice, list or tensor of particle indices) selects particles without a new pass."""

    @abstractmethod
    def __len__(self) -> int:
        """B, the number of particles."""

    @abstractmethod
    def take(self, rows: list[int]) -> "Predictions":
        """The predictions of particles `rows`, in that order."""

    def __getitem__(self, idx: Any) -> "Predictions":
        return self.take(_indices(idx, len(self)))

    @classmethod
    def join(cls, parts: Sequence["Predictions"]) -> "Predictions":
        """The predictions of every particle of `parts`, in order (the inverse of take)."""
        raise NotImplementedError(f"{cls.__name__} cannot be joined")


@dataclass(frozen=True)
class ClassScores(Predictions):
    """scores [B, N, C] float64: a score per example and class (e.g. choice log-likelihoods; -inf pads)."""
    scores: torch.Tensor

    def __len__(self) -> int:
        return self.scores.shape[0]

    def take(self, rows: list[int]) -> "ClassScores":
        return ClassScores(self.scores[rows])

    @classmethod
    def join(cls, parts: Sequence["ClassScores"]) -> "ClassScores":
        return ClassScores(torch.cat([p.scores for p in parts]))


class _PerParticleLists(Predictions):
    """Predictions held as one list per particle (the first dataclass field)."""

    def _rows(self) -> list:
        return getattr(self, next(iter(self.__dataclass_fields__)))

    def __len__(self) -> int:
        return len(self._rows())

    def take(self, rows: list[int]) -> "_PerParticleLists":
        every = self._rows()
        return type(self)([every[r] for r in rows])

    @classmethod
    def join(cls, parts: Sequence["_PerParticleLists"]) -> "_PerParticleLists":
        return cls([row for p in parts for row in p._rows()])


@dataclass(frozen=True)
class Answers(_PerParticleLists):
    """answers[b][n]: particle b's discrete answer to example n (a parsed letter, a normalised string);
    None where it gave none."""
    answers: list[list[Hashable | None]]


@dataclass(frozen=True)
class Responses(_PerParticleLists):
    """texts[b][n]: particle b's free-text response to prompt n."""
    texts: list[list[str]]


@dataclass(frozen=True)
class TaskPredictions(Predictions):
    """Each task's own predictions (a multi-task utility), all for the same B particles."""
    tasks: dict[str, Predictions]

    def __len__(self) -> int:
        return len(next(iter(self.tasks.values())))

    def take(self, rows: list[int]) -> "TaskPredictions":
        return TaskPredictions({k: v.take(rows) for k, v in self.tasks.items()})

    @classmethod
    def join(cls, parts: Sequence["TaskPredictions"]) -> "TaskPredictions":
        return TaskPredictions({k: type(v).join([p.tasks[k] for p in parts]) for k, v in parts[0].tasks.items()})


# -- the protocol -------------------------------------------------------------------------------
class Utility(ABC):
    """A built utility: scorer(particles [B, D]) -> [B] float64 on the CPU (higher is better)."""
    name: str = "utility"

    def __call__(self, particles: torch.Tensor) -> torch.Tensor:
        if particles.dim() != 2:
            raise ValueError(f"{self.name}: particles must be [B, D], got shape {list(particles.shape)}")
        if particles.shape[0] == 0:
            return torch.empty(0, dtype=torch.float64)
        return torch.as_tensor(self.evaluate(particles), dtype=torch.float64).cpu().reshape(particles.shape[0])

    @abstractmethod
    def evaluate(self, particles: torch.Tensor) -> torch.Tensor | Sequence[float]:
        """The scores of particles [B, D] (B >= 1); __call__ checks shapes and makes them float64 [B]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Predicting(Utility):
    """Capability: per-example predictions (see the module docstring). evaluate = score(predict(x))."""

    @abstractmethod
    def predict(self, particles: torch.Tensor) -> Predictions:
        """Predictions of every particle [B, D] on every example, in one batched pass."""

    @abstractmethod
    def score(self, preds: Predictions) -> torch.Tensor:
        """[B] float64 utility of predictions; score(predict(x)) equals self(x)."""

    def example_scores(self, preds: Predictions) -> torch.Tensor | None:
        """[B, N] float64 per-example contributions whose mean over N is the score, or None when the
        utility is not such a mean."""
        return None

    @property
    @abstractmethod
    def example_ids(self) -> list[str]:
        """Stable ids of the N examples (the data's "id" field, else its line number)."""

    def evaluate(self, particles: torch.Tensor) -> torch.Tensor:
        return self.score(self.predict(particles))


class Ensembling(Predicting):
    """Capability: a prediction ensemble of several particles (best first)."""

    @abstractmethod
    def ensemble(self, preds: Predictions, how: str = "auto") -> tuple[float, str]:
        """Combine the particles' predictions per example into one answer, score it: (score, how used).
        `how`: "auto" (the utility's own rule), or "mean_prob" / "vote" where class scores allow it."""


class Finalizing(Utility):
    """Capability: write extra outputs (e.g. a Pareto front) at the end of a run."""

    @abstractmethod
    def finalize(self, output_dir: Path) -> None:
        ...


class FunctionUtility(Utility):
    """A plain function f(particles [B, D]) -> [B] as a Utility (no optional capabilities)."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], name: str):
        self.fn = fn
        self.name = name

    def evaluate(self, particles: torch.Tensor):
        return self.fn(particles)


def as_utility(obj: Any, name: str) -> Utility:
    """A built scorer as a Utility: a Utility is returned as it is, a plain callable is wrapped.
    Raises a one-line ValueError naming the utility for anything else."""
    if isinstance(obj, Utility):
        return obj
    if callable(obj):
        return FunctionUtility(obj, name)
    raise ValueError(f"{name}: build() returned {type(obj).__name__}, not a callable scorer")


def capabilities(scorer: Any) -> list[str]:
    """The optional capabilities a scorer declares, by name (for messages and reports)."""
    return [n for n, cls in (("predict", Predicting), ("ensemble", Ensembling), ("finalize", Finalizing))
            if isinstance(scorer, cls)]
