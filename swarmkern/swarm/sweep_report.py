"""What a sweep writes beside its runs: sweep.json (every configuration), sweep.md (the same as a table)
and sweep.png (final dev, select and test utility per configuration)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from swarmkern.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

from .config import SwarmConfig
from .outputs import figure_png
from .search import SwarmResult

SWEEP_JSON = "sweep.json"
SWEEP_TABLE = "sweep.md"
SWEEP_PLOT = "sweep.png"


def sweep_entries(configs: Sequence[SwarmConfig], results: Sequence[SwarmResult], seconds: Sequence[float],
                  run_dir: Callable[[int], Path | None]) -> list[dict[str, Any]]:
    """One row per configuration: its varied fields, final dev / select / test utility, iterations,
    evaluations, seconds (its share of the shared utility calls plus its own updates) and run dir."""
    from .sweep import varied_fields

    names = varied_fields(configs)
    rows = []
    for i, (c, r) in enumerate(zip(configs, results)):
        s = r.summary
        d = run_dir(i)
        rows.append({
            "index": i,
            "fields": {k: c.model_dump(mode="json")[k] for k in names},
            "best_dev": s["best_dev_utility"], "select": s.get("select_utility"), "test": s.get("test_utility"),
            "initial_best_dev": s["initial_best_dev_utility"],
            "iterations": s["iterations"], "stop_reason": s["stop_reason"], "evaluations": s["evaluations"],
            "seconds": seconds[i],
            "best_particle_origin": s["best_particle_origin"],
            "best_particle_initial_rank": s["best_particle_initial_rank"],
            "run_dir": str(Path(d).relative_to(Path(d).parent.parent)) if d is not None else None,
            "config": c.model_dump(mode="json"),
        })
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def sweep_table(summary: dict[str, Any]) -> str:
    """The sweep as a markdown table (the winner marked with *)."""
    entries, fields = summary["configurations"], summary["varied_fields"]
    vs_splits = [s for s in ("select", "test") if any(s in (e.get("vs_best_expert") or {}) for e in entries)]
    ref = next((e["vs_best_expert"]["reference"] for e in entries if e.get("vs_best_expert")), "best expert")
    head = ["#", *fields, "dev", "select", "test", *(f"{s} vs {ref}" for s in vs_splits),
            "iterations", "evaluations", "seconds"]
    lines = [f"Sweep of {summary['n_configurations']} configurations; winner: #{summary['winner']} "
             f"(chosen on {summary['selected_on']}); {summary['evaluations']} evaluations "
             f"({summary.get('rows_scored', summary['evaluations'])} distinct rows scored) in "
             f"{summary['utility_calls']} utility calls, {summary['wall_seconds']:.1f} s.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in entries:
        mark = "*" if e["index"] == summary["winner"] else ""
        cells = [f"{e['index']}{mark}", *(_fmt(e["fields"][k]) for k in fields), _fmt(e["best_dev"]),
                 _fmt(e["select"]), _fmt(e["test"]), *(_vs(e, s) for s in vs_splits),
                 str(e["iterations"]), str(e["evaluations"]),
                 f"{e['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("initial_test_utilities"):
        lines += ["", "Starting experts (dev / test): " + ", ".join(
            f"{k} {_fmt(summary['initial_dev_utilities'].get(k))} / {_fmt(v)}"
            for k, v in summary["initial_test_utilities"].items())]
    export = summary.get("export") or {}
    if export.get("message"):
        lines += ["", f"Guard: {export['message']}."]
    if summary.get("verdict"):
        lines += ["", f"Verdict ({export.get('chosen', 'winner')} against the best starting expert, chosen on dev): "
                      f"{summary['verdict']}."]
    return "\n".join(lines) + "\n"


def _vs(entry: dict[str, Any], split: str) -> str:
    """The paired comparison cell: "+2.3 [-1.4, +5.8], p = 0.23", or why there is none."""
    block = (entry.get("vs_best_expert") or {}).get(split)
    if not block:
        return "-"
    return block.get("text") or f"n/a ({block.get('unavailable', 'no per-example scores')})"


def plot_sweep(summary: dict[str, Any]) -> bytes:
    """PNG bytes: final dev (and select, test) utility of each configuration, the winner marked, and the
    best starting expert's dev / test as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    entries = summary["configurations"]
    xs = [e["index"] for e in entries]
    nan = float("nan")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(xs) + 3), 4.2), dpi=110)
    for key, label, style in (("best_dev", "dev (best)", "o-"), ("select", "select", "s--"), ("test", "test", "^-")):
        ys = [e[key] if e[key] is not None else nan for e in entries]
        if any(y == y for y in ys):
            ax.plot(xs, ys, style, lw=1, ms=5, label=label)
    init_dev = [v for v in summary["initial_dev_utilities"].values() if v is not None]
    if init_dev:
        ax.axhline(max(init_dev), color="C0", lw=0.8, ls=":", label="best starting expert (dev)")
    init_test = [v for v in (summary.get("initial_test_utilities") or {}).values() if v is not None]
    if init_test:
        ax.axhline(max(init_test), color="C2", lw=0.8, ls=":", label="best starting expert (test)")
    ax.axvline(summary["winner"], color="0.5", lw=0.8, ls="--", label=f"winner (on {summary['selected_on']})")
    ax.set_xlabel("configuration")
    ax.set_ylabel("utility")
    ax.set_xticks(xs)
    ax.set_title(f"Sweep of {len(xs)}: {', '.join(summary['varied_fields']) or 'no varied field'}")
    return figure_png(fig, ax)


def write_sweep_outputs(output_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(output_dir) / SWEEP_JSON, summary, indent=2)
    atomic_write_text(Path(output_dir) / SWEEP_TABLE, sweep_table(summary))
    try:
        atomic_write_bytes(Path(output_dir) / SWEEP_PLOT, plot_sweep(summary))
    except Exception as err:  # a plotting failure must not lose a finished sweep
        summary["plot_error"] = str(err)
        atomic_write_json(Path(output_dir) / SWEEP_JSON, summary, indent=2)
