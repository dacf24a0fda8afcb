"""The demo's LoRA experts: trained once on mixtures of the procedural skills, saved as PEFT adapter dirs.

Training reuses the batched evaluator's LoRA layer (swarmkern.evaluate.lora): the expert is one particle
row of the pool's flat layout, made of trainable leaf tensors, bound to a LoraEvaluator exactly as the
search binds its particles, so what is trained is what is scored. Only the top `n_top` decoder layers
carry adapters; the hidden states entering them are computed once for the whole training set (the frozen
layers below never change) and every step runs the top layers only.

What matters for mixing experts later (docs/DEMO.md, "Why these settings"): every expert starts from the same LoRA
initialisation (A seeded and shared, B = 0) and lora_A trains 16x slower than lora_B (LoRA+), which keeps
the A factors close together so that tensor-wise mixtures stay near-linear in the weight update.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from swarmkern.atomic import atomic_save_safetensors, atomic_write_json

from . import tasks

IDENTITY_FILE = ".swarmkern-identity.json"  # model_identity's digest, beside the weights it covers
IDENTITY_VERSION = 1
TASKS_VERSION = 2            # bump when a generator changes, so cached experts are rebuilt
PEFT_PREFIX = "base_model.model."
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHIPPED = Path(__file__).with_name("experts")  # package data: the default experts, see docs/DEMO.md


@dataclass(frozen=True)
class ExpertSpec:
    """Everything that determines the expert pool (with the base model and the prompt template)."""
    seed: int = 0
    n_experts: int = 8
    n_top: int = 4                      # LoRA on the top layers only
    rank: int = 8
    alpha: float = 16.0
    steps: int = 100
    batch: int = 16
    lr: float = 3e-3                    # lora_B; lora_A trains lr_ratio times slower (LoRA+)
    lr_ratio: float = 16.0
    concentration: float = 0.5          # Dirichlet: each expert a different, overlapping skill mix
    examples_per_skill: int = 60

    def key(self, model_dir: Path, template: str) -> str:
        """Identity of the pool: the base model (config and weights), generator version, template, settings."""
        blob = json.dumps({"model": model_identity(model_dir), "tasks": TASKS_VERSION, "template": template,
                           **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def names(self) -> list[str]:
        return [f"expert_{k}" for k in range(self.n_experts)]


def model_identity(model_dir: Path) -> str:
    """Hash of the model: its config.json without the fields that name the writer, not the model
    (transformers version, dtype, path), and its weights (every tensor's name, shape and values as
    float32, whatever dtype stores them): a fine-tune with the same config gets another key, while the
    same model stored in another dtype by another install keeps its key."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no .safetensors weights to identify the model by")
    # hashing 135M weights takes seconds: the digest is kept beside them, valid while no file changes
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in [model_dir / "config.json", *files]]
    memo = model_dir / IDENTITY_FILE
    try:
        kept = json.loads(memo.read_text())
        if kept.get("files") == stamp and kept.get("version") == IDENTITY_VERSION:
            return kept["digest"]
    except (OSError, ValueError):
        pass
    digest = _hash_model(model_dir, files)
    try:
        atomic_write_json(memo, {"version": IDENTITY_VERSION, "files": stamp, "digest": digest})
    except OSError:  # a read-only model directory: hash again next time
        pass
    return digest


def _hash_model(model_dir: Path, files: list[Path]) -> str:
    from safetensors import safe_open

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    for k in ("transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        cfg.pop(k, None)
    h = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode(), digest_size=32)
    tensors = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as st:
            tensors.update({name: (f, name) for name in st.keys()})
    for name in sorted(tensors):
        f, _ = tensors[name]
        with safe_open(str(f), framework="pt", device="cpu") as st:
            t = st.get_tensor(name)
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.to(torch.float32).contiguous().view(torch.uint8).numpy().data)
    return h.hexdigest()


def mixtures(spec: ExpertSpec) -> list[dict[str, float]]:
    """Each expert's skill weights: Dirichlet(concentration) draws, reproducible from the seed."""
    skills = sorted(tasks.SKILLS)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    out = []
    for _ in range(spec.n_experts):
        g = torch._standard_gamma(torch.full((len(skills),), spec.concentration), generator=gen)
        out.append({s: round(x, 4) for s, x in zip(skills, (g / g.sum()).tolist())})
    return out


def find_experts(spec: ExpertSpec, model_dir: Path, template: str, cache: Path) -> Path | None:
    """The folder of a complete expert set for `spec`: shipped with the package, else cached; or None."""
    key = spec.key(model_dir, template)
    for root in (SHIPPED / key, cache / "experts" / key):
        if (root / "meta.json").is_file() and all((root / n / "adapter_model.safetensors").is_file()
                                                  for n in spec.names()):
            return root
    return None


# -- the shared initialisation ------------------------------------------------------------------
def adapted_modules(model: nn.Module, n_top: int) -> list[tuple[str, nn.Linear]]:
    """(path, Linear) of every target module in the top `n_top` decoder layers, in model order."""
    layers = model.get_decoder().layers
    first = len(layers) - n_top
    if not 1 <= n_top <= len(layers):
        raise ValueError(f"n_top must be in 1..{len(layers)}, got {n_top}")
    out = []
    for path, mod in model.named_modules():
        parts = path.split(".")
        if isinstance(mod, nn.Linear) and parts[-1] in TARGET_MODULES and "layers" in parts:
            if int(parts[parts.index("layers") + 1]) >= first:
                out.append((path, mod))
    return out


def write_init_adapter(model: nn.Module, spec: ExpertSpec, path: Path, base_name: str) -> None:
    """The shared start: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform bound), B = 0, i.e.
    exactly the base model. Written as a PEFT adapter dir."""
    gen = torch.Generator().manual_seed(spec.seed)
    state = {}
    for name, lin in adapted_modules(model, spec.n_top):
        bound = 1.0 / math.sqrt(lin.in_features)
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (torch.rand(spec.rank, lin.in_features, generator=gen) * 2 - 1) * bound
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = torch.zeros(lin.out_features, spec.rank)
    n_layers = len(model.get_decoder().layers)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGET_MODULES), "layers_to_transform": list(range(n_layers - spec.n_top, n_layers)),
        "layers_pattern": "layers", "fan_in_fan_out": False, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "inference_mode": True, "modules_to_save": None,
    }
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "adapter_config.json", config, indent=2)
    atomic_save_safetensors(path / "adapter_model.safetensors", state, metadata={"format": "pt"})


# -- the training set ---------------------------------------------------------------------------
@dataclass
class TrainSet:
    """Tokenised training questions (prompt + the right answer), right-padded, shortest first.

    ids [N, T] (pad 0); lengths [N]; label_row / label_pos / label_tok [M]: the answer tokens, each predicted at
    position label_pos of question label_row; h [N, T, H]: hidden states entering the first adapted
    layer (filled by `cache_lower_states`)."""
    ids: torch.Tensor
    lengths: torch.Tensor
    skills: list[str]
    label_row: torch.Tensor
    label_pos: torch.Tensor
    label_tok: torch.Tensor
    h: torch.Tensor | None = None


def encode_train(tokenizer, examples: list[tasks.Example], template: str, continuation: str) -> TrainSet:
    """Tokenise as the multiple_choice utility does (context with special tokens, answer without)."""
    from swarmkern.evaluate import encode_requests

    reqs = encode_requests(tokenizer, [template.format(question=e.question) for e in examples],
                           [continuation.format(choice=e.choices[e.answer]) for e in examples])
    seqs = reqs.ids
    order = sorted(range(len(seqs)), key=lambda e: len(seqs[e]))  # similar lengths share a batch
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    rows, pos, tok = [], [], []
    for i, e in enumerate(order):
        ids[i, :len(seqs[e])] = torch.tensor(seqs[e])
        start = len(reqs.contexts[reqs.owner[e]])
        for j, t in enumerate(reqs.conts[e]):
            rows.append(i)
            pos.append(start + j - 1)
            tok.append(t)
    return TrainSet(ids, torch.tensor([len(seqs[e]) for e in order]), [examples[e].skill for e in order],
                    torch.tensor(rows), torch.tensor(pos), torch.tensor(tok))


@torch.no_grad()
def cache_lower_states(model: nn.Module, data: TrainSet, first: int, batch: int = 32,
                       progress: bool = True) -> None:
    """data.h = the hidden states entering decoder layer `first`, for every training question."""
    from tqdm.auto import tqdm

    dec = model.get_decoder()
    out = []
    norm, dec.norm = dec.norm, nn.Identity()  # the states entering layer `first`, not normed
    try:
        with _layers(dec, 0, first):
            for s in tqdm(range(0, len(data.ids), batch), desc="experts: lower layers", unit="batch",
                          disable=not progress, dynamic_ncols=True):
                n = int(data.lengths[s:s + batch].max())
                h = dec(input_ids=data.ids[s:s + batch, :n]).last_hidden_state
                out.append(torch.nn.functional.pad(h, (0, 0, 0, data.ids.shape[1] - n)))
    finally:
        dec.norm = norm
    data.h = torch.cat(out)


@contextlib.contextmanager
def _layers(decoder: nn.Module, start: int, stop: int) -> Iterator[None]:
    """Run only decoder layers [start, stop) (the frozen ones below or the adapted ones above)."""
    full = decoder.layers
    decoder.layers = nn.ModuleList(list(full)[start:stop])
    try:
        yield
    finally:
        decoder.layers = full


# -- training -------------------------------------------------------------------------------------
def train_expert(evaluator, data: TrainSet, weights: torch.Tensor, init: dict[str, torch.Tensor],
                 spec: ExpertSpec, seed: int, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Train one expert from the shared init on questions drawn with probability `weights` [N].

    evaluator: a LoraEvaluator of the pool's layout (its model's top layers carry the batched LoRA
    layer); init: {layout name: tensor}. Loss: cross-entropy of the right answer's tokens. Returns the
    trained row [D] (float32, detached), in the layout's order."""
    layout, model = evaluator.layout, evaluator.model
    dec = model.get_decoder()
    first = len(dec.layers) - spec.n_top
    params = {n: init[n].clone().float().requires_grad_(True) for n in layout.names}
    groups = [{"params": [p for n, p in params.items() if ".lora_A" in n], "lr": spec.lr / spec.lr_ratio},
              {"params": [p for n, p in params.items() if ".lora_B" in n], "lr": spec.lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    steps = spec.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * max(0.05, 1 - s / steps))
    gen = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings()
    with _layers(dec, first, len(dec.layers)):
        for _ in range(steps):
            idx = torch.multinomial(weights, spec.batch, replacement=True, generator=gen).sort().values
            pick = torch.isin(data.label_row, idx)
            local = torch.searchsorted(idx, data.label_row[pick])  # rows of a repeated question: its first copy
            row = torch.cat([params[n].reshape(-1) for n in layout.names]).unsqueeze(0)
            # the evaluator's binding hook (how the search routes its particle rows), with a trainable row
            with evaluator.bind(row):
                hidden = dec(inputs_embeds=data.h[idx, :int(data.lengths[idx].max())]).last_hidden_state
                logits = head(hidden[local, data.label_pos[pick]]).float()
            loss = torch.nn.functional.cross_entropy(logits, data.label_tok[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(1)
    return torch.cat([params[n].detach().reshape(-1) for n in layout.names])


def build_experts(spec: ExpertSpec, model_dir: Path, template: str, continuation: str, cache: Path,
                  echo: Callable[[str], None], progress: bool = True) -> Path:
    """Train the expert set (init + experts) into cache/experts/<key>/ and return that folder."""
    from tqdm.auto import tqdm

    from swarmkern.evaluate import LoraEvaluator
    from swarmkern.evaluate.models import load_tokenizer
    from swarmkern.flat import load_experts, save_expert
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    key = spec.key(model_dir, template)
    final = cache / "experts" / key
    final.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    skills = sorted(tasks.SKILLS)
    pool_q: list[tasks.Example] = []
    for i, s in enumerate(skills):
        pool_q += tasks.sample({s: 1.0}, spec.examples_per_skill, seed=10_000 + 97 * spec.seed + i, distinct=False)
    data = encode_train(tokenizer, pool_q, template, continuation)
    first = len(model.get_decoder().layers) - spec.n_top
    echo(f"experts: caching the lower {first} layers for {len(pool_q)} training questions ...")
    cache_lower_states(model, data, first, progress=progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        # base_model_name_or_path: a name, not this machine's path (the demo passes the model dir itself)
        write_init_adapter(model, spec, tmp / "init", base_name="SmolLM2-135M-Instruct (see docs/DEMO.md)")
        pool = load_experts([tmp / "init"])
        init = pool.layout.state_dict(pool.weights[0])
        ev = LoraEvaluator(model, tokenizer, pool.layout, pool.adapter_config, share_prefix=False)
        mixes = mixtures(spec)
        for k, (name, mix) in enumerate(zip(spec.names(), mixes)):
            top = sorted(mix, key=mix.get, reverse=True)[:3]
            weights = torch.tensor([mix[s] for s in data.skills]) + 1e-6
            with tqdm(total=spec.steps, desc=f"{name} ({', '.join(f'{s} {mix[s]:.0%}' for s in top)})",
                      unit="step", disable=not progress, dynamic_ncols=True) as bar:
                row = train_expert(ev, data, weights, init, spec, seed=spec.seed * 1000 + k, progress=bar.update)
            save_expert(pool, row, tmp / name)
        ev.unpatch()
        meta = {"spec": asdict(spec), "template": template, "continuation": continuation,
                "tasks_version": TASKS_VERSION, "mixtures": dict(zip(spec.names(), mixes)),
                "train_questions": len(pool_q), "seconds": round(time.perf_counter() - t0, 1),
                "torch": torch.__version__}
        atomic_write_json(tmp / "meta.json", meta, indent=2)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    echo(f"experts: built in {time.perf_counter() - t0:.0f} s, cached in {final}")
    return final


def same_weights(a: Path, b: Path, names: list[str]) -> float:
    """Largest absolute difference between two expert sets' tensors (0.0: bit-identical)."""
    from safetensors.torch import load_file

    worst = 0.0
    for n in names:
        ta, tb = load_file(str(a / n / "adapter_model.safetensors")), load_file(str(b / n / "adapter_model.safetensors"))
        if set(ta) != set(tb):
            return float("inf")
        for k in ta:
            worst = max(worst, float((ta[k].float() - tb[k].float()).abs().max()))
    return worst
