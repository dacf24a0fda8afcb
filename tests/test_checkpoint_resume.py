"""Checkpoints are atomic and `resume` ends bit-identical to an uninterrupted run, even after SIGKILL."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from swarmkern.testing import run_record

from swarmkern.objectives import neg_rastrigin
from swarmkern.swarm import LocalCollective, Swarm, SwarmConfig, has_checkpoint, load_checkpoint
from swarmkern.swarm import checkpoint as ckpt_module
from swarmkern.swarm import journal
from swarmkern.swarm.checkpoint import CHECKPOINT_DIR

# The run used by every test here (also executed by the killed subprocesses, with 1 or 2 processes).
# KILL_IN="<rank>:journal:<t>" SIGKILLs that rank half-way through appending journal record t;
# "<rank>:snapshot:<t>" after the first tensor of snapshot t (a real kill inside the write, keyed to
# the run's progress rather than to wall time).
SCRIPT = r"""
import os, signal, sys, torch
from swarmkern.objectives import neg_rastrigin
from swarmkern.swarm import Swarm, SwarmConfig, has_checkpoint
from swarmkern.swarm import checkpoint as ck, journal
from swarmkern import streaming

out, dim, iters, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
storage = sys.argv[5] if len(sys.argv) > 5 else "memory"
rank = os.environ.get("RANK", "0")
kill = os.environ.get("KILL_IN", "")
if kill and kill.split(":")[0] == rank:
    _, what, at = kill.split(":")
    at = int(at)
    if what == "journal":
        real_append = journal.Journal.append
        def append(self, record):
            if record.iteration == at:
                data = record.encode()
                self._file.write(data[: len(data) // 2])
                self._file.flush()
                os.fsync(self._file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_append(self, record)
        journal.Journal.append = append
    else:
        real_save, real_write = streaming.save_safetensors_streaming, streaming._write
        def save(path, tensors, *args, **kw):
            if f"ckpt-{at:07d}-" in str(path):
                def dying(f, *a):
                    real_write(f, *a)
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                streaming._write = dying
            return real_save(path, tensors, *args, **kw)
        ck.save_safetensors_streaming = save
print("START", flush=True)  # imports done: the parent times its kill from here

def main(coll=None):
    if has_checkpoint(out):
        swarm = Swarm.resume(out, neg_rastrigin, neg_rastrigin, collective=coll)
    else:
        cfg = SwarmConfig(seed=5, n_particles=8, max_iters=iters, patience=1000, drop_n=0.1, progress=False,
                          snapshot_every=every, storage=storage, block_size=7 if storage == "mmap" else None)
        init = torch.randn(5, dim, generator=torch.Generator().manual_seed(0))
        swarm = Swarm(cfg, init, neg_rastrigin, neg_rastrigin, output_dir=out, overwrite=True, collective=coll)
    swarm.run()

if "WORLD_SIZE" in os.environ:
    from swarmkern.distributed import distributed_session
    with distributed_session("cpu") as coll:
        main(coll)
else:
    main()
print("DONE", flush=True)
"""


def _config(iters: int, snapshot_every: int = 1, **extra) -> SwarmConfig:
    return SwarmConfig(seed=5, n_particles=8, max_iters=iters, patience=1000, drop_n=0.1, progress=False,
                       snapshot_every=snapshot_every, **extra)


def _init(dim: int) -> torch.Tensor:
    return torch.randn(5, dim, generator=torch.Generator().manual_seed(0))


def _final(out: Path) -> dict:
    tensors, state = load_checkpoint(out, collective=LocalCollective())  # every rank's rows
    book = {k: v for k, v in state["book"].items() if k not in ("wall_seconds", "history_bytes")}
    history, summary = run_record(out)
    best = load_file(str(out / "best.safetensors"))
    return {"tensors": tensors, "book": book, "history": history, "summary": summary, "best": best}


def _assert_same(a: dict, b: dict) -> None:
    assert a["book"] == b["book"]
    assert a["history"] == b["history"]
    assert a["summary"] == b["summary"]
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name
    assert torch.equal(a["best"]["x"], b["best"]["x"])


def test_checkpoint_files_and_pointer(tmp_path):
    Swarm(_config(3), _init(50), neg_rastrigin, output_dir=tmp_path).run()
    ck = tmp_path / CHECKPOINT_DIR
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-0000003-rank0.json", "ckpt-0000003-rank0.safetensors",
                                                   "journal.log", "latest-rank0.json"]
    records, size = journal.read(ck)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert size == (ck / "journal.log").stat().st_size and [r.iteration for r in records] == [0, 1, 2, 3]
    assert [r.utilities for r in records] == [h["utilities"] for h in history]
    assert [r.skipped for r in records] == [h["skipped"] for h in history]
    assert all(len(line) < 600 for line in (ck / "journal.log").read_bytes().splitlines())  # O(P), not O(D)
    tensors, state = load_checkpoint(tmp_path)
    assert set(tensors) == {"x", "v", "pbest", "gworst"} and state["book"]["iteration"] == 3
    assert state["config"]["seed"] == 5
    with pytest.raises(FileExistsError, match="already holds a run"):
        Swarm(_config(3), _init(50), neg_rastrigin, output_dir=tmp_path)


def test_resume_after_exception_matches_uninterrupted(tmp_path):
    full = tmp_path / "full"
    Swarm(_config(12), _init(300), neg_rastrigin, neg_rastrigin, output_dir=full).run()

    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("evaluator crashed")
        return neg_rastrigin(rows)

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="crashed"):
        Swarm(_config(12), _init(300), flaky, neg_rastrigin, output_dir=part).run()
    assert has_checkpoint(part)
    resumed = Swarm.resume(part, neg_rastrigin, neg_rastrigin)
    assert resumed.book.iteration == 5
    resumed.run()
    _assert_same(_final(full), _final(part))


def test_resume_ignores_half_written_files(tmp_path):
    """A newer checkpoint file without its pointer, stray temporaries and a half-written history line
    (what SIGKILL in the middle of a checkpoint leaves) do not change the result."""
    full = tmp_path / "full"
    Swarm(_config(6), _init(100), neg_rastrigin, output_dir=full).run()
    part = tmp_path / "part"
    calls = {"n": 0}

    def stop_at_4(rows):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return neg_rastrigin(rows)

    with pytest.raises(KeyboardInterrupt):
        Swarm(_config(6), _init(100), stop_at_4, output_dir=part).run()
    ck = part / CHECKPOINT_DIR
    (ck / "ckpt-0000004-rank0.safetensors").write_bytes(b"\x00" * 100)  # half-written next checkpoint
    (ck / ".ckpt-0000004-rank0.json.abc.tmp").write_text("{")
    with open(part / "history.jsonl", "a") as f:
        f.write('{"iteration": 4, "utilit')
    with open(ck / "journal.log", "ab") as f:  # a record cut off half-way
        f.write(b"0badc0de {\"iteration\": 4, \"utili")
    Swarm.resume(part, neg_rastrigin).run()
    _assert_same(_final(full), _final(part))
    assert not list(ck.glob(".*.tmp"))
    assert [r.iteration for r in journal.read(ck)[0]] == list(range(7))


def test_a_damaged_journal_record_ends_the_replay(tmp_path):
    """A record whose checksum does not match (a torn write that happened to end in a newline) is
    ignored with everything after it: those iterations are evaluated again."""
    cfg = _config(6, snapshot_every=100)
    full = tmp_path / "full"
    Swarm(cfg, _init(40), neg_rastrigin, output_dir=full).run()
    part = tmp_path / "part"
    _interrupted(part, at_call=6, iters=6, dim=40, config=cfg)  # journal: iterations 0..4
    log = part / CHECKPOINT_DIR / "journal.log"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"-", b"+", 1)
    log.write_bytes(b"".join(lines))
    resumed = Swarm.resume(part, neg_rastrigin)
    assert resumed.book.iteration == 2 and len(resumed.history) == 3
    resumed.run()
    _assert_same(_final(full), _final(part))


def _latest(src: Path) -> tuple[int, dict, dict]:
    ck = src / CHECKPOINT_DIR
    latest = json.loads((ck / "latest-rank0.json").read_text())
    return latest["iteration"], load_file(str(ck / latest["tensors"])), json.loads((ck / latest["state"]).read_text())


def _write_as_ranks(checkpoint: tuple[int, dict, dict], dst: Path, world: int) -> None:
    """Write a one-process checkpoint into `dst` as if `world` processes had written it."""
    from swarmkern.swarm.checkpoint import save_checkpoint
    from swarmkern.swarm.collective import block_partition

    iteration, tensors, state = checkpoint
    P = tensors["x"].shape[0]
    for r in range(world):
        own = block_partition(P, world, r)
        part = {k: tensors[k][own.start:own.stop] for k in ("x", "v", "pbest")}
        part["gworst"] = tensors["gworst"]
        save_checkpoint(dst, iteration, part, {**state, "owned": [own.start, own.stop],
                                                          "world_size": world}, rank=r)


def _interrupted(out: Path, at_call: int, iters: int = 8, dim: int = 60, config: SwarmConfig | None = None) -> None:
    calls = {"n": 0}

    def stop(rows):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return neg_rastrigin(rows)

    with pytest.raises(KeyboardInterrupt):
        Swarm(config or _config(iters), _init(dim), stop, output_dir=out).run()


def test_resume_reshards_a_checkpoint_written_by_several_processes(tmp_path):
    full = tmp_path / "full"
    Swarm(_config(8), _init(60), neg_rastrigin, output_dir=full).run()
    a, b = tmp_path / "a", tmp_path / "b"
    _interrupted(a, at_call=5)  # last checkpoint: iteration 3
    _interrupted(b, at_call=6)  # last checkpoint: iteration 4
    ck_a, ck_b = _latest(a), _latest(b)
    _write_as_ranks(ck_a, b, 3)
    _write_as_ranks(ck_b, b, 3)
    ck = b / CHECKPOINT_DIR
    assert (ck / "ckpt-0000003-rank2.json").is_file() and (ck / "ckpt-0000004-rank2.json").is_file()
    # rank 2 died before finishing snapshot 4: the newest iteration every rank holds is 3, and the
    # journal (rank 0's) replays iteration 4 on top of it
    (ck / "ckpt-0000004-rank2.json").unlink()
    assert load_checkpoint(b, collective=LocalCollective())[1]["book"]["iteration"] == 3
    resumed = Swarm.resume(b, neg_rastrigin)
    assert resumed.book.iteration == 4 and resumed.buffers.x.shape[0] == 8
    resumed.run()
    _assert_same(_final(full), _final(b))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint to resume from"):
        Swarm.resume(tmp_path, neg_rastrigin)


def _spawn(out: Path, dim: int, iters: int, every: int, kill: str = "", storage: str = "memory",
           world: int = 1) -> list[subprocess.Popen]:
    """The run in `world` processes (gloo on 127.0.0.1 when world > 1), rank 0 first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", KILL_IN=kill,
               SWARMKERN_DIST_TIMEOUT="30")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    if world > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
    procs = []
    for r in range(world):
        extra = {} if world == 1 else dict(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                                             LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(dim), str(iters), str(every), storage],
                                      env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _journaled(out: Path) -> int:
    """The last iteration in the run's journal, -1 before the first record."""
    records, _ = journal.read(out / CHECKPOINT_DIR)
    return records[-1].iteration if records else -1


def _wait_for_iteration(proc: subprocess.Popen, out: Path, iteration: int, limit_s: float = 120.0) -> float:
    """Poll until the run has journaled `iteration` (or more); return the wall time it happened at."""
    deadline = time.perf_counter() + limit_s
    while _journaled(out) < iteration:
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before journaling iteration {iteration}: "
                        f"{proc.stderr.read()}")
        if time.perf_counter() > deadline:
            pytest.fail(f"iteration {iteration} not journaled within {limit_s} s")
        time.sleep(0.0005)
    return time.perf_counter()


def _finish(procs: list[subprocess.Popen], killed: int | None = None) -> None:
    """Wait for every process; all must succeed, except rank `killed` (SIGKILL) and the others, which
    must then fail (fast: the collective notices the dead peer)."""
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        if killed is None:
            assert proc.returncode == 0 and "DONE" in out, err[-3000:]
        elif rank == killed:
            assert proc.returncode == -signal.SIGKILL, err[-3000:]
        else:
            assert proc.returncode != 0, "a rank outlived the killed one"


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Kill the search with SIGKILL at random moments of its work (initialisation, updates, evaluations,
    journal appends, snapshots every 4 iterations, the final outputs), resume each time, and compare with
    a run never interrupted.

    Kill times are keyed to the run's own progress (its journal), not to a fraction of a reference run's
    wall time: start-up and output costs vary a lot between machines (a cold matplotlib font cache, a
    loaded CI box), and a purely wall-clock schedule can miss the search entirely."""
    dim, iters, every = 50_000, 20, 4
    full = tmp_path / "full"
    [proc] = _spawn(full, dim, iters, every)
    assert proc.stdout.readline().strip() == "START"
    started = time.perf_counter()
    seen = [_wait_for_iteration(proc, full, it) for it in range(iters + 1)]
    _finish([proc])
    init_s = seen[0] - started  # initialisation: evaluate the experts, journal + snapshot 0
    iter_s = (seen[-1] - seen[1]) / (iters - 1)  # one iteration: update, evaluation, journal (+ snapshot)

    part = tmp_path / "part"
    rng = random.Random(1234)
    # where each attempt dies: during initialisation, after a random journaled iteration plus a random
    # part of the next iteration (four times, always further on), during the final outputs; then finish.
    targets = sorted(rng.sample(range(1, iters - 2), 4))
    plan = [("init", None)] + [("search", t) for t in targets] + [("outputs", iters), ("finish", None)]
    progress: list[int] = []  # the journaled iteration at each kill
    for phase, target in plan:
        [proc] = _spawn(part, dim, iters, every)
        assert proc.stdout.readline().strip() == "START", proc.stderr.read()
        if phase == "finish":
            _finish([proc])
            break
        if phase == "init":
            time.sleep(rng.uniform(0.0, init_s))
        else:
            _wait_for_iteration(proc, part, target)
            time.sleep(rng.uniform(0.0, iter_s))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        progress.append(_journaled(part))
    assert sum(0 < it < iters for it in progress) >= 3, progress  # killed in the middle of the search
    assert progress == sorted(progress), progress  # a resumed run never goes back
    _assert_same(_final(full), _final(part))


@pytest.mark.parametrize("world,storage", [(1, "memory"), (2, "memory"), (1, "mmap")])
def test_sigkill_inside_a_journal_append_and_a_snapshot(tmp_path, world, storage):
    """SIGKILL half-way through writing journal record 6 (rank 0 writes the journal; between snapshots 4
    and 8), then half-way through snapshot 8 (of the last rank); the resumes (with `world` processes)
    end bit-identical to one uninterrupted process (with storage: mmap, the live mapped files hold a
    half-updated iteration when killed; resume rewrites them from the snapshot)."""
    if world > 1 and not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is needed")
    dim, iters, every = 3_000, 12, 4
    full = tmp_path / "full"
    _finish(_spawn(full, dim, iters, every, storage=storage))
    part = tmp_path / "part"
    last = world - 1
    for kill, killed, journaled, snapshot in (("0:journal:6", 0, 5, 4), (f"{last}:snapshot:8", last, 8, 4),
                                               ("", None, iters, iters)):
        procs = _spawn(part, dim, iters, every, kill, storage, world=world)
        _finish(procs, killed)
        assert _journaled(part) == journaled
        assert load_checkpoint(part, collective=LocalCollective())[1]["book"]["iteration"] == snapshot
    records, size = journal.read(part / CHECKPOINT_DIR)
    assert size == (part / CHECKPOINT_DIR / "journal.log").stat().st_size  # the torn record was cut off
    assert [r.iteration for r in records] == list(range(iters + 1))
    _assert_same(_final(full), _final(part))


def test_resume_refuses_other_experts(tmp_path):
    from swarmkern.flat import load_experts

    Swarm(_config(2), _init(50), neg_rastrigin, output_dir=tmp_path).run()
    with pytest.raises(ValueError, match="differ from the run's"):
        Swarm.resume(tmp_path, neg_rastrigin, pool=load_experts(torch.randn(5, 60)))
    same = Swarm.resume(tmp_path, neg_rastrigin, pool=load_experts(_init(50)))
    assert same.book.iteration == 2


def test_resume_replays_the_journal_without_evaluating(tmp_path):
    cfg = _config(9, snapshot_every=4)
    full = tmp_path / "full"
    Swarm(cfg, _init(40), neg_rastrigin, output_dir=full).run()
    part = tmp_path / "part"
    _interrupted(part, at_call=8, iters=9, dim=40, config=cfg)  # dies in iteration 7: snapshot 4, journal 0..6
    assert load_checkpoint(part)[1]["book"]["iteration"] == 4
    calls = {"n": 0}

    def counting(rows):
        calls["n"] += 1
        return neg_rastrigin(rows)

    resumed = Swarm.resume(part, counting)
    assert calls["n"] == 0  # iterations 5 and 6 were replayed from their records, not evaluated
    assert resumed.book.iteration == 6 and len(resumed.history) == 7
    resumed.run()
    assert calls["n"] == 3  # iterations 7, 8, 9
    _assert_same(_final(full), _final(part))


def test_snapshot_policy(tmp_path, monkeypatch):
    """snapshot_every: at its multiples (and the last iteration); snapshot_seconds: by the clock; by
    default once the last snapshot took at most snapshot_budget of the time since it started."""
    seen = []
    real = ckpt_module.save_checkpoint

    def spy(output_dir, iteration, *args, **kw):
        seen.append(iteration)
        return real(output_dir, iteration, *args, **kw)

    monkeypatch.setattr(ckpt_module, "save_checkpoint", spy)
    Swarm(_config(10, snapshot_every=4), _init(30), neg_rastrigin, output_dir=tmp_path / "a").run()
    assert seen == [0, 4, 8, 10]

    from swarmkern.swarm import search
    clock = {"now": 0.0}
    monkeypatch.setattr(search.time, "perf_counter", lambda: clock["now"])
    for update, due_at in (({"snapshot_seconds": 30.0}, 30.0), ({"snapshot_budget": 0.05}, 40.0)):
        sw = Swarm(_config(10, snapshot_every=0, **update), _init(30), neg_rastrigin)
        sw._snapshot_iteration, sw._snapshot_started, sw._snapshot_cost = 3, 100.0, 2.0
        for since, due in ((0.0, False), (due_at - 0.5, False), (due_at, True), (due_at + 50, True)):
            clock["now"] = 100.0 + since
            assert sw._snapshot_due() is due, (update, since)
