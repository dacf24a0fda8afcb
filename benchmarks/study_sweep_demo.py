"""On the demo's experts: the best single expert, one default search and the winner of a sweep (chosen on
dev, and chosen on a held-out select split), dev and test accuracy, for several seeds.

    python benchmarks/study_sweep_demo.py --experts-dir CACHE/experts/KEY --seeds 0 1 2 \\
        --out benchmarks/results/sweep_demo_study.md

The experts are a cached `swarmkern demo` pool (expert_*/ and base_init/, PEFT adapters on the top layers
of SmolLM2-135M-Instruct); the utility is the demo's first-token multiple-choice scorer (ChoiceAccuracy).
For each seed s: the quiz is `tasks.target_splits(n_dev, n_test, seed=1 + s)` (as the demo), the swarms
use seed s. Settings that are not swept are the same for every search (`--particles`, `--iters`,
`--patience`; the base init is one of the starting particles); the sweep draws `--configs` configurations from the authors' ranges.
select split: `--select-fraction` of dev held out (select_positions, seed s), the sweep searches on the
rest and the winner is the best on the held-out part; its dev accuracy is reported on the whole dev set.
Test is scored only on final answers, for this report.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.sweep import Sweep, SweepSpace
from swarmkern.utilities.holdout import select_positions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts-dir", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="the base model dir (default: the demo's cached SmolLM2)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--particles", type=int, default=12)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--select-fraction", type=float, default=0.3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_demo_study.md")
    args = ap.parse_args()

    from swarmkern.demo import tasks

    sys.path.insert(0, str(Path(__file__).parent))
    from demo_pool import load_demo_pool

    pool, scorer, n_experts = load_demo_pool(args.experts_dir, args.model, args.dtype)
    names = pool.names

    base = SwarmConfig(n_particles=args.particles, max_iters=args.iters, patience=args.patience,
                       progress=False)
    rows, t_all = [], time.perf_counter()
    for seed in args.seeds:
        dev, test, _ = tasks.target_splits(args.dev, args.test, seed=1 + seed)
        dev_u, test_u = scorer(dev), scorer(test)
        k_sel = round(args.select_fraction * len(dev))
        held = set(select_positions(len(dev), k_sel, seed))
        search_u = scorer([e for i, e in enumerate(dev) if i not in held])
        select_u = scorer([e for i, e in enumerate(dev) if i in held])
        experts = pool.weights[:len(names) - 1]
        e_dev = dev_u(experts)
        best_e = int(torch.argmax(e_dev))
        row = {"seed": seed, "best single expert": (float(e_dev[best_e]), float(test_u(experts[best_e:best_e + 1])[0]))}
        cfg = base.model_copy(update={"seed": seed})
        t0 = time.perf_counter()
        r = Swarm(cfg, pool, dev_u).run()
        row["default search"] = (r.best_utility, float(test_u(r.best.unsqueeze(0))[0]))
        configs = SweepSpace(n=args.configs, seed=seed).expand(cfg)
        t1 = time.perf_counter()
        sw = Sweep(configs, pool, dev_u, test_utility=test_u, progress=False).run()
        t2 = time.perf_counter()
        w = sw.entries[sw.winner]
        row["sweep, chosen on dev"] = (w["best_dev"], w["test"])
        sel = Sweep(configs, pool, search_u, test_utility=test_u, select_utility=select_u, progress=False).run()
        ws = sel.results[sel.winner]
        row["sweep, chosen on select split"] = (float(dev_u(ws.best.unsqueeze(0))[0]), sel.entries[sel.winner]["test"])
        row["seconds"] = {"search": t1 - t0, "sweep": t2 - t1}
        row["sweep configs (dev, test)"] = [(e["best_dev"], e["test"]) for e in sw.entries]
        rows.append(row)
        print(row, flush=True)

    methods = ["best single expert", "default search", "sweep, chosen on dev", "sweep, chosen on select split"]
    cmd = "python benchmarks/study_sweep_demo.py " + " ".join("PATH" if a.startswith("/") else a for a in sys.argv[1:])
    lines = [f"Command: `{cmd}`", "",
             f"The demo's experts ({len(names) - 1} LoRA experts + base init, SmolLM2-135M-Instruct), the demo's "
             f"first-token scorer ({args.dtype}); quiz of {args.dev} dev / {args.test} test questions per seed; "
             f"{args.particles} particles, at most {args.iters} iterations, patience {args.patience}; "
             f"sweep of {args.configs} draws from the authors' ranges; select split {args.select_fraction:.0%} of dev.",
             "", "| seed | " + " | ".join(f"{m} dev / test" for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for row in rows:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[m][0]:.3f} / {row[m][1]:.3f}" for m in methods) + " |")
    lines.append("| median | " + " | ".join(
        f"{statistics.median(r[m][0] for r in rows):.3f} / {statistics.median(r[m][1] for r in rows):.3f}"
        for m in methods) + " |")
    lines += ["", "Seconds per seed (one search / one sweep of the same size per configuration): " + "; ".join(
        f"seed {r['seed']}: {r['seconds']['search']:.0f} / {r['seconds']['sweep']:.0f}" for r in rows),
        f"Total {time.perf_counter() - t_all:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    from swarmkern.atomic import atomic_write_text

    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
