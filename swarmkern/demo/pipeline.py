"""`swarmkern demo`, end to end: base model -> LoRA experts (built once, cached) -> the target quiz ->
the swarm (swarmkern.Swarm) and the composition baselines (swarmkern.merge) on the same dev utility ->
one table of dev and test accuracy, plots, and the best adapter.

Honesty rules: the swarm and every searching baseline see only the dev split; test is scored once per
final answer, for the report. The demo's own settings were chosen on a separate held-out split
(tasks.target_splits(..., n_holdout=...)), never on test.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import tasks
from .experts import LoraSpec, init_adapter, save_adapter, train_expert
from .model import cache_root, load_base, prompt_template, resolve_model_dir
from .scoring import ChoiceAccuracy
from .stack import SplitModel, encode

TASKS_VERSION = 2  # bump when a generator changes, so cached experts are rebuilt
BASELINES = ("best_single", "uniform_soup", "task_arithmetic", "ties", "dare_ties", "greedy_soup")


@dataclass
class DemoConfig:
    """Every setting of the demo (the CLI exposes the common ones). Defaults: SmolLM2 on 2 CPU cores."""
    tiny: bool = False
    model: str | None = None
    out: str = "swarmkern-demo"
    cache: str | None = None
    seed: int = 0
    # experts
    n_experts: int = 8
    n_top: int = 4              # LoRA on the top layers only; the rest is computed once per question
    rank: int = 8
    alpha: float = 16.0
    train_steps: int = 100
    train_batch: int = 16
    lr: float = 3e-3            # lora_B; lora_A trains 16x slower (LoRA+)
    mixture_concentration: float = 0.5   # Dirichlet: each expert a different, overlapping skill mix
    examples_per_skill: int = 60
    # target
    n_dev: int = 200
    n_test: int = 500
    n_holdout: int = 0          # > 0: also report a held-out split (for choosing settings without test)
    # swarm (phi_g/phi_w/step: LESSONS.md; the rest are the reference defaults)
    n_particles: int = 12
    max_iters: int = 12
    patience: int = 6
    phi_v: float = 0.3
    phi_p: float = 0.3
    phi_g: float = 0.5
    phi_w: float = 0.1
    step: float = 0.7
    include_base: bool = True   # the LoRA init (B = 0: the base model itself) as one more particle
    baselines: tuple[str, ...] = BASELINES
    threads: int | None = None
    dtype: str = "bfloat16"     # forward dtype of the scorer (training keeps fp32 adapters)
    progress: bool = True

    def expert_key(self, model_dir: Path) -> str:
        """Identity of the expert pool: base model + training settings + generator version."""
        cfg = (model_dir / "config.json").read_bytes()
        fields = {k: getattr(self, k) for k in ("seed", "n_experts", "n_top", "rank", "alpha", "train_steps",
                                                 "train_batch", "lr", "mixture_concentration",
                                                 "examples_per_skill")}
        blob = json.dumps({"model": str(model_dir), "config": hashlib.sha256(cfg).hexdigest(),
                           "tasks": TASKS_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class DemoResult:
    rows: dict[str, dict[str, Any]]      # name -> {"dev", "test", "kind", ...}
    table: str
    out_dir: Path
    best_adapter: Path
    seconds: dict[str, float] = field(default_factory=dict)


# -- experts ---------------------------------------------------------------------------------
def _mixtures(n: int, skills: list[str], concentration: float, seed: int) -> list[dict[str, float]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        g = torch._standard_gamma(torch.full((len(skills),), concentration), generator=gen)
        w = (g / g.sum()).tolist()
        out.append({s: round(x, 4) for s, x in zip(skills, w)})
    return out


def build_experts(cfg: DemoConfig, split: SplitModel, tokenizer, prompt: str, model_dir: Path,
                  echo: Callable[[str], None]) -> tuple[list[Path], Path, dict[str, Any]]:
    """Train (or find cached) the expert adapters; return (expert dirs, base-init dir, meta)."""
    root = cache_root(cfg.cache) / "experts" / cfg.expert_key(model_dir)
    names = [f"expert_{k}" for k in range(cfg.n_experts)]
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all((root / n / "adapter_model.safetensors").is_file() for n in names + ["base_init"]):
            echo(f"experts: cached in {root}")
            return [root / n for n in names], root / "base_init", meta
    t0 = time.perf_counter()
    skills = sorted(tasks.SKILLS)
    pool = []
    for i, s in enumerate(skills):
        pool += tasks.sample({s: 1.0}, cfg.examples_per_skill, seed=10_000 + 97 * cfg.seed + i, distinct=False)
    enc = encode(tokenizer, pool, prompt, drop_ambiguous=True)
    echo(f"experts: caching the lower layers for {len(enc.answer)} training questions ...")
    h = split.lower(enc)
    spec = LoraSpec(cfg.rank, cfg.alpha)
    init = init_adapter(split, spec, seed=cfg.seed)
    base_name = str(model_dir)
    mixes = _mixtures(cfg.n_experts, skills, cfg.mixture_concentration, seed=cfg.seed + 1)
    for k, mix in enumerate(mixes):
        top = sorted(mix, key=mix.get, reverse=True)[:3]
        echo(f"experts: training {names[k]} on " + ", ".join(f"{s} {mix[s]:.0%}" for s in top) + ", ...")
        weights = torch.tensor([mix[s] for s in enc.skills]) + 1e-6
        adapter = train_expert(split, h, enc, weights, init, spec, steps=cfg.train_steps, batch=cfg.train_batch,
                               lr=cfg.lr, seed=cfg.seed * 1000 + k)
        save_adapter(adapter, spec, root / names[k], base_name)
    save_adapter({n: (a, torch.zeros_like(b)) for n, (a, b) in init.items()}, spec, root / "base_init", base_name)
    meta = {"mixtures": dict(zip(names, mixes)), "train_questions": len(enc.answer),
            "seconds": round(time.perf_counter() - t0, 1), "config": {k: v for k, v in asdict(cfg).items()}}
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, meta_path)
    echo(f"experts: built in {meta['seconds']:.0f} s, cached in {root}")
    return [root / n for n in names], root / "base_init", meta


# -- export: the same experts and quiz for `swarmkern compare` ---------------------------------
def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_compare_config(cfg: DemoConfig, out: Path, model_dir: Path, expert_dirs: list[Path], prompt: str,
                          dev: list[tasks.Example], test: list[tasks.Example]) -> Path:
    """Write quiz/{dev,test}.jsonl and compare.yaml, so that `swarmkern compare out/compare.yaml` runs
    every baseline of swarmkern.merge on the demo's experts with the built-in multiple_choice utility
    (which scores whole choices by log-likelihood: slower than the demo's first-token scorer, and its
    numbers can differ a little)."""
    import yaml

    quiz = out / "quiz"
    quiz.mkdir(exist_ok=True)
    for name, exs in (("dev", dev), ("test", test)):
        _atomic_text(quiz / f"{name}.jsonl", "".join(
            json.dumps({"question": e.question, "choices": list(e.choices), "answer": e.answer}) + "\n" for e in exs))
    config = {
        "experts": {"paths": [str(p) for p in expert_dirs]},
        "swarm": {"n_particles": cfg.n_particles, "include_base": cfg.include_base, "phi_v": cfg.phi_v,
                  "phi_p": cfg.phi_p, "phi_g": cfg.phi_g, "phi_w": cfg.phi_w, "step": cfg.step,
                  "min_step": min(0.1, cfg.step), "max_iters": cfg.max_iters, "patience": cfg.patience,
                  "seed": cfg.seed},
        "utility": {"type": "multiple_choice", "model": str(model_dir), "dev": str(quiz / "dev.jsonl"),
                    "test": str(quiz / "test.jsonl"), "template": prompt, "continuation": " {choice}",
                    "dtype": "float32" if cfg.tiny else cfg.dtype},
        "output": {"dir": str(out / "compare"), "overwrite": True},
        "compare": {"swarm": True},
    }
    path = out / "compare.yaml"
    _atomic_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


# -- the run ---------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | kind | dev acc % | test acc % |", "| --- | --- | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['kind']} | {_fmt(r['dev'])} | {_fmt(r['test'])} |")
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo (see the module docstring); returns the table and where the outputs are."""
    from swarmkern.compare import plot_compare
    from swarmkern.flat import load_experts, save_expert
    from swarmkern.merge import MergeContext, parse_method_config, segments_of
    from swarmkern.swarm import Swarm, SwarmConfig

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(cfg.model, cfg.tiny, cfg.cache, echo)
    model, tokenizer = load_base(model_dir)
    dtype = torch.float32 if cfg.tiny else getattr(torch, cfg.dtype)
    n_top = min(cfg.n_top, model.config.num_hidden_layers)
    split = SplitModel(model, n_top, dtype=dtype)
    prompt = prompt_template(tokenizer)
    seconds["load"] = time.perf_counter() - t_start

    t = time.perf_counter()
    expert_dirs, base_dir, meta = build_experts(cfg, split, tokenizer, prompt, model_dir, echo)
    seconds["experts"] = time.perf_counter() - t

    t = time.perf_counter()
    dev, test, hold = tasks.target_splits(cfg.n_dev, cfg.n_test, seed=1 + cfg.seed, n_holdout=cfg.n_holdout)
    enc_dev, enc_test = encode(tokenizer, dev, prompt), encode(tokenizer, test, prompt)
    h_dev, h_test = split.lower(enc_dev), split.lower(enc_test)
    sources = expert_dirs + ([base_dir] if cfg.include_base else [])
    names = [p.name for p in expert_dirs] + (["base"] if cfg.include_base else [])
    pool = load_experts([str(p) for p in sources], names=names)
    spec_scale = cfg.alpha / cfg.rank
    dev_u = ChoiceAccuracy(split, pool.layout, spec_scale, enc_dev, h_dev)
    test_u = ChoiceAccuracy(split, pool.layout, spec_scale, enc_test, h_test)
    rows_all = pool.weights
    k = len(expert_dirs)
    experts = rows_all[:k]
    dev_all, test_all = dev_u(rows_all), test_u(rows_all)
    hold_u = None
    if hold:
        enc_hold = encode(tokenizer, hold, prompt)
        hold_u = ChoiceAccuracy(split, pool.layout, spec_scale, enc_hold, split.lower(enc_hold))
    seconds["prepare"] = time.perf_counter() - t
    echo(f"target quiz: {len(enc_dev.answer)} dev / {len(enc_test.answer)} test questions "
         f"({', '.join(tasks.TARGET_SKILLS)}, held-out phrasings)")

    table: dict[str, dict[str, Any]] = {}
    if cfg.include_base:
        table["base model"] = {"kind": "no adapter", "dev": float(dev_all[k]), "test": float(test_all[k])}
    for i in range(k):
        mix = meta["mixtures"][names[i]]
        top = ", ".join(s for s in sorted(mix, key=mix.get, reverse=True)[:2])
        table[names[i]] = {"kind": f"expert ({top}, ...)", "dev": float(dev_all[i]), "test": float(test_all[i])}

    # -- the swarm -----------------------------------------------------------------------------
    t = time.perf_counter()
    scfg = SwarmConfig(n_particles=max(cfg.n_particles, len(sources)), max_iters=cfg.max_iters,
                       patience=cfg.patience, phi_v=cfg.phi_v, phi_p=cfg.phi_p, phi_g=cfg.phi_g,
                       phi_w=cfg.phi_w, step=cfg.step, min_step=min(0.1, cfg.step), seed=cfg.seed,
                       progress=cfg.progress)
    echo(f"swarm: {scfg.n_particles} particles from {len(sources)} starting points, "
         f"at most {cfg.max_iters} iterations ...")
    result = Swarm(scfg, pool, dev_u, test_utility=test_u, output_dir=out / "swarm", overwrite=True).run()
    seconds["swarm"] = time.perf_counter() - t
    swarm_row = {"kind": f"Model Swarms ({result.iterations} iterations, {result.summary['evaluations']} evals)",
                 "dev": result.best_utility, "test": result.summary.get("test_utility")}

    # -- baselines on the trained experts only ------------------------------------------------
    t = time.perf_counter()
    ctx = MergeContext(experts=experts.contiguous(), segments=segments_of(pool.layout), dev=dev_u, test=test_u,
                       names=names[:k], budget=int(result.summary["evaluations"]), seed=cfg.seed, batch_size=8,
                       pool=pool)
    for spec in cfg.baselines:
        method = parse_method_config(spec)
        ctx.begin()
        try:
            res = method.run(ctx)
        except Exception as err:  # one failing baseline must not lose the others
            echo(f"baseline {method.name} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        dev_v = res.dev if res.dev is not None else (float(dev_u(res.row)[0]) if res.row is not None else None)
        test_v = res.test if res.test is not None else (float(test_u(res.row)[0]) if res.row is not None else None)
        note = "; ".join(f"{k2}={v}" for k2, v in (res.info or {}).items() if k2 in ("expert", "scaling", "experts"))
        table[method.name] = {"kind": "baseline" + (f" ({note})" if note else ""), "dev": dev_v, "test": test_v}
        if hold_u is not None and res.row is not None:
            table[method.name]["holdout"] = float(hold_u(res.row)[0])
    seconds["baselines"] = time.perf_counter() - t
    table["swarm"] = swarm_row
    if hold_u is not None:
        for name, row in (("base model", rows_all[k] if cfg.include_base else None),
                          *((names[i], rows_all[i]) for i in range(k)), ("swarm", result.best)):
            if row is not None:
                table[name]["holdout"] = float(hold_u(row)[0])

    # -- outputs -------------------------------------------------------------------------------
    best = save_expert(pool, result.best, out / "best_adapter")
    export_compare_config(cfg, out, model_dir, expert_dirs, prompt, dev, test)
    text = format_table(table)
    plot_compare({n: {"dev": r["dev"], "test": r["test"]} for n, r in table.items()}, out / "demo.png")
    seconds["total"] = time.perf_counter() - t_start
    report = {"rows": table, "seconds": {k2: round(v, 1) for k2, v in seconds.items()},
              "model_dir": str(model_dir), "experts": [str(p) for p in expert_dirs],
              "expert_mixtures": meta["mixtures"], "swarm": {"summary_file": str(out / "swarm" / "summary.json"),
              "best_origin": result.best_origin}, "config": asdict(cfg)}
    for name, content in (("demo.json", json.dumps(report, indent=2, default=str)), ("demo.md", text + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    return DemoResult(table, text, out, best, seconds)
