"""The Model Swarms search loop (docs/ALGORITHM.md), generic over any flat tensor and any utility.

    swarm = Swarm(SwarmConfig(...), pool_or_points, utility, test_utility=None, output_dir=None)
    result = swarm.run()                              # SwarmResult
    result = Swarm.resume(output_dir, utility).run()  # after a crash: bit-identical continuation

    while not swarm.done:                             # the same search, driven from outside (ask/tell)
        asked = swarm.ask()                           # Ask: rows [n, D] + their particle indices
        swarm.tell(my_scores(asked.rows))             # n utilities, higher is better
    result = swarm.finish()

Checkpoints: every iteration appends a journal record (the utilities it received, a few hundred bytes,
fsync'ed; journal.py) and now and then a snapshot of the buffers is written (checkpoint.py). Resume
loads the latest snapshot and replays the journaled iterations after it (kernel steps and bookkeeping,
no evaluations): the search is a pure function of its seed, its experts and the utilities it got. A
utility that keeps caches between calls (a model utility's prediction memo and lower-layer cache,
utilities/caches.py) serves values computed in earlier batches, which may differ in the last bits from
a recomputation; its caches are saved with each snapshot, and resume restores them and re-evaluates the
iterations after the snapshot instead of replaying them, so that it too ends bit-identical.

A utility is any callable f(particles [B, D]) -> B floats (higher is better). The search passes row
views of its own x buffer (a gathered copy only when some particles are skipped) and as many
particles per call as it can (`batch_size` caps it). NaN/inf count as -inf (the worst possible),
are counted and reported. This module never imports transformers.

Ask/tell (the convention of nevergrad, cma and EvoTorch) splits an iteration at the utility call:
`ask()` applies restarts and the update (at the start: fills the population) and returns the rows
that need a utility; `tell(scores)` does the bookkeeping, the history line and the checkpoint.
`run()` is a loop over them and `score_rows` is how it calls the utility, so a search driven
through ask/tell gives the same results bit for bit. Several swarms can be driven together, their
asked rows scored in one batched call (swarm/sweep.py).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from swarmkern import ops
from swarmkern.flat import ExpertPool, load_experts, save_expert
from swarmkern.streaming import copy_rows_
from swarmkern.utilities import caches as utility_caches

from . import checkpoint as ckpt
from . import journal, outputs, reports
from .collective import Collective, LocalCollective
from .config import SwarmConfig
from .randomness import (Purpose, coefficient_factors, distinct_pair, element_seed, other_index,
                         uniforms)
from .state import STATE_VERSION, Bookkeeping, SwarmBuffers

Utility = Callable[[torch.Tensor], Any]
EXPERTS_JSON = "experts.json"
BUFFERS_DIR = "buffers"  # storage: mmap keeps the live x, v, pbest files here
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SwarmResult:
    """The outcome of a search. `best` is the global best location [D] (a copy)."""
    best: torch.Tensor
    best_utility: float
    best_index: int
    best_origin: dict[str, Any]
    iterations: int
    stop_reason: str
    summary: dict[str, Any]
    output_dir: Path | None
    best_path: Path | None = None


@dataclass
class Ask:
    """The rows one `Swarm.ask()` wants scored: `rows` [n, D] are this process's particles `indices`
    (global, ascending) at `iteration` (0 = the initial population). `rows` is a view of the swarm's
    x buffer (a gathered copy when some particles are skipped): read it, do not write it, and score
    it before the next `tell`. `parts` are the same rows as views of runs of consecutive rows (never
    a copy): with storage: mmap the search scores them part by part instead of gathering `rows`."""
    iteration: int
    indices: list[int]
    parts: list[torch.Tensor]

    @property
    def rows(self) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0]
        return torch.cat(self.parts) if self.parts else torch.empty(0)

    def __len__(self) -> int:
        return len(self.indices)


def score_rows(fn: Utility, rows: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """fn over `rows` [n, D] in calls of at most `batch_size` rows (None: one call), under no_grad:
    the raw scores as float64 on the CPU [n] (non-finite values are left as they are). No call for n = 0."""
    n = rows.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    if n == 0:
        return out
    bs = batch_size or n
    with torch.no_grad():
        for s in range(0, n, bs):
            part = rows[s:s + bs]
            got = fn(part)
            vals = (got.detach().to("cpu", torch.float64) if isinstance(got, torch.Tensor)
                    else torch.tensor([float(g) for g in got], dtype=torch.float64)).reshape(-1)
            if vals.numel() != part.shape[0]:
                raise ValueError(f"utility returned {vals.numel()} scores for {part.shape[0]} particles")
            out[s:s + part.shape[0]] = vals
    return out


@dataclass
class _Pending:
    """What `ask` leaves for `tell`: the asked rows and the iteration's context."""
    asked: Ask
    local_rows: torch.Tensor   # rows of this process's buffers, [n] long
    step: float                # the step length used by this iteration's update
    restarts: list[int]
    skipped: set[int]
    timings: dict[str, float]
    asked_at: float            # perf_counter when ask returned


class Swarm:
    """A particle swarm over the rows of one [P, D] buffer (see the module docstring).

    init: an ExpertPool, a [K, D] tensor of starting points, or a list of expert sources for
    `load_experts`. With `output_dir`, the run writes checkpoints, history.jsonl, summary.json,
    utilities.png and the exported best there.
    """

    def __init__(self, config: SwarmConfig, init: ExpertPool | torch.Tensor | Sequence[Any], utility: Utility,
                 test_utility: Utility | None = None, output_dir: str | Path | None = None, *,
                 collective: Collective | None = None, overwrite: bool = False, _resuming: bool = False):
        self.config = config if isinstance(config, SwarmConfig) else SwarmConfig.model_validate(config)
        self.pool = init if isinstance(init, ExpertPool) else load_experts(init)
        self.utility = utility
        self.test_utility = test_utility
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.collective = collective or LocalCollective()
        self.device = torch.device(self.config.device)
        self.dtype = self.pool.dtype if self.config.dtype == "auto" else _DTYPES[self.config.dtype]
        self.coef_weights, self.origins = self._population()
        self.n_particles = self.coef_weights.shape[0]
        self.buffers: SwarmBuffers | None = None
        self.book: Bookkeeping | None = None
        self.history: list[dict[str, Any]] = []
        self._pending: _Pending | None = None  # the last ask(), until its tell()
        self._session_start = time.perf_counter()
        self._wall_base = 0.0
        self._last_checkpoint_s = 0.0  # the previous iteration's journal append + snapshot, if any
        self._last_snapshot_s = 0.0    # ... of which the snapshot
        self._journal: journal.Journal | None = None
        self._snapshot_iteration: int | None = None  # the iteration of the latest snapshot
        self._snapshot_started = 0.0                  # perf_counter() when it started
        self._snapshot_cost = 0.0                     # its duration in seconds
        # the utilities' caches (prediction memo, lower-layer cache): saved with every snapshot, so that a
        # resumed run sees what the uninterrupted one saw (utilities/caches.py)
        self._caches = utility_caches.collect({"dev": utility, "test": test_utility})
        self.snapshots_deferred = False  # a sweep writes the snapshots itself, after each complete round
        if self.config.storage == "mmap" and self.output_dir is None:
            raise ValueError("swarm.storage: mmap needs an output directory (the buffers are files there)")
        if self.output_dir is not None and self.collective.rank == 0 and not _resuming:
            if ckpt.has_checkpoint(self.output_dir) and not overwrite:
                raise FileExistsError(f"{self.output_dir}: already holds a run; resume it (swarmkern resume "
                                      "DIR / Swarm.resume) or start afresh (--overwrite / overwrite=True)")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if overwrite:
                _clear_run(self.output_dir)

    # -- public ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.pool.layout.numel

    @property
    def best(self) -> torch.Tensor:
        """The global best location [D] (a view of its personal-best row)."""
        self._require_started()
        return self.buffers.gbest

    @property
    def best_utility(self) -> float:
        self._require_started()
        return self.book.u_gbest

    @property
    def done(self) -> bool:
        """True once a stop rule (max_iters, patience) fires with no ask pending; False before the
        initial population is scored."""
        return self.book is not None and self._pending is None and self._stop_reason() is not None

    def run(self) -> SwarmResult:
        """Initialise (if not resumed), iterate until a stop rule fires, then write the outputs:
        a loop of ask / score_rows / tell, then finish."""
        from tqdm.auto import tqdm

        cfg = self.config
        if self.book is None:  # the initial population is the first ask/tell
            self.tell(self._score(self.utility, self.ask()))
        bar = tqdm(total=cfg.max_iters, initial=self.book.iteration, unit="it", desc="swarm", leave=False,
                   disable=not cfg.progress or self.collective.rank != 0, dynamic_ncols=True)
        try:
            while not self.done:
                self.tell(self._score(self.utility, self.ask()))
                bar.update(1)
                bar.set_postfix(best=f"{self.book.u_gbest:.4g}", step=f"{self.book.step:.3g}")
        finally:
            bar.close()
        return self.finish()

    def ask(self) -> Ask:
        """The rows that need a utility now. The first call fills the initial population (all
        particles, iteration 0); later calls restart stray particles, apply the update and draw
        dropK/dropN (skipped particles keep their last utility and are not asked). Asking again
        before `tell` returns the same Ask. Under torch.distributed each process asks (and is told)
        the rows it owns. Raises RuntimeError once the search is done."""
        if self._pending is not None:
            return self._pending.asked
        if self.book is None:
            return self._ask_initial()
        reason = self._stop_reason()
        if reason is not None:
            raise RuntimeError(f"the search has stopped ({reason}): call finish()")
        return self._ask_iteration()

    def tell(self, scores: torch.Tensor | Sequence[float]) -> None:
        """The utilities of the last `ask()`'s rows, in its order (NaN/inf count as -inf). Updates
        personal and global bests, the global worst, the step length and the counters, appends the
        history line and writes the checkpoint when one is due."""
        pend = self._pending
        if pend is None:
            raise RuntimeError("tell() without a pending ask(): call ask() first")
        vals = (scores.detach().to("cpu", torch.float64) if isinstance(scores, torch.Tensor)
                else torch.tensor([float(x) for x in scores], dtype=torch.float64)).reshape(-1)
        if vals.numel() != len(pend.asked):
            raise ValueError(f"tell: {vals.numel()} scores for {len(pend.asked)} asked particles")
        told_at = time.perf_counter()
        self._pending = None
        u, nonfinite_mask, bad_mask = self._gather_scores(vals, pend.local_rows)
        if pend.asked.iteration == 0:
            self._tell_initial(u, nonfinite_mask, bad_mask, evaluate_s=told_at - pend.asked_at)
        else:
            self._tell_iteration(pend, u, nonfinite_mask, bad_mask, told_at)

    def finish(self) -> SwarmResult:
        """Score the global best on the test utility, export it, write summary.json and the plot;
        the SwarmResult. Call it once `done` (or earlier, to stop the search where it is)."""
        if self._pending is not None:
            raise RuntimeError("finish() with an ask pending: tell() its scores first")
        self._require_started()
        if self.output_dir is not None and self.config.checkpoint and self._snapshot_iteration != self.book.iteration:
            self._snapshot()  # the final state, complete on disk (a resume then only finishes)
        self.book.stop_reason = self._stop_reason() or "stopped by the caller"
        return self._finish()

    @classmethod
    def resume(cls, output_dir: str | Path, utility: Utility, test_utility: Utility | None = None, *,
               collective: Collective | None = None, pool: ExpertPool | None = None,
               until: int | None = None, own_caches: bool = True) -> "Swarm":
        """A Swarm restored from `output_dir`: the latest complete snapshot (written by any number of
        processes) plus a replay of the journaled iterations after it. `.run()` continues it and ends
        exactly where the uninterrupted run would have (same buffers, same history).

        pool: the experts (default: read again from the paths in experts.json; when they have moved, a
        description that can export but not read them, and the reports that need them are skipped).
        When the utility keeps caches (utilities/caches.py) and the snapshot saved them, they are restored
        and the iterations after the snapshot are evaluated again instead of replayed. `until`: replay
        no further than this iteration (a sweep's last complete round); `own_caches=False`: the caller
        (a sweep) saves and restores the utility's caches itself."""
        output_dir = Path(output_dir)
        collective = collective or LocalCollective()
        found = ckpt.latest_complete(output_dir)
        if found is None:
            raise FileNotFoundError(f"{output_dir}: no complete checkpoint to resume from "
                                    f"(no iteration has the shards of every rank in {ckpt.CHECKPOINT_DIR}/)")
        state = found[1][0]
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{output_dir}: checkpoint version {state.get('version')} is not {STATE_VERSION}")
        config = SwarmConfig.model_validate(state["config"])
        described = json.loads((output_dir / EXPERTS_JSON).read_text())
        if pool is None:  # the experts from their recorded paths, or (moved) their description only
            pool = ExpertPool.reload(described)
        elif pool.layout != ExpertPool.from_description(described).layout or len(pool) != len(described["names"]):
            raise ValueError(f"{output_dir}: the experts given to resume differ from the run's ({EXPERTS_JSON})")
        self = cls(config, pool, utility, test_utility, output_dir, collective=collective, _resuming=True)
        if not own_caches:
            self._caches = {}
        if until is not None and book_iteration(state) > until:
            raise ValueError(f"{output_dir}: its snapshot (iteration {book_iteration(state)}) is newer than "
                             f"iteration {until}, where the resume must end")
        if str(self.dtype).removeprefix("torch.") != state["dtype"]:
            raise ValueError(f"{output_dir}: checkpoint dtype {state['dtype']} is not the run's {self.dtype}")
        book = Bookkeeping.from_json(state["book"])
        if book.n_particles != self.n_particles:
            raise ValueError(f"{output_dir}: checkpoint has {book.n_particles} particles, config gives {self.n_particles}")
        self.buffers = self._new_buffers(fresh=False)  # the mapped files are reused, then overwritten
        ckpt.load_sharded(output_dir, collective, into=self.buffers.tensors())
        self.book = book
        self._point_gbest()
        self._snapshot_iteration, self._snapshot_cost = book.iteration, float(state.get("snapshot_seconds", 0.0))
        self._snapshot_started = time.perf_counter()
        records, ends = journal.read_with_ends(output_dir / ckpt.CHECKPOINT_DIR)
        keep = ends[-1] if ends else 0
        # every rank decides alike (rank 0's file, the same world size): some re-evaluating while others
        # replay would never meet again
        saved_caches = None
        if self._caches and int(found[1][0].get("world_size", 1)) == collective.world_size \
                and ckpt.load_caches(output_dir, book.iteration, 0, exists_only=True):
            saved_caches = ckpt.load_caches(output_dir, book.iteration, collective.rank) or {}
        if saved_caches is not None:
            # the caches as they were at the snapshot: the iterations after it are evaluated again (in the
            # batches the uninterrupted run used, against the same cache entries), not replayed
            utility_caches.restore(self._caches, saved_caches)
            records = [r for r in records if r.iteration <= book.iteration]
            keep = ends[len(records) - 1] if records else 0
        if until is not None:
            records = [r for r in records if r.iteration <= until]
            keep = ends[len(records) - 1] if records else 0
        todo = [r for r in records if r.iteration > book.iteration]
        if todo and todo[0].iteration != book.iteration + 1:
            raise ValueError(f"{output_dir}: the journal starts at iteration {todo[0].iteration}, after the "
                             f"snapshot of iteration {book.iteration} + 1")
        for record in todo:  # each journaled iteration: ask (restarts, the update), tell what it was told
            self._replay(record)
        if todo:
            book.wall_seconds, book.history_bytes = todo[-1].wall_seconds, todo[-1].history_bytes
        self._wall_base = book.wall_seconds
        if collective.rank == 0:
            outputs.truncate_history(output_dir, book.history_bytes)
            if config.checkpoint:  # records end where the replay ended; a torn one is cut off
                self._journal = journal.Journal(output_dir / ckpt.CHECKPOINT_DIR,
                                                keep_bytes=keep if records and records[-1].iteration >= book.iteration else 0)
        self.history = outputs.read_history(output_dir)
        return self

    def trajectory_projection(self) -> reports.Projection:
        """The projection on the starting experts' first two principal directions (history's pca_xy)."""
        return reports.projection_for(self)

    def export_best(self, path: str | Path) -> Path:
        """Write the global best in the experts' own format (PEFT adapter dir or .safetensors)."""
        self._require_started()
        return save_expert(self.pool, self.buffers.gbest, path,
                           metadata={"swarmkern_utility": repr(self.book.u_gbest)})

    # -- population ------------------------------------------------------------------------------
    def _population(self) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Every particle as float64 weights over the K experts [P, K]: experts (identity rows), the
        base (a zero row, with include_base) and crossover children w1*a + (1-w1)*b of two distinct
        particles drawn among all before it, w1 ~ U(crossover_weight)."""
        cfg, K = self.config, len(self.pool)
        rows = [torch.eye(K, dtype=torch.float64)[k] for k in range(K)]
        origins: list[dict[str, Any]] = [{"kind": "expert", "name": n} for n in self.pool.names]
        if cfg.include_base:
            rows.append(torch.zeros(K, dtype=torch.float64))
            origins.append({"kind": "base", "name": base_particle_name(self.pool.names)})
        n_start = len(rows)
        target = cfg.n_particles if cfg.n_particles is not None else n_start
        if target < n_start:
            raise ValueError(f"swarm.n_particles: {target} is fewer than the {n_start} starting particles")
        if target > n_start and n_start < 2:
            raise ValueError("swarm.n_particles: crossover needs at least 2 starting particles")
        lo, hi = cfg.crossover_weight
        for c in range(n_start, target):
            u = uniforms(cfg.seed, Purpose.CROSSOVER, [c], 0)[0].tolist()
            a, b = distinct_pair(u[0], u[1], c)
            w1 = lo + (hi - lo) * u[2]
            rows.append(w1 * rows[a] + (1.0 - w1) * rows[b])
            origins.append({"kind": "child", "name": f"child_{c - n_start}", "parents": [a, b], "w1": w1})
        if len(rows) < 2 and cfg.velocity_init == "random":
            raise ValueError("swarm.velocity_init: 'random' needs at least 2 particles")
        return torch.stack(rows), origins

    # -- initialisation ----------------------------------------------------------------------------
    def _ask_initial(self) -> Ask:
        cfg, coll = self.config, self.collective
        P = self.n_particles
        owned = coll.owned(P)
        buf = self._new_buffers(fresh=True)
        self.buffers = buf
        own = list(owned)
        targets = [(buf.x, self.coef_weights[own])]
        if cfg.velocity_init == "random":
            # v_i = x_j - x_i in expert coordinates, so that no process needs another's rows.
            u = uniforms(cfg.seed, Purpose.VELOCITY_PARTNER, own, 0)[:, 0].tolist()
            partners = [other_index(ui, i, P) for ui, i in zip(u, own)]
            targets.append((buf.v, self.coef_weights[partners] - self.coef_weights[own]))
        self.pool.fill(targets, block=buf.block)
        copy_rows_(buf.pbest, buf.x, buf.block)
        return self._ask_rows(0, set(), step=cfg.step, restarts=[], timings={})

    def _tell_initial(self, u: list[float], nonfinite_mask: list[bool], bad_mask: list[bool], *,
                      evaluate_s: float) -> None:
        cfg, coll, buf = self.config, self.collective, self.buffers
        P, owned = self.n_particles, buf.owned
        nonfinite, bad_rows = sum(nonfinite_mask), [i for i in range(P) if bad_mask[i]]
        book = Bookkeeping(n_particles=P, step=cfg.step, u_now=list(u), u_pbest=list(u), since_best=[1] * P,
                           origins=self.origins, initial_utilities=list(u))
        book.gbest_index = max(range(P), key=lambda i: (u[i], -i))  # first best
        book.g_history = [u[book.gbest_index]]
        book.nonfinite_total = nonfinite
        book.nonfinite_rows_total = len(bad_rows)
        book.evaluations_total = P
        self.book = book
        self._point_gbest()
        worst = self._new_worst(u, float("inf"), first=True, exclude=bad_rows)
        if worst is not None:
            book.gworst_index, book.u_worst = worst
            self._copy_worst(worst[0])
        else:  # every location is non-finite: no worst yet (u_worst stays +inf, gworst the origin)
            book.gworst_index = -1
            buf.gworst.zero_()
        if cfg.velocity_init == "best":
            torch.sub(buf.gbest.unsqueeze(0), buf.x, out=buf.v)
        if self.test_utility is not None:
            starters = [i for i, o in enumerate(self.origins) if o["kind"] != "child"]
            local = torch.tensor([i - owned.start for i in starters if i in owned], dtype=torch.long)
            vals = torch.cat([score_rows(self.test_utility, part, cfg.batch_size) for part in self._row_parts(local)])
            vals[~torch.isfinite(vals)] = -math.inf
            full = torch.full((len(owned),), math.nan, dtype=torch.float64)
            if len(local):
                full[local] = vals
            gathered = coll.all_gather_scores(full, P).tolist()
            book.initial_test_utilities = [gathered[i] for i in starters]
        if self.output_dir is not None and coll.rank == 0:
            ckpt.atomic_write_json(self.output_dir / EXPERTS_JSON, self.pool.describe(), indent=2)
            outputs.truncate_history(self.output_dir, 0)
            if cfg.checkpoint:
                self._journal = journal.Journal(self.output_dir / ckpt.CHECKPOINT_DIR, keep_bytes=0)
        self._record(0, cfg.step, restarts=[], skipped=[], improved=list(range(P)), nonfinite=nonfinite,
                     timings={"evaluate_s": evaluate_s})
        self._checkpoint(journal.Record(0, list(u), [i for i in range(P) if nonfinite_mask[i]], bad_rows, [], [],
                                        cfg.step, 0, 0.0))

    def _new_buffers(self, fresh: bool) -> SwarmBuffers:
        cfg = self.config
        # the per-element random stream is keyed by the column: its kernel must see every column at once
        block = self.dim if cfg.randomness == "element" else cfg.block_size
        directory = self.output_dir / BUFFERS_DIR if self.output_dir is not None else None
        return SwarmBuffers(self.collective.owned(self.n_particles), self.dim, self.dtype, self.device,
                            storage=cfg.storage, directory=directory, rank=self.collective.rank, block=block,
                            fresh=fresh)

    # -- one iteration -------------------------------------------------------------------------------
    def _stop_reason(self) -> str | None:
        cfg, book = self.config, self.book
        if book.iteration >= cfg.max_iters:
            return "max_iters"
        window = cfg.patience if cfg.patience_mode == "reference" else cfg.patience + 1
        hist = book.g_history
        if len(hist) > cfg.patience and len(hist) >= window and len(set(hist[-window:])) == 1:
            return "patience"
        return None

    def _ask_iteration(self) -> Ask:
        cfg, book, buf = self.config, self.book, self.buffers
        P, owned = self.n_particles, buf.owned
        t = book.iteration + 1
        step = book.step
        t0 = time.perf_counter()

        # Stray particles restart from their personal best with zero velocity, before the update.
        restarts = [i for i in range(P)
                    if cfg.restart and book.since_best[i] >= cfg.restart_patience * cfg.patience]
        for i in restarts:
            r = buf.local(i)
            if r is not None:
                buf.x[r].copy_(buf.pbest[r])
                buf.v[r].zero_()

        if cfg.randomness == "element":
            phi = torch.tensor([cfg.phi_v, cfg.phi_p, cfg.phi_g, cfg.phi_w if cfg.repel else 0.0])
            phi = phi.expand(len(owned), 4).to(self.device).contiguous()
            tk = time.perf_counter()
            model_swarms = cfg.update == "model_swarms"  # classic: constant inertia, no normalisation
            ops.pso_step_random_(buf.x, buf.v, buf.pbest, buf.gbest, buf.gworst, phi, step, element_seed(cfg.seed),
                                 t, owned.start, cfg.r_range[0], cfg.r_range[1], model_swarms, model_swarms,
                                 backend=cfg.backend)
        else:
            coef = self.coefficients(t).to(self.device)
            tk = time.perf_counter()
            for a, b in buf.blocks():  # one block for storage: memory; elementwise, so the same numbers
                ops.pso_step_(buf.x[:, a:b], buf.v[:, a:b], buf.pbest[:, a:b], buf.gbest[a:b], buf.gworst[a:b],
                              coef, step, backend=cfg.backend)
        if cfg.bounds is not None:
            for a, b in buf.blocks():
                buf.x[:, a:b].clamp_(*cfg.bounds)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        return self._ask_rows(t, self._skipped(t), step=step, restarts=restarts,
                              timings={"update_s": t1 - t0, "kernel_s": t1 - tk})

    def _tell_iteration(self, pend: _Pending, u: list[float], nonfinite_mask: list[bool], bad_mask: list[bool],
                        told_at: float, *, replay: bool = False) -> None:
        """The bookkeeping of an iteration given every particle's utility; with `replay` (resume redoing
        a journaled iteration) nothing is written."""
        cfg, book, buf = self.config, self.book, self.buffers
        P, t, step = self.n_particles, pend.asked.iteration, pend.step
        restarts, skipped = pend.restarts, pend.skipped
        nonfinite, bad_rows = sum(nonfinite_mask), [i for i in range(P) if bad_mask[i]]
        improved = []
        for i in range(P):
            book.u_now[i] = u[i]
            if u[i] > book.u_pbest[i]:  # strict improvement only
                book.u_pbest[i] = u[i]
                book.since_best[i] = 1
                improved.append(i)
                r = buf.local(i)
                if r is not None:
                    buf.pbest[r].copy_(buf.x[r])
            else:
                book.since_best[i] += 1
        best_now = max(range(P), key=lambda i: (u[i], -i))
        if u[best_now] > book.u_gbest:
            book.gbest_index = best_now  # the first particle reaching the new best (reference)
            self._point_gbest()
        elif book.gbest_index in improved:  # gbest's own pbest row moved: refresh the other processes' copy
            self._point_gbest()
        book.g_history.append(book.u_gbest)
        worst = self._new_worst(u, book.u_worst, first=False, exclude=bad_rows)
        if worst is not None:
            book.gworst_index, book.u_worst = worst
            self._copy_worst(worst[0])
        book.step = max(step * cfg.step_factor, cfg.min_step)
        book.iteration = t
        book.nonfinite_total += nonfinite
        book.nonfinite_rows_total += len(bad_rows)
        book.restarts_total += len(restarts)
        book.evaluations_total += P - len(skipped)
        book.skipped_total += len(skipped)
        if replay:
            return
        t3 = time.perf_counter()
        self._record(t, step, restarts=restarts, skipped=sorted(skipped), improved=improved, nonfinite=nonfinite,
                     timings={**pend.timings, "evaluate_s": told_at - pend.asked_at, "bookkeeping_s": t3 - told_at,
                              "last_checkpoint_s": self._last_checkpoint_s, "last_snapshot_s": self._last_snapshot_s})
        self._checkpoint(journal.Record(t, list(u), [i for i in range(P) if nonfinite_mask[i]], bad_rows,
                                        sorted(skipped), restarts, step, 0, 0.0))

    def _replay(self, record: journal.Record) -> None:
        """Redo a journaled iteration: ask (restarts, the update), then its bookkeeping with the
        utilities the journal recorded: no evaluation, nothing written."""
        asked, pend, P = self.ask(), self._pending, self.n_particles
        if record.iteration != asked.iteration or record.skipped != sorted(pend.skipped) \
                or record.restarts != pend.restarts or record.step != pend.step:
            raise ValueError(f"journal record of iteration {record.iteration} does not match the run "
                             f"(iteration {asked.iteration}): was the configuration changed?")
        self._pending = None
        nonfinite, bad = set(record.nonfinite), set(record.bad_rows)
        self._tell_iteration(pend, list(record.utilities), [i in nonfinite for i in range(P)],
                             [i in bad for i in range(P)], time.perf_counter(), replay=True)

    def coefficients(self, iteration: int) -> torch.Tensor:
        """The normalised (c_v, c_p, c_g, c_w) of this process's particles at an iteration: fp32 [n, 4].
        a = r_v*phi_v, ..., d = r_w*phi_w (0 without repel); c = (a, b, c, d) / (a + b + c + d)."""
        cfg = self.config
        phi = torch.tensor([cfg.phi_v, cfg.phi_p, cfg.phi_g, cfg.phi_w if cfg.repel else 0.0], dtype=torch.float64)
        owned = self.buffers.owned if self.buffers is not None else self.collective.owned(self.n_particles)
        if cfg.randomness == "off":
            r = torch.ones(len(owned), 4, dtype=torch.float64)
        else:
            r = coefficient_factors(cfg.seed, owned, iteration, *cfg.r_range)
        a = r * phi
        total = a.sum(dim=1, keepdim=True)
        return torch.where(total > 0, a / torch.where(total > 0, total, 1.0), 0.0).to(torch.float32)

    def _skipped(self, t: int) -> set[int]:
        """dropK (the whole iteration) and dropN (each particle): particles whose evaluation is skipped."""
        cfg, P = self.config, self.n_particles
        if cfg.drop_k > 0 and float(uniforms(cfg.seed, Purpose.DROP_ITERATION, [0], t)[0, 0]) < cfg.drop_k:
            return set(range(P))
        if cfg.drop_n > 0:
            u = uniforms(cfg.seed, Purpose.DROP_PARTICLE, range(P), t)[:, 0]
            return {i for i in range(P) if float(u[i]) < cfg.drop_n}
        return set()

    # -- helpers --------------------------------------------------------------------------------------
    def _row_parts(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Local rows `rows` [n] (ascending) of x as views of its runs of consecutive rows."""
        if len(rows) == 0:
            return [self.buffers.x[:0]]
        cuts = (torch.nonzero(rows[1:] - rows[:-1] != 1).flatten() + 1).tolist()
        return [self.buffers.x[int(run[0]):int(run[-1]) + 1] for run in torch.tensor_split(rows, cuts)]

    def _score(self, fn: Utility, asked: Ask) -> torch.Tensor:
        """`score_rows` over an Ask: the gathered rows in one go (as many particles per call as
        batch_size allows), or with storage: mmap each run of consecutive mapped rows on its own, so
        that no copy of the rows is ever made."""
        if self.config.storage == "mmap" and len(asked.parts) > 1:
            return torch.cat([score_rows(fn, part, self.config.batch_size) for part in asked.parts])
        return score_rows(fn, asked.rows, self.config.batch_size)

    def _ask_rows(self, t: int, skipped: set[int], *, step: float, restarts: list[int],
                  timings: dict[str, float]) -> Ask:
        """Ask for this process's particles at iteration t except `skipped`."""
        owned = self.buffers.owned
        local = [r for r, i in enumerate(owned) if i not in skipped]
        rows = torch.tensor(local, dtype=torch.long)
        asked = Ask(iteration=t, indices=[owned.start + r for r in local], parts=self._row_parts(rows))
        self._pending = _Pending(asked, rows, step, restarts, skipped, timings, time.perf_counter())
        return asked

    def _gather_scores(self, scores: torch.Tensor, rows: torch.Tensor) -> tuple[list[float], list[bool], list[bool]]:
        """The scores of local rows `rows` (non-finite -> -inf; the others keep their last score) ->
        for all P particles (gathered): scores, non-finite-score flags, non-finite-location flags."""
        buf, coll, P = self.buffers, self.collective, self.n_particles
        owned = buf.owned
        bad = ~torch.isfinite(scores)
        nonfinite = int(bad.sum())
        bad_rows = []
        if nonfinite:
            scores = scores.clone()
            scores[bad] = -math.inf
            for r in rows[bad].tolist():
                if not bool(torch.isfinite(buf.x[r]).all()):
                    bad_rows.append(r)
        local = torch.tensor([self.book.u_now[i] if self.book is not None else math.nan for i in owned],
                             dtype=torch.float64)
        flags = torch.zeros(len(owned), dtype=torch.float64)
        bad_loc = torch.zeros(len(owned), dtype=torch.float64)
        if len(rows):
            local[rows] = scores
            flags[rows] = (scores == -math.inf).to(torch.float64) if nonfinite else 0.0
        for r in bad_rows:
            bad_loc[r] = 1.0
        u = coll.all_gather_scores(local, P).tolist()
        nf = [bool(x) for x in coll.all_gather_scores(flags, P).tolist()]
        br = [bool(x) for x in coll.all_gather_scores(bad_loc, P).tolist()]
        return u, nf, br

    def _new_worst(self, u: list[float], u_worst: float, *, first: bool,
                   exclude: Sequence[int] = ()) -> tuple[int, float] | None:
        """(index, utility) of a new global worst location, or None. Strictly below the old worst;
        ties: the first particle at initialisation, the last one afterwards (as the reference code).
        Locations that are themselves non-finite are never taken: they would poison every update."""
        cand = [i for i in range(len(u)) if i not in set(exclude)]
        if not cand:
            return None
        lo = min(u[i] for i in cand)
        if not lo < u_worst:
            return None
        ties = [i for i in cand if u[i] == lo]
        return (ties[0] if first else ties[-1]), lo

    def _copy_worst(self, particle: int) -> None:
        buf, coll = self.buffers, self.collective
        r = buf.local(particle)
        coll.broadcast_row(buf.x[r] if r is not None else None, coll.owner(particle, self.n_particles), buf.gworst)

    def _point_gbest(self) -> None:
        """gbest = the pbest row of the best particle: a view on one process, a broadcast copy otherwise."""
        buf, coll, g = self.buffers, self.collective, self.book.gbest_index
        r = buf.local(g)
        out = buf.make_gbest_buffer() if coll.world_size > 1 else None
        buf.gbest = coll.broadcast_row(buf.pbest[r] if r is not None else None, coll.owner(g, self.n_particles), out)

    def _record(self, t: int, step: float, *, restarts, skipped, improved, nonfinite, timings) -> None:
        book = self.book
        rec = {"iteration": t, "utilities": [outputs.json_float(x) for x in book.u_now],
               "gbest_utility": outputs.json_float(book.u_gbest), "gbest_index": book.gbest_index,
               "gworst_utility": outputs.json_float(book.u_worst), "gworst_index": book.gworst_index,
               "step": step, "restarts": restarts, "skipped": skipped, "improved": improved,
               "nonfinite": nonfinite, "timings": timings}
        if self.config.report_trajectory:
            rec["pca_xy"] = reports.pca_xy(self)
        self.history.append(rec)
        if self.output_dir is not None and self.collective.rank == 0:
            book.history_bytes = outputs.append_history(self.output_dir, rec)

    def _checkpoint(self, record: journal.Record) -> None:
        """Journal this iteration (rank 0), then snapshot the buffers when one is due."""
        book, cfg = self.book, self.config
        book.wall_seconds = self._wall_base + (time.perf_counter() - self._session_start)
        if self.output_dir is None or not cfg.checkpoint:
            return
        t0 = time.perf_counter()
        if self._journal is not None:
            record.history_bytes, record.wall_seconds = book.history_bytes, book.wall_seconds
            self._journal.append(record)
        self._last_snapshot_s = 0.0
        if not self.snapshots_deferred:
            self.snapshot_if_due()
        self._last_checkpoint_s = time.perf_counter() - t0

    def snapshot_if_due(self, *, force: bool = False) -> bool:
        """Write a snapshot when the policy says one is due (or `force`), unless this iteration has one.
        Called by `tell`, or by a sweep (snapshots_deferred) once a whole round is on disk."""
        if self.output_dir is None or not self.config.checkpoint or self._snapshot_iteration == self.book.iteration:
            return False
        if not (force or self._snapshot_due()):
            return False
        self._snapshot()
        self._last_snapshot_s = self._snapshot_cost
        return True

    def _snapshot_due(self) -> bool:
        """snapshot_every > 0: at its multiples; else snapshot_seconds after the last one; else
        once the last one took at most snapshot_budget of the time since it started. Time-based rules
        are agreed between processes (any rank due -> all), so that every rank writes the same iteration."""
        cfg = self.config
        if self._snapshot_iteration is None:
            return True
        if cfg.snapshot_every:  # multiples of it: the same iterations whether or not the run was resumed
            return self.book.iteration % cfg.snapshot_every == 0
        since = time.perf_counter() - self._snapshot_started
        due = since >= cfg.snapshot_seconds if cfg.snapshot_seconds is not None \
            else self._snapshot_cost <= cfg.snapshot_budget * since
        coll = self.collective
        if coll.world_size > 1:
            flags = torch.full((len(self.buffers.owned),), float(due), dtype=torch.float64)
            due = bool(coll.all_gather_scores(flags, self.n_particles).max() > 0)
        return due

    def _snapshot(self) -> None:
        book = self.book
        t0 = time.perf_counter()
        state = {"version": STATE_VERSION, "config": self.config.model_dump(mode="json"), "book": book.to_json(),
                 "dtype": str(self.dtype).removeprefix("torch."), "dim": self.dim,
                 "owned": [self.buffers.owned.start, self.buffers.owned.stop],
                 "world_size": self.collective.world_size, "snapshot_seconds": self._snapshot_cost}
        caches = {name: c.state() for name, c in self._caches.items()} if self._caches else None
        ckpt.save_checkpoint(self.output_dir, book.iteration, self.buffers.tensors(), state, self.collective.rank,
                             caches=caches)
        self._snapshot_iteration, self._snapshot_started = book.iteration, t0
        self._snapshot_cost = time.perf_counter() - t0

    def _finish(self) -> SwarmResult:
        book, buf, coll = self.book, self.buffers, self.collective
        g = book.gbest_index
        best_path = None
        test_utility = None
        if self.test_utility is not None:
            vals, _, _ = self._evaluate_row(self.test_utility, buf.gbest)
            test_utility = vals
        if self.output_dir is not None and coll.rank == 0:
            name = "best" if self.pool.kind == "peft" else "best.safetensors"
            best_path = self.export_best(self.output_dir / name)
        summary = self._summary(test_utility, best_path)
        try:
            summary["reports"] = reports.end_of_search(self, summary)
        except Exception as err:  # a report must not lose a finished search: say why it is missing
            summary["reports"] = {"skipped": {"reports": f"{type(err).__name__}: {err}"}}
        if self.output_dir is not None and coll.rank == 0:
            outputs.write_summary(self.output_dir, summary)
            try:
                outputs.plot_history(self.output_dir)
            except Exception as err:  # a plotting failure must not lose a finished search
                summary["plot_error"] = str(err)
                outputs.write_summary(self.output_dir, summary)
        return SwarmResult(best=buf.gbest.detach().clone(), best_utility=book.u_gbest, best_index=g,
                           best_origin=self.origins[g], iterations=book.iteration,
                           stop_reason=book.stop_reason or "", summary=summary, output_dir=self.output_dir,
                           best_path=best_path)

    def _evaluate_row(self, fn: Utility, row: torch.Tensor) -> tuple[float, int, int]:
        with torch.no_grad():
            got = fn(row.unsqueeze(0))
        val = float(got[0]) if not isinstance(got, torch.Tensor) else float(got.reshape(-1)[0])
        return (val if math.isfinite(val) else -math.inf), 0, 0

    def _summary(self, test_utility: float | None, best_path: Path | None) -> dict[str, Any]:
        book, g = self.book, self.book.gbest_index
        init = book.initial_utilities
        start_rank = sorted(range(len(init)), key=lambda i: (-init[i], i)).index(g)
        f = outputs.json_float
        summary: dict[str, Any] = {
            "best_dev_utility": f(book.u_gbest),
            "initial_dev_utilities": [f(x) for x in init],
            "initial_best_dev_utility": f(max(init)),
            "iterations": book.iteration,
            "stop_reason": book.stop_reason,
            "best_particle_index": g,
            "best_particle_origin": self.origins[g],
            "best_particle_initial_utility": f(init[g]),
            "best_particle_initial_rank": start_rank,  # 0 = it started as the best particle
            "personal_best_utilities": [f(x) for x in book.u_pbest],  # for top-k ensembles of personal bests
            "particles": [{"index": i, **o} for i, o in enumerate(self.origins)],
            "n_particles": self.n_particles,
            "dim": self.dim,
            "wall_seconds": book.wall_seconds,
            "evaluations": book.evaluations_total,
            "skipped_evaluations": book.skipped_total,
            "restarts": book.restarts_total,
            "nonfinite_utilities": book.nonfinite_total,
            "nonfinite_locations": book.nonfinite_rows_total,
            "final_step": book.step,
            "config": self.config.model_dump(mode="json"),
        }
        if self.test_utility is not None:
            summary["test_utility"] = f(test_utility) if test_utility is not None else None
            summary["initial_test_utilities"] = [f(x) for x in (book.initial_test_utilities or [])]
            summary["initial_test_particles"] = [i for i, o in enumerate(self.origins) if o["kind"] != "child"]
        if best_path is not None:
            summary["best_path"] = str(best_path)
        return summary

    def _require_started(self) -> None:
        if self.book is None:
            raise RuntimeError("the swarm has not been initialised yet: call run()")


def base_particle_name(expert_names: Sequence[str]) -> str:
    """The base particle's name: "base", unless an expert has that name (then "base_model", ...)."""
    taken = set(expert_names)
    for name in ("base", "base_model", *(f"base_model_{i}" for i in range(2, len(taken) + 3))):
        if name not in taken:
            return name
    raise AssertionError("unreachable: more candidate names than experts")


def book_iteration(state: dict[str, Any]) -> int:
    """The iteration a snapshot's state was written at."""
    return int(state["book"]["iteration"])


def _clear_run(output_dir: Path) -> None:
    import shutil

    for name in (ckpt.CHECKPOINT_DIR, BUFFERS_DIR):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in (outputs.HISTORY, outputs.SUMMARY, outputs.PLOT, EXPERTS_JSON, reports.REPORTS, reports.TRAJECTORY_PLOT,
                 reports.PROJECTION):
        (output_dir / name).unlink(missing_ok=True)
