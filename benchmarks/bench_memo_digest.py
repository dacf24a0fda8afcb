"""The prediction memo's digest against one evaluation, on full-weight particles (SmolLM2-135M, fp32, CPU).

    python benchmarks/bench_memo_digest.py --out benchmarks/results/memo_digest_cpu.md

The memo (swarmkern/utilities/memo.py) hashes every particle it is asked about (XXH3-128 of its bytes; it was
blake2b, timed here too, in the same loop) before
deciding whether to run the model. For a full-weight particle that is the whole model (135M floats, 540 MB).
Workload: the demo's model as a one-expert full-weight pool (its own safetensors), the demo's 200 dev
questions, the built-in multiple_choice utility (first_token scoring, the demo's prompt), memo off; one
particle per call. Timed, each the median of --repeats, interleaved: `row_digest` of the particle, and one
utility call on it. The share is digest / evaluation (CPU seconds of this process; wall seconds too,
since the machine may be shared).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-dev", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from swarmkern.demo import tasks
    from swarmkern.demo.model import prompt_template, smollm2_dir
    from swarmkern.demo.pipeline import CONTINUATION, write_quiz
    from swarmkern.evaluate.models import load_tokenizer
    from swarmkern.flat import load_experts
    from swarmkern.utilities import build_utility
    from swarmkern.utilities.memo import row_digest

    model_dir = smollm2_dir()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memo_digest."))
    dev, _, _ = tasks.target_splits(args.n_dev, 1, seed=1)
    quiz = write_quiz(tmp, {"dev": dev})
    pool = load_experts([model_dir / "model.safetensors"], names=["base"])
    built = build_utility({"type": "multiple_choice", "scoring": "first_token", "model": str(model_dir),
                           "dev": str(quiz["dev"]), "template": prompt_template(load_tokenizer(str(model_dir))),
                           "continuation": CONTINUATION, "dtype": "float32", "memo_rows": 0}, pool)
    row = torch.empty(1, pool.layout.numel, dtype=torch.float32)
    pool.fill_rows(row, torch.ones(1, 1, dtype=torch.float64))
    built.dev(row)  # warm-up
    row_digest(row[0])
    digest, evaluate, blake = [], [], []
    for _ in range(args.repeats):
        tb = clock()
        h = hashlib.blake2b(digest_size=20)
        h.update(row[0].view(torch.uint8).numpy().data)
        h.digest()
        t0 = clock()
        blake.append((t0[0] - tb[0], t0[1] - tb[1]))
        row_digest(row[0])
        t1 = clock()
        built.dev(row)
        t2 = clock()
        digest.append((t1[0] - t0[0], t1[1] - t0[1]))
        evaluate.append((t2[0] - t1[0], t2[1] - t1[1]))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    d_cpu, d_wall, e_cpu, e_wall = med(digest, 0), med(digest, 1), med(evaluate, 0), med(evaluate, 1)
    b_cpu, b_wall = med(blake, 0), med(blake, 1)
    lines = [
        "# Prediction memo: digest cost on full-weight particles",
        "",
        f"Command: `python benchmarks/bench_memo_digest.py --repeats {args.repeats} --n-dev {args.n_dev}`",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs "
        f"while measured), torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Particle: SmolLM2-135M full weights, D = {pool.layout.numel:,} fp32 ({pool.layout.numel * 4 / 2**20:.0f} MiB); "
        f"one evaluation = the multiple_choice utility (first_token) on {args.n_dev} questions, one particle.",
        "",
        "| | CPU s (median) | wall s (median) |",
        "|---|---|---|",
        f"| row_digest (XXH3-128 of the row) | {d_cpu:.3f} | {d_wall:.3f} |",
        f"| blake2b of the row (the digest before) | {b_cpu:.3f} | {b_wall:.3f} |",
        f"| one evaluation | {e_cpu:.3f} | {e_wall:.3f} |",
        f"| row_digest / evaluation | {d_cpu / e_cpu:.2%} | {d_wall / e_wall:.2%} |",
        f"| blake2b / evaluation | {b_cpu / e_cpu:.2%} | {b_wall / e_wall:.2%} |",
        "",
        f"Per repeat (digest CPU s, evaluation CPU s): {json.dumps([[round(a[0], 3), round(b[0], 3)] for a, b in zip(digest, evaluate)])}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
