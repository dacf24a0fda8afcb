"""`Swarm` as a general particle swarm optimiser against pyswarms' GlobalBestPSO, in the same run.

    pip install pyswarms                                     # (with your torch pinned) the only extra it needs
    python benchmarks/bench_pyswarms.py                      # writes benchmarks/results/pyswarms_cpu.md
    python benchmarks/bench_pyswarms.py --seeds 0 1 2 --speed-dims 30 1e5 --out /dev/stdout

Quality at an equal budget: P particles, I evaluations of the whole swarm (pyswarms: `iters=I`; ours:
the initial evaluation + I-1 iterations), D = 30, sphere and Rastrigin from
`pyswarms.utils.functions.single_obj` (the very same numpy functions score both: ours maximises their
negation), the same start points per seed (uniform in [-5.12, 5.12]^D, given to pyswarms as init_pos).
pyswarms: w, c1, c2 = 0.9, 0.5, 0.3, no bounds, no velocity clamp (its defaults). Ours:
`update: classic` with the same coefficients, and the Model Swarms defaults for comparison. Reported:
the median over seeds of the final best value (lower is better) and its ratio to pyswarms'.

Speed: seconds per iteration (update + evaluation of the same numpy function) at several D, pyswarms
against `update: classic` on the default kernel backend, median of the timed iterations.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from swarmkern import ops
from swarmkern.swarm import Swarm, SwarmConfig

W, C1, C2 = 0.9, 0.5, 0.3


def functions():
    from pyswarms.utils.functions import single_obj as fx

    return {"sphere": fx.sphere, "rastrigin": fx.rastrigin}


def start_points(seed: int, particles: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-5.12, 5.12, (particles, dim))


def utility_of(fn):
    """Our utility (maximised): minus the pyswarms function, on float64 copies of the particles."""
    return lambda x: torch.from_numpy(-fn(x.detach().to(torch.float64).cpu().numpy()))


def run_pyswarms(fn, init: np.ndarray, iters: int, seed: int, bounds: tuple[float, float] | None = None,
                 bh_strategy: str = "periodic") -> tuple[float, float]:
    """(final best value, seconds per iteration)."""
    from pyswarms.single import GlobalBestPSO

    np.random.seed(seed)
    box = None if bounds is None else (np.full(init.shape[1], bounds[0]), np.full(init.shape[1], bounds[1]))
    opt = GlobalBestPSO(n_particles=init.shape[0], dimensions=init.shape[1], options={"c1": C1, "c2": C2, "w": W},
                        init_pos=init.copy(), bounds=box, bh_strategy=bh_strategy)
    t0 = time.perf_counter()
    cost, _ = opt.optimize(fn, iters=iters, verbose=False)
    return float(cost), (time.perf_counter() - t0) / iters


CLASSIC = dict(update="classic", phi_v=W, phi_p=C1, phi_g=C2, restart=False, velocity_init="zero")


def run_ours(fn, init: np.ndarray, iters: int, seed: int, settings: dict) -> tuple[float, Swarm]:
    """(final best value, the finished Swarm) after `iters` evaluations of the swarm."""
    cfg = SwarmConfig(**{**settings, "max_iters": iters - 1, "patience": iters + 1, "seed": seed,
                         "progress": False, "checkpoint": False})
    swarm = Swarm(cfg, torch.from_numpy(init).to(torch.float32), utility_of(fn))
    return -swarm.run().best_utility, swarm


def ours_seconds_per_iteration(fn, init: np.ndarray, iters: int, settings: dict) -> tuple[float, float]:
    """(wall-clock seconds per iteration, seconds per update): the wall clock of a run of `iters`
    iterations minus that of a run of 0 (setup and the initial evaluation), over `iters`; everything
    an iteration does (update, evaluation, bookkeeping, history with the trajectory coordinates) counts.
    The update alone: the median of the iterations' own `update_s` timings."""
    walls = []
    for n in (1, iters + 1):
        t0 = time.perf_counter()
        swarm = run_ours(fn, init, n, 0, settings)[1]
        walls.append(time.perf_counter() - t0)
    update = statistics.median(h["timings"]["update_s"] for h in swarm.history[1:])
    return (walls[1] - walls[0]) / iters, update


# pyswarms' Rastrigin refuses points outside [-5.12, 5.12]: both optimisers get those bounds there
# (pyswarms: its default periodic handling, and `nearest`, which is what our clipping does).
BOUNDS = {"sphere": None, "rastrigin": (-5.12, 5.12)}


def quality(seeds, particles: int, iters: int, dim: int) -> list[str]:
    lines = [f"## Quality: {particles} particles x {iters} evaluations, D = {dim}, seeds {list(seeds)}", "",
             "Median (over seeds) of the final best value, lower is better; per-seed values after it. "
             "The ratio is against pyswarms with its default boundary handling.", "",
             "| function | method | median final best | / pyswarms | per seed |", "| --- | --- | --- | --- | --- |"]
    for name, fn in functions().items():
        bounds = BOUNDS[name]
        variants = {"pyswarms GlobalBestPSO": ("pyswarms", "periodic")}
        if bounds is not None:
            variants["pyswarms GlobalBestPSO, bh_strategy nearest"] = ("pyswarms", "nearest")
        variants["ours, update: classic"] = ("ours", CLASSIC)
        variants["ours, Model Swarms defaults"] = ("ours", {})
        base = None
        for label, (who, how) in variants.items():
            vals = []
            for seed in seeds:
                init = start_points(seed, particles, dim)
                run = (run_pyswarms(fn, init, iters, seed, bounds, how) if who == "pyswarms"
                       else run_ours(fn, init, iters, seed, {**how, "bounds": bounds}))
                vals.append(run[0])
            med = statistics.median(vals)
            base = med if base is None else base
            print(f"{name:10s} {label:45s} median {med:.4g} ({med / base:.2f}x)", file=sys.stderr)
            lines.append(f"| {name} | {label} | {med:.4g} | {med / base:.2f}x | "
                         f"{', '.join(f'{v:.3g}' for v in vals)} |")
    return lines


def speed(dims, particles: int, iters: int) -> list[str]:
    fn = functions()["sphere"]
    lines = [f"## Seconds per iteration: {particles} particles, sphere", "",
             f"Ours: `update: classic`, fp32 buffers, kernel backend `{ops.default_backend('cpu')}`; "
             "pyswarms: float64 numpy. Both evaluate the same numpy sphere. `total`: wall clock per iteration, "
             "everything included (ours: a run of N iterations minus a run of 0, over N), ours with the "
             "trajectory report off (`report_trajectory: false`) and on (the default: every particle "
             "projected on 2 directions each iteration); `update`: without the sphere (ours: the "
             "iterations' own update timings; pyswarms: total minus the median time of the sphere on its "
             f"positions, measured separately). Iterations: {40 * iters} at D <= 10^4, else {iters}.", "",
             "| D | pyswarms total | ours total | pyswarms / ours | ours total, trajectory on | "
             "pyswarms update | ours update | pyswarms / ours |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for dim in dims:
        n = 40 * iters if dim <= 10_000 else iters
        init = start_points(0, particles, dim)
        theirs = run_pyswarms(fn, init, n, 0)[1]
        fn_s = statistics.median(_timed(fn, init) for _ in range(n))
        ours, ours_update = ours_seconds_per_iteration(fn, init, n, {**CLASSIC, "report_trajectory": False})
        ours_traj = ours_seconds_per_iteration(fn, init, n, CLASSIC)[0]
        theirs_update = max(theirs - fn_s, 0.0)
        print(f"D={dim}: pyswarms {theirs:.4g} s/iter ({theirs_update:.4g} update), ours {ours:.4g} s/iter "
              f"({ours_update:.4g} update; {ours_traj:.4g} with the trajectory)", file=sys.stderr)
        lines.append(f"| {dim:,} | {theirs:.3g} s | {ours:.3g} s | {theirs / ours:.1f}x | {ours_traj:.3g} s | "
                     f"{theirs_update:.3g} s | {ours_update:.3g} s | {theirs_update / ours_update:.1f}x |")
    return lines


def _timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--particles", type=int, default=20)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--dim", type=int, default=30)
    parser.add_argument("--speed-dims", type=float, nargs="+", default=[30, 1e6])
    parser.add_argument("--speed-iters", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pyswarms_cpu.md"))
    args = parser.parse_args()
    import pyswarms

    cmd = "python benchmarks/bench_pyswarms.py " + " ".join(sys.argv[1:])
    head = ["# Swarm vs pyswarms GlobalBestPSO (cpu)", "", f"Command: `{cmd.strip()}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
            f"pyswarms {pyswarms.__version__}, numpy {np.__version__}.", "",
            f"pyswarms: w={W}, c1={C1}, c2={C2}, no velocity clamp (its default), velocities start U(0, 1). "
            f"Ours `update: classic`: phi_v={W}, phi_p={C1}, phi_g={C2}, velocity_init zero, restart false. "
            "Both ours: patience off (every evaluation is spent). Same start points per seed (uniform in "
            "[-5.12, 5.12]^D). Rastrigin: bounds [-5.12, 5.12] for everyone (pyswarms' function refuses "
            "points outside; our `bounds` clips, like pyswarms' `nearest`); sphere: no bounds.", ""]
    body = quality(args.seeds, args.particles, args.iters, args.dim) + [""]
    body += speed([int(d) for d in args.speed_dims], args.particles, args.speed_iters)
    text = "\n".join(head + body) + "\n"
    if args.out == "/dev/stdout":
        print(text)
    else:
        from swarmkern.atomic import atomic_write_text

        atomic_write_text(Path(args.out), text)
        print(text)


if __name__ == "__main__":
    main()
