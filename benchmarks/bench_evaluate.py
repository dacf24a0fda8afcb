"""Utility-evaluation throughput: P LoRA particles scored on a multiple-choice dev set, batched
evaluator vs one PEFT model per particle.

    python benchmarks/bench_evaluate.py                 # writes benchmarks/results/evaluate_cpu.md
    python benchmarks/bench_evaluate.py --device cuda   # writes benchmarks/results/evaluate_cuda.md

The model is a small Llama built from a config with random weights (speed does not depend on the
weights): hidden 256, 8 layers, a 32k vocabulary; LoRA r=8 on q_proj/v_proj. Two adapter placements:
the top 4 layers (the shared-prefix case) and all 8 layers. Baselines, each scoring the same
(question, choice) sequences in batches with full logits, as a PEFT user would:
- "PEFT reload": per particle, save the adapter to disk, PeftModel.from_pretrained on the
  already-loaded base model, evaluate, unload (the reference Model Swarms code also reloads the base);
- "PEFT swap": one PeftModel, set_peft_model_state_dict per particle (no disk).
Every variant's accuracies are checked against the batched evaluator's before timing counts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from swarmkern.evaluate import encode_requests
from swarmkern.flat import load_experts, save_expert
from swarmkern.testing import char_tokenizer, tiny_llama_config, write_tiny_datasets


def build(root: Path, layers: list[int], n_particles: int, vocab: int) -> tuple[Path, list[Path]]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model_dir = root / "model"
    if not model_dir.exists():
        tok = char_tokenizer(model_dir)
        cfg = tiny_llama_config(vocab, hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4,
                                intermediate_size=688)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(str(model_dir))
        assert len(tok) <= vocab
    from transformers import AutoModelForCausalLM

    out = root / f"experts_{len(layers)}"
    paths = []
    for k in range(n_particles):
        pm = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                       layers_to_transform=layers, task_type="CAUSAL_LM"))
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        pm.save_pretrained(str(out / f"p{k}"))
        paths.append(out / f"p{k}")
    return model_dir, paths


def mc_requests(tok, data_file: Path):
    from swarmkern.data import MultipleChoiceExample, load_jsonl

    exs = load_jsonl(data_file, MultipleChoiceExample)
    ctx, cont, owner = [], [], []
    for i, ex in enumerate(exs):
        for c in ex.choices:
            ctx.append(f"Question: {ex.question}\nAnswer:")
            cont.append(f" {c}")
            owner.append(i)
    return exs, encode_requests(tok, ctx, cont), owner


def accuracy(ll: torch.Tensor, exs, owner) -> torch.Tensor:
    """ll [P, sum choices] -> accuracy [P] (first maximal choice)."""
    acc = torch.zeros(ll.shape[0], dtype=torch.float64)
    start = 0
    for ex in exs:
        k = len(ex.choices)
        acc += (ll[:, start:start + k].argmax(1) == ex.answer).double()
        start += k
    return acc / len(exs)


@torch.inference_mode()
def peft_score(model, requests, batch: int, device) -> torch.Tensor:
    """Sum log-prob of each continuation with a plain batched forward (full logits): [E]."""
    pad = 0
    out = torch.empty(len(requests), dtype=torch.float64)
    all_ids, n_cont = requests.ids, requests.n_cont
    for s in range(0, len(requests), batch):
        seqs = all_ids[s:s + batch]
        T = max(map(len, seqs))
        ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(seqs):
            ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1).cpu()
        for i, x in enumerate(seqs):
            k = n_cont[s + i]
            tgt = torch.tensor(x[len(x) - k:])
            out[s + i] = logp[i, len(x) - k - 1:len(x) - 1].gather(1, tgt[:, None]).sum()
    return out


def timed(fn, repeats: int, warmup: bool = True):
    """(best wall seconds, best process CPU seconds, result). CPU time is what to compare on a shared
    machine: other people's processes inflate wall time, not this process's CPU time."""
    res = fn() if warmup else None
    wall = cpu = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=10)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=160)
    ap.add_argument("--baseline-batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from swarmkern.evaluate import LoraEvaluator
    from swarmkern.evaluate.models import load_tokenizer

    dev = torch.device(args.device)
    root = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    rows_md = []
    try:
        data = write_tiny_datasets(root / "data", n_dev=args.questions, n_test=1)
        for layers in (list(range(4, 8)), list(range(8))):
            model_dir, paths = build(root, layers, args.particles, args.vocab)
            tok = load_tokenizer(model_dir)
            exs, req, owner = mc_requests(tok, data["mc_dev"])
            n_tokens = sum(map(len, req.ids))
            pool = load_experts(paths)
            rows = pool.weights.to(dev)
            results = {}

            def ours(share: bool, dtype: torch.dtype, share_context: bool = True):
                model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev).eval()
                ev = LoraEvaluator(model, tok, pool.layout, pool.adapter_config, share_prefix=share)
                ev.share_context = share_context
                return lambda: accuracy(ev.loglikelihood(rows, req, micro_batch=args.micro_batch), exs, owner)

            results["batched evaluator, fp32"] = timed(ours(True, torch.float32), args.repeats)
            results["batched, fp32, no prefix sharing"] = timed(ours(False, torch.float32), args.repeats)
            results["batched, fp32, no context sharing"] = timed(ours(True, torch.float32, False), args.repeats)
            results["batched evaluator, bf16"] = timed(ours(True, torch.bfloat16), args.repeats)

            base = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(dev).eval()

            def reload():
                accs = []
                tmp = root / "reload"
                for k in range(args.particles):
                    save_expert(pool, pool.weights[k], tmp / "p")
                    pm = PeftModel.from_pretrained(base, str(tmp / "p")).to(dev).eval()
                    accs.append(accuracy(peft_score(pm, req, args.baseline_batch, dev)[None], exs, owner))
                    pm.unload()
                return torch.cat(accs)

            results["PEFT reload per particle"] = timed(reload, args.repeats, warmup=False)
            swap_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)).to(dev),
                                                   str(paths[0])).eval()
            states = [load_file(str(p / "adapter_model.safetensors")) for p in paths]

            def swap():
                accs = []
                for sd in states:
                    set_peft_model_state_dict(swap_model, sd)
                    accs.append(accuracy(peft_score(swap_model, req, args.baseline_batch, dev)[None], exs, owner))
                return torch.cat(accs)

            results["PEFT swap per particle"] = timed(swap, args.repeats, warmup=False)
            ref = results["batched evaluator, fp32"][2]
            for name, (_, _, acc) in results.items():
                if "bf16" not in name:
                    assert torch.equal(acc, ref), f"{name}: accuracies differ {acc} vs {ref}"
            c_reload = results["PEFT reload per particle"][1]
            where = f"layers {layers[0]}-{layers[-1]}"
            for name, (t, c, _) in results.items():
                rows_md.append(f"| {where} | {name} | {c:.2f} | {t:.2f} | {args.particles * n_tokens / c:,.0f} | "
                               f"{c_reload / c:.1f}x |")
                print(rows_md[-1], flush=True)
            shutil.rmtree(root / f"experts_{len(layers)}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = [
        f"# Utility evaluation: {args.particles} LoRA particles, multiple choice by log-likelihood",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), device {args.device}, "
        f"torch {torch.__version__}. Model: Llama from config (hidden 256, 8 layers, GQA 8/4 heads, vocab "
        f"{args.vocab}), LoRA r=8 on q_proj/v_proj. Dev set: {args.questions} questions x 4 choices "
        f"({n_tokens} tokens per particle). Baselines score with batches of {args.baseline_batch} sequences "
        f"and full logits; the batched evaluator uses micro_batch={args.micro_batch} rows. Best of "
        f"{args.repeats} runs (the batched evaluator after one extra warm-up call). CPU seconds are the process's own CPU time (the machine is shared, so wall time "
        "is noisy); speedups use CPU time. Accuracies of every fp32 variant are asserted equal.",
        "",
        "Command: `python benchmarks/bench_evaluate.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out") + "`",
        "",
        "| adapters in | variant | CPU s | wall s | tokens/CPU-s (all particles) | speedup vs PEFT reload (CPU) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    text = "\n".join(header + rows_md) + "\n"
    out = Path(args.out or Path(__file__).parent / "results" / f"evaluate_{dev.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(text)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
