"""Checkpoints are atomic and `resume` ends bit-identical to an uninterrupted run, even after SIGKILL."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from swarmkern.objectives import neg_rastrigin
from swarmkern.swarm import Swarm, SwarmConfig, has_checkpoint, load_checkpoint
from swarmkern.swarm.checkpoint import CHECKPOINT_DIR

# The run used by every test here (also executed by the killed subprocesses).
SCRIPT = r"""
import sys, torch
from swarmkern.objectives import neg_rastrigin
from swarmkern.swarm import Swarm, SwarmConfig, has_checkpoint
out, dim, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("START", flush=True)  # imports done: the parent times its kill from here
if has_checkpoint(out):
    swarm = Swarm.resume(out, neg_rastrigin, neg_rastrigin)
else:
    cfg = SwarmConfig(seed=5, n_particles=8, max_iters=iters, patience=1000, drop_n=0.1, progress=False)
    init = torch.randn(5, dim, generator=torch.Generator().manual_seed(0))
    swarm = Swarm(cfg, init, neg_rastrigin, neg_rastrigin, output_dir=out, overwrite=True)
swarm.run()
print("DONE", flush=True)
"""


def _config(iters: int) -> SwarmConfig:
    return SwarmConfig(seed=5, n_particles=8, max_iters=iters, patience=1000, drop_n=0.1, progress=False)


def _init(dim: int) -> torch.Tensor:
    return torch.randn(5, dim, generator=torch.Generator().manual_seed(0))


def _final(out: Path) -> dict:
    tensors, state = load_checkpoint(out)
    book = {k: v for k, v in state["book"].items() if k not in ("wall_seconds", "history_bytes")}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for h in history:
        h.pop("timings")
    summary = json.loads((out / "summary.json").read_text())
    for k in ("wall_seconds", "best_path"):
        summary.pop(k, None)
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
                                                   "latest-rank0.json"]
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
    Swarm.resume(part, neg_rastrigin).run()
    _assert_same(_final(full), _final(part))
    assert not list(ck.glob(".*.tmp"))


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


def _interrupted(out: Path, at_call: int, iters: int = 8, dim: int = 60) -> None:
    calls = {"n": 0}

    def stop(rows):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return neg_rastrigin(rows)

    with pytest.raises(KeyboardInterrupt):
        Swarm(_config(iters), _init(dim), stop, output_dir=out).run()


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
    # rank 2 died before finishing iteration 4: the newest iteration every rank holds is 3
    (b / "history.jsonl").write_bytes((a / "history.jsonl").read_bytes())  # its byte count is in a's state
    (ck / "ckpt-0000004-rank2.json").unlink()
    resumed = Swarm.resume(b, neg_rastrigin)
    assert resumed.book.iteration == 3 and resumed.buffers.x.shape[0] == 8
    resumed.run()
    _assert_same(_final(full), _final(b))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint to resume from"):
        Swarm.resume(tmp_path, neg_rastrigin)


def _spawn(out: Path, dim: int, iters: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(dim), str(iters)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpointed(out: Path) -> int:
    """The iteration the run's latest complete checkpoint holds, -1 before the first one."""
    try:
        return json.loads((out / CHECKPOINT_DIR / "latest-rank0.json").read_text())["iteration"]
    except (FileNotFoundError, json.JSONDecodeError):  # the pointer is renamed into place, but be safe
        return -1


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, iteration: int, limit_s: float = 120.0) -> float:
    """Poll until the run has checkpointed `iteration` (or more); return the wall time it happened at."""
    deadline = time.perf_counter() + limit_s
    while _checkpointed(out) < iteration:
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before checkpointing iteration {iteration}: "
                        f"{proc.stderr.read()}")
        if time.perf_counter() > deadline:
            pytest.fail(f"no checkpoint of iteration {iteration} within {limit_s} s")
        time.sleep(0.0005)
    return time.perf_counter()


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Kill the search with SIGKILL at random moments of its work (initialisation, updates, evaluations,
    checkpoint writes, the final outputs), resume each time, and compare with a run never interrupted.

    Kill times are keyed to the run's own progress (its checkpoint pointer), not to a fraction of a
    reference run's wall time: start-up and output costs vary a lot between machines (a cold matplotlib
    font cache, a loaded CI box), and a purely wall-clock schedule can miss the search entirely."""
    dim, iters = 50_000, 20
    full = tmp_path / "full"
    proc = _spawn(full, dim, iters)
    assert proc.stdout.readline().strip() == "START"
    started = time.perf_counter()
    seen = [_wait_for_checkpoint(proc, full, it) for it in range(iters + 1)]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "DONE" in out, err
    init_s = seen[0] - started  # initialisation: evaluate the experts, write checkpoint 0
    iter_s = (seen[-1] - seen[1]) / (iters - 1)  # one iteration: update, evaluation, checkpoint write

    part = tmp_path / "part"
    rng = random.Random(1234)
    # where each attempt dies: during initialisation, after a random checkpointed iteration plus a random
    # part of the next iteration (four times, always further on), during the final outputs; then finish.
    targets = sorted(rng.sample(range(1, iters - 2), 4))
    plan = [("init", None)] + [("search", t) for t in targets] + [("outputs", iters), ("finish", None)]
    progress: list[int] = []  # the checkpointed iteration at each kill
    for phase, target in plan:
        proc = _spawn(part, dim, iters)
        assert proc.stdout.readline().strip() == "START", proc.stderr.read()
        if phase == "finish":
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and "DONE" in out, err
            break
        if phase == "init":
            time.sleep(rng.uniform(0.0, init_s))
        else:
            _wait_for_checkpoint(proc, part, target)
            time.sleep(rng.uniform(0.0, iter_s))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        progress.append(_checkpointed(part))
    assert sum(0 < it < iters for it in progress) >= 3, progress  # killed in the middle of the search
    assert progress == sorted(progress), progress  # a resumed run never goes back
    _assert_same(_final(full), _final(part))


def test_resume_refuses_other_experts(tmp_path):
    from swarmkern.flat import load_experts

    Swarm(_config(2), _init(50), neg_rastrigin, output_dir=tmp_path).run()
    with pytest.raises(ValueError, match="differ from the run's"):
        Swarm.resume(tmp_path, neg_rastrigin, pool=load_experts(torch.randn(5, 60)))
    same = Swarm.resume(tmp_path, neg_rastrigin, pool=load_experts(_init(50)))
    assert same.book.iteration == 2


def test_resume_with_sparse_checkpoints_replays_the_missing_iterations(tmp_path):
    cfg = _config(9).model_copy(update={"checkpoint_every": 4})
    full = tmp_path / "full"
    Swarm(cfg, _init(40), neg_rastrigin, output_dir=full).run()
    part = tmp_path / "part"
    calls = {"n": 0}

    def stop(rows):  # dies in iteration 7: the last checkpoint is iteration 4
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return neg_rastrigin(rows)

    with pytest.raises(KeyboardInterrupt):
        Swarm(cfg, _init(40), stop, output_dir=part).run()
    resumed = Swarm.resume(part, neg_rastrigin)
    assert resumed.book.iteration == 4 and len(resumed.history) == 5  # history lines 5, 6 dropped
    resumed.run()
    _assert_same(_final(full), _final(part))
