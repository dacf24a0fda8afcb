"""What a run leaves in its output directory besides checkpoints:

    history.jsonl   one JSON line per iteration (0 = the initial evaluation): every particle's utility,
                    gbest / gworst utilities, step length, restarts, skipped and non-finite counts, timings
    summary.json    the result (best_dev_utility, initial_dev_utilities, iterations, best_particle_origin,
                    wall_seconds, test_utility and initial_test_utilities when a test utility exists, ...)
    utilities.png   utilities over iterations (every particle, the global best and worst)
    best/ or best.safetensors   the global best in the experts' own format
Non-finite utilities are written as null (strict JSON); their counts are reported separately.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from swarmkern.atomic import atomic_write_bytes, atomic_write_json

HISTORY = "history.jsonl"
SUMMARY = "summary.json"
PLOT = "utilities.png"


def json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def append_history(output_dir: Path, record: dict[str, Any]) -> int:
    """Append one line (flushed and fsync'ed); returns the file's size after it."""
    path = Path(output_dir) / HISTORY
    with open(path, "ab") as f:
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def truncate_history(output_dir: Path, size: int) -> None:
    """Drop lines written after the checkpoint being resumed (and any half-written line)."""
    path = Path(output_dir) / HISTORY
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)


def read_history(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(output_dir) / SUMMARY, summary, indent=2)


def plot_history(output_dir: Path, title: str = "Model Swarms search") -> Path | None:
    """utilities.png: each particle's utility (thin), the global best and the global worst."""
    history = read_history(output_dir)
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    n = len(history[0]["utilities"])
    nan = float("nan")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i in range(n):
        ys = [h["utilities"][i] if h["utilities"][i] is not None else nan for h in history]
        ax.plot(its, ys, color="0.6", lw=0.6, alpha=0.6, label="particles" if i == 0 else None)
    ax.plot(its, [h["gbest_utility"] if h["gbest_utility"] is not None else nan for h in history],
            color="C0", lw=2, label="global best")
    ax.plot(its, [h["gworst_utility"] if h["gworst_utility"] is not None else nan for h in history],
            color="C3", lw=1.2, ls="--", label="global worst")
    ax.set_xlabel("iteration")
    ax.set_ylabel("utility (dev)")
    ax.set_title(title)
    path = Path(output_dir) / PLOT
    atomic_write_bytes(path, figure_png(fig, ax))
    return path


def figure_png(fig, ax) -> bytes:
    """Finish a one-axes matplotlib figure the way every plot here looks (grid, legend) and return it
    as PNG bytes; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
