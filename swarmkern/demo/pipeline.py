"""`swarmkern demo`, end to end, on the user's path: base model -> LoRA experts (shipped, cached or
trained) -> the target quiz written as JSONL -> a run config (search.yaml) and a compare config
(compare.yaml) in the output folder -> `swarmkern.compare.run_compare` on that config, the very function
`swarmkern compare OUT/compare.yaml` calls -> the table.

Honesty rules: the swarm and every searching baseline see only the dev split; test is scored once per
final answer, for the report. The demo's own settings were chosen on dev and a separate held-out split
(`n_holdout`), never on test.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from . import tasks
from .experts import SHIPPED, ExpertSpec, build_experts, find_experts, mixtures, same_weights
from .model import cache_root, prompt_template, resolve_model_dir

CONTINUATION = " {choice}"
BASELINES: tuple[str | dict, ...] = ("best_single", "uniform_soup", "task_arithmetic", "ties", "dare_ties",
                                     "greedy_soup")


@dataclass
class DemoConfig:
    """Every setting of the demo (the CLI exposes the common ones). Defaults: SmolLM2 on 2 CPU cores."""
    tiny: bool = False
    model: str | None = None
    out: str = "swarmkern-demo"
    cache: str | None = None
    experts: ExpertSpec = field(default_factory=ExpertSpec)
    retrain: bool = False       # train the experts even when shipped or cached ones exist
    # target quiz
    n_dev: int = 200
    n_test: int = 500
    n_holdout: int = 0          # > 0: also write quiz/holdout.jsonl (for choosing settings without test)
    # swarm (phi_g/phi_w/step: docs/DEMO.md "Why these settings"; the rest are the reference defaults)
    n_particles: int = 12
    max_iters: int = 8          # 8 / 4 rather than 12 / 6: docs/DEMO.md "Why these settings" (held-out split)
    patience: int = 4
    phi_v: float = 0.3
    phi_p: float = 0.3
    phi_g: float = 0.5
    phi_w: float = 0.1
    step: float = 0.7
    include_base: bool = True   # the base model (an all-zero adapter) as one more particle
    baselines: tuple[str | dict, ...] = BASELINES
    ensemble_k: int = 3         # top-k prediction ensemble (k forward passes per question); 0: none
    # first_token: each choice's logit at the first token where the choices differ (one position per
    # question; the target's choices are single tokens there, so it ranks them as loglik would)
    scoring: str = "first_token"
    dtype: str = "auto"         # compute dtype of the multiple_choice utility (auto: bf16 only where native)
    progress: bool = True

    @property
    def seed(self) -> int:
        return self.experts.seed


@dataclass
class DemoResult:
    results: dict[str, dict[str, Any]]   # run_compare's results {method: {"dev", "test", ...}}
    table: str
    out_dir: Path
    best_adapter: Path
    seconds: dict[str, float] = field(default_factory=dict)


# -- the configs a user can rerun -----------------------------------------------------------------
def write_quiz(out: Path, splits: dict[str, list[tasks.Example]]) -> dict[str, Path]:
    """quiz/<split>.jsonl in the multiple_choice utility's format."""
    from swarmkern.atomic import atomic_write_text

    quiz = out / "quiz"
    quiz.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, exs in splits.items():
        paths[name] = quiz / f"{name}.jsonl"
        atomic_write_text(paths[name], "".join(json.dumps({"question": e.question, "choices": list(e.choices),
                                                           "answer": e.answer}) + "\n" for e in exs))
    return paths


def write_configs(cfg: DemoConfig, out: Path, model_dir: Path, expert_dir: Path, template: str,
                  quiz: dict[str, Path]) -> tuple[Path, Path]:
    """search.yaml (`swarmkern search`) and compare.yaml (`swarmkern compare`): the demo's whole run."""
    import yaml

    from swarmkern.atomic import atomic_write_text

    names = cfg.experts.names()
    run = {
        "experts": {"paths": [str(expert_dir / n) for n in names], "names": names},
        "swarm": {"n_particles": cfg.n_particles, "include_base": cfg.include_base, "phi_v": cfg.phi_v,
                  "phi_p": cfg.phi_p, "phi_g": cfg.phi_g, "phi_w": cfg.phi_w, "step": cfg.step,
                  "min_step": min(0.1, cfg.step), "max_iters": cfg.max_iters, "patience": cfg.patience,
                  "seed": cfg.seed},
        "utility": {"type": "multiple_choice", "scoring": cfg.scoring, "model": str(model_dir),
                    "dev": str(quiz["dev"]), "test": str(quiz["test"]), "template": template,
                    "continuation": CONTINUATION, "dtype": cfg.dtype},
        "output": {"dir": str(out / "search"), "overwrite": True},
    }
    methods = list(cfg.baselines) + ([{"type": "ensemble", "k": cfg.ensemble_k}] if cfg.ensemble_k else [])
    compare = {**run, "output": {"dir": str(out / "compare"), "overwrite": True},
               "compare": {"methods": methods, "swarm": True, "save_merged": True}}
    paths = out / "search.yaml", out / "compare.yaml"
    for path, data in zip(paths, (run, compare)):
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return paths


# -- the table --------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def inference_cost(name: str, result: dict[str, Any]) -> str:
    """Forward passes per question of a method's answer: 1 for one model, k for a prediction ensemble."""
    k = len((result.get("info") or {}).get("experts") or []) if name.startswith("ensemble") else 1
    return "1 model" if k <= 1 else f"{k} models (k={k} forward passes per question)"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The demo's Markdown table: run_compare's numbers (as %) plus each answer's inference cost."""
    from swarmkern.compare import compare_verdict, vs_cell

    ref = next((r["vs_best_expert"]["reference"] for r in results.values() if r.get("vs_best_expert")), None)
    lines = [f"| method | dev acc % | test acc % | test vs best expert ({ref or '-'}), points | inference cost | "
             "dev evaluations | notes |", "| --- | ---: | ---: | --- | --- | ---: | --- |"]
    for name, r in results.items():
        info = r.get("info") or {}
        note = r.get("error") or "; ".join(f"{k}={info[k]}" for k in ("expert", "scaling", "experts", "iterations",
                                                                      "best_particle_origin", "exported", "guard")
                                           if k in info)
        lines.append(f"| {name} | {_pct(r['dev'])} | {_pct(r['test'])} | {vs_cell(r)} | {inference_cost(name, r)} | "
                     f"{r['evaluations']} | {str(note).replace('|', '/')} |")
    if ref:
        lines += ["", f"Test difference from {ref} (the best expert on dev) with its 95% paired bootstrap interval and "
                      "exact McNemar p-value" + _swarm_choice(results) + ".",
                  "", f"Verdict, swarm: {compare_verdict(results['swarm'], ref)}" if "swarm" in results else ""]
    return "\n".join(lines).rstrip()


def _swarm_choice(results: dict[str, dict[str, Any]]) -> str:
    on = ((results.get("swarm") or {}).get("info") or {}).get("selected_on")
    return {"select": "; the swarm's export was chosen on a split held out from dev",
            "dev": "; the swarm's export was chosen on dev"}.get(on, "")


# -- the run ------------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo (see the module docstring); returns the table and where the outputs are."""
    from swarmkern.atomic import atomic_write_json, atomic_write_text
    from swarmkern.compare import load_compare_config, run_compare
    from swarmkern.evaluate.models import load_tokenizer

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(cfg.out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_root(cfg.cache)
    model_dir = resolve_model_dir(cfg.model, cfg.tiny, cfg.cache, echo)
    template = prompt_template(load_tokenizer(str(model_dir)))
    seconds["model"] = time.perf_counter() - t_start

    t = time.perf_counter()
    spec = cfg.experts
    expert_dir = None if cfg.retrain else find_experts(spec, model_dir, template, cache)
    if expert_dir is None:
        echo(f"experts: training {spec.n_experts} LoRA experts ({spec.steps} steps of {spec.batch} questions "
             f"each, top {spec.n_top} layers) ...")
        expert_dir = build_experts(spec, model_dir, template, CONTINUATION, cache, echo, progress=cfg.progress)
        shipped = SHIPPED / expert_dir.name
        if cfg.retrain and shipped.is_dir():
            diff = same_weights(expert_dir, shipped, spec.names())
            echo("experts: " + ("bit-identical to the shipped experts" if diff == 0.0 else
                                f"differ from the shipped experts (largest difference {diff:.3g})"))
    else:
        echo(f"experts: {'shipped with swarmkern' if expert_dir.parent == SHIPPED else 'cached'} ({expert_dir})")
    seconds["experts"] = time.perf_counter() - t

    dev, test, hold = tasks.target_splits(cfg.n_dev, cfg.n_test, seed=1 + cfg.seed, n_holdout=cfg.n_holdout)
    quiz = write_quiz(out, {"dev": dev, "test": test, **({"holdout": hold} if hold else {})})
    search_yaml, compare_yaml = write_configs(cfg, out, model_dir, expert_dir, template, quiz)
    echo(f"target quiz: {len(dev)} dev / {len(test)} test questions ({', '.join(tasks.TARGET_SKILLS)}, "
         f"held-out phrasings); running `swarmkern compare {compare_yaml}` ...")

    t = time.perf_counter()
    results = run_compare(load_compare_config(compare_yaml, progress=cfg.progress), echo=echo,
                          print_table=False)  # the demo prints its own table once, with inference costs
    seconds["compare"] = time.perf_counter() - t
    for name, r in results.items():
        seconds[name] = r["seconds"]
    seconds["total"] = time.perf_counter() - t_start

    text = format_table(results)
    best = out / "compare" / "merged" / "swarm"
    report = {"results": results, "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "model_dir": str(model_dir), "experts": str(expert_dir), "expert_mixtures":
              dict(zip(spec.names(), mixtures(spec))), "search_config": str(search_yaml),
              "compare_config": str(compare_yaml), "best_adapter": str(best),
              "config": {f.name: (asdict(getattr(cfg, f.name)) if f.name == "experts" else getattr(cfg, f.name))
                         for f in fields(cfg)}}
    atomic_write_json(out / "demo.json", report, indent=2, default=str)
    atomic_write_text(out / "demo.md", text + "\n")
    return DemoResult(results, text, out, best, seconds)
