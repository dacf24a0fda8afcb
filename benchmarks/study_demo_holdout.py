"""How the demo's search settings were chosen without looking at test: each candidate setting runs the
demo's compare (the swarm, best_single and greedy_soup, through `swarmkern.compare.run_compare`, the
function `swarmkern compare` calls, each run in its own `swarmkern compare` process) with the *held-out*
split as the report split, for several seeds.

    python benchmarks/study_demo_holdout.py --seeds 0,1,2 \
        --candidate long '{"max_iters": 12, "patience": 6}' --candidate short '{"max_iters": 8, "patience": 4}' \
        --work DIR --out benchmarks/results/demo_holdout_study.md

Each seed uses its own expert pool (shipped for seed 0; other seeds train theirs once into the cache) and
its own quiz: the demo's dev split drives the search; `holdout` (200 questions, disjoint from dev and test,
`tasks.target_splits(..., n_holdout=200)`) is scored instead of test. The compute dtype is the demo's
`auto` (run it once more under `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` for fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path


ISA_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")  # shown in the command


def run_one(name: str, seed: int, overrides: dict, work: Path, methods: list[str]) -> dict:
    import subprocess
    import sys

    import yaml

    from swarmkern.demo import tasks
    from swarmkern.demo.experts import build_experts, find_experts
    from swarmkern.demo.model import cache_root, prompt_template, resolve_model_dir
    from swarmkern.demo.pipeline import CONTINUATION, DemoConfig, write_configs, write_quiz
    from swarmkern.evaluate.models import load_tokenizer

    cfg = DemoConfig(out=str(work / f"{name}_s{seed}"), n_holdout=200, progress=False, **overrides)
    cfg = replace(cfg, experts=replace(cfg.experts, seed=seed))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(None, False, None, print)
    template = prompt_template(load_tokenizer(str(model_dir)))
    cache = cache_root(None)
    expert_dir = find_experts(cfg.experts, model_dir, template, cache) or build_experts(
        cfg.experts, model_dir, template, CONTINUATION, cache, print, progress=False)
    dev, _, hold = tasks.target_splits(cfg.n_dev, cfg.n_test, seed=1 + seed, n_holdout=cfg.n_holdout)
    quiz = write_quiz(out, {"dev": dev, "test": hold})  # the report split is the held-out one, never test
    _, compare_yaml = write_configs(cfg, out, model_dir, expert_dir, template, quiz)
    spec = yaml.safe_load(compare_yaml.read_text())
    spec["compare"].update(methods=methods, save_merged=False)
    compare_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    # a process per run, as a user runs it: in bf16 the lower-layer cache's states depend on the batch that
    # first computed them, so runs sharing one process would depend on what ran before
    subprocess.run([sys.executable, "-m", "swarmkern", "compare", str(compare_yaml), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    res = json.loads((out / "compare" / "compare.json").read_text())
    return {"seconds": time.perf_counter() - t0, "iterations": res["swarm"]["info"]["iterations"],
            **{m: (100 * r["dev"], 100 * r["test"]) for m, r in res.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                    help="a DemoConfig override set, e.g. short '{\"max_iters\": 8, \"patience\": 4}'")
    ap.add_argument("--methods", default="best_single,greedy_soup")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from swarmkern.evaluate.precision import resolve_compute_dtype

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    dtype = resolve_compute_dtype("auto", "cpu")
    rows = ["| candidate | seed | swarm dev / holdout | best_single dev / holdout | greedy_soup dev / holdout | "
            "swarm - best_single (holdout) | iterations | seconds |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    means = []
    for name, overrides in args.candidate:
        gains = []
        for seed in seeds:
            r = run_one(name, seed, json.loads(overrides), args.work, methods)
            gains.append(r["swarm"][1] - r["best_single"][1])
            cells = " | ".join(f"{r[m][0]:.1f} / {r[m][1]:.1f}" for m in ["swarm", *methods])
            rows.append(f"| {name} `{overrides}` | {seed} | {cells} | {gains[-1]:+.1f} | {r['iterations']} | "
                        f"{r['seconds']:.0f} |")
            print(rows[-1], flush=True)
        means.append(f"- {name}: mean holdout gain of the swarm over the best single expert {sum(gains) / len(gains):+.1f} points")
    text = "\n".join([
        "# The demo's search settings on the held-out split", "",
        "Command: `" + "".join(f"{k}={os.environ[k]} " for k in ISA_VARS if k in os.environ)
        + f"python benchmarks/study_demo_holdout.py --seeds {args.seeds} "
        + " ".join(f"--candidate {n} '{o}'" for n, o in args.candidate) + f" --work DIR --out {args.out}`", "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; compute dtype {dtype.name} ({dtype.reason}).",
        "Accuracy %, dev (200 questions, searched) / holdout (200 questions, never searched, not test).", "",
        *rows, "", *means, "",
        "One standard error of a 200-question accuracy is about 3 points: these differences are within noise.", ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
