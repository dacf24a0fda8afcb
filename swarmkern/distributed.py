"""Particles sharded across processes, GPUs and nodes with torch.distributed.

    torchrun --nproc-per-node 4 -m swarmkern search run.yaml --resume-if-exists
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --rdzv-id $SLURM_JOB_ID --max-restarts 3 -m swarmkern search run.yaml

Each process (rank) holds the x, v and pbest rows of one contiguous block of particles
(`block_partition`) and scores them on its own device (cuda:LOCAL_RANK with CUDA). Per iteration the
ranks exchange the utilities (all-gather of P floats, over gloo on the host), and, when they change,
the global best row (broadcast from the rank owning it) and the global worst row (broadcast from the
rank that evaluated it), over NCCL on GPUs and gloo on CPUs. Every random draw is keyed by
(seed, purpose, particle, iteration), so a run gives bit-identical results with any number of ranks.

Failures: every collective has a timeout (SWARMKERN_DIST_TIMEOUT seconds, default 1800); a rank that
dies or stops answering makes the others raise `DistributedError` (one line: which rank, which
exchange, how to resume) instead of hanging. Checkpoints are per rank (see swarm/checkpoint.py) and
resume re-shards to any world size. This module is the transport only; when to start and when to
resume (`--resume-if-exists`, torchrun `--max-restarts`) is decided by swarmkern/runner.py
(`launch_search`). See docs/DISTRIBUTED.md.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from swarmkern.swarm.collective import block_partition

__all__ = ["TorchDistributedCollective", "DistributedError", "block_owner", "LaunchEnv", "launch_env",
           "init_collective", "close_collective", "distributed_session", "TIMEOUT_ENV", "BACKEND_ENV",
           "DEFAULT_TIMEOUT_S"]

TIMEOUT_ENV = "SWARMKERN_DIST_TIMEOUT"
BACKEND_ENV = "SWARMKERN_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A collective failed: a rank died, timed out or the rendezvous broke. The message is one line."""


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun (or any launcher setting the same variables) tells a worker process."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    restart_count: int   # TORCHELASTIC_RESTART_COUNT: worker-group restarts so far
    run_id: str | None   # TORCHELASTIC_RUN_ID: the rendezvous id of this torchrun job


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The launcher's variables, or None when this process was not started by torchrun (no RANK /
    WORLD_SIZE). Raises ValueError naming the variable when one is malformed."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None

    def num(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    world = num("WORLD_SIZE", 1)
    rank = num("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"environment: RANK={rank} is not in [0, WORLD_SIZE={world})")
    return LaunchEnv(rank=rank, world_size=world, local_rank=num("LOCAL_RANK", 0),
                     local_world_size=num("LOCAL_WORLD_SIZE", 1), restart_count=num("TORCHELASTIC_RESTART_COUNT", 0),
                     run_id=env.get("TORCHELASTIC_RUN_ID"))


def timeout_seconds() -> float:
    """Collective timeout from SWARMKERN_DIST_TIMEOUT (seconds), default 1800. It must exceed the
    longest time one rank can wait for another: the slowest rank's evaluation of its particles."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"environment variable {TIMEOUT_ENV}={raw!r} must be positive")
    return value


def block_owner(particle: int, n_particles: int, world_size: int) -> int:
    """The rank whose `block_partition` block holds `particle` (the inverse of block_partition)."""
    if not 0 <= particle < n_particles:
        raise IndexError(f"particle {particle} is not in [0, {n_particles})")
    base, extra = divmod(n_particles, world_size)
    if particle < extra * (base + 1):
        return particle // (base + 1)
    return extra + (particle - extra * (base + 1)) // base


class TorchDistributedCollective:
    """The `Collective` of swarm/collective.py over a torch.distributed process group.

    Particles are split into contiguous blocks (`block_partition`, the first P % W ranks one larger).
    Scores travel as float64 on the host (gloo); rows travel on the swarm's device (NCCL for CUDA
    tensors when the group has it, else gloo). Errors become `DistributedError`.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, *, timeout_s: float | None = None):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: use init_collective() or "
                               "dist.init_process_group() first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.timeout_s = timeout_s if timeout_s is not None else timeout_seconds()
        backend = str(dist.get_backend(group))
        self._cuda_ok = "nccl" in backend      # can move CUDA tensors
        self._cpu_ok = "gloo" in backend or "mpi" in backend  # can move host tensors

    # -- the Collective protocol ----------------------------------------------------------------
    def owned(self, n_particles: int) -> range:
        return block_partition(n_particles, self.world_size, self.rank)

    def owner(self, particle: int, n_particles: int) -> int:
        return block_owner(particle, n_particles, self.world_size)

    def all_gather_scores(self, local: torch.Tensor, n_particles: int) -> torch.Tensor:
        """This rank's float64 values [n_owned] -> every particle's [P] (host, float64, in order)."""
        counts = [len(block_partition(n_particles, self.world_size, r)) for r in range(self.world_size)]
        if local.numel() != counts[self.rank]:
            raise ValueError(f"rank {self.rank}: {local.numel()} scores for {counts[self.rank]} owned particles")
        width = max(counts)  # all_gather needs equal sizes: pad each block to the largest one
        send = torch.full((width,), float("nan"), dtype=torch.float64)
        send[:counts[self.rank]] = local.detach().to("cpu", torch.float64)
        device = self._transport_device(send)
        parts = [torch.empty(width, dtype=torch.float64, device=device) for _ in range(self.world_size)]
        with self._guard("all_gather of the utilities"):
            dist.all_gather(parts, send.to(device), group=self.group)
        return torch.cat([p[:c].cpu() for p, c in zip(parts, counts)])

    def broadcast_row(self, row: torch.Tensor | None, owner: int, out: torch.Tensor | None) -> torch.Tensor:
        """The owner's [D] row on every rank, copied into `out` (required on every rank but the owner)."""
        if out is None:
            if self.rank != owner:
                raise ValueError("broadcast_row: `out` is required on ranks that do not own the row")
            out = torch.empty_like(row)
        if self.rank == owner:
            if row is None:
                raise ValueError(f"broadcast_row: rank {owner} owns the row but was given none")
            if row.data_ptr() != out.data_ptr():
                out.copy_(row)
        device = self._transport_device(out)
        buf = out if out.device == device else out.to(device)
        with self._guard(f"broadcast of a row from rank {owner}"):
            dist.broadcast(buf, src=dist.get_global_rank(self.group, owner) if self.group else owner,
                           group=self.group)
        if buf is not out:
            out.copy_(buf)
        return out

    # -- helpers for the launcher -----------------------------------------------------------------
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """A picklable object from rank `src` on every rank (host transport)."""
        box = [obj if self.rank == src else None]
        with self._guard(f"broadcast of a decision from rank {src}"):
            device = None if self._cpu_ok else torch.device("cuda", torch.cuda.current_device())
            dist.broadcast_object_list(box, src=src, group=self.group, device=device)
        return box[0]

    def barrier(self) -> None:
        """Every rank reaches this point, or DistributedError naming the missing ranks (gloo's
        monitored barrier) after the timeout."""
        with self._guard("barrier"):
            if str(dist.get_backend(self.group)) == "gloo":  # monitored_barrier exists for gloo only
                dist.monitored_barrier(group=self.group, timeout=timedelta(seconds=self.timeout_s),
                                       wait_all_ranks=True)
            else:
                dist.barrier(group=self.group)

    def _transport_device(self, t: torch.Tensor) -> torch.device:
        if t.device.type == "cuda":
            return t.device if self._cuda_ok else torch.device("cpu")
        if self._cpu_ok:
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())  # an NCCL-only group: stage on the GPU

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as err:  # DistBackendError, DistNetworkError, gloo/NCCL errors
            first = _first_sentence(err)
            missing = re.search(r"[Rr]anks? ([\d, ]+) failed to pass monitoredBarrier", str(err))
            who = f"rank(s) {missing.group(1).strip()} did not arrive" if missing else \
                "another rank died or stopped responding"
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: {who} ({first}; timeout "
                f"{self.timeout_s:.0f} s, {TIMEOUT_ENV}). Resume from the last checkpoint with "
                f"`swarmkern search CONFIG --resume-if-exists` (torchrun --max-restarts does it automatically)"
            ) from err


def _first_sentence(err: BaseException) -> str:
    """The gist of a backend error: its first line, without gloo's "[file.cc:123] " prefix, up to the
    end of its first sentence, at most 200 characters."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)
    m = re.match(r"(.+?\.)(\s|$)", text)
    return (m.group(1) if m else text)[:200].rstrip(".")


def init_collective(device: str = "cpu", *, environ: dict[str, str] | None = None,
                    timeout_s: float | None = None) -> TorchDistributedCollective | None:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) and return its collective; None outside torchrun or with one process.

    device: the swarm's device. With CUDA the process takes cuda:LOCAL_RANK as its current device and
    the group is "cpu:gloo,cuda:nccl" (rows over NCCL, utilities over gloo); otherwise gloo.
    SWARMKERN_DIST_BACKEND overrides the backend string.
    """
    env = launch_env(environ)
    if env is None or env.world_size == 1:
        return None
    timeout_s = timeout_s if timeout_s is not None else timeout_seconds()
    cuda = torch.device(device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"swarm.device: {device!r} but CUDA is not available on rank {env.rank}")
    if cuda and env.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={env.local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                         "start at most one process per GPU (--nproc-per-node)")
    if torch.cuda.is_available() and env.local_rank < torch.cuda.device_count():
        # also when the swarm stays on the host: a utility on device "auto"/"cuda" then uses this GPU
        torch.cuda.set_device(env.local_rank)
    backend = os.environ.get(BACKEND_ENV) or ("cpu:gloo,cuda:nccl" if cuda else "gloo")
    if not dist.is_initialized():
        try:
            timeout = timedelta(seconds=timeout_s)
            store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world_size, timeout=timeout))
            # torchrun keeps its store across --max-restarts: without a per-attempt prefix, gloo would
            # read the addresses of the previous attempt's (dead) workers and fail to connect.
            store = dist.PrefixStore(f"swarmkern/attempt{env.restart_count}", store)
            dist.init_process_group(backend=backend, store=store, rank=env.rank, world_size=env.world_size,
                                    timeout=timeout)
        except (RuntimeError, ValueError) as err:
            raise DistributedError(f"rank {env.rank} of {env.world_size}: cannot join the process group "
                                   f"({backend}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                                   f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {_first_sentence(err)}") from err
    return TorchDistributedCollective(timeout_s=timeout_s)


def close_collective(collective: TorchDistributedCollective | None, *, ok: bool) -> None:
    """Leave the process group: after a clean run all ranks meet first (so a rank lost at the very
    end is reported); after a failure the group is torn down without waiting for anyone."""
    if collective is None or not dist.is_initialized():
        return
    if ok:
        collective.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "cpu") -> Iterator[TorchDistributedCollective | None]:
    """`init_collective` ... `close_collective`; yields None outside torchrun (one process)."""
    collective = init_collective(device)
    ok = False
    try:
        yield collective
        ok = True
    finally:
        close_collective(collective, ok=ok)
