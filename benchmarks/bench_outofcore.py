"""A full-weight swarm larger than RAM: storage: mmap over SmolLM2-135M in fp32.

    python benchmarks/bench_outofcore.py --particles 20 --experts 4 --iters 3   # ~32 GB of x, v, pbest

The experts are the demo's base model (dequantised to fp32 by `swarmkern demo`'s model resolver) plus
seeded noise (0.01 x the tensor's std), saved as .safetensors files; the swarm populates P particles by
crossover, keeps x, v and pbest as memory-mapped files in the run folder (buffers/), walks them in
column blocks, and scores every particle with the multiple-choice utility (a full-weight forward pass
per particle over a few questions, the particle's tensors bound as views of its mapped row).
Reported: peak resident memory (anonymous = the process's own allocations; total = also the mapped
file pages the OS keeps resident, which it reclaims under pressure), seconds per phase and per
iteration. Everything it writes (experts, run folder) lives in a temporary folder removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

QUESTIONS = [
    {"question": "What is 2 + 3?", "choices": ["4", "5", "6", "7"], "answer": 1},
    {"question": "What color is the sky on a clear day?", "choices": ["green", "red", "blue", "black"], "answer": 2},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six", "eight"], "answer": 1},
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Berlin", "Madrid"], "answer": 0},
]


class MemoryWatch:
    """Samples /proc/self/status (VmRSS, RssAnon, RssFile) every `period` seconds; keeps the peaks."""

    def __init__(self, period: float = 0.1):
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(period)

    def sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def make_experts(model_dir: Path, out: Path, k: int, scale: float = 0.01) -> list[Path]:
    """k full-weight experts: every parameter of the base model plus seeded noise."""
    from safetensors.torch import load_file, save_file

    base = load_file(str(model_dir / "model.safetensors"))
    paths = []
    for e in range(k):
        g = torch.Generator().manual_seed(e)
        state = {}
        for name, t in base.items():
            t = t.float()
            state[name] = (t + scale * (t.std() if t.numel() > 1 else 1.0) * torch.randn(t.shape, generator=g)).contiguous()
        paths.append(out / f"expert{e}.safetensors")
        save_file(state, str(paths[-1]))
        del state
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=20)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--block-mib", type=int, default=64, help="MiB of each buffer per column block")
    ap.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "outofcore_cpu.md"))
    args = ap.parse_args()

    from swarmkern.demo.model import resolve_model_dir
    from swarmkern.flat import load_experts
    from swarmkern.swarm import Swarm, SwarmConfig
    from swarmkern.utilities import build_utility

    model_dir = resolve_model_dir(None, False, None, print)
    tmp = Path(tempfile.mkdtemp(prefix="swarmkern_outofcore_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        paths = make_experts(model_dir, tmp, args.experts)
        experts_s = time.perf_counter() - t0
        dev = tmp / "dev.jsonl"
        dev.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
        pool = load_experts(paths)
        D, P = pool.layout.numel, args.particles
        block = max(1, (args.block_mib << 20) // (P * 4))
        buffers_gb = 3 * P * D * 4 / 1e9
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        print(f"D = {D:,}, P = {P}: x + v + pbest = {buffers_gb:.1f} GB (RAM {ram_gb:.1f} GB), "
              f"free disk {shutil.disk_usage(tmp).free / 1e9:.0f} GB", flush=True)
        built = build_utility({"type": "multiple_choice", "dev": str(dev), "model": str(model_dir)}, pool)
        cfg = SwarmConfig(n_particles=P, max_iters=args.iters, patience=10 ** 6, storage="mmap", block_size=block,
                          checkpoint=False, seed=0, progress=True)
        load = [os.getloadavg()[0]]
        with MemoryWatch() as mem:
            t1 = time.perf_counter()
            swarm = Swarm(cfg, pool, built.dev, output_dir=tmp / "run")
            result = swarm.run()
            total_s = time.perf_counter() - t1
        load.append(os.getloadavg()[0])
        hist = swarm.history
        init_s = hist[0]["timings"]["evaluate_s"]
        its = [h["timings"] for h in hist[1:]]
        per_iter = [t["update_s"] + t["evaluate_s"] + t["bookkeeping_s"] for t in its]
        anon, rss = mem.peak["RssAnon"] / 1e9, mem.peak["VmRSS"] / 1e9
        print(f"peak RSS {rss:.1f} GB (anonymous {anon:.2f} GB), {total_s:.0f} s in all, "
              f"iterations {[round(s, 1) for s in per_iter]} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cmd = "python benchmarks/bench_outofcore.py " + " ".join(sys.argv[1:])
    lines = [
        "# A full-weight swarm larger than RAM (storage: mmap, CPU)", "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), {ram_gb:.1f} GB RAM, no swap, ext4 on a "
        f"virtual disk; torch {torch.__version__}; 1-minute load average {load[0]:.0f} at the start, {load[1]:.0f} "
        "at the end (other jobs share the cores).", "",
        f"SmolLM2-135M-Instruct in fp32 (D = {D:,} numbers per particle), {args.experts} full-weight experts "
        f"(the base + 1% noise), P = {P} particles by crossover, {args.iters} iterations, multiple-choice "
        f"utility on {len(QUESTIONS)} questions (one forward pass per particle, its tensors bound as views of "
        f"its mapped row), column blocks of {block:,} columns ({args.block_mib} MiB of each buffer), "
        "checkpoints off (a snapshot would copy the 32 GB once more; see docs/SCALE.md).", "",
        "| quantity | value |", "| --- | --- |",
        f"| x + v + pbest (memory-mapped files) | {buffers_gb:.1f} GB |",
        f"| machine RAM | {ram_gb:.1f} GB |",
        f"| peak resident memory, anonymous (the process's own allocations: model, evaluator, block accumulators) | {anon:.2f} GB |",
        f"| peak resident memory, total (also mapped file pages the OS kept resident) | {rss:.1f} GB |",
        f"| building the swarm: crossover fill of x and v, pbest copy, initial evaluation | "
        f"{total_s - sum(per_iter):.0f} s (evaluation {init_s:.0f} s) |",
    ]
    for i, (t, s) in enumerate(zip(its, per_iter), start=1):
        lines.append(f"| iteration {i}: update (kernel over column blocks) / evaluation / bookkeeping | "
                     f"{t['update_s']:.1f} s / {t['evaluate_s']:.1f} s / {t['bookkeeping_s']:.1f} s = {s:.1f} s |")
    lines += [f"| whole run (incl. export of the best, {D * 4 / 1e9:.2f} GB) | {total_s:.0f} s |",
              f"| best utility: initial -> final | {result.summary['initial_best_dev_utility']} -> {result.best_utility} |",
              "", f"(Writing the {args.experts} experts took {experts_s:.0f} s, not counted.) The update streams "
              "the three buffers through the page cache: with the buffers larger than RAM every iteration reads "
              "and writes most of them from and to disk, so its time is disk bandwidth; see docs/SCALE.md.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
