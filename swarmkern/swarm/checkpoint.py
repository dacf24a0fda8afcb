"""Atomic checkpoints: buffers as safetensors, everything else as JSON.

Layout of `<output_dir>/checkpoint/`:
    ckpt-<iteration>-rank<r>.safetensors   x, v, pbest (owned rows), gworst
    ckpt-<iteration>-rank<r>.json          bookkeeping (scores, counters, step length, ...)
    latest-rank<r>.json                    {"iteration": t, "tensors": ..., "state": ...}
Each file is written under a temporary name, fsync'ed and renamed; the `latest` pointer is replaced
last and older files are deleted only after it, so a process killed at any moment (SIGKILL included)
leaves either the previous or the new checkpoint complete and pointed to.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoint"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent).encode())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(output_dir: Path, iteration: int, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], rank: int = 0) -> Path:
    """Write one checkpoint atomically and point `latest-rank<r>.json` at it."""
    from safetensors.torch import save

    ckdir = Path(output_dir) / CHECKPOINT_DIR
    ckdir.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt-{iteration:07d}-rank{rank}"
    cpu = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    atomic_write_bytes(ckdir / f"{stem}.safetensors", save(cpu))
    atomic_write_json(ckdir / f"{stem}.json", state)
    _fsync_dir(ckdir)
    atomic_write_json(ckdir / f"latest-rank{rank}.json",
                      {"iteration": iteration, "tensors": f"{stem}.safetensors", "state": f"{stem}.json"})
    _fsync_dir(ckdir)
    keep = {f"{stem}.safetensors", f"{stem}.json"}
    for old in ckdir.glob(f"ckpt-*-rank{rank}.*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    for tmp in ckdir.glob(".*.tmp"):  # left by a process killed mid-write
        tmp.unlink(missing_ok=True)
    return ckdir / f"{stem}.json"


def has_checkpoint(output_dir: Path, rank: int = 0) -> bool:
    return (Path(output_dir) / CHECKPOINT_DIR / f"latest-rank{rank}.json").is_file()


def load_checkpoint(output_dir: Path, rank: int = 0, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of the latest complete checkpoint; FileNotFoundError when there is none."""
    from safetensors.torch import load_file

    ckdir = Path(output_dir) / CHECKPOINT_DIR
    pointer = ckdir / f"latest-rank{rank}.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{output_dir}: no checkpoint to resume from ({pointer} is missing)")
    latest = json.loads(pointer.read_text())
    state = json.loads((ckdir / latest["state"]).read_text())
    tensors = load_file(str(ckdir / latest["tensors"]), device=str(device))
    return tensors, state
