"""A run's best LoRA adapter as a PEFT adapter directory whose config is complete and names the real base
model: `base_model_name_or_path` is the Hub id (with `revision` when the run pinned one) or the local
path the run used, never the placeholder or scratch path an expert happened to carry."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from swarmkern.hub import parse_hub_id

from .rundir import ExportError, RunInfo

__all__ = ["export_adapter", "complete_adapter_config"]


def complete_adapter_config(config: dict[str, Any], base_model: str) -> dict[str, Any]:
    """The adapter's config with the base model named and PEFT's required fields present."""
    out = dict(config)
    ref = parse_hub_id(base_model)
    if ref is not None:
        out["base_model_name_or_path"] = ref.repo_id
        out["revision"] = ref.revision
    else:
        out["base_model_name_or_path"] = str(Path(base_model).expanduser().absolute())
    out.setdefault("peft_type", "LORA")
    out.setdefault("task_type", "CAUSAL_LM")
    for key in ("r", "lora_alpha", "target_modules"):
        if out.get(key) in (None, [], ""):
            raise ExportError(f"adapter_config.json: {key} is missing; the adapter cannot be described")
    return out


def export_adapter(run: RunInfo, out: str | Path, *, overwrite: bool = False,
                   finish: Callable[[Path], None] | None = None) -> Path:
    """Write the run's best adapter to `out` (atomically: a temporary directory renamed when complete)."""
    if run.kind != "peft":
        raise ExportError(f"{run.run_dir}: a full-weight run has no adapter; export it with --merged")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: exists and is not empty (pass --overwrite)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in run.best.iterdir():
            if f.name != "adapter_config.json" and f.is_file():
                shutil.copy(f, tmp / f.name)
        config = complete_adapter_config(run.adapter_config or {}, run.base_model)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if finish is not None:
            finish(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
