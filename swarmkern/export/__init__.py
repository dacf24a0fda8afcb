"""`swarmkern export`: a finished run's best as something to serve or share.

    export_run(run_dir, merged="out/merged", adapter="out/adapter", dtype="bfloat16")

merged: the base model with the best merged in (merged.py; checked against the unmerged model's
logits before it takes its name); adapter: the PEFT adapter with a complete config (adapter.py); both
get a README.md model card (card.py) built from the run's own files (rundir.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .rundir import ExportError, RunInfo, read_run

__all__ = ["export_run", "read_run", "RunInfo", "ExportError", "DEFAULT_PROMPTS"]

# Prompts of the merge check, besides a few of the run's own dev examples.
DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ", "Question: What is 12 + 30?\nAnswer:")


def _dev_prompts(run: RunInfo, n: int = 2) -> list[str]:
    """The first `n` dev questions / prompts of the run's utility, when its data can be read here."""
    utility = (run.config or {}).get("utility") or {}
    source = utility.get("dev")
    if source is None:
        return []
    from swarmkern.datasources import materialize

    try:
        lines = materialize(source, "utility.dev").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return []
    prompts = []
    for line in lines[:n]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        text = row.get("question") or row.get("prompt") if isinstance(row, dict) else None
        if isinstance(text, str) and text:
            prompts.append(text)
    return prompts


def export_run(run_dir: str | Path, *, merged: str | Path | None = None, adapter: str | Path | None = None,
               dtype: str = "auto", base_model: str | None = None, max_shard_bytes: int | None = None,
               verify: bool = True, prompts: Sequence[str] | None = None, overwrite: bool = False,
               name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Export the run in `run_dir`; returns {"merged": path, "adapter": path, "check": report} (the keys
    of what was written). Raises ExportError (one line) on bad input or a failed merge check."""
    from swarmkern.atomic import atomic_write_text
    from swarmkern.hub import resolve_local

    from .adapter import export_adapter
    from .card import model_card
    from .merged import DEFAULT_SHARD_BYTES, export_merged, verify_logits

    if merged is None and adapter is None:
        raise ExportError("export: give --merged OUT and/or --adapter OUT")
    run = read_run(run_dir, base_model=base_model)
    result: dict[str, Any] = {}
    if adapter is not None:
        result["adapter"] = export_adapter(
            run, adapter, overwrite=overwrite,
            finish=lambda tmp: atomic_write_text(tmp / "README.md", model_card(run, "adapter", name=name)))
    if merged is not None:
        base_dir = resolve_local(run.base_model, what="base model", kind="model")
        tok_dir = resolve_local(run.tokenizer, what="utility.tokenizer", kind="tokenizer") if run.tokenizer else None
        texts = list(prompts) if prompts else [*DEFAULT_PROMPTS, *_dev_prompts(run)]

        def finish(tmp: Path, stored) -> None:
            check = None
            if verify:
                check = verify_logits(run, base_dir, tmp, stored, texts)
                if not check["passed"]:
                    raise ExportError(f"merge check failed: the merged model's logits differ from the unmerged "
                                      f"model's by {check['max_rel_diff']:.3g} of the largest logit (tolerance "
                                      f"{check['tolerance']:g}); nothing was written")
                result["check"] = check
            atomic_write_text(tmp / "README.md", model_card(run, "merged", check=check, name=name))

        result["merged"], _ = export_merged(run, merged, base_dir=base_dir, tokenizer_dir=tok_dir, dtype=dtype,
                                            max_shard_bytes=max_shard_bytes or DEFAULT_SHARD_BYTES,
                                            overwrite=overwrite, progress=progress, finish=finish)
    return result
