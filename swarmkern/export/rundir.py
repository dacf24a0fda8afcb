"""What `swarmkern export` reads from a finished run: its best expert (best/ for LoRA runs,
best.safetensors for full-weight runs), summary.json, the saved config (config.yaml), experts.json, and,
when present, the sweep (sweep.json) and the compare run around it (compare.json / compare.md).

RUN_DIR may be a search or sweep output directory, or a `swarmkern compare` output directory (its swarm
is in swarm/). Older runs may lack any of the optional files; readers must tolerate that.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunInfo", "read_run", "ExportError"]


class ExportError(ValueError):
    """A run directory that cannot be exported as asked; one line naming the directory or file."""


@dataclass
class RunInfo:
    run_dir: Path                      # where best/ and summary.json are
    kind: str                          # "peft" or "full"
    best: Path                         # best/ (adapter dir) or best.safetensors
    summary: dict[str, Any]
    base_model: str                    # as the user named it: a Hub id (org/name[@rev]) or a path
    config: dict[str, Any] | None = None
    experts: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    compare_table: str | None = None
    adapter_config: dict[str, Any] | None = None
    tokenizer: str | None = None       # utility.tokenizer when the config names one
    extra: dict[str, Any] = field(default_factory=dict)


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable JSON ({' '.join(str(err).split())})") from None


def _yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExportError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None


def _utility_field(config: dict[str, Any] | None, name: str) -> str | None:
    utility = (config or {}).get("utility") or {}
    if utility.get(name):
        return utility[name]
    for task in (utility.get("tasks") or {}).values():  # multitask: the tasks share one base model
        if isinstance(task, dict) and task.get(name):
            return task[name]
    return None


def read_run(path: str | Path, *, base_model: str | None = None) -> RunInfo:
    """Everything an export needs from RUN_DIR; `base_model` overrides the one the run names."""
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"{root}: no such run directory")
    compare_dir = None
    run_dir = root
    if (root / "compare.json").is_file() and (root / "swarm").is_dir():
        compare_dir, run_dir = root, root / "swarm"
    elif (root.parent / "compare.json").is_file() and root.name == "swarm":
        compare_dir = root.parent
    summary = _json(run_dir / "summary.json")
    if summary is None:
        raise ExportError(f"{run_dir}: no summary.json; is this a finished swarmkern run?")
    if (run_dir / "best").is_dir():
        kind, best = "peft", run_dir / "best"
    elif (run_dir / "best.safetensors").is_file():
        kind, best = "full", run_dir / "best.safetensors"
    else:
        raise ExportError(f"{run_dir}: no best/ or best.safetensors (the run exports its best when it ends)")
    config = _yaml(run_dir / "config.yaml")
    if config is None and compare_dir is not None:
        config = _yaml(compare_dir / "config.yaml")
    adapter_config = _json(best / "adapter_config.json") if kind == "peft" else None
    if kind == "peft" and adapter_config is None:
        raise ExportError(f"{best}: no adapter_config.json")
    base = base_model or _utility_field(config, "model") or (adapter_config or {}).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{run_dir}: the run names no base model (utility.model or the adapters' "
                          "base_model_name_or_path); pass --base-model")
    info = RunInfo(run_dir=run_dir, kind=kind, best=best, summary=summary, base_model=str(base), config=config,
                   experts=_json(run_dir / "experts.json"), sweep=_json(run_dir / "sweep.json"),
                   adapter_config=adapter_config, tokenizer=_utility_field(config, "tokenizer"))
    if compare_dir is not None:
        info.compare = _json(compare_dir / "compare.json")
        table = compare_dir / "compare.md"
        info.compare_table = table.read_text().strip() if table.is_file() else None
    return info
