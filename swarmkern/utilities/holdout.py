"""A `select` split carved from dev: the examples that choose a sweep's winner, never seen by its searches.

    search_spec, select_spec, info = carve_select(utility_spec, out_dir / "select", fraction=0.3, seed=0)

Works on the utility spec (the YAML mapping) of every type that reads its dev examples from a JSONL file
(`dev`: multiple_choice, exact_match, reward_model, llm_judge) and on `multitask` (each task carved on
its own). The first `max_examples` dev examples (all without it) are split by a seeded draw: each
example gets a Philox uniform keyed by (select_seed, its position) and the `size` lowest go to select.
The two parts are written as JSONL files (original order kept) and the two specs point their `dev` to
them, so both are ordinary utilities built by the registry. `info` lists the examples of each part by
id: the example's own "id" field, else its line number in the dev file (1-based).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swarmkern.atomic import atomic_write_text

__all__ = ["carve_select", "select_positions", "SelectSplitError"]


class SelectSplitError(ValueError):
    """The utility cannot be split (no dev file) or the split would leave a part empty."""


def select_positions(n: int, k: int, seed: int) -> list[int]:
    """The k of n example positions (ascending) that form the select split: the k lowest Philox
    uniforms keyed by (seed, position); the same for every caller, so any dataset can be split alike."""
    from swarmkern.swarm.randomness import Purpose, uniforms

    keys = uniforms(seed, Purpose.SELECT_SPLIT, range(n), 0)[:, 0].tolist()
    return sorted(sorted(range(n), key=lambda i: (keys[i], i))[:k])


def _dev_lines(path: Path, limit: int | None) -> list[tuple[int, str]]:
    if not path.is_file():
        raise SelectSplitError(f"{path}: dataset file not found")
    lines = [(n, line.rstrip("\n")) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    return lines[:limit] if limit is not None else lines


def _example_id(lineno: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    return str(obj["id"]) if isinstance(obj, dict) and "id" in obj else str(lineno)


def _carve_file(spec: dict[str, Any], where: str, out_dir: Path, *, fraction: float, size: int | None,
                seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    dev = spec.get("dev")
    if dev is None:
        raise SelectSplitError(f"{where}: a select split is carved from a dev JSONL file, and utility type "
                               f"{spec.get('type')!r} has none; use sweep.select: dev")
    from swarmkern.datasources import materialize  # any source (CSV, Parquet, Hub dataset) -> JSONL rows

    lines = _dev_lines(materialize(dev, f"{where}.dev"), spec.get("max_examples"))
    n = len(lines)
    k = size if size is not None else round(fraction * n)
    if not 0 < k < n:
        raise SelectSplitError(f"{where}: a select split of {k} leaves no examples on one side of the {n} dev "
                               "examples; change sweep.select_fraction / select_size")
    chosen = set(select_positions(n, k, seed))
    parts = {"search": [lines[i] for i in range(n) if i not in chosen],
             "select": [lines[i] for i in range(n) if i in chosen]}
    out_dir.mkdir(parents=True, exist_ok=True)
    specs, info = {}, {"dev": dev, "examples": n}
    for name, rows in parts.items():
        path = out_dir / f"{name}.jsonl"
        atomic_write_text(path, "".join(line + "\n" for _, line in rows))
        specs[name] = {**spec, "dev": str(path), "max_examples": None}
        info[f"{name}_ids"] = [_example_id(no, line) for no, line in rows]
    return specs["search"], specs["select"], info


def carve_select(spec: dict[str, Any], out_dir: str | Path, *, fraction: float = 0.3, size: int | None = None,
                 seed: int = 0) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(spec searching the rest of dev, spec scoring the select part on its dev split, info with the
    ids of each part). The select spec keeps `test` (unused) so that it validates like the original.
    Deterministic: the same spec, fraction/size and seed give the same files."""
    out_dir = Path(out_dir)
    if spec.get("type") == "multitask":
        search_tasks, select_tasks, info = {}, {}, {}
        for name, task in spec.get("tasks", {}).items():
            search_tasks[name], select_tasks[name], info[name] = _carve_file(
                task, f"utility.tasks.{name}", out_dir / name, fraction=fraction, size=size, seed=seed)
        return {**spec, "tasks": search_tasks}, {**spec, "tasks": select_tasks, "save_front": False}, info
    return _carve_file(spec, "utility", out_dir, fraction=fraction, size=size, seed=seed)
