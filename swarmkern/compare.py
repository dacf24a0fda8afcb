"""`swarmkern compare`: the swarm and the composition baselines on the same experts, utility and splits.

The config is the `swarmkern search` YAML (experts, swarm, utility, output) plus a `compare:` section:

    compare:
      methods: [best_single, uniform_soup, {type: ties, density: 0.3}, lorahub, ...]  # default: all
      swarm: true          # run the swarm too (its evaluation count is the searching methods' budget)
      budget: null         # dev evaluations for searching methods (default: the swarm's; else 100)
      batch_size: 8        # rows per utility call for the baselines
      seed: null           # seed of the seeded methods (default: swarm.seed)
      save_merged: false   # export each method's expert to <output>/merged/<method>/
      save_delta: false    # space: delta methods also write their full merged ΔW to <output>/deltas/
      plot: true

Outputs in output.dir: compare.json ({method: {"dev", "test", "evaluations", "seconds", ...}}),
compare.md (the table), compare.png (bar chart), swarm/ (the swarm's own outputs).
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swarmkern.atomic import atomic_path, atomic_save_safetensors, atomic_write_bytes
from swarmkern.configfile import first_error
from swarmkern.config import ConfigError, RunConfig, resolve_config_paths, read_config_mapping, validate_run_config

__all__ = ["CompareSection", "CompareConfig", "DEFAULT_METHODS", "load_compare_config", "run_compare",
           "format_table"]

DEFAULT_METHODS = ("best_single", "uniform_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                   "breadcrumbs", "slerp", "multislerp", "greedy_soup", "lorahub", "evolutionary", "ensemble")


class CompareSection(BaseModel):
    """The `compare:` section of a compare config."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    methods: list[str | dict[str, Any]] = Field(default_factory=lambda: list(DEFAULT_METHODS),
                                                description="Baselines: names or {type: name, ...options}.")
    swarm: bool = Field(True, description="Run the swarm as well.")
    budget: int | None = Field(None, gt=0, description="Dev evaluations for searching methods "
                                                        "(default: the swarm's count, or 100 without a swarm).")
    batch_size: int = Field(8, gt=0, description="Rows per utility call for the baselines.")
    seed: int | None = Field(None, ge=0, description="Seed of seeded methods (default: swarm.seed).")
    save_merged: bool = Field(False, description="Export each method's expert to <output>/merged/<method>/.")
    save_delta: bool = Field(False, description="For methods with space: delta, also write the merged ΔW of "
                                                "every module, before the rank-r factorisation, to "
                                                "<output>/deltas/<method>.safetensors.")
    plot: bool = Field(True, description="Write compare.png.")

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list) -> list:
        from swarmkern.merge import parse_method_config
        if not methods:
            raise ValueError("give at least one method")
        names = []
        for i, m in enumerate(methods):
            names.append(parse_method_config(m, where=f"compare.methods.{i}").name)
        dup = sorted({n for n in names if names.count(n) > 1} | ({"swarm"} & set(names)))
        if dup:
            raise ValueError(f"method names must be unique and not 'swarm' (use `label:`): {', '.join(dup)}")
        return methods


class CompareConfig(BaseModel):
    """A search RunConfig plus the compare section (composition, so RunConfig stays untouched)."""
    model_config = ConfigDict(frozen=True)
    run: RunConfig
    compare: CompareSection


def load_compare_config(path: str | Path, overrides: Sequence[str] = (), **options: Any) -> CompareConfig:
    """Read, override ("compare.budget=50", "swarm.max_iters=5") and validate a compare config;
    options: output_dir, seed, max_iters, ... as for `swarmkern search`."""
    path = Path(path)
    data = read_config_mapping(path, overrides, "experts, swarm, utility, output, compare", **options)
    resolve_config_paths(data, path.parent.absolute())
    section = data.pop("compare", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: compare: expected a mapping")
    run = validate_run_config(data, str(path))
    try:
        compare = CompareSection.model_validate(section)
    except ValidationError as err:
        raise ConfigError(f"{path}: {first_error(err, 'compare', friendly=True)}") from None
    return CompareConfig(run=run, compare=compare)


# ----------------------------------------------------------------------------------------- running
def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def _run_swarm(cfg: CompareConfig, pool, built, out: Path) -> dict[str, Any]:
    """The swarm as `swarmkern search` runs it: on dev, or on the rest of dev with its export chosen on
    the held-out select split (the config's `select:`, guard included). Its export is scored on dev and
    test here, as every baseline's is (so its seconds, like theirs, exclude test scoring; they include
    its checkpoints, the choice of the export and the exports)."""
    from swarmkern.merge.base import to_scores
    from swarmkern.runner import _built_utilities, _search_plan
    from swarmkern.swarm import Swarm
    from swarmkern.swarm.selection import finish_search

    t0 = time.perf_counter()
    plan = _search_plan(cfg.run.model_copy(update={"output": cfg.run.output.model_copy(update={"overwrite": True})}),
                        out / "swarm", resume=False, rank0=True)
    searched, select = _built_utilities(plan, pool) if plan.select_spec is not None else (built, None)
    swarm = Swarm(cfg.run.swarm, pool, searched.dev, output_dir=out / "swarm", overwrite=True)
    result = swarm.run()
    added = finish_search(swarm, plan, select, cfg.run.swarm.seed)
    row = added.pop("_row")
    seconds = time.perf_counter() - t0
    from swarmkern.provenance import record_run
    from swarmkern.runner import save_run_config

    save_run_config(cfg.run, out / "swarm")  # what `swarmkern export` reads (base model, experts, data)
    record_run(out / "swarm", result.summary)
    s = result.summary
    dev = float(to_scores(built.dev(row.unsqueeze(0).to(pool.dtype)), 1)[0])
    test = None
    if built.test is not None:
        test = float(to_scores(built.test(row.unsqueeze(0).to(pool.dtype)), 1)[0])
    export = added["export"]
    info = {"iterations": s.get("iterations"), "stop_reason": s.get("stop_reason"),
            "best_particle_origin": s.get("best_particle_origin"), "exported": export["chosen"],
            "selected_on": export["selected_on"]}
    if export.get("message"):
        info["guard"] = export["message"]
    return {"dev": _finite(dev), "test": _finite(test), "evaluations": int(s["evaluations"]),
            "seconds": round(seconds, 3), "info": info, "_row": row}


def _vs_best_expert(results: dict[str, dict[str, Any]], rows: dict[str, torch.Tensor], pool, built,
                    seed: int) -> str | None:
    """results[method]["vs_best_expert"]: each method's answer against the best single expert (chosen
    on dev) on dev and test, with the paired interval and test (swarmkern/stats.py); methods without a
    row (a prediction ensemble) or utilities without per-example scores say why. Returns the reference."""
    from swarmkern import stats
    from swarmkern.swarm.selection import comparison, score_rows_on

    K = len(pool)
    experts = torch.empty(K, pool.layout.numel, dtype=pool.dtype)
    pool.fill_rows(experts, torch.eye(K, dtype=torch.float64))
    dev_experts = score_rows_on(built.dev, experts)
    k = max(range(K), key=lambda i: (dev_experts.means[i], -i))
    reference = pool.names[k]
    names = [n for n in results if n in rows]
    stacked = torch.stack([rows[n].to(pool.dtype).cpu() for n in names] + [experts[k]])
    scored = {"dev": score_rows_on(built.dev, stacked)}
    if built.test is not None:
        scored["test"] = score_rows_on(built.test, stacked)
    for name, r in results.items():
        if name in rows:
            i = names.index(name)
            r["vs_best_expert"] = {"reference": reference, **{s: comparison(sc, i, len(names), seed, 2000)
                                                              for s, sc in scored.items()}}
        elif r.get("error") is None:
            why = stats.unavailable("a prediction ensemble has no single model to score per example")
            r["vs_best_expert"] = {"reference": reference, **{s: why for s in scored}}
    return reference


def run_compare(cfg: CompareConfig, *, echo=print, print_table: bool = True) -> dict[str, dict[str, Any]]:
    """Run the swarm and every baseline; write compare.json / .md / .png to output.dir; return the
    results {method: {"dev", "test", "evaluations", "seconds", "info" | "error"}}."""
    from swarmkern.flat import load_experts, save_expert
    from swarmkern.merge import MergeContext, parse_method_config, segments_of
    from swarmkern.utilities import build_utility

    run, cmp_ = cfg.run, cfg.compare
    out = Path(run.output.dir)
    if (out / "compare.json").exists() and not run.output.overwrite:
        raise FileExistsError(f"{out}: holds a compare run (compare.json); set output.overwrite or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    pool = load_experts(run.expert_sources(), names=run.experts.names)
    built = build_utility(run.utility, pool)
    results: dict[str, dict[str, Any]] = {}
    rows: dict[str, torch.Tensor] = {}

    if cmp_.swarm:
        echo("running the swarm ...")
        res = _run_swarm(cfg, pool, built, out)
        rows["swarm"] = res.pop("_row")
        results["swarm"] = res
    budget = cmp_.budget or (results["swarm"]["evaluations"] if "swarm" in results else 100)

    ctx = MergeContext(experts=pool.weights, segments=segments_of(pool.layout), dev=built.dev, test=built.test,
                       names=list(pool.names), budget=budget, seed=cmp_.seed if cmp_.seed is not None else run.swarm.seed,
                       batch_size=cmp_.batch_size, utility=built, pool=pool)
    for spec in cmp_.methods:
        method = parse_method_config(spec)
        echo(f"running {method.name} ...")
        ctx.begin()
        t0 = time.perf_counter()
        try:
            res = method.run(ctx)
            dev = res.dev
            if dev is None:
                dev = float(ctx.score(res.row)[0])
            seconds = time.perf_counter() - t0
            test = res.test
            if test is None and res.row is not None and built.test is not None:
                from swarmkern.merge.base import to_scores
                test = float(to_scores(built.test(res.row.unsqueeze(0).to(ctx.experts.dtype)), 1)[0])
            results[method.name] = {"dev": _finite(dev), "test": _finite(test), "evaluations": ctx.evaluations,
                                    "seconds": round(seconds, 3), "info": _jsonable(res.info)}
            if res.row is not None:
                rows[method.name] = res.row
            if cmp_.save_delta and getattr(method, "space", None) == "delta":
                scaling = float(res.info.get("scaling", method.scaling))
                _save_delta(method.full_deltas(ctx, scaling), pool, out / "deltas" / f"{method.name}.safetensors")
        except Exception as err:  # one failing baseline must not lose the others' results
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            results[method.name] = {"dev": None, "test": None, "evaluations": ctx.evaluations,
                                    "seconds": round(time.perf_counter() - t0, 3), "error": msg}
            if os.environ.get("SWARMKERN_DEBUG"):
                traceback.print_exc()
            echo(f"  {method.name} failed: {msg}")

    reference = _vs_best_expert(results, rows, pool, built, cmp_.seed if cmp_.seed is not None else run.swarm.seed)
    atomic_write_bytes(out / "compare.json", json.dumps(results, indent=2).encode())
    table = format_table(results, budget)
    atomic_write_bytes(out / "compare.md", (table + "\n").encode())
    if cmp_.plot:
        try:
            plot_compare(results, out / "compare.png")
        except Exception as err:  # a plotting problem must not hide the numbers
            echo(f"plot failed: {err}")
    if cmp_.save_merged:
        for name, row in rows.items():
            save_expert(pool, row, out / "merged" / name)
    built.finalize(out)
    if print_table:  # the demo prints its own version of both
        echo(table)
        if "swarm" in results:
            echo(f"swarm: {compare_verdict(results['swarm'], reference)}")
    return results


def compare_verdict(result: dict[str, Any], reference: str | None) -> str:
    """The one-line verdict of a method against the best expert: on test when there is one, else dev."""
    from swarmkern.stats import verdict_line

    vs = result.get("vs_best_expert") or {}
    split = "test" if "test" in vs else "dev"
    return verdict_line(split, vs.get(split), reference or "the best expert")


def vs_cell(result: dict[str, Any]) -> str:
    """"+2.2 [-1.4, +5.8], p = 0.23" on test (else dev), or why there is none."""
    vs = result.get("vs_best_expert") or {}
    block = vs.get("test") or vs.get("dev")
    if not block:
        return "—"
    return block.get("text") or f"n/a: {block.get('unavailable')}"


def _save_delta(deltas: dict[str, torch.Tensor], pool, path: Path) -> Path:
    """{module.weight: ΔW} times each module's LoRA scale -> a .safetensors file (atomic): add each to the
    base model's weight of the same name to apply the merge without LoRA."""
    from swarmkern.evaluate.lora import lora_scale

    if pool.kind != "peft":
        raise ValueError("save_delta: needs LoRA experts (PEFT adapter directories)")
    path.parent.mkdir(parents=True, exist_ok=True)
    scaled = {k: (v * lora_scale(pool.adapter_config, k.removesuffix(".weight"))).contiguous()
              for k, v in deltas.items()}
    atomic_save_safetensors(path, scaled,
                            metadata={"format": "pt", "content": "merged LoRA weight deltas (scaling applied)"})
    return path


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def format_table(results: dict[str, dict[str, Any]], budget: int | None = None) -> str:
    """The Markdown table: one row per method (swarm first), dev, test, evaluations, seconds."""
    ref = next((r["vs_best_expert"]["reference"] for r in results.values() if r.get("vs_best_expert")), None)
    split = "test" if any("test" in (r.get("vs_best_expert") or {}) for r in results.values()) else "dev"
    lines = [f"| method | dev | test | vs best expert ({ref or '-'}, {split}) | evaluations | seconds | notes |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for name, r in results.items():
        note = r.get("error", "")
        if not note:
            info = r.get("info") or {}
            bits = [f"{k}={info[k]}" for k in ("expert", "scaling", "ingredients", "experts", "recipe", "density",
                                                 "delta_energy_kept", "iterations", "exported", "guard") if k in info]
            note = "; ".join(str(b) for b in bits)
        lines.append(f"| {name} | {_fmt(r['dev'])} | {_fmt(r['test'])} | {vs_cell(r)} | {r['evaluations']} | "
                     f"{r['seconds']:.1f} | {note.replace('|', '/')} |")
    if budget is not None:
        lines.append(f"\nSearching methods (lorahub, evolutionary) were given {budget} dev evaluations.")
    if ref:
        lines.append(f"\nvs best expert: the difference from {ref} (the best single expert on dev), its 95% paired "
                     "bootstrap interval and the paired test's p-value (docs/STATISTICS.md).")
    return "\n".join(lines)


def plot_compare(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Grouped bars of dev and test utility per method, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if r["dev"] is not None or r["test"] is not None]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.0))
    for offset, key, color in ((-0.2, "dev", "#4C72B0"), (0.2, "test", "#DD8452")):
        vals = [results[n][key] if results[n][key] is not None else 0.0 for n in names]
        ax.bar([i + offset for i in x], vals, width=0.4, label=key, color=color)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel("utility")
    ax.set_title("Model Swarms vs composition baselines")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
