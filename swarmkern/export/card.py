"""The README.md model card of an exported adapter or merged model, in the Hub's format (YAML metadata
written by huggingface_hub's ModelCardData, then Markdown), so the folder can be uploaded as it is.

It says what the model is (base model, library, the experts it came from with their ids and commits),
how it was made (the command, the search or sweep settings, the data), and how good it is: the run's
dev / held-out / test results against the best starting expert with their paired intervals, exactly as
summary.json reports them (`vs_best_expert`, `export`, `verdict`: every key optional, older runs have
none), and the compare table when the run was part of `swarmkern compare`.
"""
from __future__ import annotations

from typing import Any

import yaml

from swarmkern.hub import parse_hub_id

from .rundir import RunInfo

__all__ = ["model_card", "card_metadata"]

_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"


def _hub_datasets(config: dict[str, Any] | None) -> list[str]:
    """Hub dataset ids the run's utility read (dev/test given as {dataset: org/name, ...})."""
    utility = (config or {}).get("utility") or {}
    specs = [utility, *[t for t in (utility.get("tasks") or {}).values() if isinstance(t, dict)]]
    found: list[str] = []
    for spec in specs:
        for split in ("dev", "test"):
            source = spec.get(split)
            if isinstance(source, dict) and parse_hub_id(str(source.get("dataset", ""))):
                repo = parse_hub_id(source["dataset"]).repo_id
                if repo not in found:
                    found.append(repo)
    return found


def card_metadata(run: RunInfo, what: str) -> dict[str, Any]:
    """The card's YAML metadata as a dict: base_model (a Hub id only), library_name, tags, datasets."""
    ref = parse_hub_id(run.base_model)
    tags = ["swarmkern", "model-swarms"]
    if run.kind == "peft":
        tags += ["lora"] + (["peft"] if what == "adapter" else [])
    if what == "merged":
        tags.append("merge")
    meta: dict[str, Any] = {"library_name": "peft" if what == "adapter" else "transformers", "tags": tags}
    if ref is not None:
        meta["base_model"] = ref.repo_id
        if what == "merged":
            meta["base_model_relation"] = "merge" if run.kind == "peft" else "finetune"
    if what == "merged":
        meta["pipeline_tag"] = "text-generation"
    datasets = _hub_datasets(run.config)
    if datasets:
        meta["datasets"] = datasets
    return meta


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _experts_table(run: RunInfo) -> list[str]:
    paths = ((run.config or {}).get("experts") or {}).get("paths") or []
    names = ((run.config or {}).get("experts") or {}).get("names") or (run.experts or {}).get("names") or []
    hub = {r.get("role"): r for r in run.summary.get("hub_ids", [])}
    lines = ["| expert | source | revision | commit |", "| --- | --- | --- | --- |"]
    sources = paths or [str(s) for s in (run.experts or {}).get("sources", []) or []]
    for i, source in enumerate(sources):
        ref = parse_hub_id(str(source))
        rec = hub.get(f"experts.paths[{i}]", {})
        name = names[i] if i < len(names) else (ref.repo_id.split("/")[-1] if ref else str(source).rstrip("/").split("/")[-1])
        if ref is not None:
            lines.append(f"| {name} | [{ref.repo_id}](https://huggingface.co/{ref.repo_id}) | {ref.revision or 'main'} "
                         f"| {rec.get('commit', '—')} |")
        else:
            lines.append(f"| {name} | local: `{source}` | — | — |")
    glob = ((run.config or {}).get("experts") or {}).get("glob")
    if glob:
        lines.append(f"| (glob) | local: `{glob}` | — | — |")
    return lines if len(lines) > 2 else []


def _comparison_row(label: str, block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    if "unavailable" in block:
        return f"| {label} | — | — | — | — | {block['unavailable']} |"
    interval = (f"[{block['ci_low']:+.4f}, {block['ci_high']:+.4f}]" if block.get("ci_low") is not None else "—")
    level = f" ({round(100 * block['ci_level'])}%)" if block.get("ci_level") else ""
    p = f"p = {block['p_value']:.3g}" if block.get("p_value") is not None else ""
    n = f"n = {block['n']}" if block.get("n") is not None else ""
    return (f"| {label} | {_fmt(block.get('candidate'))} | {_fmt(block.get('reference'))} | "
            f"{block.get('difference', 0):+.4f} | {interval}{level} | {', '.join(x for x in (p, n, block.get('test', ''), block.get('verdict', '')) if x)} |")


def _results(run: RunInfo) -> list[str]:
    s = run.summary
    lines = ["## Results", ""]
    if s.get("verdict"):
        lines += [f"**{s['verdict']}**", ""]
    vs = s.get("vs_best_expert")
    if isinstance(vs, dict):
        lines += [f"Against the best starting expert, `{vs.get('reference', '?')}` (chosen on the search's dev part); "
                  "paired comparison on the same examples:", "",
                  "| split | this model | best expert | difference | interval | test, verdict |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
        for split, label in (("dev", "dev (searched on)"), ("select", "held-out (select)"), ("test", "test")):
            row = _comparison_row(label, vs.get(split))
            if row:
                lines.append(row)
        lines.append("")
    else:
        ref_dev, ref_test = _best_starting_expert(s)
        lines += ["| split | this model | best starting expert (on dev) |", "| --- | ---: | ---: |",
                  f"| dev (searched on) | {_fmt(s.get('best_dev_utility'))} | {_fmt(ref_dev)} |"]
        if s.get("select_utility") is not None:
            lines.append(f"| held-out (select) | {_fmt(s.get('select_utility'))} | — |")
        if "test_utility" in s:
            lines.append(f"| test | {_fmt(s.get('test_utility'))} | {_fmt(ref_test)} |")
        lines += ["", "No paired interval was recorded for this run (an older swarmkern): treat any difference "
                  "as unproven.", ""]
    export = s.get("export")
    if isinstance(export, dict):
        lines.append(f"Exported: `{export.get('chosen', '?')}`, selected on {export.get('selected_on', '?')}"
                     + (f". {export['message']}" if export.get("guard_fired") and export.get("message") else "."))
        cands = export.get("candidates") or []
        if cands:
            keys = [k for k in cands[0] if k != "name"]
            lines += ["", "| candidate | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
            lines += [f"| {c.get('name')} | " + " | ".join(_fmt(c.get(k)) for k in keys) + " |" for c in cands]
        lines.append("")
    return lines


def _best_starting_expert(s: dict[str, Any]) -> tuple[float | None, float | None]:
    """(dev, test) utility of the starting particle with the best dev utility: chosen on dev, never on test."""
    dev = s.get("initial_dev_utilities") or []
    starters = s.get("initial_test_particles") or list(range(len(dev)))
    tests = s.get("initial_test_utilities") or []
    scored = [(dev[i], k) for k, i in enumerate(starters) if i < len(dev) and dev[i] is not None]
    if not scored:
        return s.get("initial_best_dev_utility"), None
    best_dev, k = max(scored, key=lambda t: t[0])
    return best_dev, tests[k] if k < len(tests) else None


def _swarm_settings(swarm: dict[str, Any]) -> dict[str, Any]:
    """The fields that differ from SwarmConfig's defaults (the rest are the reference defaults)."""
    from swarmkern.swarm.config import SwarmConfig

    try:
        defaults = SwarmConfig().model_dump(mode="json")
    except Exception:  # a config from another version: show everything
        return swarm
    return {k: v for k, v in swarm.items() if defaults.get(k, object()) != v and k != "progress"}


def _settings(run: RunInfo) -> list[str]:
    config = run.config or {}
    lines = ["## How it was made", ""]
    command = run.summary.get("command")
    if command:
        lines += ["```bash", command, "```", ""]
    else:
        verb = "sweep" if run.sweep or config.get("sweep") else "search"
        lines += [f"By `swarmkern {verb}` with the configuration below (the command line was not recorded).", ""]
    shown = {k: config[k] for k in ("swarm", "sweep", "utility") if config.get(k)}
    if isinstance(shown.get("swarm"), dict):
        shown["swarm"] = _swarm_settings(shown["swarm"])  # other fields: swarmkern's defaults
    if shown:
        lines += ["```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]
    s = run.summary
    facts = [f"iterations: {s['iterations']} ({s.get('stop_reason', '')})" if "iterations" in s else None,
             f"evaluations: {s['evaluations']}" if "evaluations" in s else None,
             f"best particle started as {s['best_particle_origin'].get('kind')} {s['best_particle_origin'].get('name')}"
             if isinstance(s.get("best_particle_origin"), dict) else None,
             f"swarmkern {s['swarmkern_version']}" if s.get("swarmkern_version") else None]
    lines += [f"- {f}" for f in facts if f] + [""]
    if run.sweep:
        sw = run.sweep
        lines += [f"The sweep tried {sw.get('n_configurations', '?')} configurations; the winner, #{sw.get('winner')}, "
                  f"was chosen on {sw.get('selected_on', '?')}.", ""]
    return lines


def model_card(run: RunInfo, what: str, *, check: dict[str, Any] | None = None, name: str | None = None) -> str:
    """The README.md text of an export: what = "adapter" or "merged"; `check`: verify_logits' report."""
    from huggingface_hub import ModelCard, ModelCardData

    ref = parse_hub_id(run.base_model)
    base = f"[{ref}](https://huggingface.co/{ref.repo_id})" if ref else f"`{run.base_model}`"
    kind = (f"a LoRA adapter (PEFT) for {base}" if what == "adapter" else
            f"{base} with a LoRA adapter merged into its weights" if run.kind == "peft" else
            f"{base} with some of its weights replaced by searched ones")
    body = [f"# {name or 'Model Swarms expert'}", "",
            f"This is {kind}. Its weights were found by a Model Swarms search (particle swarm optimisation over "
            "a pool of expert weights) with swarmkern; the settings and the results are below.", ""]
    experts = _experts_table(run)
    if experts:
        body += ["## Experts it came from", "", *experts, ""]
    utility = (run.config or {}).get("utility") or {}
    if utility:
        data = [f"- {split}: `{_describe_source(utility.get(split))}`" for split in ("dev", "test") if utility.get(split)]
        body += ["## Objective and data", "", f"Utility `{utility.get('type', '?')}`.", *data, ""]
    body += _results(run)
    if run.compare_table:
        body += ["## Compared with merging baselines", "", run.compare_table, ""]
    body += _settings(run)
    if check:
        body += ["## Merge check", "",
                 f"The merged weights (stored as {check['dtype']}) were reloaded with transformers alone and their "
                 f"logits compared with the unmerged model's on {check['prompts']} prompts: largest difference "
                 f"{check['max_abs_diff']:.3g} ({check['max_rel_diff']:.3g} of the largest logit; tolerance "
                 f"{check['tolerance']:g}).", ""]
    body += _usage(run, what, ref)
    card = ModelCard.from_template(ModelCardData(**card_metadata(run, what)), template_str=_TEMPLATE,
                                   body="\n".join(body).rstrip())
    return str(card)


def _describe_source(source: Any) -> str:
    if isinstance(source, dict):
        return ", ".join(f"{k}: {v}" for k, v in source.items() if v not in (None, {}, []))
    return str(source)


def _usage(run: RunInfo, what: str, ref) -> list[str]:
    if what == "adapter":
        base = str(ref.repo_id) if ref else run.base_model
        rev = f", revision={ref.revision!r}" if ref and ref.revision else ""
        code = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"base = AutoModelForCausalLM.from_pretrained({base!r}{rev})",
                "model = PeftModel.from_pretrained(base, \"path/or/hub-id/of/this/adapter\")",
                f"tokenizer = AutoTokenizer.from_pretrained({base!r}{rev})"]
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                "model = AutoModelForCausalLM.from_pretrained(\"path/or/hub-id/of/this/model\")",
                "tokenizer = AutoTokenizer.from_pretrained(\"path/or/hub-id/of/this/model\")"]
    return ["## Usage", "", "```python", *code, "```", ""]
