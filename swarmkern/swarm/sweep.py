"""Hyperparameter sweeps in lockstep: S searches over the same experts, advanced together.

    space = SweepSpace(mode="random", n=8, seed=0)        # 8 draws from the authors' ranges
    configs = space.expand(SwarmConfig(max_iters=20))     # 8 SwarmConfigs
    result = Sweep(configs, pool, utility, test_utility=test, output_dir="runs/sweep").run()
    result.winner, result.entries                         # the chosen configuration, one row per configuration

Every round each unfinished swarm `ask()`s its rows; the rows of all swarms are scored in the same
utility calls (one [sum n_s, D] batch, `batch_size` rows at most per call) and the scores are split
back to the swarms' `tell()`s. A sweep of S therefore costs S times the evaluations of one search but
shares the per-call overhead (for the LLM utilities: the base layers below the first adapter, the
prompt encoding, Python and kernel launches). A row that equals an earlier row of the round (the S
swarms usually start from the same experts and crossover children) is scored once. Each swarm's
trajectory is the one it has alone, bit for bit when the utility scores each row independently of its
batch-mates (bf16 matrix kernels on a CPU round differently for different batch shapes, so there a
swarm can take another path than alone).

The winner is the configuration with the best final dev utility, or, with a `select_utility` (a held-out
part of dev that the searches never see), the best final utility on it (ties: better dev, then the
lower index). Each swarm writes its usual outputs in `runs/NNN/` (checkpoints included, so a sweep
resumes); the sweep writes sweep.json, sweep.md, sweep.png and the winner's best expert and summary
(swarm/sweep_report.py). This module never imports transformers.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmkern.atomic import atomic_write_bytes, atomic_write_json
from swarmkern.flat import ExpertPool, load_experts
from swarmkern.utilities import caches as utility_caches

from . import checkpoint as ckpt
from . import outputs
from .collective import Collective, LocalCollective
from .config import SwarmConfig
from .randomness import Purpose, uniforms
from .search import EXPERTS_JSON, Ask, Swarm, SwarmResult, Utility, base_particle_name, score_rows

# The ranges the authors' scripts sample (uniformly) for their hyperparameter searches.
AUTHORS_RANGES: dict[str, tuple[float, float]] = {
    "phi_v": (0.1, 0.3), "phi_p": (0.1, 0.5), "phi_g": (0.2, 0.6), "phi_w": (0.01, 0.1), "step": (0.5, 1.0)}

SWEEP_STATE = "sweep_state.json"   # the configurations and options: what resume reads
SWEEP_PROGRESS = "sweep_progress.json"  # the last complete round: swarm iterations, utility calls, seconds
SWEEP_CACHES = "sweep_caches-rank{rank}.pt"  # the utility's caches at the round of the last snapshots (with caches only)
RUNS_DIR = "runs"


def _numeric_kind(name: str) -> type:
    ann = str(SwarmConfig.model_fields[name].annotation)
    if "float" in ann:
        return float
    if "int" in ann and "tuple" not in ann:
        return int
    raise ValueError(f"sweep.ranges.{name}: not a number field; list its values under sweep.choices")


class SweepSpace(BaseModel):
    """Which SwarmConfig fields a sweep varies and how: a grid (every combination of `grid` values,
    in order, the last field varying fastest) or `n` random draws (each `ranges` field uniform in
    [lo, hi], integers for integer fields; each `choices` field one of its values), keyed by `seed`."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["random", "grid"] = Field("random", description="random: n draws; grid: every combination.")
    n: int = Field(8, ge=1, description="random: the number of configurations.")
    ranges: dict[str, tuple[float, float]] | None = Field(None, description=(
        "random: [lo, hi] per field. None: the authors' ranges (phi_v 0.1-0.3, phi_p 0.1-0.5, phi_g 0.2-0.6, "
        "phi_w 0.01-0.1, step 0.5-1.0); {} varies nothing but `choices`."))
    choices: dict[str, list[Any]] = Field(default_factory=dict, description="random: values to pick from, per field.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="grid: values per field.")
    seed: int = Field(0, ge=0, lt=2 ** 64, description="Key of the random draws (not the searches' seed).")

    @model_validator(mode="after")
    def _check(self) -> "SweepSpace":
        for section in ("ranges", "choices", "grid"):
            for name, values in (getattr(self, section) or {}).items():
                if name not in SwarmConfig.model_fields:
                    raise ValueError(f"{section}.{name}: not a swarm field")
                if section == "ranges":
                    _numeric_kind(name)
                    if not values[0] <= values[1]:
                        raise ValueError(f"ranges.{name}: need lo <= hi, got {list(values)}")
                elif not values:
                    raise ValueError(f"{section}.{name}: give at least one value")
        if self.mode == "grid" and not self.grid:
            raise ValueError("grid: mode grid needs at least one field with values")
        if self.mode == "random" and self.grid:
            raise ValueError("grid: only used with mode: grid")
        if self.mode == "grid" and (self.ranges or self.choices):
            raise ValueError("ranges: only used with mode: random")
        return self

    def draws(self) -> list[dict[str, Any]]:
        """The varied fields of each configuration, in order."""
        if self.mode == "grid":
            names = list(self.grid)
            return [dict(zip(names, combo)) for combo in itertools.product(*(self.grid[k] for k in names))]
        ranges = AUTHORS_RANGES if self.ranges is None else self.ranges
        out = []
        for c in range(self.n):
            u = [float(x) for x in uniforms(self.seed, Purpose.SWEEP, [c], 0)[0]]  # 4 per counter
            need = len(ranges) + len(self.choices)
            for block in range(1, (need + 3) // 4):
                u += [float(x) for x in uniforms(self.seed, Purpose.SWEEP, [c], 0, draw=block)[0]]
            fields: dict[str, Any] = {}
            for j, (name, (lo, hi)) in enumerate(ranges.items()):
                if _numeric_kind(name) is int:
                    fields[name] = min(int(lo) + int(u[j] * (int(hi) - int(lo) + 1)), int(hi))
                else:
                    fields[name] = lo + (hi - lo) * u[j]
            for j, (name, values) in enumerate(self.choices.items(), start=len(ranges)):
                fields[name] = values[min(int(u[j] * len(values)), len(values) - 1)]
            out.append(fields)
        return out

    def expand(self, base: SwarmConfig) -> list[SwarmConfig]:
        """One validated SwarmConfig per configuration: `base` with the drawn fields replaced."""
        configs = []
        for c, fields in enumerate(self.draws()):
            try:
                configs.append(SwarmConfig.model_validate({**base.model_dump(), **fields}))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                detail = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"sweep: configuration {c} {fields}: {where + ': ' if where else ''}{detail}") from None
        return configs


def varied_fields(configs: Sequence[SwarmConfig]) -> list[str]:
    """The SwarmConfig fields whose values differ between the configurations (declaration order)."""
    dumps = [c.model_dump(mode="json") for c in configs]
    return [k for k in SwarmConfig.model_fields if any(d[k] != dumps[0][k] for d in dumps[1:])]


def distinct_row_runs(pieces: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Split the rows of `pieces` ([n_i, D] each) into runs (views) of rows equal to no earlier row, and
    give for every row, in order, the index (among the runs' rows, concatenated) of the row whose
    score it takes. Rows are compared exactly (torch.equal); a fingerprint of 64 of their elements
    picks the candidates first, so a large full-weight row is compared in full only with a likely
    twin. Rows with NaN never match (NaN != NaN): they are scored each time, as without sharing."""
    keys: dict[bytes, list[int]] = {}
    kept: list[torch.Tensor] = []
    runs: list[torch.Tensor] = []
    source: list[int] = []
    for p in pieces:
        n, d = p.shape
        probe = torch.linspace(0, d - 1, min(d, 64), device=p.device).round().long()
        prints = p.index_select(1, probe).float().cpu().numpy()  # exact for fp16/bf16/fp32
        start = None
        for i in range(n):
            key = prints[i].tobytes()
            twin = next((j for j in keys.get(key, ()) if torch.equal(kept[j], p[i])), None)
            if twin is None:
                keys.setdefault(key, []).append(len(kept))
                source.append(len(kept))
                kept.append(p[i])
                start = i if start is None else start
                continue
            source.append(twin)
            if start is not None:
                runs.append(p[start:i])
                start = None
        if start is not None:
            runs.append(p[start:n])
    return runs, source


@dataclass
class SweepResult:
    """The outcome of a sweep: one entry per configuration (sweep.json's rows), the winner's index
    and SwarmResult, and every configuration's SwarmResult."""
    entries: list[dict[str, Any]]
    winner: int
    selected_on: str
    results: list[SwarmResult]
    summary: dict[str, Any]
    output_dir: Path | None
    best_path: Path | None = None

    @property
    def winner_result(self) -> SwarmResult:
        """The winning configuration's SwarmResult (its `.best` is the winning location [D])."""
        return self.results[self.winner]


class Sweep:
    """S swarms over one pool of experts advanced in lockstep (see the module docstring).

    configs: the S SwarmConfigs (their `batch_size` is ignored: `batch_size` here caps every shared
    utility call; their `progress` is off, the sweep shows one bar). utility scores the searches;
    test_utility (optional) scores each final best and the starting experts for the report;
    select_utility (optional) picks the winner instead of dev. `guard` (default on): export the best
    starting expert when the winner does not beat it on the select split (or dev); `resamples`: of the
    paired intervals against that expert (swarm/selection.py).
    """
    guard: bool = True
    resamples: int = 2000

    def __init__(self, configs: Sequence[SwarmConfig], init: ExpertPool | torch.Tensor | Sequence[Any],
                 utility: Utility, *, test_utility: Utility | None = None, select_utility: Utility | None = None,
                 output_dir: str | Path | None = None, collective: Collective | None = None,
                 overwrite: bool = False, batch_size: int | None = None, progress: bool = True,
                 _resumed: dict[str, Any] | None = None):
        if not configs:
            raise ValueError("sweep: no configurations")
        self.configs = [c.model_copy(update={"progress": False}) for c in configs]
        self.pool = init if isinstance(init, ExpertPool) else load_experts(init)
        self.utility, self.test_utility, self.select_utility = utility, test_utility, select_utility
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.collective = collective or LocalCollective()
        self.batch_size, self.progress = batch_size, progress
        done = _resumed or {}  # the last complete round of a resumed sweep (sweep_progress.json)
        self.calls, self.rows_scored = done.get("calls", 0), done.get("rows_scored", 0)
        self.seconds = done.get("seconds", [0.0] * len(self.configs))
        self._wall_base = done.get("wall_seconds", 0.0)
        # the utility's caches (utilities/caches.py) are the sweep's, not any one swarm's: they are saved
        # with a round of snapshots of every swarm, so that a resume restarts every swarm at that round
        self._caches = utility_caches.collect({"dev": utility, "test": test_utility, "select": select_utility})
        rank0 = self.collective.rank == 0
        if self.output_dir is not None and rank0 and _resumed is None:
            if (self.output_dir / SWEEP_STATE).exists() and not overwrite:
                raise FileExistsError(f"{self.output_dir}: already holds a sweep; resume it (swarmkern sweep "
                                      "--resume-if-exists / Sweep.resume) or start afresh (--overwrite)")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if overwrite:
                import shutil

                shutil.rmtree(self.output_dir / RUNS_DIR, ignore_errors=True)
                (self.output_dir / SWEEP_PROGRESS).unlink(missing_ok=True)
                for old in self.output_dir.glob(SWEEP_CACHES.format(rank="*")):
                    old.unlink(missing_ok=True)
            atomic_write_json(self.output_dir / SWEEP_STATE, {
                "configs": [c.model_dump(mode="json") for c in self.configs], "batch_size": batch_size}, indent=1)
        if _resumed is None:
            self.swarms = [Swarm(c, self.pool, utility, output_dir=self._run_dir(i), collective=self.collective,
                                 overwrite=overwrite) for i, c in enumerate(self.configs)]
        else:
            until = self._resume_round(_resumed)
            self.swarms = [self._resume_swarm(i, c, until[i]) for i, c in enumerate(self.configs)]
        for sw in self.swarms:
            sw.snapshots_deferred = True  # written by _commit, once the whole round is on disk
            sw._caches = {}

    @classmethod
    def resume(cls, output_dir: str | Path, utility: Utility, *, test_utility: Utility | None = None,
               select_utility: Utility | None = None, collective: Collective | None = None,
               pool: ExpertPool | None = None, progress: bool = True) -> "Sweep":
        """The sweep in `output_dir` at its last complete round: each swarm restored from its latest
        snapshot and journal (a swarm that had none yet starts afresh), no further than that round, and
        with the utility's caches, the caches saved with the last round of snapshots (every swarm goes
        back to that round). `.run()` continues it and ends where the uninterrupted sweep ends.
        pool: the experts (default: read again from the paths the runs recorded)."""
        output_dir = Path(output_dir)
        path = output_dir / SWEEP_STATE
        if not path.is_file():
            raise FileNotFoundError(f"{output_dir}: no {SWEEP_STATE}; is this a swarmkern sweep output directory?")
        state = json.loads(path.read_text())
        configs = [SwarmConfig.model_validate(c) for c in state["configs"]]
        done = {}
        if (output_dir / SWEEP_PROGRESS).is_file():
            done = json.loads((output_dir / SWEEP_PROGRESS).read_text())
        if pool is None:
            described = output_dir / RUNS_DIR / "000" / EXPERTS_JSON
            if not described.is_file():
                raise FileNotFoundError(f"{output_dir}: no swarm has started yet; resuming it needs the experts (pool=...)")
            pool = ExpertPool.reload(json.loads(described.read_text()))
        return cls(configs, pool, utility, test_utility=test_utility, select_utility=select_utility,
                   output_dir=output_dir, collective=collective, batch_size=state["batch_size"], progress=progress,
                   _resumed=done)

    def _resume_round(self, done: dict[str, Any]) -> list[int | None]:
        """Per swarm, the iteration a resume goes back to (-1: start afresh; None: its latest). With
        caches: the round saved with them (restored here); else the last complete round."""
        S = len(self.configs)
        if self._caches:
            path = self.output_dir / SWEEP_CACHES.format(rank=self.collective.rank)
            if not path.is_file():
                path = self.output_dir / SWEEP_CACHES.format(rank=0)  # fewer processes than before
            if not path.is_file():
                return [-1] * S  # no round saved with its caches: every swarm starts afresh, as the caches do
            saved = torch.load(path, weights_only=False)  # written by _save_caches
            if path.name == SWEEP_CACHES.format(rank=self.collective.rank):
                utility_caches.restore(self._caches, saved["caches"])
            return list(saved["iterations"])
        if not done:
            return [-1] * S
        return list(done.get("iterations") or [None] * S)  # None: a sweep_progress.json of an older version

    def _resume_swarm(self, i: int, config: SwarmConfig, until: int | None) -> Swarm:
        run = self._run_dir(i)
        if ckpt.has_checkpoint(run) and (until is None or until >= 0):
            return Swarm.resume(run, self.utility, collective=self.collective, pool=self.pool, until=until,
                                own_caches=False)
        return Swarm(config, self.pool, self.utility, output_dir=run, collective=self.collective, overwrite=True)

    # -- the lockstep loop ---------------------------------------------------------------------------
    def run(self) -> SweepResult:
        """Advance every swarm until each one stops, then score, choose and write the outputs."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        total = max(c.max_iters for c in self.configs) + 1
        done_rounds = min((s.book.iteration + 1 if s.book is not None else 0) for s in self.swarms)
        bar = tqdm(total=total, initial=done_rounds, unit="round", desc=f"sweep of {len(self.swarms)}",
                   leave=False, disable=not self.progress or self.collective.rank != 0, dynamic_ncols=True)
        try:
            while True:
                active = [i for i, s in enumerate(self.swarms) if not s.done]
                if not active:
                    break
                self._round(active)
                bar.update(1)
                bar.set_postfix(active=f"{len(active)}/{len(self.swarms)}",
                                best=f"{max(s.book.u_gbest for s in self.swarms):.4g}")
                self._commit(start)
        finally:
            bar.close()
        self._commit(start, final=True)
        return self._finish(start)

    def _commit(self, start: float, *, final: bool = False) -> None:
        """The round is complete: record it (every swarm's iteration, the counters), then write the
        snapshots that are due. Without caches each swarm keeps its own snapshot policy (a resume replays
        each journal up to the recorded round). With caches every swarm is snapshotted at the same round,
        when any one is due, and the caches are saved first, with that round's iterations (a resume goes
        back to that round, and re-evaluates from it)."""
        self._save_progress(start)
        if self.output_dir is None:
            return
        if not self._caches:
            for sw in self.swarms:
                sw.snapshot_if_due(force=final)
            return
        if not (final or any(sw.config.checkpoint and sw._snapshot_iteration != sw.book.iteration
                             and sw._snapshot_due() for sw in self.swarms)):
            return
        self._save_caches()
        for sw in self.swarms:
            sw.snapshot_if_due(force=True)

    def _round(self, active: list[int]) -> None:
        """One ask of every active swarm, their rows scored together, one tell each."""
        t0 = time.perf_counter()
        asks = [self.swarms[i].ask() for i in active]
        t1 = time.perf_counter()
        scores = self._score_asks(asks)
        t2 = time.perf_counter()
        n_rows = sum(len(a) for a in asks)
        off = 0
        for i, a in zip(active, asks):
            ts = time.perf_counter()
            self.swarms[i].tell(scores[off:off + len(a)])
            off += len(a)
            share = (t2 - t1) * len(a) / n_rows if n_rows else 0.0
            self.seconds[i] += share + (t1 - t0) / len(active) + (time.perf_counter() - ts)

    def _score_asks(self, asks: list[Ask]) -> torch.Tensor:
        """The utilities of every ask's rows, in order. A row equal to an earlier one (the swarms of a
        sweep usually start from the same particles) is scored once and its score shared. The distinct
        rows go in calls of at most `batch_size` rows, each one a view of a swarm's buffer when it falls
        inside one run of distinct rows of one ask, else a concatenation."""
        runs, source = distinct_row_runs([a.rows for a in asks if len(a)])
        total = sum(r.shape[0] for r in runs)
        self.rows_scored += total
        bs = self.batch_size or max(total, 1)
        scored = torch.empty(total, dtype=torch.float64)
        chunk: list[torch.Tensor] = []
        filled = start = 0
        for p in runs:
            at = 0
            while at < p.shape[0]:
                take = min(bs - filled, p.shape[0] - at)
                chunk.append(p[at:at + take])
                at += take
                filled += take
                if filled == bs:
                    scored[start:start + filled] = self._score_chunk(chunk)
                    start, filled, chunk = start + filled, 0, []
        if chunk:
            scored[start:start + filled] = self._score_chunk(chunk)
        return scored[torch.tensor(source, dtype=torch.long)] if source else scored

    def _score_chunk(self, chunk: list[torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        rows = chunk[0] if len(chunk) == 1 else torch.cat(chunk)
        return score_rows(self.utility, rows)

    # -- the end ---------------------------------------------------------------------------------------
    def _finish(self, start: float) -> SweepResult:
        rank0 = self.collective.rank == 0
        results = [s.finish() for s in self.swarms]
        bests = torch.stack([s.best for s in self.swarms])  # [S, D] (gbest is on every process)
        test = self._score_shared(self.test_utility, bests)
        select = self._score_shared(self.select_utility, bests)
        starters = self._starter_test_utilities()
        for i, (s, r) in enumerate(zip(self.swarms, results)):
            extra: dict[str, Any] = {"sweep_configuration": i}
            if test is not None:
                origins = [j for j, o in enumerate(s.origins) if o["kind"] != "child"]
                extra["test_utility"] = outputs.json_float(test[i])
                extra["initial_test_utilities"] = [starters[s.origins[j]["name"]] for j in origins]
                extra["initial_test_particles"] = origins
            if select is not None:
                extra["select_utility"] = outputs.json_float(select[i])
            r.summary.update(extra)
            if rank0 and s.output_dir is not None:
                outputs.write_summary(s.output_dir, r.summary)
        key = (lambda i: (select[i], results[i].best_utility, -i)) if select is not None else \
              (lambda i: (results[i].best_utility, -i))
        winner = max(range(len(results)), key=key)
        from .reports import weak_to_strong_rate
        from .sweep_report import sweep_entries, write_sweep_outputs

        entries = sweep_entries(self.configs, results, self.seconds, self._run_dir)
        from .selection import finish_sweep  # intervals against the best expert, the guard (docs/STATISTICS.md)

        chosen, expert_row = finish_sweep(self, results, entries, winner, self.configs[0].seed)
        summary = {
            "winner": winner, "selected_on": "select" if select is not None else "dev",
            "n_configurations": len(self.configs), "varied_fields": varied_fields(self.configs),
            "wall_seconds": self._wall_base + time.perf_counter() - start,
            "evaluations": sum(r.summary["evaluations"] for r in results), "utility_calls": self.calls,
            "rows_scored": self.rows_scored,  # evaluations less the repeated rows scored once
            "experts": self.pool.names,
            "initial_dev_utilities": {o["name"]: outputs.json_float(u) for o, u in
                                      zip(self.swarms[0].origins, self.swarms[0].book.initial_utilities)
                                      if o["kind"] != "child"},
            "initial_test_utilities": ({k: outputs.json_float(v) for k, v in starters.items()}
                                       if starters else None),
            "configurations": entries,
            # how often a configuration's winner started outside the top half of its swarm
            "weak_to_strong": weak_to_strong_rate(r.summary for r in results),
            **chosen,
        }
        best_path = None
        if rank0 and self.output_dir is not None:
            name = "best" if self.pool.kind == "peft" else "best.safetensors"
            if expert_row is None:
                best_path = self.swarms[winner].export_best(self.output_dir / name)
            else:  # the guard fired: the best starting expert, not a worse configuration
                from swarmkern.flat import save_expert
                best_path = save_expert(self.pool, expert_row, self.output_dir / name,
                                        metadata={"swarmkern_export": chosen["export"]["chosen"]})
            winner_summary = {**results[winner].summary, "best_path": str(best_path),
                              "sweep": {"winner": winner, "selected_on": summary["selected_on"],
                                        "run_dir": entries[winner]["run_dir"]}, **chosen}
            outputs.write_summary(self.output_dir, winner_summary)
            write_sweep_outputs(self.output_dir, summary)
        return SweepResult(entries=entries, winner=winner, selected_on=summary["selected_on"], results=results,
                           summary=summary, output_dir=self.output_dir, best_path=best_path)

    def _score_shared(self, fn: Utility | None, rows: torch.Tensor) -> list[float] | None:
        """fn over rows [n, D] that every process holds, each process scoring its block; non-finite -> -inf."""
        if fn is None:
            return None
        coll, n = self.collective, rows.shape[0]
        mine = coll.owned(n)
        vals = score_rows(fn, rows[mine.start:mine.stop], self.batch_size)
        vals[~torch.isfinite(vals)] = -math.inf
        return coll.all_gather_scores(vals, n).tolist()

    def _starter_test_utilities(self) -> dict[str, float]:
        """Test utility of each starting expert (and of the base when a configuration includes it),
        scored once for the whole sweep: {name: utility}."""
        if self.test_utility is None:
            return {}
        K = len(self.pool)
        coef = torch.eye(K, dtype=torch.float64)
        names = list(self.pool.names)
        if any(c.include_base for c in self.configs):
            coef = torch.cat([coef, torch.zeros(1, K, dtype=torch.float64)])
            names.append(base_particle_name(names))
        sw = self.swarms[0]
        mine = self.collective.owned(len(names))
        rows = torch.empty(len(mine), sw.dim, dtype=sw.dtype, device=sw.device)
        if len(mine):
            self.pool.fill([(rows, coef[mine.start:mine.stop])])
        vals = score_rows(self.test_utility, rows, self.batch_size)
        vals[~torch.isfinite(vals)] = -math.inf
        return dict(zip(names, self.collective.all_gather_scores(vals, len(names)).tolist()))

    def _run_dir(self, i: int) -> Path | None:
        return self.output_dir / RUNS_DIR / f"{i:03d}" if self.output_dir is not None else None

    def _save_progress(self, start: float) -> None:
        if self.output_dir is None or self.collective.rank != 0:
            return
        atomic_write_json(self.output_dir / SWEEP_PROGRESS, {
            "calls": self.calls, "rows_scored": self.rows_scored, "seconds": self.seconds,
            "wall_seconds": self._wall_base + time.perf_counter() - start,
            "iterations": [sw.book.iteration if sw.book is not None else -1 for sw in self.swarms]})

    def _save_caches(self) -> None:
        """The utility's caches and every swarm's iteration now (a complete round), in one file."""
        buf = io.BytesIO()
        torch.save({"iterations": [sw.book.iteration for sw in self.swarms],
                    "caches": {name: c.state() for name, c in self._caches.items()}}, buf)
        # each process has its own caches (of the rows it scores)
        atomic_write_bytes(self.output_dir / SWEEP_CACHES.format(rank=self.collective.rank), buf.getvalue())
