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

from .common import Scorer, harmonic_mean
from .registry import UtilityConfig, parse_utility_config, register_utility

__all__ = ["MultiTask", "ParetoFront"]


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

    def build(self, pool: Any, split: str) -> Scorer:
        names = list(self.tasks)
        scorers = [self._parsed[n].build(pool, split) for n in names]
        front = ParetoFront(names, keep_rows=self.save_front) if split == "dev" else None
        calls = [0]

        def score(particles: torch.Tensor) -> torch.Tensor:
            per_task = torch.stack([torch.as_tensor(s(particles), dtype=torch.float64).reshape(-1)
                                    for s in scorers], 1)  # [B, T]
            combined = self.combine_scores(per_task)
            if front is not None:
                front.add(per_task, combined, particles, calls[0])
            calls[0] += 1
            return combined

        def finalize(output_dir: Path) -> None:
            for s in scorers:  # sub-utilities may write outputs of their own
                fin = getattr(s, "finalize", None)
                if callable(fin):
                    fin(output_dir)
            if front is None:
                return
            output_dir.mkdir(parents=True, exist_ok=True)
            data = front.to_json()
            data["combine"] = self.combine
            if self.save_front and pool is not None and hasattr(pool, "layout"):
                from swarmkern.flat import save_expert

                for k, m in enumerate(sorted(front.members, key=lambda m: -m["combined"])):
                    path = save_expert(pool, m["weights"], output_dir / "pareto_front" / f"member_{k}")
                    data["front"][k]["path"] = str(path)
            atomic_write_json(output_dir / "pareto_front.json", data, indent=2)
        def ensemble(members: torch.Tensor, how: str) -> tuple[float, str]:
            """Each task's own ensemble (its way of combining predictions), then the tasks combined."""
            per_task, used = [], []
            for n, s in zip(names, scorers):
                if not callable(getattr(s, "ensemble", None)):
                    raise ValueError(f"tasks.{n}: its utility gives no per-example predictions to ensemble")
                value, way = s.ensemble(members, how)
                per_task.append(value)
                used.append(f"{n}={way}")
            combined = self.combine_scores(torch.tensor([per_task], dtype=torch.float64))
            return float(combined[0]), ", ".join(used)
        return Scorer(score, f"multitask[{split}]", finalize=finalize, ensemble=ensemble)
