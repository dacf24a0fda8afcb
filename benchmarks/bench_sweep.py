"""A sweep of S configurations in lockstep against the same S searches run one after another.

    python benchmarks/bench_sweep.py                                   # tiny model pool; writes benchmarks/results/sweep_cpu.md
    python benchmarks/bench_sweep.py --config OUT/search.yaml --out benchmarks/results/sweep_demo_cpu.md
                                 # the demo's experts and utility (OUT: a `swarmkern demo --out` folder)
    python benchmarks/bench_sweep.py --config RUN.yaml           # any experts + utility from a run config

Both sides score the same utility object (one evaluator, built and warmed up once) with
the same S SwarmConfigs (SweepSpace random draws from the authors' ranges, `--iters` iterations, no early
stop, no output directory), so both do the same evaluations; the sweep scores the rows of all S swarms in
one utility call per iteration. Reported: wall seconds of each side (median of `--repeats`, the sides
alternating), their ratio, evaluations, utility calls, and how many configurations ended on the same best
dev utility (batched evaluation may round differently in the last bits, which can move a trajectory).
This machine's cores are shared: expect noise of +-20%; the ratio is what counts.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.sweep import Sweep, SweepSpace


def tiny_setup(root: Path, k: int, n_dev: int) -> tuple[list[str], dict]:
    from swarmkern.testing import build_tiny_setup, write_tiny_datasets

    setup = build_tiny_setup(root, k=k, reward=False, judge=False)
    data = write_tiny_datasets(root / "bench_data", n_dev=n_dev, n_test=n_dev, seed=1)
    spec = {"type": "multiple_choice", "model": str(setup.model_dir), "dev": str(data["mc_dev"]),
            "test": str(data["mc_test"]), "dtype": "float32"}
    return [str(p) for p in setup.expert_dirs], spec


def from_config(path: Path) -> tuple[list[str], dict, SwarmConfig]:
    from swarmkern.config import load_run_config

    cfg = load_run_config(path)
    return cfg.expert_sources(), dict(cfg.utility), cfg.swarm


def write_report(path: Path, lines: list[str]) -> None:
    """Print the report and write it atomically to `path` (the results file)."""
    from swarmkern.atomic import atomic_write_text

    text = "\n".join(lines) + "\n"
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None, help="a run/compare config (experts + utility); default: a tiny pool")
    ap.add_argument("--configs", type=int, default=8, help="S: configurations")
    ap.add_argument("--particles", type=int, default=None, help="default: the config's n_particles, else 10")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--experts", type=int, default=6, help="tiny pool: experts")
    ap.add_argument("--dev", type=int, default=32, help="tiny pool: dev questions")
    ap.add_argument("--max-examples", type=int, default=None, help="--config: use the first N dev questions")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_cpu.md")
    args = ap.parse_args()

    from swarmkern.flat import load_experts
    from swarmkern.utilities import build_utility

    tmp = tempfile.TemporaryDirectory(prefix="bench_sweep_")
    if args.config is None:
        sources, spec = tiny_setup(Path(tmp.name), args.experts, args.dev)
        pool_name = f"tiny llama (hidden 32, 4 layers), {args.experts} LoRA experts, {args.dev} dev questions"
    else:
        sources, spec, swarm = from_config(args.config)
        if args.max_examples:
            spec["max_examples"] = args.max_examples
        pool_name = (f"{args.config.parent.name}/{args.config.name}: {len(sources)} experts, utility {spec['type']}"
                     + (f" (scoring {spec['scoring']}, dtype {spec.get('dtype', 'auto')})" if spec.get("scoring") else ""))
    pool = load_experts(sources)
    utility = build_utility(spec, pool).dev
    # the config's swarm section (its size, the base model as a particle, ...) with --iters and no early stop
    swarm = swarm if args.config is not None else SwarmConfig(n_particles=10)
    base = swarm.model_copy(update={"n_particles": args.particles or swarm.n_particles, "max_iters": args.iters,
                                    "patience": 10 ** 6, "progress": False, "checkpoint": False})
    configs = SweepSpace(n=args.configs, seed=0).expand(base)
    Swarm(base.model_copy(update={"max_iters": 1}), pool, utility).run()  # warm-up: evaluator, kernels

    seq_s, sweep_s = [], []
    seq_best = sweep_best = None
    evals = calls = scored = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        seq = [Swarm(c, pool, utility).run() for c in configs]
        seq_s.append(time.perf_counter() - t0)
        seq_best = [r.best_utility for r in seq]
        t0 = time.perf_counter()
        res = Sweep(configs, pool, utility, progress=False).run()
        sweep_s.append(time.perf_counter() - t0)
        sweep_best = [e["best_dev"] for e in res.entries]
        evals, calls, scored = res.summary["evaluations"], res.summary["utility_calls"], res.summary["rows_scored"]
        print(f"sequential {seq_s[-1]:.2f} s, sweep {sweep_s[-1]:.2f} s", flush=True)
    seq_evals = sum(r.summary["evaluations"] for r in seq)
    a, b = statistics.median(seq_s), statistics.median(sweep_s)
    same = sum(x == y for x, y in zip(seq_best, sweep_best))
    cmd = "python benchmarks/bench_sweep.py " + " ".join("DIR" if a.startswith("/") else a for a in sys.argv[1:])
    lines = [
        f"Command: `{cmd.strip()}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads", "",
        f"Pool: {pool_name}. S = {args.configs} configurations (random draws from the authors' ranges), "
        f"{base.n_particles} particles{' (the base model among them)' if base.include_base else ''}, {args.iters} iterations each (no early stop). Median of {args.repeats} "
        "alternating repeats.", "",
        "| | seconds | evaluations | distinct rows scored | utility calls |", "| --- | --- | --- | --- | --- |",
        f"| {args.configs} sequential runs | {a:.2f} | {seq_evals} | {seq_evals} | {args.configs * (args.iters + 1)} |",
        f"| one sweep of {args.configs} in lockstep | {b:.2f} | {evals} | {scored} | {calls} |",
        f"| **ratio sweep / sequential** | **{b / a:.2f}x** | | |", "",
        f"Same best dev utility in {same} of {args.configs} configurations (sweep vs sequential).", "",
        f"All repeats (s): sequential {', '.join(f'{x:.2f}' for x in seq_s)}; sweep {', '.join(f'{x:.2f}' for x in sweep_s)}.",
    ]
    write_report(args.out, lines)
    tmp.cleanup()


if __name__ == "__main__":
    main()
