"""Atomic checkpoints: buffers as safetensors, everything else as JSON.

Layout of `<output_dir>/checkpoint/`:
    ckpt-<iteration>-rank<r>.safetensors   x, v, pbest (owned rows), gworst
    ckpt-<iteration>-rank<r>.json          bookkeeping (scores, counters, step length, ...)
    ckpt-<iteration>-rank<r>.caches.pt     the utility's caches, when it keeps any (utilities/caches.py)
    latest-rank<r>.json                    {"iteration": t, "tensors": ..., "state": ...}
    journal.log                            one record per iteration (journal.py; rank 0)
These snapshots are written only now and then (swarm.snapshot_every / snapshot_budget); the journal
records every iteration in between, and resume replays them (search.py).
Each file is written under a temporary name, fsync'ed and renamed; the `latest` pointer is replaced
last and older files are deleted only after it, so a process killed at any moment (SIGKILL included)
leaves either the previous or the new checkpoint complete and pointed to.

With several processes (state["world_size"] > 1) each rank also keeps its previous checkpoint until
it writes the next one: ranks meet in a collective between two checkpoints, so the newest iteration
that every rank has finished is always on disk. `load_checkpoint(..., collective=c)` finds that
iteration and reads only the rows `c` owns now, from whichever shards hold them (re-sharding).
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from swarmkern.atomic import atomic_write_bytes, atomic_write_json, fsync_dir  # noqa: F401 (re-exported)
from swarmkern.streaming import save_safetensors_streaming

CHECKPOINT_DIR = "checkpoint"
CACHES_SUFFIX = ".caches.pt"  # the utility caches of a shard (torch.save; read back only by this package)


def load_caches(output_dir: Path, iteration: int, rank: int = 0, *, exists_only: bool = False) -> Any:
    """The utility caches saved with shard (iteration, rank), or None when it has none (exists_only:
    whether it has them)."""
    path = Path(output_dir) / CHECKPOINT_DIR / f"ckpt-{iteration:07d}-rank{rank}{CACHES_SUFFIX}"
    if exists_only or not path.is_file():
        return path.is_file() if exists_only else None
    return torch.load(path, weights_only=False)  # predictions are dataclasses: written by save_checkpoint


def save_checkpoint(output_dir: Path, iteration: int, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], rank: int = 0, caches: dict[str, Any] | None = None) -> Path:
    """Write one checkpoint atomically and point `latest-rank<r>.json` at it. The tensors are streamed
    to the file block by block (they may be memory-mapped buffers larger than RAM, or on a GPU).
    `caches`: the utility caches' states (utilities/caches.py), saved beside the tensors."""
    ckdir = Path(output_dir) / CHECKPOINT_DIR
    ckdir.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt-{iteration:07d}-rank{rank}"
    if caches is not None:  # before the state file: a shard that is complete has its caches too
        buf = io.BytesIO()
        torch.save(caches, buf)
        atomic_write_bytes(ckdir / f"{stem}{CACHES_SUFFIX}", buf.getvalue())
    save_safetensors_streaming(ckdir / f"{stem}.safetensors", {k: (t.detach(), t.dtype) for k, t in tensors.items()})
    atomic_write_json(ckdir / f"{stem}.json", state)
    fsync_dir(ckdir)
    atomic_write_json(ckdir / f"latest-rank{rank}.json",
                      {"iteration": iteration, "tensors": f"{stem}.safetensors", "state": f"{stem}.json"})
    fsync_dir(ckdir)
    world_size = int(state.get("world_size", 1))
    floor = iteration
    if world_size > 1:  # keep this rank's previous checkpoint: the others may not have finished this one
        floor = max((it for r, it, _ in _shards(ckdir) if r == rank and it < iteration), default=iteration)
    for r, it, path in _shards(ckdir):
        # this rank's older files; on rank 0 also those of ranks a previous, larger world left behind
        if it < floor and (r == rank or (rank == 0 and r >= world_size)):
            path.unlink(missing_ok=True)
            path.with_suffix(".safetensors").unlink(missing_ok=True)
            path.with_suffix(CACHES_SUFFIX).unlink(missing_ok=True)
    if rank == 0:
        for pointer in ckdir.glob("latest-rank*.json"):
            m = re.fullmatch(r"latest-rank(\d+)\.json", pointer.name)
            if m and int(m.group(1)) >= world_size:
                pointer.unlink(missing_ok=True)
    # temporary files left by this rank when killed mid-write (never another rank's: it may be writing)
    for tmp in [*ckdir.glob(f".ckpt-*-rank{rank}.*.tmp"), *ckdir.glob(f".latest-rank{rank}.json.*.tmp")]:
        tmp.unlink(missing_ok=True)
    return ckdir / f"{stem}.json"


def has_checkpoint(output_dir: Path, rank: int = 0) -> bool:
    return (Path(output_dir) / CHECKPOINT_DIR / f"latest-rank{rank}.json").is_file()


def load_checkpoint(output_dir: Path, rank: int = 0, device: str | torch.device = "cpu", *,
                    collective: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of the latest complete checkpoint; FileNotFoundError when there is none.
    Without `collective`: rank `rank`'s own latest shard. With a Collective: the newest iteration
    every rank of the run that wrote it has finished, x/v/pbest restricted to the rows the collective
    owns now (any world size), gworst, and rank 0's state (it holds the history size)."""
    if collective is not None:
        return load_sharded(output_dir, collective, device)
    from safetensors.torch import load_file

    ckdir = Path(output_dir) / CHECKPOINT_DIR
    pointer = ckdir / f"latest-rank{rank}.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{output_dir}: no checkpoint to resume from ({pointer} is missing)")
    latest = json.loads(pointer.read_text())
    state = json.loads((ckdir / latest["state"]).read_text())
    tensors = load_file(str(ckdir / latest["tensors"]), device=str(device))
    return tensors, state


_SHARD = re.compile(r"ckpt-(\d+)-rank(\d+)\.json")


def _shards(ckdir: Path) -> list[tuple[int, int, Path]]:
    """(rank, iteration, state path) of every shard state file in `ckdir`."""
    found = []
    for path in ckdir.glob("ckpt-*-rank*.json"):
        m = _SHARD.fullmatch(path.name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), path))
    return found


def latest_complete(output_dir: Path) -> tuple[int, list[dict[str, Any]]] | None:
    """The newest iteration whose shards from every rank of the run that wrote it are on disk and
    tile the particles: (iteration, [state of rank 0, 1, ...]); None when there is none."""
    ckdir = Path(output_dir) / CHECKPOINT_DIR
    by_iter: dict[int, dict[int, Path]] = {}
    for r, it, path in _shards(ckdir):
        by_iter.setdefault(it, {})[r] = path
    for it in sorted(by_iter, reverse=True):
        paths = by_iter[it]
        try:
            states = [json.loads(paths[0].read_text())]
            world = int(states[0].get("world_size", 1))
            states += [json.loads(paths[r].read_text()) for r in range(1, world)]
        except (KeyError, OSError, ValueError):  # a rank missing, or a file being replaced right now
            continue
        n = states[0]["book"]["n_particles"]
        spans = [tuple(s["owned"]) for s in states]
        # a shard left by an earlier run with another world size may share the iteration number
        if all(int(s.get("world_size", 1)) == world for s in states) and \
                all(a == b for (_, a), (b, _) in zip(spans, spans[1:])) and spans[0][0] == 0 and spans[-1][1] == n \
                and all(paths[r].with_suffix(".safetensors").is_file() for r in range(world)):
            return it, states
    return None


def load_sharded(output_dir: Path, collective: Any, device: str | torch.device = "cpu", *,
                 into: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The rows `collective.owned(P)` of x, v, pbest [n_owned, D] and gworst [D] from the latest
    complete checkpoint, whatever world size wrote it; each process reads only its own rows. With
    `into` (buffers of those shapes, e.g. memory-mapped ones) the rows are copied there one row at a
    time and `into` is returned: nothing full-size is allocated."""
    from safetensors import safe_open

    found = latest_complete(output_dir)
    if found is None:
        raise FileNotFoundError(f"{output_dir}: no complete checkpoint to resume from "
                                f"(no iteration has the shards of every rank in {CHECKPOINT_DIR}/)")
    iteration, states = found
    ckdir = Path(output_dir) / CHECKPOINT_DIR
    state = states[0]
    owned = collective.owned(int(state["book"]["n_particles"]))
    dtype = getattr(torch, state["dtype"])
    dim = int(state["dim"])
    if into is None:
        into = {name: torch.empty(len(owned), dim, dtype=dtype, device=device) for name in ("x", "v", "pbest")}
        into["gworst"] = torch.empty(dim, dtype=dtype, device=device)
    for name, t in into.items():
        want = (dim,) if name == "gworst" else (len(owned), dim)
        if tuple(t.shape) != want or t.dtype != dtype:
            raise ValueError(f"checkpoint tensor {name!r} is {list(want)} {dtype}, expected {list(t.shape)} {t.dtype}")
    for r, s in enumerate(states):
        a, b = s["owned"]
        lo, hi = max(a, owned.start), min(b, owned.stop)
        if lo >= hi and r > 0:
            continue
        with safe_open(str(ckdir / f"ckpt-{iteration:07d}-rank{r}.safetensors"), "pt", device="cpu") as f:
            if r == 0:
                into["gworst"].copy_(f.get_tensor("gworst"))
            for name in ("x", "v", "pbest"):
                rows = f.get_slice(name)
                for i in range(lo, hi):  # one row at a time: a [P, D] shard may exceed RAM
                    into[name][i - owned.start].copy_(rows[i - a:i - a + 1][0])
    return into, dict(state, owned=[owned.start, owned.stop], world_size=collective.world_size)
