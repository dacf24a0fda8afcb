"""Atomic file output: every file swarmkern writes goes through here.

A file is written under a unique temporary name in its own directory (so two processes writing one
folder never collide), flushed and fsync'ed, renamed over the target, and the directory is fsync'ed
so the rename itself survives a crash. A reader therefore sees the old file or the new one, never a
torn one, whatever moment the writer is killed at (SIGKILL included).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_save_safetensors", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; when the block ends without an error the file is
    fsync'ed and renamed to `path`, otherwise removed. For writers that want a file name
    (safetensors, matplotlib): keep `suffix` when the writer picks a format from the extension."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None, **dumps: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent, **dumps).encode())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """safetensors straight to a temporary file (no in-memory copy of the tensors), then renamed."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
