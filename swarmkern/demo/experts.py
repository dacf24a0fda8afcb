"""Fine-tune the demo's LoRA experts on the top layers of a SplitModel, from cached lower-layer states.

All experts start from the same LoRA initialisation (A shared and seeded, B = 0) and train A 16x slower
than B (LoRA+), which keeps their A factors close together so that mixing experts tensor by tensor stays
near-linear in the effective weight update (LESSONS.md). The LoRA init itself (B = 0) is exactly the base
model; the demo adds it to the swarm as a particle so mixtures are not confined to the experts' affine hull.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .stack import Encoded, SplitModel

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    """Shape of every expert: rank, alpha, and the modules of the top layers it adapts."""
    rank: int = 8
    alpha: float = 16.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def init_adapter(split: SplitModel, spec: LoraSpec, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The shared starting point: A ~ kaiming-uniform (as PEFT does), B = 0. {name: (A [r, in], B [out, r])}."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, slot in split.slots.items():
        fan_in = slot.base.in_features
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) gives 1/sqrt(fan_in)
        a = (torch.rand(spec.rank, fan_in, generator=gen) * 2 - 1) * bound
        out[name] = (a, torch.zeros(slot.base.out_features, spec.rank))
    return out


def train_expert(split: SplitModel, h: torch.Tensor, enc: Encoded, weights: torch.Tensor,
                 init: dict[str, tuple[torch.Tensor, torch.Tensor]], spec: LoraSpec, *, steps: int,
                 batch: int, lr: float, seed: int, lr_ratio: float = 16.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train one adapter on examples drawn with probability `weights` [N] from the cached pool.

    h [N, T, H]: lower-layer states of `enc`. Loss: next-token cross-entropy of the right choice's
    scored token over the whole vocabulary. Returns {name: (A [r, in], B [out, r])} (fp32, detached)."""
    params = {n: (a.clone().requires_grad_(True), b.clone().requires_grad_(True)) for n, (a, b) in init.items()}
    opt = torch.optim.AdamW([{"params": [a for a, _ in params.values()], "lr": lr / lr_ratio},
                             {"params": [b for _, b in params.values()], "lr": lr}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * max(0.05, 1 - s / steps))
    gen = torch.Generator().manual_seed(seed)
    head = split.model.lm_head.weight
    target = enc.choice_ids[torch.arange(len(enc.answer)), enc.answer]
    split.set_adapter({n: (a.unsqueeze(0), b.unsqueeze(0)) for n, (a, b) in params.items()}, spec.scale)
    try:
        for _ in range(steps):
            idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
            idx = idx.sort().values
            z = split.top(h[idx], enc.lengths[idx])
            logits = (z @ head.T).float()
            loss = torch.nn.functional.cross_entropy(logits, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        split.set_adapter(None)
    return {n: (a.detach(), b.detach()) for n, (a, b) in params.items()}


# -- PEFT adapter directories ------------------------------------------------------------------
def _layer_indices(names) -> list[int]:
    return sorted({int(n.split(".")[2]) for n in names})


def save_adapter(tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], spec: LoraSpec, path: Path,
                 base_model: str) -> None:
    """Write a PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors), atomically."""
    path = Path(path)
    targets = sorted({n.rsplit(".", 1)[1] for n in tensors})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": targets, "layers_to_transform": _layer_indices(tensors), "layers_pattern": "layers",
        "fan_in_fan_out": False, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "inference_mode": True, "modules_to_save": None,
    }
    state = {}
    for n, (a, b) in tensors.items():
        state[f"{PEFT_PREFIX}{n}.lora_A.weight"] = a.detach().float().contiguous()
        state[f"{PEFT_PREFIX}{n}.lora_B.weight"] = b.detach().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / "adapter_model.safetensors"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_adapter(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], LoraSpec]:
    """Read a LoRA adapter dir written by save_adapter (or by PEFT with the same module names)."""
    path = Path(path)
    try:
        config = json.loads((path / "adapter_config.json").read_text())
        state = load_file(str(path / "adapter_model.safetensors"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable LoRA adapter dir ({err})") from None
    out: dict[str, list] = {}
    for key, t in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        name, _, part = name.rpartition(".lora_")
        slot = out.setdefault(name, [None, None])
        slot[0 if part.startswith("A") else 1] = t
    return {n: (a, b) for n, (a, b) in out.items()}, LoraSpec(int(config["r"]), float(config["lora_alpha"]))
