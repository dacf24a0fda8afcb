"""Multi-task utility: several utilities combined into one score (harmonic mean by default, weighted
mean, or min). Every dev evaluation is remembered by its per-task scores, and at the end of the run
`finalize(output_dir)` writes the Pareto front of all evaluated particles to pareto_front.json
(and, with save_front, each front member's weights as an expert in pareto_front/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PrivateAttr, model_validator

from swarmkern.atomic import atomic_write_json

from .common import harmonic_mean
from .protocol import Ensembling, Finalizing, TaskPredictions, Utility, as_utility
from .registry import UtilityConfig, parse_utility_config, register_utility

__all__ = ["MultiTask", "MultiTaskScorer", "PredictingMultiTask", "ParetoFront"]


class ParetoFront:
    """The non-dominated set of every point seen (maximisation): a point is dropped when another is
    >= on every task and > on one. Members carry (call, row) ids and, optionally, a copy of their row."""

    def __init__(self, tasks: list[str], keep_rows: bool = False):
        self.tasks = tasks
        self.keep_rows = keep_rows
        self.members: list[dict] = []
        self.seen = 0

    def add(self, scores: torch.Tensor, combined: torch.Tensor, particles: torch.Tensor, call: int) -> None:
        """scores [B, T], combined [B], particles [B, D] (rows are copied only when keep_rows)."""
        for i in range(scores.shape[0]):
            self.seen += 1
            s = scores[i]
            if not torch.isfinite(s).all():
                continue
            pts = torch.tensor([m["scores"] for m in self.members], dtype=torch.float64).reshape(-1, len(self.tasks))
            if len(pts) and ((pts >= s).all(1) & (pts > s).any(1)).any():
                continue  # dominated
            if len(pts) and ((pts == s).all(1)).any():
                continue  # an equal point is already on the front
            keep = ~((s >= pts).all(1) & (s > pts).any(1)) if len(pts) else torch.ones(0, dtype=torch.bool)
            self.members = [m for m, k in zip(self.members, keep.tolist()) if k]
            member = {"call": call, "row": i, "scores": s.tolist(), "combined": float(combined[i])}
            if self.keep_rows:
                member["weights"] = particles[i].detach().to("cpu", copy=True)
            self.members.append(member)

    def to_json(self) -> dict:
        front = sorted(self.members, key=lambda m: -m["combined"])
        return {"tasks": self.tasks, "evaluated": self.seen,
                "front": [{"call": m["call"], "row": m["row"], "combined": m["combined"],
                           "scores": dict(zip(self.tasks, m["scores"]))} for m in front]}


@register_utility("multitask")
class MultiTask(UtilityConfig):
    """Several utilities in one: `tasks` maps a name to a utility spec (any registered type).

    combine: "harmonic" (default; 0 when any task score is <= 0), "mean" or "min"; `weights` (per task
    name, default 1) weight the harmonic and arithmetic means.
    """
    type: str = "multitask"
    tasks: dict[str, dict[str, Any]] = Field(description="task name -> utility spec")
    combine: Literal["harmonic", "mean", "min"] = "harmonic"
    weights: dict[str, float] | None = None
    save_front: bool = Field(False, description="also write each Pareto-optimal particle as an expert")
    _parsed: dict[str, UtilityConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _parse_tasks(self) -> "MultiTask":
        if len(self.tasks) < 2:
            raise ValueError(f"tasks: need at least 2 tasks, got {len(self.tasks)}")
        for name, spec in self.tasks.items():
            try:
                self._parsed[name] = parse_utility_config(spec)
            except ValueError as err:
                raise ValueError(f"tasks.{name}: {str(err).removeprefix('utility.')}") from None
        for name, w in (self.weights or {}).items():
            if name not in self.tasks:
                raise ValueError(f"weights: {name!r} is not a task ({', '.join(self.tasks)})")
            if w < 0:
                raise ValueError(f"weights.{name}: must be >= 0, got {w}")
        return self

    def has_split(self, split: str) -> bool:
        return all(cfg.has_split(split) for cfg in self._parsed.values())

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, T] -> [B]."""
        w = torch.tensor([(self.weights or {}).get(n, 1.0) for n in self.tasks], dtype=torch.float64)
        if self.combine == "min":
            return scores.min(1).values
        if self.combine == "mean":
            return (scores * w).sum(1) / w.sum()
        return harmonic_mean(scores.T, w)

    def build(self, pool: Any, split: str) -> "MultiTaskScorer":
        scorers = {n: as_utility(self._parsed[n].build(pool, split), f"tasks.{n}") for n in self.tasks}
        front = ParetoFront(list(self.tasks), keep_rows=self.save_front) if split == "dev" else None
        # predictions and ensembles only when every task has them (checked here, when it is built)
        cls = PredictingMultiTask if all(isinstance(s, Ensembling) for s in scorers.values()) else MultiTaskScorer
        return cls(self, scorers, front, pool, f"multitask[{split}]")


class MultiTaskScorer(Finalizing):
    """Every task's utility on the same particles, combined by the config's rule; remembers the Pareto
    front of dev calls (written by finalize)."""

    def __init__(self, config: MultiTask, scorers: dict[str, Utility], front: ParetoFront | None, pool: Any,
                 name: str):
        self.config, self.scorers, self.front, self.pool, self.name = config, scorers, front, pool, name
        self.calls = 0

    def _task_scores(self, particles: torch.Tensor) -> torch.Tensor:
        return torch.stack([s(particles) for s in self.scorers.values()], 1)  # [B, T]

    def evaluate(self, particles: torch.Tensor) -> torch.Tensor:
        per_task = self._task_scores(particles)
        combined = self.config.combine_scores(per_task)
        if self.front is not None:
            self.front.add(per_task, combined, particles, self.calls)
        self.calls += 1
        return combined

    def finalize(self, output_dir: Path) -> None:
        for s in self.scorers.values():  # sub-utilities may write outputs of their own
            if isinstance(s, Finalizing):
                s.finalize(output_dir)
        if self.front is None:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        data = self.front.to_json()
        data["combine"] = self.config.combine
        if self.config.save_front and self.pool is not None and hasattr(self.pool, "layout"):
            from swarmkern.flat import save_expert

            for k, m in enumerate(sorted(self.front.members, key=lambda m: -m["combined"])):
                path = save_expert(self.pool, m["weights"], output_dir / "pareto_front" / f"member_{k}")
                data["front"][k]["path"] = str(path)
        atomic_write_json(output_dir / "pareto_front.json", data, indent=2)


class PredictingMultiTask(Ensembling, MultiTaskScorer):
    """A multi-task utility whose tasks all predict: predictions are each task's own (TaskPredictions),
    an ensemble ensembles each task its own way and combines the task scores."""
    scorers: dict[str, Ensembling]

    def predict(self, particles: torch.Tensor) -> TaskPredictions:
        return TaskPredictions({n: s.predict(particles) for n, s in self.scorers.items()})

    def task_scores(self, preds: TaskPredictions) -> torch.Tensor:
        """[B, T] every task's score."""
        return torch.stack([torch.as_tensor(s.score(preds.tasks[n]), dtype=torch.float64).reshape(-1)
                            for n, s in self.scorers.items()], 1)

    def _task_scores(self, particles: torch.Tensor) -> torch.Tensor:
        return self.task_scores(self.predict(particles))

    def score(self, preds: TaskPredictions) -> torch.Tensor:
        return self.config.combine_scores(self.task_scores(preds))

    evaluate = MultiTaskScorer.evaluate  # records the Pareto front (Predicting.evaluate would not)

    @property
    def example_ids(self) -> list[str]:
        """"task/id" for every task's examples, task by task (example_scores is None: the combined
        utility is no mean over them)."""
        return [f"{n}/{i}" for n, s in self.scorers.items() for i in s.example_ids]

    def ensemble(self, preds: TaskPredictions, how: str = "auto") -> tuple[float, str]:
        """Each task's own ensemble (its way of combining predictions), then the tasks combined."""
        per_task, used = [], []
        for n, s in self.scorers.items():
            value, way = s.ensemble(preds.tasks[n], how)
            per_task.append(value)
            used.append(f"{n}={way}")
        combined = self.config.combine_scores(torch.tensor([per_task], dtype=torch.float64))
        return float(combined[0]), ", ".join(used)
