"""How should a search choose what it exports, for dev sets of a few hundred examples? A study on data the
searches never see, through the user's path (`swarmkern search` / `swarmkern sweep`, one process per run).

    python benchmarks/study_selection.py --pools tiny8,tiny6,demo-tiny --seeds 0,1,2 \
        --variants dev,split,sweep4 --work DIR --out benchmarks/results/selection_study.md

Each pool has a dev file (what the user gives the search; 300 examples, the real demo's own 200), an
*audit* file (300 examples, 200 for the demo pools: from the same distribution, seen by no search, no
selection and no choice of default: the study's yardstick) and a test file (500 examples, 400 for
demo-tiny; for the evidence table, never used to choose anything). The variants, each a config a user
runs:

    dev      select: dev      the paper's rule: export the global best on dev
    split    select: split    search on 70% of dev, choose the export on the other 30% (the guard on)
    sweep4   swarmkern sweep, 4 random configurations (the authors' ranges), sweep.select: split

Every run's export is compared with the best single expert chosen on the whole dev (what a user has
without a swarm), on the audit split and on test, with the paired interval and test of swarmkern.stats.
Results go to WORK/results.jsonl (a rerun skips the runs already there) and to the Markdown file.

Pools (all built here, seconds each): tiny8 (the tiny test model, 8 random LoRA experts on its top two
layers, arithmetic multiple choice), tiny6 (another tiny model, 6 LoRA experts on every layer, larger
noise), demo-tiny (the demo's pipeline on its tiny model: experts trained on procedural skills, the
demo's target quiz), demo (the real demo: SmolLM2-135M and its shipped experts; minutes per run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

N_DEV, N_AUDIT, N_TEST = 300, 300, 500


# -- pools ------------------------------------------------------------------------------------------------
def _split_lines(src: Path, out: Path, n_dev: int) -> tuple[Path, Path]:
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    dev, audit = out / "dev.jsonl", out / "audit.jsonl"
    dev.write_text("".join(line + "\n" for line in lines[:n_dev]))
    audit.write_text("".join(line + "\n" for line in lines[n_dev:]))
    return dev, audit


def build_pool(name: str, root: Path) -> dict[str, Any]:
    """{"experts": [dirs], "names", "utility": spec with dev/test, "audit": path, "swarm": settings}."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "pool.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if name in ("tiny8", "tiny6"):
        from swarmkern.testing import build_tiny_causal_lm, write_lora_experts, write_tiny_datasets

        seed, k, layers, std = (0, 8, (2, 3), 0.3) if name == "tiny8" else (1, 6, None, 0.5)
        model = build_tiny_causal_lm(root / "model", seed=seed)
        experts = write_lora_experts(model, root / "experts", k, layers_to_transform=layers, std=std, seed=seed)
        data = write_tiny_datasets(root / "data", n_dev=N_DEV + N_AUDIT, n_test=N_TEST, seed=seed)
        dev, audit = _split_lines(data["mc_dev"], root, N_DEV)
        pool = {"experts": [str(p) for p in experts], "names": [p.name for p in experts],
                "utility": {"type": "multiple_choice", "model": str(model), "dev": str(dev),
                            "test": str(data["mc_test"])},
                "audit": str(audit), "swarm": {"n_particles": 12, "max_iters": 10, "patience": 5}}
    else:
        import dataclasses

        import yaml

        from swarmkern.commands.demo import TINY_EXPERTS
        from swarmkern.demo import tasks
        from swarmkern.demo.experts import build_experts, find_experts
        from swarmkern.demo.model import cache_root, prompt_template, resolve_model_dir
        from swarmkern.demo.pipeline import CONTINUATION, DemoConfig, write_configs, write_quiz
        from swarmkern.evaluate.models import load_tokenizer

        tiny = name == "demo-tiny"
        cfg = DemoConfig(tiny=tiny, out=str(root), progress=False, dtype="float32" if tiny else "auto")
        if tiny:
            cfg = dataclasses.replace(cfg, experts=dataclasses.replace(cfg.experts, **TINY_EXPERTS))
        model_dir = resolve_model_dir(None, tiny, None, print)
        template = prompt_template(load_tokenizer(str(model_dir)))
        cache = cache_root(None)
        expert_dir = find_experts(cfg.experts, model_dir, template, cache) or build_experts(
            cfg.experts, model_dir, template, CONTINUATION, cache, print, progress=False)
        # the demo's generator has 240 distinct questions per target skill (4 skills): 900 at most here
        n_dev, n_test = (N_DEV, 400) if tiny else (200, N_TEST)  # the real demo's own dev and test sizes
        dev, test, audit = tasks.target_splits(n_dev, n_test, seed=1 + cfg.seed, n_holdout=200)
        quiz = write_quiz(root, {"dev": dev, "test": test, "audit": audit})
        search_yaml, _ = write_configs(cfg, root, model_dir, expert_dir, template, quiz)
        run = yaml.safe_load(search_yaml.read_text())
        pool = {"experts": run["experts"]["paths"], "names": run["experts"]["names"], "utility": run["utility"],
                "audit": str(quiz["audit"]), "swarm": {k: v for k, v in run["swarm"].items() if k != "seed"}}
    marker.write_text(json.dumps(pool, indent=1))
    return pool


# -- one run ------------------------------------------------------------------------------------------------
def run_variant(pool: dict[str, Any], variant: str, seed: int, out: Path) -> tuple[dict[str, Any], float]:
    """Write the config, run the CLI in its own process, return (its summary, wall seconds)."""
    import yaml

    cfg: dict[str, Any] = {"experts": {"paths": pool["experts"], "names": pool["names"]},
                           "swarm": {**pool["swarm"], "seed": seed}, "utility": pool["utility"],
                           "output": {"dir": str(out), "overwrite": True}}
    command = "search"
    if variant == "dev":
        cfg["select"] = "dev"
    elif variant == "split":
        cfg["select"] = "split"
    elif variant == "sweep4":
        command = "sweep"
        cfg["sweep"] = {"mode": "random", "n": 4, "seed": seed, "select": "split"}
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "swarmkern", command, str(path), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return json.loads((out / "summary.json").read_text()), seconds


# -- scoring the exports on audit and test -------------------------------------------------------------
class Judge:
    """Per-example scores of any adapter of the pool's layout on the audit and test files."""

    def __init__(self, pool: dict[str, Any]):
        from swarmkern.flat import load_experts
        from swarmkern.utilities import build_utility

        self.pool = pool
        self.experts = load_experts(pool["experts"], names=pool["names"])
        spec = {**pool["utility"], "dev": pool["audit"]}
        built = build_utility(spec, self.experts)
        self.splits = {"audit": built.dev, "test": built.test}
        dev = build_utility(pool["utility"], self.experts).dev
        scores = self._scores(dev, self._expert_rows())
        self.reference = int(max(range(len(scores)), key=lambda i: (float(scores[i].mean()), -i)))
        self.reference_dev = float(scores[self.reference].mean())
        rows = self._expert_rows()[self.reference:self.reference + 1]
        self.ref_scores = {s: self._scores(u, rows)[0] for s, u in self.splits.items()}

    def _expert_rows(self):
        import torch

        K = len(self.experts)
        rows = torch.empty(K, self.experts.layout.numel, dtype=self.experts.dtype)
        return self.experts.fill_rows(rows, torch.eye(K, dtype=torch.float64))

    @staticmethod
    def _scores(utility, rows):
        import torch

        with torch.no_grad():
            return utility.example_scores(utility.predict(rows))

    def judge(self, export_path: str) -> dict[str, Any]:
        import torch

        from swarmkern import stats
        from swarmkern.flat import load_experts

        both = load_experts([*self.pool["experts"], export_path])
        row = torch.empty(1, both.layout.numel, dtype=both.dtype)
        both.fill_rows(row, torch.eye(len(both), dtype=torch.float64)[-1:])
        out = {}
        for split, u in self.splits.items():
            mine = self._scores(u, row)[0]
            out[split] = stats.compare_paired(mine.numpy(), self.ref_scores[split].numpy(), seed=0).to_dict()
        return out


# -- the report ------------------------------------------------------------------------------------------------
def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _expert_exported(r: dict[str, Any]) -> bool:
    """The run exported a starting expert (the guard's rule, or the expert best outright)."""
    return not r["chosen"].startswith(("global_best", "pbest_", "configuration"))


def render(rows: list[dict[str, Any]], command: str) -> str:
    from statistics import mean

    rows = [{**r, "guard_fired": _expert_exported(r)} for r in rows]

    pools = list(dict.fromkeys(r["pool"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["# Choosing the export on data the search never saw: the study", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: seconds are noisy), "
             f"torch threads default.", "",
             "Each run's export against the best single expert chosen on the whole dev set, in points "
             "(accuracy x 100), with the 95% paired bootstrap interval and the exact McNemar p-value. "
             "**audit**: examples no search, selection or choice of default ever saw (the study's yardstick). "
             "**test**: reported for the evidence table only; nothing was chosen on it.", "",
             "## Audit split (the choice of the default is made on this table alone)", "",
             "| pool | variant | seed | audit vs best expert | expert exported | exported | seconds |",
             "| --- | --- | ---: | --- | --- | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['variant']} | {r['seed']} | {r['audit']['text']} | "
                     f"{'yes' if r['guard_fired'] else 'no'} | {r['chosen']} | {r['seconds']:.0f} |")
    lines += ["", "Per pool and variant: mean audit difference (points), the worst seed, runs with a significant "
              "loss (McNemar p < 0.05), and the mean seconds relative to `split`.", "",
              "| pool | variant | mean audit difference | worst seed | significant losses | expert exported | seconds (x split) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in pools:
        base = [r["seconds"] for r in rows if r["pool"] == p and r["variant"] == "split"]
        for v in variants:
            rs = [r for r in rows if r["pool"] == p and r["variant"] == v]
            if not rs:
                continue
            d = [r["audit"]["difference"] for r in rs]
            sec = mean(r["seconds"] for r in rs)
            ratio = f"{sec / mean(base):.1f}x" if base else "-"
            lines.append(f"| {p} | {v} | {_pts(mean(d))} | {_pts(min(d))} | "
                         f"{sum(r['audit']['verdict'] == 'loss' for r in rs)}/{len(rs)} | "
                         f"{sum(r['guard_fired'] for r in rs)}/{len(rs)} | {sec:.0f} s ({ratio}) |")
    lines += ["", "## Test split (evidence only)", "",
              "| pool | variant | seed | test vs best expert | verdict | expert exported |", "| --- | --- | ---: | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['variant']} | {r['seed']} | {r['test']['text']} | {r['test']['verdict']} | "
                     f"{'yes' if r['guard_fired'] else 'no'} |")
    lines += ["", "| pool | variant | mean test difference | worst seed |", "| --- | --- | ---: | ---: |"]
    for p in pools:
        for v in variants:
            rs = [r for r in rows if r["pool"] == p and r["variant"] == v]
            if rs:
                d = [r["test"]["difference"] for r in rs]
                lines.append(f"| {p} | {v} | {_pts(mean(d))} | {_pts(min(d))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="tiny8,tiny6,demo-tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="dev,split,sweep4")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--render-only", action="store_true", help="Rewrite --out from WORK/results.jsonl.")
    args = ap.parse_args()
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    have = {(r["pool"], r["variant"], r["seed"]) for r in done}
    command = ("python benchmarks/study_selection.py --pools {} --seeds {} --variants {} --work DIR --out {}"
               .format(args.pools, args.seeds, args.variants, args.out))
    if args.render_only:
        Path(args.out).write_text(render(done, command))
        return
    for name in args.pools.split(","):
        pool = build_pool(name, work / "pools" / name)
        judge = None
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in args.variants.split(","):
                if (name, variant, seed) in have:
                    continue
                judge = judge or Judge(pool)
                out = work / "runs" / f"{name}_{variant}_s{seed}"
                summary, seconds = run_variant(pool, variant, seed, out)
                export = summary.get("export") or {}
                best = summary["best_path"]
                row = {"pool": name, "variant": variant, "seed": seed, "seconds": seconds,
                       "guard_fired": bool(export.get("guard_fired")), "chosen": export.get("chosen", "global_best"),
                       "reference": pool["names"][judge.reference], "verdict": summary.get("verdict"),
                       **judge.judge(best)}
                print(f"{name} {variant} seed {seed}: audit {row['audit']['text']}, test {row['test']['text']}, "
                      f"guard {'fired' if row['guard_fired'] else 'quiet'}, {seconds:.0f} s", flush=True)
                done.append(row)
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                Path(args.out).write_text(render(done, command))
    Path(args.out).write_text(render(done, command))


if __name__ == "__main__":
    main()
