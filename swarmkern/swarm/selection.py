"""The export of a search, chosen on data the search never saw, and never worse than the best expert.

    plan = prepare_search(run_config, output_dir, resume=False)   # carve select/ from dev (or read it back)
    ... the search runs on plan.search_spec (the rest of dev) ...
    summary = finish_search(swarm, plan, select_utility, seed)     # candidates, guard, intervals, export

The candidates (`candidate_rows`): the final global best, the next top-k personal bests (by the search's
dev utility), the "soup of personal bests" (the plain average of the top-k personal-best rows) and the
best starting expert (best dev utility among the experts). With a select split the exported one is the
candidate with the best utility on it; with `select: dev` it is the global best (the paper's rule).
The guard: unless a candidate beats the best expert strictly on the held-out split, the expert is
exported, and one line says so. Every comparison with the best expert (dev, select, test) carries its
paired interval and test (swarmkern/stats.py); test is scored for the report only, after the choice.

A sweep uses the same pieces (`score_rows_on`, `comparisons`, `guard`) for its configurations and its
winner (swarm/sweep.py).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from swarmkern import stats
from swarmkern.atomic import atomic_write_json
from swarmkern.utilities.protocol import Predicting

if TYPE_CHECKING:
    from swarmkern.config import RunConfig, SelectSection

    from .search import Swarm

SELECT_DIR = "select"
SPLIT_JSON = "split.json"


class SelectSplitChanged(ValueError):
    """The dev file of a run being resumed is not the one its select split was carved from."""


# -- the split -------------------------------------------------------------------------------------------
def dev_files(spec: dict[str, Any]) -> dict[str, str]:
    """{where: path} of the dev JSONL files a utility spec reads (every task of a multitask spec)."""
    if spec.get("type") == "multitask":
        return {f"utility.tasks.{k}.dev": t["dev"] for k, t in (spec.get("tasks") or {}).items()
                if isinstance(t, dict) and isinstance(t.get("dev"), str)}
    return {"utility.dev": spec["dev"]} if isinstance(spec.get("dev"), str) else {}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class SearchPlan:
    """Where a search's utilities come from: `search_spec` (what the search optimises), `select_spec`
    (None with select: dev), why selection is on dev when it is (`note`), and the split's info."""
    search_spec: dict[str, Any]
    select_spec: dict[str, Any] | None
    selected_on: str
    section: "SelectSection"
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _splittable(spec: dict[str, Any]) -> bool:
    if spec.get("type") == "multitask":
        tasks = spec.get("tasks") or {}
        return bool(tasks) and all(isinstance(t, dict) and isinstance(t.get("dev"), str) for t in tasks.values())
    return isinstance(spec.get("dev"), str)


def prepare_search(config: "RunConfig", output_dir: str | Path, *, resume: bool, write: bool = True) -> SearchPlan:
    """The plan of a search: with select on a split, carve it from dev (seeded) into output_dir/select/
    and write the ids and a digest of each dev file to select/split.json; on resume, carve it again and
    check that the dev files are the ones it was carved from (a changed file: SelectSplitChanged).
    Call it after the check that the output directory may be written (a new run) or resumed."""
    from swarmkern.utilities.holdout import carve_select

    sec, spec, out = config.select, config.utility, Path(output_dir)
    mode = sec.mode
    if mode == "auto":
        mode = "split" if _splittable(spec) else "dev"
        note = None if mode == "split" else (f"utility type {spec.get('type')!r} reads no dev JSONL file to carve "
                                             "a held-out split from: the export is chosen on dev")
    else:
        note = None
    if mode == "dev":
        return SearchPlan(spec, None, "dev", sec, note)
    split_dir = out / SELECT_DIR
    saved = split_dir / SPLIT_JSON
    digests = {where: file_digest(p) for where, p in dev_files(spec).items() if Path(p).is_file()}
    if resume:
        if not saved.is_file():  # a run started before select splits existed searched the whole dev
            return SearchPlan(spec, None, "dev", sec, f"{saved} is missing (the run searched the whole dev set): "
                                                      "the export is chosen on dev")
        old_info = json.loads(saved.read_text())
        old = old_info.get("dev_sha256", {})
        for where, digest in digests.items():
            if old.get(where) != digest:
                raise SelectSplitChanged(f"{dev_files(spec)[where]} ({where}): changed since the run carved its "
                                         f"select split from it; resume needs the same dev file (or start afresh)")
    search_spec, select_spec, info = carve_select(spec, split_dir, fraction=sec.fraction, size=sec.size,
                                                  seed=sec.seed)
    info = {"fraction": sec.fraction, "size": sec.size, "seed": sec.seed, "dev_sha256": digests, **info}
    if resume and _ids(info) != _ids(old_info):
        raise SelectSplitChanged(f"{saved}: the select split carved again differs from the run's; resume needs "
                                 "the same dev file and select settings (or start afresh)")
    if not resume and write:
        atomic_write_json(saved, info, indent=1)
    return SearchPlan(search_spec, select_spec, "select", sec, None, info)


# -- scoring rows ----------------------------------------------------------------------------------------
@dataclass
class Scored:
    """Utilities [n] of n rows and, when the utility is a mean over examples, their example scores [n, N]."""
    means: list[float]
    examples: torch.Tensor | None
    reason: str | None = None  # why there are no example scores


def score_rows_on(utility: Any, rows: torch.Tensor, batch_size: int | None = None) -> Scored:
    """Score rows [n, D] (one batched prediction when the utility predicts, keeping example scores)."""
    from .search import score_rows

    name = getattr(utility, "name", type(utility).__name__)
    if isinstance(utility, Predicting):
        with torch.no_grad():
            preds = utility.predict(rows)
            means = utility.score(preds).to(torch.float64).reshape(-1)
            ex = utility.example_scores(preds)
        means = [float(x) if math.isfinite(float(x)) else -math.inf for x in means.tolist()]
        if ex is None:
            return Scored(means, None, f"utility '{name}' is not a mean over examples (no per-example scores)")
        return Scored(means, ex.to(torch.float64).cpu(), None)
    vals = score_rows(utility, rows, batch_size)
    means = [float(x) if math.isfinite(float(x)) else -math.inf for x in vals.tolist()]
    return Scored(means, None, f"utility '{name}' gives no per-example scores")


def comparison(scored: Scored, candidate: int, reference: int, seed: int, resamples: int) -> dict[str, Any]:
    """The paired comparison block of row `candidate` against row `reference` (or why there is none)."""
    if scored.examples is None:
        return stats.unavailable(scored.reason or "no per-example scores")
    ex = scored.examples
    if not (torch.isfinite(ex[candidate]).all() and torch.isfinite(ex[reference]).all()):
        return stats.unavailable("non-finite per-example scores")
    return stats.compare_paired(ex[candidate].numpy(), ex[reference].numpy(), seed=seed,
                                resamples=resamples).to_dict()


def guard(select_scores: dict[str, float], order: Sequence[str], reference: str, enabled: bool,
          split: str = "the held-out split") -> tuple[str, bool, str | None]:
    """(chosen, fired, message): the candidate (of `order`, preferred first on ties) with the best
    score; with the guard on, `reference` unless a candidate beats it strictly. `fired` is true when
    the guard is on and the reference is exported; the message is given whenever the reference is."""
    best = max(order, key=lambda n: (select_scores[n], -order.index(n)))
    if best == reference or (enabled and select_scores[best] <= select_scores[reference]):
        return reference, enabled, f"no candidate beat {reference} on {split}: exporting {reference}"
    return best, False, None


def verdict(blocks: dict[str, Any], reference: str) -> str:
    """The one line: on test when there is a test split, else on the held-out split, else on dev."""
    for split in ("test", "select", "dev"):
        if split in blocks:
            return stats.verdict_line(split, blocks[split], reference)
    return f"no comparison with {reference}"


# -- the candidates of one search ------------------------------------------------------------------------
def best_expert(swarm: "Swarm") -> tuple[int, str]:
    """(index into the pool, name) of the starting expert with the best dev utility (ties: the first)."""
    init = swarm.book.initial_utilities
    experts = [i for i, o in enumerate(swarm.origins) if o["kind"] == "expert"]
    p = max(experts, key=lambda i: (init[i], -i))
    name = swarm.origins[p]["name"]
    return list(swarm.pool.names).index(name), name


def candidate_rows(swarm: "Swarm", top_k: int) -> tuple[list[str], torch.Tensor]:
    """Names and rows [C, D]: global_best, pbest_2..pbest_k (distinct from the global best), pbest_soup
    (average of the top-k personal bests, k >= 2), and the best starting expert (its name). Under
    torch.distributed only the global best and the expert (every process holds those)."""
    book, buf = swarm.book, swarm.buffers
    names, rows = ["global_best"], [buf.gbest]
    if swarm.collective.world_size == 1 and top_k >= 2:
        order = sorted(range(swarm.n_particles), key=lambda i: (-book.u_pbest[i], i))
        order = [i for i in order if math.isfinite(book.u_pbest[i])][:top_k]
        for rank, i in enumerate(order[1:], start=2):
            if not torch.equal(buf.pbest[i], buf.gbest):
                names.append(f"pbest_{rank}")
                rows.append(buf.pbest[i])
        if len(order) >= 2:
            soup = torch.zeros(swarm.dim, dtype=torch.float32, device=buf.pbest.device)
            for i in order:
                soup += buf.pbest[i].float()
            names.append("pbest_soup")
            rows.append((soup / len(order)).to(swarm.dtype))
    k, expert = best_expert(swarm)
    row = expert_row(swarm.pool, k, swarm)
    if row is not None:
        names.append(expert)
        rows.append(row)
    return names, torch.stack([r.to(swarm.device) for r in rows])


def expert_row(pool: Any, k: int, swarm: "Swarm") -> torch.Tensor | None:
    """Expert k's row [D] in the swarm's dtype, or None when its numbers are not available (a pool
    rebuilt from experts.json after the experts moved)."""
    row = torch.empty(1, swarm.dim, dtype=swarm.dtype, device=swarm.device)
    try:
        pool.fill_rows(row, torch.eye(len(pool), dtype=torch.float64)[k:k + 1])
    except (RuntimeError, OSError):
        return None
    return row[0]


def finish_search(swarm: "Swarm", plan: SearchPlan, select_utility: Any | None, seed: int) -> dict[str, Any]:
    """Choose the export among the candidates (on the select split, or the global best with select: dev),
    apply the guard, compare it with the best expert on dev / select / test, re-export it when it is not
    the global best, and update summary.json. Returns the keys added to the summary (and, not for JSON,
    the exported row under "_row"). Rank 0 only."""
    sec = plan.section
    # with select: dev the paper's rule needs only the global best and the expert (and so the summary is
    # the same on any number of processes)
    names, rows = candidate_rows(swarm, sec.top_k if select_utility is not None else 1)
    expert = best_expert(swarm)[1]
    if names[-1] != expert:  # its weights are gone: nothing to compare with, nothing to guard
        reason = stats.unavailable(f"{expert}'s weights are not available (experts moved since the run started)")
        added = {"vs_best_expert": {"reference": expert, "dev": reason},
                 "export": {"selected_on": plan.selected_on, "chosen": "global_best", "guard": sec.guard,
                            "guard_fired": False, "note": reason["unavailable"] + ": the guard could not run"},
                 "verdict": verdict({"dev": reason}, expert)}
        if swarm.output_dir is not None:
            from .outputs import write_summary

            write_summary(swarm.output_dir, {**_read_summary(swarm), **added})
        return {**added, "_row": rows[0]}
    bs = swarm.config.batch_size
    dev = score_rows_on(swarm.utility, rows, bs)
    select = score_rows_on(select_utility, rows, bs) if select_utility is not None else None
    if select is not None:
        chosen, fired, message = guard(dict(zip(names, select.means)), names, expert, sec.guard)
    else:  # the paper's rule; the global best is at least as good as every expert on dev
        chosen, fired, message = guard({"global_best": dev.means[0], expert: dev.means[-1]},
                                       ["global_best", expert], expert, sec.guard, "dev")
    test = score_rows_on(swarm.test_utility, rows, bs) if swarm.test_utility is not None else None
    c, r = names.index(chosen), len(names) - 1
    blocks: dict[str, Any] = {"reference": expert, "dev": comparison(dev, c, r, seed, sec.resamples)}
    if select is not None:
        blocks["select"] = comparison(select, c, r, seed, sec.resamples)
    if test is not None:
        blocks["test"] = comparison(test, c, r, seed, sec.resamples)
    f = _json_float
    export: dict[str, Any] = {
        "selected_on": plan.selected_on, "chosen": chosen, "guard": sec.guard, "guard_fired": fired,
        "candidates": [{"name": n, "dev": f(dev.means[i]),
                        **({"select": f(select.means[i])} if select is not None else {}),
                        **({"test": f(test.means[i])} if test is not None else {})} for i, n in enumerate(names)]}
    if message:
        export["message"] = message
    if plan.note:
        export["note"] = plan.note
    if plan.info:
        export["split"] = {"dir": SELECT_DIR, "search_examples": _count(plan.info, "search_ids"),
                           "select_examples": _count(plan.info, "select_ids")}
    added = {"vs_best_expert": blocks, "export": export, "verdict": verdict(blocks, expert)}
    summary = {**_read_summary(swarm), **added}
    if chosen != "global_best" and swarm.output_dir is not None:
        from swarmkern.flat import save_expert

        name = "best" if swarm.pool.kind == "peft" else "best.safetensors"
        summary["best_path"] = str(save_expert(swarm.pool, rows[c], swarm.output_dir / name,
                                               metadata={"swarmkern_export": chosen}))
    if test is not None:
        summary["test_utility"] = f(test.means[c])
    if swarm.output_dir is not None:
        from .outputs import write_summary

        write_summary(swarm.output_dir, summary)
    return {**{k: summary[k] for k in (*added, "test_utility", "best_path") if k in summary}, "_row": rows[c]}


def _ids(info: dict[str, Any]) -> Any:
    """The example ids of each part (per task for multitask) of a split.json."""
    if "select_ids" in info:
        return info.get("search_ids"), info.get("select_ids")
    return {k: _ids(v) for k, v in info.items() if isinstance(v, dict) and "select_ids" in v}


def _count(info: dict[str, Any], key: str) -> int:
    if key in info:
        return len(info[key])
    return sum(len(v.get(key, [])) for v in info.values() if isinstance(v, dict))


def _read_summary(swarm: "Swarm") -> dict[str, Any]:
    from .outputs import SUMMARY

    if swarm.output_dir is None or not (swarm.output_dir / SUMMARY).is_file():
        return {}
    return json.loads((swarm.output_dir / SUMMARY).read_text())


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# -- a sweep's configurations and its winner -------------------------------------------------------------
def finish_sweep(sweep: Any, results: Sequence[Any], entries: list[dict[str, Any]], winner: int,
                 seed: int = 0) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Compare each configuration's final best with the best starting expert (chosen on the searches'
    dev) on dev, select and test (`entries[i]["vs_best_expert"]`), and apply the guard to the winner.
    Returns (keys for sweep.json, the expert's row when the guard fired, else None)."""
    swarm0 = sweep.swarms[0]
    k, expert = best_expert(swarm0)
    ref = expert_row(sweep.pool, k, swarm0)
    gone = f"{expert}'s weights are not available (experts moved since the run started)"
    rows = torch.stack([s.best for s in sweep.swarms] + ([ref.to(swarm0.device)] if ref is not None else []))
    r = len(sweep.swarms)
    splits = {"dev": sweep.utility, "select": sweep.select_utility, "test": sweep.test_utility}
    scored: dict[str, Scored] = {}
    for split, u in splits.items():
        if u is None:
            continue
        if split == "dev" and (ref is None or not isinstance(u, Predicting)):
            # the dev utilities are known: no second call where there are no per-example scores to get
            known = [res.best_utility for res in results] + [swarm0.book.initial_utilities[
                next(i for i, o in enumerate(swarm0.origins) if o["kind"] == "expert" and o["name"] == expert)]]
            why = gone if isinstance(u, Predicting) else f"utility '{getattr(u, 'name', 'utility')}' gives no per-example scores"
            scored[split] = Scored(known, None, why)
        elif ref is not None:
            scored[split] = score_rows_on(u, rows, sweep.batch_size)
    resamples = getattr(sweep, "resamples", stats.DEFAULT_RESAMPLES)

    def blocks_of(i: int) -> dict[str, Any]:
        out = {"reference": expert, **{s: comparison(sc, i, r, seed, resamples) for s, sc in scored.items()}}
        for s in ("select", "test"):
            if splits[s] is not None and s not in out:
                out[s] = stats.unavailable(gone)
        return out

    for i, e in enumerate(entries):
        e["vs_best_expert"] = blocks_of(i)
    on = "select" if splits["select"] is not None else "dev"
    enabled = getattr(sweep, "guard", True)
    export: dict[str, Any] = {"selected_on": on, "chosen": f"configuration {winner}", "guard": enabled,
                              "guard_fired": False}
    fired = False
    if on in scored:
        what = "the held-out split" if on == "select" else "dev"
        _, fired, message = guard({"winner": scored[on].means[winner], expert: scored[on].means[r]},
                                  ["winner", expert], expert, enabled, what)
        export["best_expert"] = {s: _json_float(sc.means[r]) for s, sc in scored.items()}
        if fired and ref is None:
            fired, export["note"] = False, f"{message}, but {gone}: exporting the winner"
        elif fired:
            export.update(chosen=expert, guard_fired=True, message=message)
    else:
        export["note"] = f"{gone}: the guard could not run"
    blocks = blocks_of(r if fired else winner)
    return {"vs_best_expert": blocks, "export": export, "verdict": verdict(blocks, expert)}, (ref if fired else None)
