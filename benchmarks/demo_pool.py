"""The demo's experts and scorer for the sweep benchmarks (bench_sweep.py --demo, study_sweep_demo.py).

A cached `swarmkern demo` pool is a folder of PEFT adapters on the top layers of SmolLM2-135M-Instruct:
expert_*/ and the shared LoRA init with B = 0 (base_init/ or init/), i.e. the base model itself. The
scorer is the demo's first-token multiple-choice accuracy (ChoiceAccuracy): the lower layers run once
per question set, each call runs the adapted top layers for every particle.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch


def load_demo_pool(experts_dir: Path, model_dir: Path | None = None, dtype: str = "bfloat16"):
    """(pool, make_scorer(examples) -> ChoiceAccuracy, the number of experts without the init)."""
    from swarmkern.demo.model import cache_root, load_base, prompt_template
    from swarmkern.demo.scoring import ChoiceAccuracy
    from swarmkern.demo.stack import SplitModel, encode
    from swarmkern.flat import load_experts

    init = next((n for n in ("base_init", "init") if (experts_dir / n).is_dir()), None)
    experts = sorted((p.name for p in experts_dir.glob("expert_*")), key=lambda n: int(n.split("_")[1]))
    if init is None or not experts:
        sys.exit(f"{experts_dir}: expected expert_*/ and base_init/ (a cached `swarmkern demo` pool)")
    names = experts + [init]
    pool = load_experts([str(experts_dir / n) for n in names], names=names)
    adapter = json.loads((experts_dir / experts[0] / "adapter_config.json").read_text())
    model, tokenizer = load_base(model_dir or cache_root() / "smollm2-135m-instruct")
    layers = adapter.get("layers_to_transform")
    n_layers = model.config.num_hidden_layers
    split = SplitModel(model, n_layers - min(layers) if layers else n_layers, dtype=getattr(torch, dtype))
    meta = experts_dir / "meta.json"
    template = json.loads(meta.read_text()).get("template") if meta.is_file() else None
    prompt = template or prompt_template(tokenizer)  # the prompt the experts were trained with
    scale = adapter["lora_alpha"] / adapter["r"]

    def make_scorer(examples) -> Callable[[torch.Tensor], torch.Tensor]:
        enc = encode(tokenizer, examples, prompt)
        return ChoiceAccuracy(split, pool.layout, scale, enc, split.lower(enc))

    return pool, make_scorer, len(experts)
