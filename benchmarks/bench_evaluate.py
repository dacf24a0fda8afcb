"""Utility-evaluation speed on the demo's workload, through the user's path (the built-in
`multiple_choice` utility and the shared batched evaluator), against one PEFT model per particle.

    python benchmarks/bench_evaluate.py --out benchmarks/results/evaluate_cpu.md
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_evaluate.py --append ...

Workload (issue: "one swarm iteration of the demo"): SmolLM2-135M (dequantised once into the cache by
swarmkern.demo.model), LoRA r=8 on all 7 projections of its top 4 layers, P=12 particles (random
adapters: speed does not depend on the weights), the demo's 200 four-choice dev questions with its
prompt. Variants, each timed as one P-particle utility call after a warm-up call (best of --repeats):
- first_token, with the lower-layer cache (the default) and without it (layer_cache_mb: 0);
- loglik (whole-choice log-likelihood; contexts from the KV cache);
- PEFT per particle: one PeftModel, set_peft_model_state_dict per particle, every (question, choice)
  sequence in batches with full logits, as a PEFT user would score whole choices; timed on
  --peft-particles particles and reported per particle and scaled to P (labelled as such).
The compute dtype is what `dtype: auto` picks on the machine (printed); CPU seconds are the process's
own (the machine may be shared: wall seconds are printed too). Every variant's accuracies are checked:
first_token cached == uncached exactly; PEFT's == loglik's for the particles it ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def timed(fn, repeats: int, warmup: bool = True):
    """(best wall s, best process CPU s, result)."""
    res = fn() if warmup else None
    wall = cpu = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, res


def cpu_flags() -> str:
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    keys = ["avx2", "avx512_f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return ", ".join(k for k in keys if caps.get(k)) or "unknown"


@torch.inference_mode()
def peft_loglik(model, tok, exs, prompt: str, batch: int) -> torch.Tensor:
    """Accuracy of one PEFT model: whole-choice sum log-prob, full logits (a PEFT user's loop)."""
    seqs, n_cont, owner = [], [], []
    for i, ex in enumerate(exs):
        ctx = tok(prompt.format(question=ex.question))["input_ids"]
        for c in ex.choices:
            k = tok(f" {c}", add_special_tokens=False)["input_ids"]
            seqs.append(ctx + k)
            n_cont.append(len(k))
            owner.append(i)
    ll = torch.empty(len(seqs), dtype=torch.float64)
    for s in range(0, len(seqs), batch):
        part = seqs[s:s + batch]
        T = max(map(len, part))
        ids = torch.full((len(part), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(part):
            ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for i, x in enumerate(part):
            k = n_cont[s + i]
            ll[s + i] = logp[i, len(x) - k - 1:len(x) - 1].gather(1, torch.tensor(x[len(x) - k:])[:, None]).sum()
    correct, at = 0, 0
    for ex in exs:
        correct += int(ll[at:at + len(ex.choices)].argmax()) == ex.answer
        at += len(ex.choices)
    return torch.tensor([correct / len(exs)], dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=12)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--top-layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=None, help="utility micro_batch (default: the utility's)")
    ap.add_argument("--peft-particles", type=int, default=1)
    ap.add_argument("--peft-batch", type=int, default=32)
    ap.add_argument("--workdir", default=None, help="where adapters and data go (default: the cache)")
    ap.add_argument("--out", default=None, help="write the markdown here")
    ap.add_argument("--append", action="store_true", help="append a section to --out instead of replacing it")
    args = ap.parse_args()

    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from swarmkern.data import MultipleChoiceExample, load_jsonl
    from swarmkern.demo import tasks
    from swarmkern.demo.model import cache_root, prompt_template, resolve_model_dir
    from swarmkern.evaluate.models import load_tokenizer
    from swarmkern.evaluate.precision import resolve_compute_dtype
    from swarmkern.flat import load_experts
    from swarmkern.testing import write_lora_experts
    from swarmkern.utilities import build_utility

    model_dir = resolve_model_dir(None, False, None, print)
    tok = load_tokenizer(model_dir)
    n_layers = AutoModelForCausalLM.from_pretrained(str(model_dir)).config.num_hidden_layers
    layers = list(range(n_layers - args.top_layers, n_layers))
    work = Path(args.workdir or cache_root() / "bench_evaluate")
    exp = work / f"experts_top{args.top_layers}_p{args.particles}"
    if not (exp / f"expert_{args.particles - 1}").exists():
        print(f"writing {args.particles} random LoRA adapters into {exp} ...", flush=True)
        write_lora_experts(model_dir, exp, k=args.particles, r=8, lora_alpha=16, target_modules=TARGETS,
                           layers_to_transform=layers, std=0.02)
    dev, _, _ = tasks.target_splits(args.questions, 1, seed=1)
    data = work / f"dev_{args.questions}.jsonl"
    data.write_text("".join(json.dumps({"question": e.question, "choices": list(e.choices), "answer": e.answer}) + "\n"
                            for e in dev))
    pool = load_experts(sorted(exp.glob("expert_*"), key=lambda p: int(p.name.split("_")[1])))
    rows = pool.weights
    prompt = prompt_template(tok)
    choice = resolve_compute_dtype("auto", "cpu")
    print(f"compute dtype auto: {choice.name} ({choice.reason}); {torch.get_num_threads()} threads", flush=True)
    # memo_rows 0: every timed call runs the model (the memo would serve the repeated particles)
    base = {"type": "multiple_choice", "model": str(model_dir), "dev": str(data), "template": prompt, "memo_rows": 0}
    if args.micro_batch:
        base["micro_batch"] = args.micro_batch
    results: dict[str, tuple[float, float, torch.Tensor]] = {}
    variants = {"first_token, lower-layer cache": {"scoring": "first_token"},
                "first_token, no cache": {"scoring": "first_token", "layer_cache_mb": 0, "share_prefix": True},
                "loglik (whole choice)": {"scoring": "loglik"}}
    from swarmkern.utilities.common import clear_evaluators

    for name, extra in variants.items():
        clear_evaluators()  # each variant gets its own evaluator (and an empty cache before its warm-up)
        built = build_utility({**base, **extra}, pool)
        results[name] = timed(lambda: built.dev(rows), args.repeats)
        print(f"{name}: CPU {results[name][1]:.1f} s, wall {results[name][0]:.1f} s", flush=True)
    assert torch.equal(results["first_token, lower-layer cache"][2], results["first_token, no cache"][2])

    exs = load_jsonl(data, MultipleChoiceExample)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=choice.dtype),
                                     str(pool.sources[0])).eval()
    states = [load_file(str(Path(p) / "adapter_model.safetensors")) for p in pool.sources[:args.peft_particles]]

    def per_particle():
        accs = []
        for sd in states:
            set_peft_model_state_dict(peft, sd)
            accs.append(peft_loglik(peft, tok, exs, prompt, args.peft_batch))
        return torch.cat(accs)
    wall, cpu, acc = timed(per_particle, 1, warmup=False)
    n = len(states)
    agree = torch.equal(acc, results["loglik (whole choice)"][2][:n])
    print(f"PEFT per particle: CPU {cpu / n:.1f} s per particle; accuracies {acc.tolist()} (match loglik: {agree})")
    results[f"PEFT per particle (measured on {n}, x{args.particles})"] = (wall / n * args.particles,
                                                                          cpu / n * args.particles, acc)
    ref = results[f"PEFT per particle (measured on {n}, x{args.particles})"][1]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ)
    cmd = ((env + " ") if env else "") + "python benchmarks/bench_evaluate.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v not in (None, False) and k not in ("out", "append", "workdir"))
    lines = [f"## {env or 'no ISA caps'}: compute dtype {choice.name}", "",
             f"`{cmd}`", "",
             f"CPU flags (torch cpuinfo): {cpu_flags()}; ATen kernels at {torch.backends.cpu.get_cpu_capability()}; "
             f"{torch.get_num_threads()} threads; `dtype: auto` -> {choice.name} ({choice.reason}). "
             f"PEFT accuracies equal the batched loglik's for the particles it ran: {agree}.", "",
             "| variant | CPU s per 12-particle call | wall s | speedup vs PEFT per particle (CPU) |",
             "| --- | ---: | ---: | ---: |"]
    for name, (w, c, _) in results.items():
        lines.append(f"| {name} | {c:.1f} | {w:.1f} | {ref / c:.1f}x |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.out:
        from swarmkern.atomic import atomic_write_text

        out = Path(args.out)
        head = ("# Utility evaluation on the demo's workload\n\n"
                f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}. SmolLM2-135M, "
                f"LoRA r=8 on {', '.join(TARGETS)} of the top {args.top_layers} layers, {args.particles} particles, "
                f"{args.questions} four-choice questions (the demo's dev quiz and prompt). One utility call scores "
                "every particle on every question (one swarm iteration's evaluation). Best of "
                f"{args.repeats} calls after a warm-up call; CPU seconds are the process's own CPU time (wall "
                "seconds are inflated and noisy when other jobs share the machine).\n\n")
        old = out.read_text() if args.append and out.exists() else head
        atomic_write_text(out, old + "\n" + section)


if __name__ == "__main__":
    main()
