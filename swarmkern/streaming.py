"""Out-of-core helpers: column blocks, memory-mapped tensors and a streaming safetensors writer.

Buffers larger than RAM (swarm.storage: mmap) are never copied whole: kernels walk them in column
blocks, files are written block by block. Nothing here holds more than one block beside its inputs.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import torch

from swarmkern.atomic import atomic_path

__all__ = ["DEFAULT_BLOCK_BYTES", "column_blocks", "block_columns", "mapped_tensor",
           "save_safetensors_streaming", "copy_rows_"]

# 64 MiB per block of one buffer: large enough for full memory bandwidth, small enough for any machine.
DEFAULT_BLOCK_BYTES = 64 << 20

_ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}


def block_columns(rows: int, element_size: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Columns per block so that `rows` rows of one block take about `block_bytes`."""
    return max(1, block_bytes // max(1, rows * element_size))


def column_blocks(dim: int, block: int | None) -> Iterator[tuple[int, int]]:
    """[a, b) column ranges of width `block` covering [0, dim) (one range when block is None)."""
    step = dim if not block else block
    for a in range(0, dim, max(1, step)):
        yield a, min(dim, a + step)


def mapped_tensor(path: Path, shape: tuple[int, ...], dtype: torch.dtype, *, create: bool) -> torch.Tensor:
    """A tensor backed by a MAP_SHARED mapping of `path` (every write lands in the file; the OS pages
    it in and out, so it may exceed RAM). create: make/resize the file (sparse, reads as zeros);
    otherwise the file must exist with exactly the right size."""
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.truncate(nbytes)
    elif not path.is_file() or path.stat().st_size != nbytes:
        raise FileNotFoundError(f"{path}: mapped swarm buffer missing or not {nbytes} bytes")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)


def copy_rows_(dst: torch.Tensor, src: torch.Tensor, block: int | None) -> None:
    """dst.copy_(src) for [n, D] tensors, one column block at a time (no full-size temporary)."""
    for a, b in column_blocks(dst.shape[-1], block):
        dst[..., a:b].copy_(src[..., a:b])


def save_safetensors_streaming(path: str | os.PathLike, tensors: Mapping[str, tuple[torch.Tensor, torch.dtype]],
                               metadata: Mapping[str, str] | None = None,
                               block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
    """Write a .safetensors file atomically without materialising it: `tensors` maps a name to (a
    tensor of any layout, the dtype to store). Each tensor is cast and written one chunk of about
    `block_bytes` at a time. The safetensors library itself builds every tensor's bytes in memory
    first, which a [P, D] buffer larger than RAM cannot afford; the format is simple (an 8-byte
    little-endian header size, a JSON header, the raw little-endian data in header order)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (t, dtype) in tensors.items():
        nbytes = t.numel() * torch.empty(0, dtype=dtype).element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t, dtype in tensors.values():
            _write(f, t, dtype, block_bytes)


def _write(f, t: torch.Tensor, dtype: torch.dtype, block_bytes: int) -> None:
    """Append t's numbers (row-major) as `dtype`; a strided tensor is written one sub-tensor at a time."""
    if not t.is_contiguous() and t.dim() > 1:
        for sub in t:
            _write(f, sub, dtype, block_bytes)
        return
    flat = t.reshape(-1)
    chunk = max(1, block_bytes // max(flat.element_size(), torch.empty(0, dtype=dtype).element_size()))
    for a in range(0, flat.numel(), chunk):
        part = flat[a:a + chunk].to("cpu", dtype).contiguous()
        f.write(part.view(torch.uint8).numpy().data if part.numel() else b"")
