"""On the demo's experts, per seed: the best single expert (chosen on dev), one search with the default
coefficients, and the winner of a sweep chosen on dev and chosen on a select split; dev and test
accuracy. Everything runs through the product's path: the demo's run config (OUT/search.yaml, written by
`swarmkern demo`) and the functions `swarmkern search` and `swarmkern sweep` call (`runner.run_search`,
`runner.run_sweep`); the table is read back from their outputs (summary.json, sweep.json). The best single
expert is the best on dev among the sweep's starting experts (the same process, so the same numerics).

    swarmkern demo --seed 0 --out runs/demo0       # likewise --seed 1 / --seed 2 (each trains its own pool)
    python benchmarks/study_sweep_demo.py --runs runs/demo0 runs/demo1 runs/demo2 \\
        --work runs/study --out benchmarks/results/sweep_demo_study.md

Every search has the demo's budget (particles, the base model as a particle, iterations, patience, seed:
the demo's search.yaml); the default search takes SwarmConfig's default coefficients (phi 0.4/0.3/0.3/0.3,
step 1.0), the sweep draws `--configs` coefficient sets from the authors' ranges (seeded by the demo's
seed). With the select split, `--select-fraction` of dev is held out (seeded), the searches see the rest
and the best on the held-out part wins; its "dev" is then on the searched part of dev.
Test is scored only on final answers, for this report.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from swarmkern.config import SweepSection, load_run_config
from swarmkern.runner import run_search, run_sweep
from swarmkern.swarm import SwarmConfig

COEFFICIENTS = ("phi_v", "phi_p", "phi_g", "phi_w", "step")
METHODS = ["best single expert", "default search", "sweep, chosen on dev", "sweep, chosen on select split"]


def study_one(run: Path, work: Path, configs: int, select_fraction: float, reuse: bool) -> dict:
    """Run (or, with reuse, keep what an earlier run finished) the default search and the two sweeps of
    one demo folder; the row is read back from their output files (summary.json, sweep.json)."""
    cfg = load_run_config(run / "search.yaml")
    seed = cfg.swarm.seed
    budget = cfg.swarm.model_dump(exclude=set(COEFFICIENTS))
    budget["progress"] = False

    def config(name: str, sweep: dict | None):
        return cfg.model_copy(update={"swarm": SwarmConfig.model_validate(budget),
                                      "sweep": SweepSection.model_validate(sweep) if sweep else None,
                                      "output": cfg.output.model_copy(update={"dir": str(work / name),
                                                                              "overwrite": True})})

    seconds = {}
    jobs = [("default", "summary.json", lambda c: run_search(c), None),
            ("sweep_dev", "sweep.json", lambda c: run_sweep(c), {"mode": "random", "n": configs, "seed": seed}),
            ("sweep_select", "sweep.json", lambda c: run_sweep(c),
             {"mode": "random", "n": configs, "seed": seed, "select": "split",
              "select_fraction": select_fraction, "select_seed": seed})]
    for name, done, fn, sweep in jobs:
        if not (reuse and (work / name / done).is_file()):
            t0 = time.perf_counter()
            fn(config(name, sweep))
            seconds[name] = time.perf_counter() - t0
    default = json.loads((work / "default" / "summary.json").read_text())
    dev_sweep = json.loads((work / "sweep_dev" / "sweep.json").read_text())
    sel_sweep = json.loads((work / "sweep_select" / "sweep.json").read_text())
    # the best single expert, chosen on dev among the starting experts of the same runs (same numerics)
    starters = {k: v for k, v in dev_sweep["initial_dev_utilities"].items() if k != "base"}
    best = max(starters, key=lambda k: (starters[k], k))
    w, ws = dev_sweep["configurations"][dev_sweep["winner"]], sel_sweep["configurations"][sel_sweep["winner"]]
    return {"seed": seed,
            "best single expert": (starters[best], dev_sweep["initial_test_utilities"][best]),
            "best expert": best,
            "default search": (default["best_dev_utility"], default["test_utility"]),
            "sweep, chosen on dev": (w["best_dev"], w["test"]),
            "sweep, chosen on select split": (ws["best_dev"], ws["test"]),
            "select of the winner": ws["select"],
            "seconds": seconds,
            "wall seconds": (default["wall_seconds"], dev_sweep["wall_seconds"], sel_sweep["wall_seconds"]),
            "sweep configs (dev, test)": [(e["best_dev"], e["test"]) for e in dev_sweep["configurations"]],
            "winners": (dev_sweep["winner"], sel_sweep["winner"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="`swarmkern demo --out` folders, one per seed")
    ap.add_argument("--work", type=Path, required=True, help="where the searches and sweeps write their outputs")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--select-fraction", type=float, default=0.3)
    ap.add_argument("--reuse", action="store_true", help="keep the searches and sweeps already finished in --work")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_demo_study.md")
    args = ap.parse_args()

    rows, t_all = [], time.perf_counter()
    for run in args.runs:
        row = study_one(run, args.work / run.name, args.configs, args.select_fraction, args.reuse)
        rows.append(row)
        print(row, flush=True)
    cmd = "python benchmarks/study_sweep_demo.py " + " ".join(
        "DIR" if a.startswith("/") else a for a in sys.argv[1:])
    demo = load_run_config(args.runs[0] / "search.yaml")
    lines = [f"Command: `{cmd}`", "",
             f"The demo's experts (one pool per seed, base model {Path(demo.utility['model']).name}), the demo's utility "
             f"(multiple_choice, scoring {demo.utility.get('scoring')}, dtype {demo.utility.get('dtype')}); "
             f"{demo.swarm.n_particles} particles, at most {demo.swarm.max_iters} iterations, patience "
             f"{demo.swarm.patience}; sweep of {args.configs} draws from the authors' ranges; select split "
             f"{args.select_fraction:.0%} of dev (that column's dev is on the searched rest of dev). Accuracy, "
             "dev / test.", "",
             "| seed | " + " | ".join(METHODS) + " |", "| --- |" + " --- |" * len(METHODS)]
    for row in rows:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[m][0]:.3f} / {row[m][1]:.3f}" for m in METHODS) + " |")
    lines.append("| mean | " + " | ".join(
        f"{statistics.mean(r[m][0] for r in rows):.3f} / {statistics.mean(r[m][1] for r in rows):.3f}"
        for m in METHODS) + " |")
    gain = {m: statistics.mean(r[m][1] - r["best single expert"][1] for r in rows) for m in METHODS[1:]}
    lines += ["", "Mean test gain over the best single expert (points): " + "; ".join(
        f"{m} {100 * g:+.1f}" for m, g in gain.items()), "",
        "Best single expert per seed: " + ", ".join(f"seed {r['seed']}: {r['best expert']}" for r in rows)
        + "; the select-split winner's accuracy on the held-out part: " + ", ".join(
            f"{r['select of the winner']:.3f}" for r in rows) + ".",
        "Wall seconds per seed (default search / sweep on dev / sweep with select split; from the outputs): "
        + "; ".join(f"seed {r['seed']}: " + " / ".join(f"{x:.0f}" for x in r["wall seconds"]) for r in rows),
        "Sweep configurations (dev, test) of the dev-selected sweep: " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{d:.3f}/{t:.3f}" for d, t in r["sweep configs (dev, test)"])
            for r in rows),
        f"This invocation: {time.perf_counter() - t_all:.0f} s" + (" (--reuse: finished runs were read back)" if args.reuse else "") + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    from swarmkern.atomic import atomic_write_text

    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
