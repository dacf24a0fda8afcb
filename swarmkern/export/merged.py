"""A run's best expert folded into its base model: a plain transformers directory (safetensors shards,
config, tokenizer) that AutoModelForCausalLM.from_pretrained, vLLM or TGI load without PEFT.

Streaming: the base model's weights are read one tensor at a time (safetensors are memory-mapped) and
written out in shards of at most `max_shard_bytes`; a LoRA module's weight becomes W + scale * B @ A
(computed in fp32, then stored in the chosen dtype), a full-weight expert's tensor replaces the base's.
At most one output shard and one tensor are held in memory besides the adapter, so a 7B model is never
held twice (nor even once). The directory is written under a temporary name and renamed when complete.

The check (`verify_logits`) runs the PEFT model (base + adapter, or base + full-weight tensors) on a few
prompts, frees it, then loads the written directory with transformers alone and compares the logits:
one model in memory at a time.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .rundir import ExportError, RunInfo

__all__ = ["export_merged", "verify_logits", "base_weight_files", "DTYPES", "tolerance_for"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD_BYTES = 5 * 2**30
# Largest |logit difference| / max(1, max |logit|) the check accepts, per stored dtype: fp32 differs from
# the unmerged model only by the order of the additions; half types also by rounding the merged weights.
_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}
_TOKENIZER_FALLBACK = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                       "vocab.json", "merges.txt", "chat_template.jinja")


def tolerance_for(dtype: torch.dtype) -> float:
    return _TOLERANCE[dtype]


def base_weight_files(base_dir: Path) -> list[Path]:
    """The base model's weight files in order: safetensors shards (index order) or, failing that, .bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = base_dir / index_name
        if index.is_file():
            files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
            return [base_dir / f for f in files]
        if (base_dir / single).is_file():
            return [base_dir / single]
    found = sorted(base_dir.glob("*.safetensors"))
    if not found:
        raise ExportError(f"{base_dir}: no model weights (model.safetensors, shards with an index, or pytorch_model.bin)")
    return found


def _tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:  # a .bin shard: memory-mapped, so only the tensor in use is read
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        for name in list(state):
            yield name, state.pop(name)


# -- the deltas --------------------------------------------------------------------------------------------
def lora_updates(adapter_dir: Path, adapter_config: dict[str, Any]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{base weight name: fn(W fp32) -> merged W fp32} for every LoRA module of a PEFT adapter dir."""
    from safetensors.torch import load_file

    from swarmkern.evaluate.lora import lora_scale

    for key, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("lora_bias", "LoRA biases")):
        if adapter_config.get(key):
            raise ExportError(f"{adapter_dir}: adapter_config.json {key}: {what} adapters cannot be merged here")
    weights = adapter_dir / "adapter_model.safetensors"
    state = load_file(str(weights)) if weights.is_file() else torch.load(
        str(adapter_dir / "adapter_model.bin"), map_location="cpu", weights_only=True)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            marker = f".{part}."
            if marker in key or key.endswith(f".{part}"):
                module = key.split(marker)[0] if marker in key else key.removesuffix(f".{part}")
                pairs.setdefault(module.removeprefix("base_model.model."), {})[part] = value
                break
        else:
            raise ExportError(f"{weights}: tensor {key!r} is not a LoRA factor (only LoRA adapters can be merged)")
    fan_in_fan_out = bool(adapter_config.get("fan_in_fan_out"))
    updates = {}
    for module, parts in pairs.items():
        scale = lora_scale(adapter_config, module)
        if "lora_A" in parts and "lora_B" in parts:
            delta = parts["lora_B"].float() @ parts["lora_A"].float()
            if fan_in_fan_out:
                delta = delta.T
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            delta = (parts["lora_embedding_B"].float() @ parts["lora_embedding_A"].float()).T
        else:
            raise ExportError(f"{weights}: module {module} has only one LoRA factor")
        updates[f"{module}.weight"] = (lambda w, d=delta, s=scale: w + s * d)
    return updates


def full_updates(best: Path) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{base weight name: fn(W) -> the expert's tensor} for a full-weight best (.safetensors)."""
    from safetensors import safe_open

    with safe_open(str(best), framework="pt") as f:
        names = list(f.keys())

    def replace(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(w: torch.Tensor) -> torch.Tensor:
            with safe_open(str(best), framework="pt") as f:
                t = f.get_tensor(name)
            if t.shape != w.shape:
                raise ExportError(f"{best}: {name} has shape {list(t.shape)}, the base model's {list(w.shape)}")
            return t.float()
        return fn
    return {n: replace(n) for n in names}


# -- writing -----------------------------------------------------------------------------------------------
def _stored_dtype(base_dir: Path, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    cfg = json.loads((base_dir / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return DTYPES.get(str(name).removeprefix("torch."), torch.float32)


def _write_shards(base_dir: Path, updates: dict[str, Callable], out: Path, dtype: torch.dtype,
                  max_shard_bytes: int, progress: bool) -> list[str]:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    files = base_weight_files(base_dir)
    pending: dict[str, torch.Tensor] = {}
    size, shards, weight_map, done = 0, [], {}, set()

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"shard-{len(shards):05d}.safetensors"
            save_file(pending, str(out / name), metadata={"format": "pt"})
            shards.append(name)
            weight_map.update({k: name for k in pending})
            pending, size = {}, 0

    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="merging", disable=not progress) as bar:
        for file in files:
            for name, tensor in _tensors(file):
                if name in updates:
                    tensor = updates[name](tensor.float())
                    done.add(name)
                nbytes_in = tensor.numel() * tensor.element_size()
                if tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                tensor = tensor.contiguous()
                nbytes = tensor.numel() * tensor.element_size()
                if pending and size + nbytes > max_shard_bytes:
                    flush()
                pending[name] = tensor
                size += nbytes
                bar.update(min(nbytes_in, bar.total - bar.n))
        flush()
    missing = sorted(set(updates) - done)
    if missing:
        raise ExportError(f"{base_dir}: the base model has no weight {missing[0]!r} that the best expert changes "
                          f"({len(missing)} missing; is it the run's base model?)")
    # final names as transformers writes them
    n = len(shards)
    final = {s: ("model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors")
             for i, s in enumerate(shards)}
    for s, f in final.items():
        os.replace(out / s, out / f)
    if n > 1:
        total_size = sum((out / f).stat().st_size for f in final.values())
        index = {"metadata": {"total_size": total_size}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return list(final.values())


def _write_config_and_tokenizer(base_dir: Path, tokenizer_dir: Path, out: Path, dtype: torch.dtype) -> None:
    cfg = json.loads((base_dir / "config.json").read_text())
    name = str(dtype).removeprefix("torch.")
    cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = name
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if (base_dir / "generation_config.json").is_file():
        shutil.copy(base_dir / "generation_config.json", out / "generation_config.json")
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(out))
    except (OSError, ValueError):  # a tokenizer transformers cannot round-trip: copy its files as they are
        for f in _TOKENIZER_FALLBACK:
            if (tokenizer_dir / f).is_file():
                shutil.copy(tokenizer_dir / f, out / f)


def export_merged(run: RunInfo, out: str | Path, *, base_dir: Path, tokenizer_dir: Path | None = None,
                  dtype: str = "auto", max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
                  progress: bool = True, finish: Callable[[Path, torch.dtype], None] | None = None
                  ) -> tuple[Path, torch.dtype]:
    """Write the merged model of `run` to `out` (see the module docstring); returns (out, stored dtype).
    `base_dir`: the base model's local directory (a resolved Hub id or a path). `finish(tmp_dir, dtype)`
    runs on the complete directory before it takes its final name (the check, the model card): when it
    raises, nothing is left at `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: exists and is not empty (pass --overwrite)")
    if dtype != "auto" and dtype not in DTYPES:
        raise ExportError(f"--dtype: {dtype!r}; choose auto, {', '.join(DTYPES)}")
    stored = _stored_dtype(base_dir, dtype)
    updates = lora_updates(run.best, run.adapter_config or {}) if run.kind == "peft" else full_updates(run.best)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_shards(base_dir, updates, tmp, stored, max_shard_bytes, progress)
        _write_config_and_tokenizer(base_dir, tokenizer_dir or base_dir, tmp, stored)
        if finish is not None:
            finish(tmp, stored)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, stored


# -- the check -----------------------------------------------------------------------------------------------
def _logits(model, tokenizer, prompts: Sequence[str]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt")
            outs.append(model(**ids).logits[0].float())
    return outs


def _reference_model(run: RunInfo, base_dir: Path):
    """The unmerged model: base + PEFT adapter, or base with the full-weight tensors loaded, in fp32."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, local_files_only=True)
    if run.kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(run.best)).eval()
    from safetensors.torch import load_file

    state = load_file(str(run.best))
    params = dict(base.named_parameters())
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t.float())
    return base.eval()


def verify_logits(run: RunInfo, base_dir: Path, merged_dir: Path, stored: torch.dtype,
                  prompts: Sequence[str]) -> dict[str, Any]:
    """Compare the merged directory's logits with the unmerged model's on `prompts` (one model in memory
    at a time). Returns {"prompts", "max_abs_diff", "max_rel_diff", "tolerance", "dtype", "passed"}."""
    import gc

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged_dir), local_files_only=True)
    ref = _reference_model(run, base_dir)
    want = _logits(ref, tok, prompts)
    del ref
    gc.collect()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32, local_files_only=True).eval()
    got = _logits(merged, tok, prompts)
    del merged
    gc.collect()
    abs_diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
    scale = max(1.0, max(float(b.abs().max()) for b in want))
    rel = abs_diff / scale
    tol = tolerance_for(stored)
    return {"prompts": len(prompts), "max_abs_diff": abs_diff, "max_rel_diff": rel, "tolerance": tol,
            "dtype": str(stored).removeprefix("torch."), "passed": rel <= tol}
