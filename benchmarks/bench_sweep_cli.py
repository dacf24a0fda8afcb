"""What a user saves with `swarmkern sweep`: one sweep of S configurations against the same S
configurations run as S separate `swarmkern search` commands, one after another, each a fresh process.

    python benchmarks/bench_sweep_cli.py --config OUT/search.yaml --configs 8 \\
        --out benchmarks/results/sweep_demo_cli_cpu.md          # OUT: a `swarmkern demo --out` folder

The run config's experts, utility and `swarm:` section are kept; `sweep:` draws `--configs`
configurations from the authors' ranges (`--sweep-seed`). Each side runs the commands a user would type
(subprocesses of this Python's `swarmkern` entry point), so each side pays what it really costs: process
start, model load, the utility's caches, the search, the end-of-search reports, test scoring, outputs.
Both sides use the same configurations, seeds and budget (early stopping as configured), so they do the
same searches: the best dev utility of every configuration is checked to be equal. Reported: wall and
CPU seconds (user + system of the child processes) of each side and their ratio.
`benchmarks/bench_sweep.py` measures the stricter in-process comparison (one warm evaluator for both).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a child command; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="a run config (experts, swarm, utility)")
    ap.add_argument("--configs", type=int, default=8, help="S: configurations")
    ap.add_argument("--sweep-seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="output folder of the runs (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_cli_cpu.md")
    args = ap.parse_args()

    from swarmkern.config import SweepSection, load_run_config

    cfg = load_run_config(args.config)
    sweep = SweepSection(mode="random", n=args.configs, seed=args.sweep_seed)
    configs = sweep.expand(cfg.swarm)
    tmp = tempfile.TemporaryDirectory(prefix="bench_sweep_cli_")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("swarmkern"))
    base = cfg.model_dump(mode="json")

    sweep_cfg = {**base, "swarm": {**base["swarm"], "progress": False},
                 "sweep": sweep.model_dump(mode="json"), "output": {"dir": str(work / "sweep"), "overwrite": True}}
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep_cfg, sort_keys=False))
    run_cfgs = []
    for i, c in enumerate(configs):
        path = work / f"search_{i}.yaml"
        path.write_text(yaml.safe_dump({**base, "swarm": {**c.model_dump(mode="json"), "progress": False},
                                        "output": {"dir": str(work / f"search_{i}"), "overwrite": True}},
                                       sort_keys=False))
        run_cfgs.append(path)

    sweep_time = timed([exe, "sweep", str(work / "sweep.yaml"), "--no-progress"])
    print(f"sweep: {sweep_time[0]:.1f} s wall, {sweep_time[1]:.1f} CPU-s", flush=True)
    seq = [0.0, 0.0]
    for i, path in enumerate(run_cfgs):
        wall, cpu = timed([exe, "search", str(path)])
        seq[0] += wall
        seq[1] += cpu
        print(f"search {i}: {wall:.1f} s wall, {cpu:.1f} CPU-s", flush=True)

    report = json.loads((work / "sweep" / "sweep.json").read_text())
    lone = [json.loads((work / f"search_{i}" / "summary.json").read_text()) for i in range(len(configs))]
    same = sum(e["best_dev"] == s["best_dev_utility"] for e, s in zip(report["configurations"], lone))
    iters = [s["iterations"] for s in lone]
    cmd = "python benchmarks/bench_sweep_cli.py " + " ".join("DIR" if a.startswith("/") else a for a in sys.argv[1:])
    lines = [
        f"Command: `{cmd}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; the run config's "
        f"utility: {cfg.utility.get('type')} (scoring {cfg.utility.get('scoring', '-')}, dtype "
        f"{cfg.utility.get('dtype', 'auto')}), {len(cfg.expert_sources())} experts, swarm: {cfg.swarm.n_particles} "
        f"particles, at most {cfg.swarm.max_iters} iterations, patience {cfg.swarm.patience}. S = {args.configs} "
        f"configurations (random draws from the authors' ranges, seed {args.sweep_seed}); iterations run: "
        f"{', '.join(map(str, iters))}.", "",
        "| | wall s | CPU s (user + sys) | evaluations | distinct rows scored |", "| --- | ---: | ---: | ---: | ---: |",
        f"| {args.configs} x `swarmkern search`, one after another | {seq[0]:.1f} | {seq[1]:.1f} | "
        f"{sum(s['evaluations'] for s in lone)} | {sum(s['evaluations'] for s in lone)} |",
        f"| one `swarmkern sweep` of {args.configs} | {sweep_time[0]:.1f} | {sweep_time[1]:.1f} | "
        f"{report['evaluations']} | {report.get('rows_scored', report['evaluations'])} |",
        f"| **ratio sweep / sequential** | **{sweep_time[0] / seq[0]:.2f}x** | **{sweep_time[1] / seq[1]:.2f}x** | | |",
        "", f"Same best dev utility in {same} of {args.configs} configurations (sweep vs its lone search).",
    ]
    from bench_sweep import write_report  # this folder is on sys.path when the script runs

    write_report(args.out, lines)
    tmp.cleanup()


if __name__ == "__main__":
    main()
