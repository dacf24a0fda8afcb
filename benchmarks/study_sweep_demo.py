"""On the demo's experts, per seed: the best single expert (chosen on dev), the demo's own search, one
search with the default coefficients, and the winner of a sweep chosen on dev and chosen on a select
split; dev and test accuracy. Everything runs through the product's path: the demo's run config
(OUT/search.yaml, written by `swarmkern demo`) and the functions `swarmkern search` and `swarmkern sweep`
call (`runner.run_search`, `runner.run_sweep`); the first two rows are read from the demo's
OUT/compare/compare.json (what `swarmkern compare OUT/compare.yaml` prints).

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
METHODS = ["best single expert", "demo's search", "default search", "sweep, chosen on dev",
           "sweep, chosen on select split"]


def study_one(run: Path, work: Path, configs: int, select_fraction: float) -> dict:
    cfg = load_run_config(run / "search.yaml")
    compare = json.loads((run / "compare" / "compare.json").read_text())
    seed = cfg.swarm.seed
    budget = cfg.swarm.model_dump(exclude=set(COEFFICIENTS))
    budget["progress"] = False
    row: dict = {"seed": seed,
                 "best single expert": (compare["best_single"]["dev"], compare["best_single"]["test"]),
                 "demo's search": (compare["swarm"]["dev"], compare["swarm"]["test"])}

    def config(name: str, sweep: dict | None):
        return cfg.model_copy(update={"swarm": SwarmConfig.model_validate(budget),
                                      "sweep": SweepSection.model_validate(sweep) if sweep else None,
                                      "output": cfg.output.model_copy(update={"dir": str(work / name),
                                                                              "overwrite": True})})

    t0 = time.perf_counter()
    r = run_search(config("default", None))
    row["default search"] = (r.best_utility, r.summary["test_utility"])
    t1 = time.perf_counter()
    s = run_sweep(config("sweep_dev", {"mode": "random", "n": configs, "seed": seed}))
    w = s.entries[s.winner]
    row["sweep, chosen on dev"] = (w["best_dev"], w["test"])
    t2 = time.perf_counter()
    s2 = run_sweep(config("sweep_select", {"mode": "random", "n": configs, "seed": seed, "select": "split",
                                           "select_fraction": select_fraction, "select_seed": seed}))
    w2 = s2.entries[s2.winner]
    row["sweep, chosen on select split"] = (w2["best_dev"], w2["test"])
    row["seconds"] = {"search": t1 - t0, "sweep": t2 - t1, "sweep_select": time.perf_counter() - t2}
    row["sweep configs (dev, test)"] = [(e["best_dev"], e["test"]) for e in s.entries]
    row["winners"] = (s.winner, s2.winner)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="`swarmkern demo --out` folders, one per seed")
    ap.add_argument("--work", type=Path, required=True, help="where the searches and sweeps write their outputs")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--select-fraction", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_demo_study.md")
    args = ap.parse_args()

    rows, t_all = [], time.perf_counter()
    for run in args.runs:
        row = study_one(run, args.work / run.name, args.configs, args.select_fraction)
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
             f"{args.select_fraction:.0%} of dev. Accuracy, dev / test.", "",
             "| seed | " + " | ".join(METHODS) + " |", "| --- |" + " --- |" * len(METHODS)]
    for row in rows:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[m][0]:.3f} / {row[m][1]:.3f}" for m in METHODS) + " |")
    lines.append("| mean | " + " | ".join(
        f"{statistics.mean(r[m][0] for r in rows):.3f} / {statistics.mean(r[m][1] for r in rows):.3f}"
        for m in METHODS) + " |")
    gain = {m: statistics.mean(r[m][1] - r["best single expert"][1] for r in rows) for m in METHODS[1:]}
    lines += ["", "Mean test gain over the best single expert (points): " + "; ".join(
        f"{m} {100 * g:+.1f}" for m, g in gain.items()), "",
        "Seconds per seed (default search / sweep on dev / sweep with select split): " + "; ".join(
            f"seed {r['seed']}: {r['seconds']['search']:.0f} / {r['seconds']['sweep']:.0f} / "
            f"{r['seconds']['sweep_select']:.0f}" for r in rows),
        "Sweep configurations (dev, test) of the dev-selected sweep: " + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{d:.3f}/{t:.3f}" for d, t in r["sweep configs (dev, test)"])
            for r in rows),
        f"Total {time.perf_counter() - t_all:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    from swarmkern.atomic import atomic_write_text

    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
