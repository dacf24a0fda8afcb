"""The paper's reports at the end of a search: reports.json (also under "reports" in summary.json) and
trajectory.png. Called by `Swarm.finish()`; a sweep calls `end_of_search` per configuration and
`weak_to_strong_rate` across them (sweep.json's "weak_to_strong").

    pbest_test_utilities   test utility of every final personal best (opt-in: report_pbest_test)
    ensembles              top-k prediction ensembles of the final personal bests, best dev utility
                           first, scored on dev and test through the utility's `ensemble` capability
    emergence              per split: the examples that no starting particle got right but the final
                           global best does (count and ids; needs 0/1 `example_scores`)
    weak_to_strong         the winner's initial rank and utility; whether it started outside the top half
    trajectory             every particle's position projected on the first two principal directions of
                           the starting experts, recorded each iteration (history.jsonl "pca_xy")

A report whose utility lacks the capability it needs (or that the run cannot afford) is left out and
its reason given under "skipped". The predictions, ensembles and example scores come only from the
utility's public API (swarmkern/utilities/protocol.py).
"""
from __future__ import annotations

import json
import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from swarmkern.atomic import atomic_save_safetensors, atomic_write_bytes, atomic_write_json
from swarmkern.utilities.protocol import Ensembling, Predicting

from .outputs import figure_png

if TYPE_CHECKING:
    from .search import Swarm

REPORTS = "reports.json"
TRAJECTORY_PLOT = "trajectory.png"
PROJECTION = "projection.safetensors"  # kept for resume: a pool rebuilt from experts.json may hold no numbers


# -- trajectory: projection on the starting experts' principal directions ------------------------------
class Projection:
    """x -> ((x - mean) . u_1, (x - mean) . u_2) for the first two principal directions u_1, u_2 of the
    K starting expert rows. Kept as U [2, D] (float32, on the swarm's device) and offset = mean . U, so
    that a projection costs 2 dot products per particle. Directions with no variance (K < 3) are 0.
    The sign of each direction is fixed (its largest expert loading is positive): the same pool always
    gives the same projection, also after a resume."""

    def __init__(self, directions: torch.Tensor, offset: torch.Tensor, explained: list[float]):
        self.directions = directions      # [2, D]
        self.offset = offset              # [2] float64
        self.explained = explained        # fraction of the experts' variance along u_1, u_2

    @classmethod
    def of_rows(cls, rows: torch.Tensor, chunk: int = 1 << 20) -> "Projection":
        """From the expert rows [K, D] (any float dtype), streaming D in chunks with float64 math.
        Non-finite entries count as 0 (a broken expert must not break the report)."""
        K, D = rows.shape
        mean = torch.zeros(D, dtype=torch.float64, device=rows.device)
        gram = torch.zeros(K, K, dtype=torch.float64, device=rows.device)
        for s in range(0, D, chunk):
            part = torch.nan_to_num(rows[:, s:s + chunk].double(), nan=0.0, posinf=0.0, neginf=0.0)
            mean[s:s + chunk] = part.mean(0)
            centred = part - mean[s:s + chunk]
            gram += centred @ centred.T
        evals, evecs = torch.linalg.eigh(gram.cpu())  # ascending
        order = torch.argsort(evals, descending=True)[:2]
        total = float(evals.clamp(min=0).sum())
        coefs, explained = torch.zeros(2, K, dtype=torch.float64), [0.0, 0.0]
        for n, idx in enumerate(order.tolist()):
            lam = float(evals[idx])
            if lam <= 1e-12 * max(total, 1e-300):
                continue
            vec = evecs[:, idx]
            vec = vec if float(vec[int(vec.abs().argmax())]) > 0 else -vec
            coefs[n] = vec / math.sqrt(lam)  # u_n = C^T v_n / sqrt(lambda_n): a unit vector
            explained[n] = lam / total
        coefs = coefs.to(rows.device)
        directions = torch.empty(2, D, dtype=torch.float32, device=rows.device)
        for s in range(0, D, chunk):
            part = torch.nan_to_num(rows[:, s:s + chunk].double(), nan=0.0, posinf=0.0, neginf=0.0)
            directions[:, s:s + chunk] = (coefs @ (part - mean[s:s + chunk])).float()
        offset = (directions.double() @ mean).cpu()
        return cls(directions, offset, explained)

    def save(self, path: Path) -> None:
        atomic_save_safetensors(path, {"directions": self.directions.contiguous().cpu(), "offset": self.offset},
                                metadata={"explained": json.dumps(self.explained)})

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "Projection":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            explained = json.loads(f.metadata()["explained"])
            return cls(f.get_tensor("directions").to(device), f.get_tensor("offset"), explained)

    def coords(self, x: torch.Tensor, chunk: int = 1 << 15) -> torch.Tensor:
        """[n, 2] float64 (CPU) coordinates of the rows x [n, D]: per chunk of D, the fp32 products
        x * u_k summed along the chunk (rows of 2^15 elements: each row sums serially, in an order set
        by the chunk length alone), the chunks summed in float64. So a row's coordinates depend neither
        on which other rows are projected with it nor on the thread count: the same numbers however
        the particles are sharded. (A BLAS matrix-vector product is neither; in float64 it also took
        10x the update at D = 1e6.)"""
        n, D = x.shape
        out = torch.zeros(n, 2, dtype=torch.float64, device=x.device)
        for s in range(0, D, chunk):
            xs = x[:, s:s + chunk].float()
            for k in range(2):
                out[:, k] += (xs * self.directions[k, s:s + chunk]).sum(1, dtype=torch.float32).double()
        return out.cpu() - self.offset


_PROJECTIONS: "weakref.WeakKeyDictionary[Swarm, Projection]" = weakref.WeakKeyDictionary()


def projection_for(swarm: "Swarm") -> Projection:
    """The projection of a swarm's starting experts, built on first use and kept while the swarm lives:
    a resumed run (its history already holds lines) reads the one saved in its output dir, a new
    run computes it from the pool (the same on every process) and saves it there."""
    if swarm not in _PROJECTIONS:
        _PROJECTIONS[swarm] = _projection_of(swarm, resumed=bool(swarm.history))
    return _PROJECTIONS[swarm]


def _projection_of(swarm: "Swarm", resumed: bool) -> Projection:
    path = None if swarm.output_dir is None else swarm.output_dir / PROJECTION
    if resumed and path is not None and path.exists():
        return Projection.load(path, swarm.device)
    K = len(swarm.pool)
    rows = torch.empty(K, swarm.dim, dtype=swarm.dtype, device=swarm.device)
    swarm.pool.fill_rows(rows, torch.eye(K, dtype=torch.float64))
    projection = Projection.of_rows(rows)
    if path is not None and swarm.collective.rank == 0:
        projection.save(path)
    return projection


def pca_xy(swarm: "Swarm") -> list[list[float]]:
    """Every particle's (x, y) now, gathered from all processes: [[x, y] per particle] (6 significant
    digits; null for a particle at a non-finite location)."""
    buf, coll, P = swarm.buffers, swarm.collective, swarm.n_particles
    local = projection_for(swarm).coords(buf.x)
    xs = coll.all_gather_scores(local[:, 0].contiguous(), P).tolist()
    ys = coll.all_gather_scores(local[:, 1].contiguous(), P).tolist()
    return [[_json_float(f"{a:.6g}"), _json_float(f"{b:.6g}")] for a, b in zip(xs, ys)]


def plot_trajectory(history: list[dict[str, Any]], origins: list[dict[str, Any]], best_index: int,
                    best_xy: tuple[float, float], path: Path, explained: list[float] | None = None) -> Path | None:
    """trajectory.png: each particle's path in the experts' principal plane (start: circle, end: dot;
    the particle that holds the global best in colour), the experts named at their start, and the
    global best location (that particle's personal best) as a star at best_xy."""
    nan = float("nan")
    steps = [[[nan if c is None else c for c in xy] for xy in h["pca_xy"]] for h in history if h.get("pca_xy")]
    if not steps:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    for i in range(len(steps[0])):
        xs, ys = [s[i][0] for s in steps], [s[i][1] for s in steps]
        color = "C0" if i == best_index else "0.55"
        ax.plot(xs, ys, color=color, lw=1.6 if i == best_index else 0.7, alpha=0.9 if i == best_index else 0.6,
                label=f"particle {i} (holds the global best)" if i == best_index else None)
        ax.scatter(xs[:1], ys[:1], s=22, facecolors="none", edgecolors=color)
        ax.scatter(xs[-1:], ys[-1:], s=8, color=color)
        if origins[i].get("kind") == "expert":
            ax.annotate(origins[i]["name"], (xs[0], ys[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    bx, by = (nan if c is None else c for c in best_xy)
    ax.scatter([bx], [by], marker="*", s=160, color="C3", zorder=5, label="global best")
    var = "" if not explained else f" ({explained[0]:.0%} of the variance)"
    ax.set_xlabel(f"principal direction 1 of the experts{var}")
    ax.set_ylabel("principal direction 2" + ("" if not explained else f" ({explained[1]:.0%})"))
    ax.set_title(f"Particle trajectories, iterations 0..{len(steps) - 1}")
    atomic_write_bytes(path, figure_png(fig, ax))
    return path


# -- ensembles, personal-best test utilities, emergence --------------------------------------------------
def top_k_ensembles(utility: Ensembling, preds: Any, order: list[int], ks: Iterable[int]) -> dict[str, Any]:
    """{k: {"score", "how", "particles"}} for the ensembles of the first k particles of `order` (indices
    into preds, best first), for every k <= len(order)."""
    out = {}
    for k in sorted(set(ks)):
        if k > len(order):
            continue
        members = order[:k]
        score, how = utility.ensemble(preds[members], how="auto")
        out[str(k)] = {"score": _json_float(score), "how": how, "particles": members}
    return out


def emergence(initial: torch.Tensor, best: torch.Tensor, ids: list[str]) -> dict[str, Any]:
    """Examples that no starting particle got right but the best does. initial [P0, N] and best [N]:
    per-example scores, 1.0 = right and 0.0 = wrong (ValueError for anything else)."""
    for name, t in (("initial", initial), ("best", best)):
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} example scores are not all 0/1: correctness is undefined")
    if initial.shape[-1] != best.shape[-1] or len(ids) != best.shape[-1]:
        raise ValueError(f"example counts differ: initial {initial.shape[-1]}, best {best.shape[-1]}, ids {len(ids)}")
    any_initial = (initial == 1).any(0)
    right = best == 1
    emerged = (right & ~any_initial).nonzero().reshape(-1).tolist()
    lost = (~right & any_initial).nonzero().reshape(-1).tolist()
    return {"examples": int(best.shape[-1]), "best_right": int(right.sum()),
            "some_starting_particle_right": int(any_initial.sum()),
            "emerged": len(emerged), "emerged_ids": [ids[i] for i in emerged],
            "lost": len(lost)}


def weak_to_strong(summary: dict[str, Any]) -> dict[str, Any]:
    """The global best's start: its initial rank (0 = best) and dev utility among the P particles, and
    whether it started outside the top half (2 * rank >= P)."""
    rank, P = summary["best_particle_initial_rank"], summary["n_particles"]
    return {"initial_rank": rank, "initial_utility": summary["best_particle_initial_utility"],
            "n_particles": P, "started_outside_top_half": 2 * rank >= P}


def weak_to_strong_rate(summaries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Across searches (e.g. a sweep's configurations; each a summary.json dict): how often the winner
    started outside the top half of its swarm. {"searches", "outside_top_half", "fraction"}."""
    flags = [weak_to_strong(s)["started_outside_top_half"] for s in summaries]
    return {"searches": len(flags), "outside_top_half": sum(flags),
            "fraction": (sum(flags) / len(flags)) if flags else None}


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _predict(utility: Predicting, rows: torch.Tensor) -> Any:
    with torch.no_grad():
        return utility.predict(rows)


def _starting_example_scores(swarm: "Swarm", utility: Predicting) -> torch.Tensor | None:
    """[P, N] example scores of the initial population, rebuilt from the experts (the swarm's x has
    moved on) in batches of `batch_size` particles, so that only one batch of rows is held at a time."""
    P, bs = swarm.n_particles, swarm.config.batch_size or swarm.n_particles
    parts = []
    for s in range(0, P, bs):
        rows = torch.empty(min(bs, P - s), swarm.dim, dtype=swarm.dtype, device=swarm.device)
        swarm.pool.fill_rows(rows, swarm.coef_weights[s:s + bs])
        scores = utility.example_scores(_predict(utility, rows))
        if scores is None:
            return None
        parts.append(scores)
    return torch.cat(parts)


def _prediction_reports(swarm: "Swarm", report: dict[str, Any]) -> None:
    """pbest_test_utilities, ensembles and emergence into `report` (reasons under report["skipped"]).
    Ensembles predict only the top max(k) personal bests, in one call."""
    from .search import score_rows

    cfg, book, skipped = swarm.config, swarm.book, report["skipped"]
    pbest, P = swarm.buffers.pbest, swarm.n_particles
    splits = {s: u for s, u in (("dev", swarm.utility), ("test", swarm.test_utility)) if u is not None}
    predicting = {s: u for s, u in splits.items() if isinstance(u, Predicting)}
    if (cfg.report_ensemble_k or cfg.report_emergence) and not predicting:
        skipped["ensembles_and_emergence"] = "the utility makes no per-example predictions"
    if swarm.collective.world_size > 1 and (predicting or cfg.report_pbest_test):
        skipped["predictions"] = "ensembles, emergence and personal-best test utilities need a single process"
        return
    if cfg.report_pbest_test:
        if "test" not in splits:
            skipped["pbest_test_utilities"] = "no test utility"
        else:
            vals = score_rows(splits["test"], pbest, cfg.batch_size)
            report["pbest_test_utilities"] = [_json_float(v) for v in vals.tolist()]
    if cfg.report_ensemble_k and predicting:
        order = sorted(range(P), key=lambda i: (-book.u_pbest[i], i))  # best dev utility first
        top = order[:min(max(cfg.report_ensemble_k), P)]
        rows = pbest.index_select(0, torch.tensor(top, device=pbest.device))
        ens = {}
        for s, u in predicting.items():
            if isinstance(u, Ensembling):
                made = top_k_ensembles(u, _predict(u, rows), list(range(len(top))), cfg.report_ensemble_k)
                ens[s] = {k: {**v, "particles": [top[i] for i in v["particles"]]} for k, v in made.items()}
        if ens:
            report["ensembles"] = {"order": order, **ens}
        else:
            skipped["ensembles"] = "the utility has no ensemble capability"
    if cfg.report_emergence and predicting and not swarm.pool.has_numbers:
        skipped["emergence"] = ("the starting experts' numbers are not available (the run was resumed "
                                "without its experts, which have moved)")
    elif cfg.report_emergence and predicting:
        found = {}
        for s, u in predicting.items():
            best_scores = u.example_scores(_predict(u, swarm.buffers.gbest.unsqueeze(0)))
            initial = _starting_example_scores(swarm, u) if best_scores is not None else None
            if initial is None:
                skipped[f"emergence_{s}"] = "the utility is not a mean over examples (no example_scores)"
                continue
            try:
                found[s] = emergence(initial, best_scores[0], u.example_ids)
            except ValueError as err:
                skipped[f"emergence_{s}"] = str(err)
        if found:
            report["emergence"] = found


def end_of_search(swarm: "Swarm", summary: dict[str, Any]) -> dict[str, Any]:
    """Every report of a finished search (see the module docstring); writes reports.json and
    trajectory.png when the swarm has an output dir (rank 0)."""
    cfg = swarm.config
    report: dict[str, Any] = {"weak_to_strong": weak_to_strong(summary), "skipped": {}}
    if cfg.report_ensemble_k or cfg.report_emergence or cfg.report_pbest_test:
        _prediction_reports(swarm, report)
    if cfg.report_trajectory:
        projection = swarm.trajectory_projection()
        best_xy = [_json_float(c) for c in projection.coords(swarm.buffers.gbest.unsqueeze(0))[0].tolist()]
        report["trajectory"] = {"explained_variance": projection.explained, "best_xy": best_xy, "plot": None}
    if swarm.output_dir is not None and swarm.collective.rank == 0:
        if cfg.report_trajectory:
            try:
                path = plot_trajectory(swarm.history, swarm.origins, swarm.book.gbest_index, best_xy,
                                       swarm.output_dir / TRAJECTORY_PLOT, projection.explained)
                report["trajectory"]["plot"] = path.name if path is not None else None
            except Exception as err:  # a plotting failure must not lose a finished search
                report["trajectory"]["plot_error"] = str(err)
        atomic_write_json(swarm.output_dir / REPORTS, report, indent=2)
    return report
