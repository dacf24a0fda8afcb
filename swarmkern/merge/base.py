"""What every composition method shares: the context it runs in, its result, and the base classes.

A method is a frozen pydantic config (its fields are the YAML options) with `run(ctx) -> MethodResult`.
Static merges (soups, task arithmetic, TIES, DARE, Breadcrumbs, SLERP) only define how the K experts'
copies of one tensor become one tensor (`merge_block`); `StaticMerge` applies that per tensor, in LoRA
A/B space (each stored tensor merged on its own, as the paper and its reference code do) or in ΔW = B·A
space (each module's ΔW merged, then re-factorised by SVD to the pool's rank; see delta.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from .delta import delta_merge
from .segments import Segment, check_segments

__all__ = ["MergeContext", "MethodResult", "MergeMethod", "StaticMerge", "to_scores"]


def to_scores(values: Any, n: int) -> torch.Tensor:
    """A utility's return value (tensor or list) as float64 [n]; NaN/inf become -inf (the worst)."""
    s = torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu()
    if s.numel() != n:
        raise ValueError(f"the utility returned {s.numel()} scores for {n} particles")
    return torch.where(torch.isfinite(s), s, torch.full_like(s, float("-inf")))


@dataclass
class MergeContext:
    """The experts and the objective every method sees.

    experts: [K, D] rows in the pool's layout; segments tile [0, D) (one per tensor);
    dev: the search utility f(rows [B, D]) -> [B]; test: the report-only utility (or None);
    budget: utility evaluations allowed to a searching method (the swarm's count in `compare`);
    batch_size: rows per utility call. `evaluations` counts dev rows scored by the running method.
    """
    experts: torch.Tensor
    segments: Sequence[Segment]
    dev: Callable[[torch.Tensor], Any]
    names: list[str] | None = None
    test: Callable[[torch.Tensor], Any] | None = None
    budget: int = 100
    seed: int = 0
    batch_size: int = 8
    utility: Any = None  # the BuiltUtility, for methods that need more than scores (ensembles)
    pool: Any = None  # the ExpertPool the experts came from (ensembles' multiple-choice fallback)
    evaluations: int = 0
    _expert_dev: torch.Tensor | None = field(default=None, repr=False)
    _charged_experts: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.experts.dim() != 2:
            raise ValueError(f"experts must be [K, D], got shape {list(self.experts.shape)}")
        check_segments(self.segments, self.experts.shape[1])
        if self.names is None:
            self.names = [f"expert_{k}" for k in range(self.experts.shape[0])]

    @property
    def K(self) -> int:
        return self.experts.shape[0]

    def begin(self) -> None:
        """Reset the per-method evaluation count (compare calls it before each method)."""
        self.evaluations = 0
        self._charged_experts = False

    def score(self, rows: torch.Tensor) -> torch.Tensor:
        """Dev utility of rows [B, D] -> float64 [B], in calls of at most batch_size rows; counted."""
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        rows = rows.to(self.experts.dtype)
        out = []
        for i in range(0, rows.shape[0], self.batch_size):
            chunk = rows[i:i + self.batch_size]
            out.append(to_scores(self.dev(chunk), chunk.shape[0]))
            self.evaluations += chunk.shape[0]
        return torch.cat(out)

    def expert_scores(self) -> torch.Tensor:
        """Dev utility of every expert [K] (scored once per compare run, charged K evaluations to each
        method that uses it, so each method's count is what it would cost alone)."""
        if self._expert_dev is None:
            before = self.evaluations
            self._expert_dev = self.score(self.experts)
            self.evaluations = before
        if not self._charged_experts:
            self.evaluations += self.K
            self._charged_experts = True
        return self._expert_dev

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        """Linear mixtures of the experts: weights [M, K] -> rows [M, D] (ops.combine, fp32 accumulation)."""
        from .. import ops
        return ops.combine(self.experts, weights.to(torch.float32).reshape(-1, self.K))


@dataclass
class MethodResult:
    """A method's answer: a row [D] in the pool's layout (None for ensembles, which are not one
    expert), its dev and test utility when the method measured them itself, and details for the report."""
    row: torch.Tensor | None
    dev: float | None = None
    test: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


class MergeMethod(BaseModel):
    """Base of every method config; unknown fields are errors. `label` names it in the table
    (default: its type), so one method can appear twice with different options."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    label: str | None = None
    searches: ClassVar[bool] = False  # True: spends ctx.budget dev evaluations

    @property
    def name(self) -> str:
        return self.label or self.type

    def run(self, ctx: MergeContext) -> MethodResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, ctx: MergeContext) -> tuple[MethodResult, float]:
        t0 = time.perf_counter()
        res = self.run(ctx)
        return res, time.perf_counter() - t0


class StaticMerge(MergeMethod):
    """A merge defined per tensor by `merge_block(block [K, n], segment, ctx) -> [n]` (fp32 math).

    space: "lora" merges every stored tensor (lora_A and lora_B separately, as the paper); "delta"
    merges each LoRA module's ΔW = B·A and re-factorises it by SVD to the pool's rank (tensors that are
    not LoRA pairs are merged as stored). `info["delta_energy_kept"]` reports the fraction of the merged
    ΔW's squared Frobenius norm the rank-r factorisation keeps (1.0 when the merge is exactly low rank).
    scaling: multiplies the merged tensors (in the merge's space: in "lora" space A and B are both
    scaled, so ΔW scales by its square); a list is a grid chosen by dev utility, one evaluation each.
    """
    space: Literal["lora", "delta"] = "lora"
    scaling: float | list[float] = 1.0

    def merge_block(self, block: torch.Tensor, segment: Segment, ctx: MergeContext) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def prepare(self, ctx: MergeContext) -> dict[str, Any]:
        """Hook for methods that need dev scores before merging (e.g. SLERP picking two experts)."""
        return {}

    def merge(self, ctx: MergeContext, scaling: float | None = None,
              collect: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """All tensors merged at one scaling (default: the configured one, which must then be a float):
        a row [D] in ctx.experts' dtype, plus details. In delta space, `collect` receives every module's
        merged ΔW before the rank-r factorisation (see delta.delta_merge)."""
        if scaling is None:
            if isinstance(self.scaling, list):
                raise ValueError(f"{self.name}.scaling is a grid; run() chooses from it by dev utility")
            scaling = float(self.scaling)
        info = dict(self.prepare(ctx))
        fn = lambda block, seg: scaling * self.merge_block(block.float(), seg, ctx)  # noqa: E731
        if self.space == "lora":
            row = torch.empty(ctx.experts.shape[1], dtype=ctx.experts.dtype, device=ctx.experts.device)
            for seg in ctx.segments:
                row[seg.offset:seg.stop] = fn(ctx.experts[:, seg.offset:seg.stop], seg).to(row.dtype)
        else:
            row, kept = delta_merge(ctx.experts, ctx.segments, fn, collect)
            info["delta_energy_kept"] = round(kept, 6)
        return row, info

    def run(self, ctx: MergeContext) -> MethodResult:
        if not isinstance(self.scaling, list):
            row, info = self.merge(ctx)
            return MethodResult(row, info=info)
        grid = [float(s) for s in self.scaling]
        if not grid:
            raise ValueError(f"{self.name}.scaling: the grid is empty")
        if self.space == "lora":  # the merge is linear in the scaling: merge once
            base, info = self.merge(ctx, 1.0)
            rows = torch.stack([(s * base.float()).to(base.dtype) for s in grid])
        else:
            merged = [self.merge(ctx, s) for s in grid]
            rows, info = torch.stack([m[0] for m in merged]), merged[0][1]
        scores = ctx.score(rows)
        best = int(torch.argmax(scores))
        info = {**info, "scaling": grid[best], "scaling_dev": dict(zip(map(str, grid), scores.tolist()))}
        if self.space == "delta":
            info["delta_energy_kept"] = merged[best][1]["delta_energy_kept"]
        return MethodResult(rows[best], dev=float(scores[best]), info=info)

    def full_deltas(self, ctx: MergeContext, scaling: float) -> dict[str, torch.Tensor]:
        """Delta space only: every module's merged ΔW = B·A (fp32, without the LoRA scaling), not
        truncated to the pool's rank."""
        if self.space != "delta":
            raise ValueError(f"{self.name}: full ΔW export needs space: delta")
        collect: dict[str, torch.Tensor] = {}
        self.merge(ctx, scaling, collect)
        return collect
