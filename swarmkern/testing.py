"""Tiny models and data built from configs, for tests and benchmarks (no model hub, seconds on a CPU);
the tiny model of `--tiny` runs is swarmkern.tiny, which production code imports instead of this module.

Everything is written to a directory so that YAML configs can point at it:

    from swarmkern.testing import build_tiny_setup
    setup = build_tiny_setup(tmp_path / "tiny")           # model, reward model, judge, 3 LoRA experts, datasets
    setup.model_dir, setup.expert_dirs, setup.data["mc_dev"], ...

Pieces: `char_tokenizer` and `build_tiny_causal_lm` (from swarmkern.tiny, which production code such
as `swarmkern demo --tiny` uses; this module is for tests and benchmarks only), `build_tiny_reward_model`
(LlamaForSequenceClassification, 1 label), `build_tiny_judge` (a causal LM trained for a few seconds to
answer "Rating: k/10"), `write_lora_experts` (K random PEFT LoRA adapter dirs for a model dir) and
`write_tiny_datasets` (JSONL files in the formats of the built-in utilities).
"""
from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from swarmkern.atomic import atomic_write_text
from swarmkern.tiny import build_tiny_causal_lm, char_tokenizer, tiny_llama_config
from swarmkern.tiny import init_weights as _init_weights


def build_tiny_reward_model(save_dir: str | os.PathLike, *, seed: int = 1) -> Path:
    """A random tiny LlamaForSequenceClassification with one label (a reward model), saved with its tokenizer."""
    from transformers import LlamaForSequenceClassification

    save_dir = Path(save_dir).absolute()
    tok = char_tokenizer(save_dir)
    model = LlamaForSequenceClassification(tiny_llama_config(len(tok), num_layers=2, num_labels=1))
    _init_weights(model, seed)
    model.save_pretrained(str(save_dir))
    return save_dir


def build_tiny_judge(save_dir: str | os.PathLike, *, rating: int = 7, steps: int = 150, seed: int = 2) -> Path:
    """A tiny causal LM trained (a few seconds on a CPU) to continue any text ending in "Rating:" with
    " {rating}/10" and then </s>, so judge utilities can be tested end to end with a known answer."""
    from transformers import LlamaForCausalLM

    save_dir = Path(save_dir).absolute()
    tok = char_tokenizer(save_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), num_layers=2, hidden_size=48))
    answer = f" {rating}/10"
    gen = torch.Generator().manual_seed(seed)
    alphabet = string.ascii_letters + string.digits + " .,?\n"
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = []
        for _ in range(16):
            n = int(torch.randint(0, 40, (1,), generator=gen))
            idx = torch.randint(0, len(alphabet), (n,), generator=gen).tolist()
            texts.append("".join(alphabet[i] for i in idx) + "\nRating:")
        enc = [tok(t)["input_ids"] for t in texts]
        ans = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        width = max(len(e) for e in enc) + len(ans)
        ids = torch.full((len(enc), width), tok.pad_token_id)
        labels = torch.full((len(enc), width), -100)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            seq = e + ans
            ids[i, :len(seq)] = torch.tensor(seq)
            labels[i, len(e):len(seq)] = torch.tensor(ans)
            mask[i, :len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(save_dir))
    return save_dir


def write_lora_experts(model_dir: str | os.PathLike, out_dir: str | os.PathLike, k: int = 3, *, r: int = 4,
                       lora_alpha: float = 8, target_modules: Sequence[str] = ("q_proj", "v_proj"),
                       layers_to_transform: Sequence[int] | None = None, use_rslora: bool = False,
                       std: float = 0.3, seed: int = 0) -> list[Path]:
    """Write `k` PEFT LoRA adapter dirs (out_dir/expert_0 ...) for the causal LM in `model_dir`, with
    random A and B (both nonzero, so every expert changes the model). Returns the adapter dirs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir, out_dir = Path(model_dir).absolute(), Path(out_dir).absolute()
    paths = []
    for i in range(k):
        base = AutoModelForCausalLM.from_pretrained(str(model_dir))
        cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules),
                         layers_to_transform=list(layers_to_transform) if layers_to_transform else None,
                         use_rslora=use_rslora, lora_dropout=0.0, task_type="CAUSAL_LM")
        peft_model = get_peft_model(base, cfg)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        path = out_dir / f"expert_{i}"
        peft_model.save_pretrained(str(path))
        paths.append(path)
    return paths


def write_full_weight_experts(model_dir: str | os.PathLike, out_dir: str | os.PathLike, k: int = 2, *,
                              only: str = "layers.3.", std: float = 0.2) -> list[Path]:
    """Write `k` full-weight experts (out_dir/full<i>.safetensors): the parameters of the causal LM in
    `model_dir` whose names contain `only`, plus seeded noise of scale `std` (seed i)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(k):
        m = AutoModelForCausalLM.from_pretrained(str(model_dir))
        sd = {n: (p + std * torch.randn(p.shape, generator=torch.Generator().manual_seed(i))).contiguous()
              for n, p in m.named_parameters() if only in n}
        paths.append(Path(out_dir) / f"full{i}.safetensors")
        save_file(sd, str(paths[-1]))
    return paths


def run_record(out: str | os.PathLike) -> tuple[list[dict], dict]:
    """(history lines, summary) of a finished run without what legitimately differs between two runs of
    the same search (timings, wall time, the export's path, the command that started it): what a test
    of exact resume or sharding compares."""
    out = Path(out)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for h in history:
        h.pop("timings", None)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("wall_seconds", "best_path", "command"):
        summary.pop(key, None)
    return history, summary


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tiny_datasets(out_dir: str | os.PathLike, *, n_dev: int = 6, n_test: int = 6,
                        seed: int = 0) -> dict[str, Path]:
    """Small arithmetic datasets in the formats of the built-in utilities. Keys: mc_dev, mc_test
    ({"question", "choices", "answer"}), qa_dev, qa_test ({"prompt", "answer"}), prompts_dev,
    prompts_test ({"prompt"}, for the reward-model and judge utilities)."""
    out_dir = Path(out_dir).absolute()
    gen = torch.Generator().manual_seed(seed)

    def draw(n: int) -> list[tuple[int, int]]:
        return [tuple(torch.randint(1, 20, (2,), generator=gen).tolist()) for _ in range(n)]

    files = {}
    for split, n in (("dev", n_dev), ("test", n_test)):
        pairs = draw(n)
        mc = []
        for a, b in pairs:
            right = a + b
            wrong = sorted({right + 1, right - 1, right + 10} - {right})[:3]
            choices = [str(c) for c in wrong] + [str(right)]
            order = torch.randperm(len(choices), generator=gen).tolist()
            choices = [choices[j] for j in order]
            mc.append({"question": f"What is {a}+{b}?", "choices": choices,
                       "answer": choices.index(str(right))})
        files[f"mc_{split}"] = _write_jsonl(out_dir / f"mc_{split}.jsonl", mc)
        files[f"qa_{split}"] = _write_jsonl(out_dir / f"qa_{split}.jsonl",
                                            [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs])
        files[f"prompts_{split}"] = _write_jsonl(out_dir / f"prompts_{split}.jsonl",
                                                 [{"prompt": f"Tell me about {a} and {b}."} for a, b in pairs])
    return files


@dataclass
class TinySetup:
    """Paths written by `build_tiny_setup`."""
    root: Path
    model_dir: Path
    expert_dirs: list[Path]
    reward_dir: Path | None = None
    judge_dir: Path | None = None
    data: dict[str, Path] = field(default_factory=dict)


def build_tiny_setup(root: str | os.PathLike, *, k: int = 3, reward: bool = True, judge: bool = True,
                     layers_to_transform: Sequence[int] | None = (2, 3), seed: int = 0) -> TinySetup:
    """Everything a tiny end-to-end run needs, under `root`: model/, experts/expert_*/, reward/, judge/,
    data/*.jsonl. Experts adapt q_proj and v_proj of the top two layers (so shared-prefix evaluation
    is exercised)."""
    root = Path(root).absolute()
    model_dir = build_tiny_causal_lm(root / "model", seed=seed)
    experts = write_lora_experts(model_dir, root / "experts", k, layers_to_transform=layers_to_transform,
                                 seed=seed)
    return TinySetup(root=root, model_dir=model_dir, expert_dirs=experts,
                     reward_dir=build_tiny_reward_model(root / "reward") if reward else None,
                     judge_dir=build_tiny_judge(root / "judge") if judge else None,
                     data=write_tiny_datasets(root / "data", seed=seed))


_SETUPS: dict[tuple, TinySetup] = {}


def cached_tiny_setup(**kwargs) -> TinySetup:
    """`build_tiny_setup` into a temporary directory, once per process per set of arguments (tests
    in several files share it; the directory is removed when the process exits)."""
    import atexit
    import shutil
    import tempfile

    key = tuple(sorted(kwargs.items()))
    if key not in _SETUPS:
        root = tempfile.mkdtemp(prefix="swarmkern_tiny_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SETUPS[key] = build_tiny_setup(root, **kwargs)
    return _SETUPS[key]


def write_hub_snapshot(cache_dir: str | os.PathLike, repo_id: str, src: str | os.PathLike, *, commit: str,
                       refs: Sequence[str] = ("main",), repo_type: str = "model") -> Path:
    """Put the files of `src` (a directory) into a Hugging Face hub cache as huggingface_hub lays it out:
    <cache>/<type>s--org--name/blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, and
    refs/<ref> holding the commit. Tests resolve Hub ids from it offline. Returns the snapshot dir."""
    import hashlib

    repo = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
