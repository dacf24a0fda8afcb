"""How close one utility call comes to the CPU's matrix-product rate, counted in multiply-adds.

    python benchmarks/bench_flops.py --out benchmarks/results/flops_cpu.md
    python benchmarks/bench_flops.py --dtypes bfloat16 --questions 16 --particles 2 --repeats 1 --out ... --append

Workload: SmolLM2-135M (the demo's model), P random LoRA particles (r=8 on q_proj and v_proj, as in the
issue that asked for this benchmark) on the upper third of the decoder layers ("upper third") or on
every layer ("every layer"), the demo's four-choice dev quiz with its prompt, scored by whole-choice
log-likelihood. Both utilities are built as a user builds them (`build_utility`, memo off so every call
runs the model): `multiple_choice` (scoring: loglik) on the quiz's JSONL, and `lm_eval` on the same
questions written as a local lm-eval multiple-choice task (same prompt, same " choice" continuations).

Per utility call it reports:
- **needed GMAC**: the multiply-adds the call cannot avoid, counted from the model's shapes and the real
  token counts of the requests the utility sent to the evaluator: every adapted layer (and the ones above
  it) on every real context token once per particle and on every continuation token that predicts another
  one, the LoRA products, attention over the real prefix, the last layer's MLP and the LM head (whole
  vocabulary: a log-softmax needs it) only at the scored positions. The frozen layers below the first
  adapted one are computed once per example for the evaluator's lifetime (its lower-layer cache) and are
  not part of a steady-state call; padding is not needed work.
- **executed GMAC**: the matrix products the call actually ran (padding included), recorded op by op in
  an untimed call.
- **achieved GFLOP/s** = 2 x needed / call seconds.
- **matmul peak**: the same matrix products (op, shapes, dtype, count) replayed on their own with random
  operands, in the same process between the timed calls: 2 x executed / replay seconds. The ratio
  achieved / peak is the share of the CPU's rate *at the evaluator's own shapes* that reaches useful work.
- **lm-eval HFLM**: lm-eval's own HFLM with PEFT (`peft=` one adapter, `batch_size=--hflm-batch`) plus
  `simple_evaluate` on the same lm-eval task, seconds per particle (model load excluded) and its
  GFLOP/s from the forward passes it ran (its padded batch shapes, every layer, the LM head at every
  position); speedup = HFLM seconds per particle / ours per particle. Its accuracy is compared with
  both utilities' for that particle (a column: equal, or both values), and every timed call's result with
  the recorded call's.

Seconds are the process's CPU seconds with --threads threads (default 1: the machine may be shared, and a
thread that is descheduled inflates wall time, not CPU time); wall seconds are printed as well. The
evaluator call, the replay and HFLM are interleaved, --repeats times, and medians are reported.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

TARGETS = ["q_proj", "v_proj"]
MATMULS = {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul"}


def clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    c, w = clock()
    return c - t0[0], w - t0[1]


class MatmulRecorder(TorchDispatchMode):
    """Counts every matrix-product op by (op, operand shapes, dtype)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__.rstrip("_")
        if name in MATMULS:
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
            self.calls[(name, shapes, dtype)] += 1
        return func(*args, **(kwargs or {}))


def matmul_macs(name: str, shapes: tuple) -> int:
    if name == "linear":  # x [..., in], weight [out, in]
        x, w = shapes[0], shapes[1]
        return _prod(x[:-1]) * w[1] * w[0]
    a, b = shapes[-2], shapes[-1]  # mm / bmm / matmul (addmm, baddbmm: after the added term)
    if len(b) == 1:
        return _prod(a)
    if len(b) == 2:
        return _prod(a[:-1]) * a[-1] * b[-1]
    return max(_prod(a[:-2]), _prod(b[:-2])) * a[-2] * a[-1] * b[-1]


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def operands(name: str, shapes: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random operands of the product `name` recorded with these shapes, as torch.matmul's (a, b)."""
    if name == "linear":  # the same [M, in] x [in, out] product, weight transposed as linear reads it
        a = torch.randn(_prod(shapes[0][:-1]), shapes[0][-1]).to(dtype)
        return a, torch.randn(shapes[1]).to(dtype).t()
    if name in ("addmm", "baddbmm"):
        shapes = shapes[1:]
    return torch.randn(shapes[0]).to(dtype), torch.randn(shapes[1]).to(dtype)


def replay_seconds(calls: Counter, min_s: float = 0.05) -> float:
    """CPU seconds the recorded products take on their own (each shape timed, times its count)."""
    total = 0.0
    with torch.inference_mode():
        for (name, shapes, dtype), count in calls.items():
            a, b = operands(name, shapes, dtype)
            fn = torch.matmul
            fn(a, b)
            reps, t0 = 0, time.process_time()
            while True:
                fn(a, b)
                reps += 1
                el = time.process_time() - t0
                if reps >= count or el >= min_s:
                    break
            total += el / reps * count
    return total


def layer_macs(model, first: int, n_layers: int, adapted: set[int], rank: int) -> dict:
    """Per-token multiply-adds of the model's pieces, from its modules' shapes."""
    cfg = model.config
    layer = model.model.layers[0]
    lin = {n: m.in_features * m.out_features for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    mlp = sum(v for k, v in lin.items() if k.startswith("mlp."))
    lora = sum(rank * (layer.get_submodule(f"self_attn.{t}").in_features
                       + layer.get_submodule(f"self_attn.{t}").out_features) for t in TARGETS)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"linear": sum(lin.values()), "mlp": mlp, "lora": lora, "attn_per_key": 2 * cfg.num_attention_heads * head_dim,
            "head": cfg.vocab_size * cfg.hidden_size, "layers": n_layers, "first": first, "adapted": adapted}


def needed_macs(req, shape: dict, particles: int) -> int:
    """Multiply-adds a loglikelihood call must do (see the module docstring)."""
    L, first = shape["layers"], shape["first"]
    per_layer, akey = shape["linear"], shape["attn_per_key"]
    upper = range(first, L)
    n_lora = sum(1 for l in upper if l in shape["adapted"])
    by_ctx: dict[int, list[list[int]]] = {}
    for o, k in zip(req.owner, req.conts):
        by_ctx.setdefault(o, []).append(k)
    tokens = keys = scored = 0
    for c, conts in by_ctx.items():
        lc = len(req.contexts[c])
        tokens += lc
        keys += lc * (lc + 1) // 2
        scored += 1  # the context's last position predicts every continuation's first token
        for k in conts:
            run = len(k) - 1  # continuation tokens that predict the next one
            tokens += run
            keys += sum(lc + j + 1 for j in range(run))
            scored += run
    macs = tokens * (len(upper) * per_layer - shape["mlp"]) + scored * shape["mlp"]  # last MLP: scored only
    macs += tokens * n_lora * shape["lora"] + keys * len(upper) * akey + scored * shape["head"]
    return macs * particles


def hflm_macs(shapes: list[tuple[int, int]], shape: dict, lora_layers: int) -> int:
    per_tok = shape["layers"] * shape["linear"] + lora_layers * shape["lora"] + shape["head"]
    return sum(b * t * per_tok + b * shape["layers"] * shape["attn_per_key"] * t * (t + 1) // 2 for b, t in shapes)


def write_task(root: Path, exs, prompt: str) -> Path:
    rows = [{"prompt": prompt.format(question=e.question), "choices": list(e.choices), "answer": e.answer} for e in exs]
    data = root / "quiz_test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"task": "quiz_mc", "output_type": "multiple_choice", "num_fewshot": 0, "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
           "doc_to_text": "{{prompt}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
           "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
           "metadata": {"version": 1.0}}
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "quiz_mc.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tasks


def run_hflm(model_dir: Path, adapter: Path, tasks: Path, dtype: str, batch: int) -> tuple[float, float, list, float]:
    """(CPU s, wall s, forward shapes, acc) of lm-eval's HFLM + simple_evaluate on one adapter."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    lm = HFLM(pretrained=str(model_dir), peft=str(adapter), device="cpu", dtype=dtype, batch_size=batch)
    shapes: list[tuple[int, int]] = []
    handle = lm.model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple((a[0] if a else kw["input_ids"]).shape)), with_kwargs=True)
    t0 = clock()
    res = lm_eval.simple_evaluate(model=lm, tasks=["quiz_mc"], task_manager=tm, bootstrap_iters=0, log_samples=False)
    cpu, wall = since(t0)
    handle.remove()
    return cpu, wall, shapes, res["results"]["quiz_mc"]["acc,none"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    ap.add_argument("--layouts", default="upper third,every layer")
    ap.add_argument("--utilities", default="multiple_choice,lm_eval")
    ap.add_argument("--micro-batch", type=int, default=None, help="the utilities' micro_batch (default: theirs)")
    ap.add_argument("--hflm-batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--note", default="", help="a sentence on the machine's load, written into the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from swarmkern.demo import tasks as demo_tasks
    from swarmkern.demo.model import prompt_template, resolve_model_dir
    from swarmkern.evaluate import base as evaluate_base
    from swarmkern.evaluate.models import load_tokenizer
    from swarmkern.evaluate.precision import resolve_compute_dtype
    from swarmkern.flat import load_experts
    from swarmkern.testing import write_lora_experts
    from swarmkern.utilities import build_utility
    from swarmkern.utilities.common import clear_evaluators

    model_dir = resolve_model_dir(None, False, None, print)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    n_layers = model.config.num_hidden_layers
    prompt = prompt_template(tok)
    dev, _, _ = demo_tasks.target_splits(args.questions, 1, seed=1)

    # the requests each utility sends to the evaluator (its real token counts), without changing the path
    seen: list = []
    original = evaluate_base.ParticleEvaluator.loglikelihood

    def recording(self, rows, requests, **kw):
        seen.append(requests)
        return original(self, rows, requests, **kw)
    evaluate_base.ParticleEvaluator.loglikelihood = recording

    sections = []
    with tempfile.TemporaryDirectory(prefix="bench_flops_") as tmp:
        root = Path(tmp)
        data = root / "dev.jsonl"
        data.write_text("".join(json.dumps({"question": e.question, "choices": list(e.choices), "answer": e.answer})
                                + "\n" for e in dev))
        tasks = write_task(root, dev, prompt)
        for dtype in args.dtypes.split(","):
            choice = resolve_compute_dtype(dtype, "cpu")
            rows_md = []
            for layout in args.layouts.split(","):
                first = n_layers - n_layers // 3 if layout == "upper third" else 0
                adapted = set(range(first, n_layers))
                adapters = write_lora_experts(model_dir, root / f"experts_{first}", k=args.particles, r=8,
                                              lora_alpha=16, target_modules=TARGETS,
                                              layers_to_transform=sorted(adapted), std=0.02)
                pool = load_experts(adapters)
                shape = layer_macs(model, first, n_layers, adapted, 8)
                built = {}
                clear_evaluators()  # a fresh evaluator per layout, shared by both utilities as in a user's process
                for util in args.utilities.split(","):
                    spec = ({"type": "multiple_choice", "model": str(model_dir), "dev": str(data), "template": prompt,
                             "scoring": "loglik"} if util == "multiple_choice" else
                            {"type": "lm_eval", "task": "quiz_mc", "include_path": str(tasks), "model": str(model_dir)})
                    spec.update(dtype=dtype, memo_rows=0)
                    if args.micro_batch:
                        spec["micro_batch"] = args.micro_batch
                    scorer = build_utility(spec, pool).dev
                    seen.clear()
                    scorer(pool.weights)  # warm-up: fills the lower-layer cache as a search's first call does
                    rec = MatmulRecorder()
                    with rec:
                        acc = scorer(pool.weights)
                    req = seen[-1]
                    built[util] = {"scorer": scorer, "acc": acc, "calls": rec.calls,
                                   "needed": needed_macs(req, shape, args.particles),
                                   "executed": sum(matmul_macs(n, s) * c for (n, s, _), c in rec.calls.items()),
                                   "times": [], "peaks": []}
                hflm = []
                for _ in range(args.repeats):
                    for util, b in built.items():
                        t0 = clock()
                        b["same"] = b.get("same", True) and torch.equal(b["scorer"](pool.weights), b["acc"])
                        b["times"].append(since(t0))
                        b["peaks"].append(replay_seconds(b["calls"]))
                    hflm.append(run_hflm(model_dir, adapters[0], tasks, dtype, args.hflm_batch))
                h_cpu = statistics.median(h[0] for h in hflm)
                h_macs = hflm_macs(hflm[0][2], shape, len(adapted))
                h_acc = hflm[0][3]
                for util, b in built.items():
                    ours = float(b["acc"][0])
                    agree = abs(ours - h_acc) < 1e-9
                    cpu = statistics.median(t[0] for t in b["times"])
                    wall = statistics.median(t[1] for t in b["times"])
                    peak = statistics.median(2 * b["executed"] / s / 1e9 for s in b["peaks"])
                    achieved = 2 * b["needed"] / cpu / 1e9
                    per_particle = cpu / args.particles
                    rows_md.append(
                        f"| {util} | {layout} | {b['needed'] / 1e9:.1f} | {b['executed'] / 1e9:.1f} | {cpu:.2f} ({wall:.2f}) "
                        f"| {achieved:.1f} | {peak:.1f} | {achieved / peak:.0%} | {h_cpu:.2f} "
                        f"| {2 * h_macs / h_cpu / 1e9:.1f} | {h_cpu / per_particle:.1f}x "
                        f"| {'yes' if agree else f'no ({ours:.3f} vs {h_acc:.3f})'} "
                        f"| {'yes' if b['same'] else 'no'} |")
                    print(rows_md[-1], flush=True)
            cmd = "python benchmarks/bench_flops.py " + " ".join(
                f"--{k.replace('_', '-')} {json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                for k, v in vars(args).items() if v not in (None, False, "") and k not in ("out", "append", "note"))
            sections.append("\n".join([
                f"## {choice.name} ({choice.reason})", "", f"`{cmd}`", "",
                f"{args.particles} particles, {args.questions} questions, {args.threads} thread(s); medians of "
                f"{args.repeats} interleaved repeats. {args.note}", "",
                "| utility | adapters | needed GMAC | executed GMAC | call CPU s (wall) | achieved GFLOP/s "
                "| matmul peak GFLOP/s (same shapes, same run) | achieved / peak | HFLM CPU s per particle "
                "| HFLM GFLOP/s | speedup vs HFLM per particle | acc equal to HFLM's (particle 0) "
                "| every timed call equal to the recorded one |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |", *rows_md, ""]))
    text = "\n".join(sections)
    print(text)
    if args.out:
        from swarmkern.atomic import atomic_write_text

        out = Path(args.out)
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        flags = ", ".join(k for k in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(k)) or "unknown"
        head = ("# Utility calls against the CPU's matrix-product rate\n\n"
                f"Machine: {platform.processor() or platform.machine()}, CPU flags (torch cpuinfo): {flags}; ATen "
                f"kernels at {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}. SmolLM2-135M, "
                "LoRA r=8 on q_proj and v_proj. See benchmarks/bench_flops.py for what each column counts.\n\n")
        old = out.read_text() if args.append and out.exists() else head
        atomic_write_text(out, old + "\n" + text)


if __name__ == "__main__":
    main()
