"""Particles sharded over torch.distributed (gloo, 2-3 processes on 127.0.0.1) give the one-process
result bit for bit; a killed rank fails the others fast; checkpoints resume with another world size;
torchrun --max-restarts resumes automatically through the CLI."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from swarmkern.distributed import DistributedError, block_owner, launch_env
from swarmkern.objectives import neg_rastrigin
from swarmkern.swarm import LocalCollective, Swarm, SwarmConfig, block_partition
from swarmkern.swarm.checkpoint import load_sharded
from swarmkern.testing import run_record

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

# Runs in every spawned process. `flaky` is also the CLI's python utility (PYTHONPATH=tmp dir).
WORKER = r'''
import json, os, signal, sys, time
import torch
from swarmkern.objectives import neg_rastrigin

calls = 0


def flaky(particles, kill_at=0):
    """neg_rastrigin; rank 1 SIGKILLs itself at its kill_at-th call (first torchrun attempt only)."""
    global calls
    calls += 1
    if kill_at and calls == kill_at and os.environ.get("RANK") == "1" \
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        if os.environ.get("KILL_STAMP"):
            with open(os.environ["KILL_STAMP"], "w") as f:
                f.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    return neg_rastrigin(particles)


def main():
    from swarmkern.distributed import distributed_session
    from swarmkern.swarm import Swarm, SwarmConfig
    mode, out = sys.argv[1], sys.argv[2]
    kill_at = int(os.environ.get("KILL_AT", "0"))
    util = lambda p: flaky(p, kill_at)
    with distributed_session("cpu") as coll:
        if mode == "start":
            cfg = SwarmConfig.model_validate_json(sys.argv[3])
            k, d, s = (int(a) for a in sys.argv[4:7])
            init = torch.randn(k, d, generator=torch.Generator().manual_seed(s))
            Swarm(cfg, init, util, neg_rastrigin, output_dir=out, collective=coll, overwrite=True).run()
        else:
            Swarm.resume(out, util, neg_rastrigin, collective=coll).run()


if __name__ == "__main__":
    main()
'''

CONFIGS = {  # varied so that every exchange matters: crossover, restarts, drops, repel, gbest moves
    "particle": dict(seed=3, n_particles=7, max_iters=6, patience=3, restart_patience=0.67, drop_n=0.2,
                     phi_g=0.5, phi_w=0.1, step=0.7, progress=False),
    "element": dict(seed=11, n_particles=5, max_iters=5, patience=100, randomness="element", dtype="bfloat16",
                    velocity_init="best", progress=False),
}
K, D, INIT_SEED = 4, 96, 0


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", SWARMKERN_DIST_TIMEOUT="60")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT",
                "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, world: int, args: list[str], timeout: float = 90, **extra: str):
    """`world` processes as torchrun would start them; returns [(returncode, stderr, end time)] by rank."""
    worker = tmp / "dist_worker.py"
    worker.write_text(WORKER)
    port = str(_free_port())
    procs, t0 = [], time.perf_counter()
    for r in range(world):
        env = _env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra)
        procs.append(subprocess.Popen([sys.executable, str(worker), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"distributed run hung for {timeout} s")
        results.append((p.returncode, err, time.time()))
    return results


def _reference(out: Path, name: str) -> None:
    cfg = SwarmConfig(**CONFIGS[name])
    init = torch.randn(K, D, generator=torch.Generator().manual_seed(INIT_SEED))
    Swarm(cfg, init, neg_rastrigin, neg_rastrigin, output_dir=out).run()


def _run_record(out: Path) -> dict:
    """Everything a run leaves that must not depend on the world size (timings aside)."""
    history, summary = run_record(out)  # the command (one process vs torchrun) is left out too
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        best = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors, state = load_sharded(out, LocalCollective())
    book = {k: v for k, v in state["book"].items() if k not in ("wall_seconds", "history_bytes")}
    return {"history": history, "summary": summary, "best": best, "tensors": tensors, "book": book}


def _assert_same(a: dict, b: dict) -> None:
    assert a["history"] == b["history"]
    assert a["summary"] == b["summary"]
    assert a["book"] == b["book"]
    assert a["best"][1] == b["best"][1]
    for name in ("x",):
        assert torch.equal(a["best"][0][name], b["best"][0][name])
    for name, t in a["tensors"].items():
        assert t.dtype == b["tensors"][name].dtype and torch.equal(t, b["tensors"][name]), name


def test_block_owner_inverts_block_partition():
    for n in range(1, 23):
        for world in range(1, 7):
            blocks = [block_partition(n, world, r) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert [block_owner(i, n, world) for i in range(n)] == [r for r, b in enumerate(blocks) for _ in b]
    with pytest.raises(IndexError):
        block_owner(5, 5, 2)


def test_launch_env_reads_torchrun_variables():
    assert launch_env({}) is None
    env = launch_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                      "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_RUN_ID": "job7"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.restart_count, env.run_id) == \
        (2, 4, 0, 2, 1, "job7")
    with pytest.raises(ValueError, match="RANK=4"):
        launch_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE='x'"):
        launch_env({"RANK": "0", "WORLD_SIZE": "x"})


@pytest.mark.parametrize("name,world", [("particle", 2), ("element", 3)])
def test_sharded_run_is_bit_identical_to_one_process(tmp_path, name, world):
    _reference(tmp_path / "one", name)
    cfg = json.dumps(CONFIGS[name])
    results = _launch(tmp_path, world, ["start", str(tmp_path / "many"), cfg, str(K), str(D), str(INIT_SEED)])
    for rank, (code, err, _) in enumerate(results):
        assert code == 0, f"rank {rank}: {err[-2000:]}"
    shards = sorted(p.name for p in (tmp_path / "many" / "checkpoint").glob("ckpt-*.safetensors"))
    assert {s.split("-rank")[1] for s in shards} == {f"{r}.safetensors" for r in range(world)}
    _assert_same(_run_record(tmp_path / "one"), _run_record(tmp_path / "many"))


def test_killed_rank_fails_fast_and_the_run_resumes_with_other_world_sizes(tmp_path):
    name = "particle"
    _reference(tmp_path / "one", name)
    out = tmp_path / "many"
    cfg = json.dumps(CONFIGS[name])
    # rank 1 dies (SIGKILL) while scoring iteration 3; the collective timeout is 60 s
    stamp = tmp_path / "killed_at"
    results = _launch(tmp_path, 2, ["start", str(out), cfg, str(K), str(D), str(INIT_SEED)], KILL_AT="4",
                      KILL_STAMP=str(stamp))
    (code0, err0, end0), (code1, _, _) = results
    assert code1 == -9
    waited = end0 - float(stamp.read_text())
    assert code0 != 0 and waited < 20, f"rank 0 did not fail fast ({waited:.1f} s after the kill): {err0[-1500:]}"
    line = next(ln for ln in err0.splitlines() if "DistributedError:" in ln)
    assert "rank 0 of 2" in line and "another rank died" in line and "--resume-if-exists" in line
    assert not (out / "summary.json").exists()

    # one process resumes a copy in this process; three processes resume the original
    shutil.copytree(out, tmp_path / "alone")
    Swarm.resume(tmp_path / "alone", neg_rastrigin, neg_rastrigin).run()
    results = _launch(tmp_path, 3, ["resume", str(out)])
    for rank, (code, err, _) in enumerate(results):
        assert code == 0, f"rank {rank}: {err[-2000:]}"
    ref = _run_record(tmp_path / "one")
    _assert_same(ref, _run_record(tmp_path / "alone"))
    alone = {p.name for p in (tmp_path / "alone" / "checkpoint").iterdir()} - {"journal.log"}
    assert all("rank0" in n for n in alone), alone  # one process: the shards of rank 1 were cleaned up
    _assert_same(ref, _run_record(out))
    left = {p.name.split("-rank")[1] for p in (out / "checkpoint").glob("ckpt-*.json")}
    assert left == {"0.json", "1.json", "2.json"}


def _cli_setup(tmp: Path) -> Path:
    from safetensors.torch import save_file

    init = torch.randn(K, D, generator=torch.Generator().manual_seed(INIT_SEED))
    for k in range(K):
        save_file({"x": init[k].contiguous()}, str(tmp / f"e{k}.safetensors"))
    (tmp / "dist_worker.py").write_text(WORKER)
    sw = {k: v for k, v in CONFIGS["particle"].items() if k != "progress"}
    cfg = {"experts": {"glob": "e*.safetensors"}, "swarm": sw, "output": {"dir": "run"},
           "utility": {"type": "python", "function": "dist_worker:flaky", "kwargs": {"kill_at": 3}}}
    path = tmp / "run.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def test_torchrun_max_restarts_resumes_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from swarmkern.cli import main

    cfg = _cli_setup(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:  # the one-process reference (kill_at only fires on rank 1)
        res = CliRunner().invoke(main, ["search", str(cfg), "-o", str(tmp_path / "one"), "--no-progress"])
        assert res.exit_code == 0, res.output
    finally:
        sys.path.remove(str(tmp_path))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "--max-restarts", "1", "--monitor-interval", "0.1"]
    proc = subprocess.run([*torchrun, "-m", "swarmkern", "search", str(cfg), "--no-progress", "--json"],
                          env=_env(PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=100,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["iterations"] == CONFIGS["particle"]["max_iters"] or \
        json.loads(proc.stdout)["stop_reason"] == "patience"
    assert "exitcode: -9" in proc.stderr  # the first attempt lost rank 1; the agent restarted both
    out = tmp_path / "run"
    assert json.loads((out / "launch.json").read_text())["world_size"] == 2
    ref, got = _run_record(tmp_path / "one"), _run_record(out)
    _assert_same(ref, got)


def test_search_resume_if_exists_checks_the_config(tmp_path):
    from click.testing import CliRunner

    from swarmkern.cli import main

    cfg = _cli_setup(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        runner = CliRunner()
        first = runner.invoke(main, ["search", str(cfg), "--no-progress", "--json"])
        assert first.exit_code == 0, first.output
        again = runner.invoke(main, ["search", str(cfg), "--no-progress", "--json", "--resume-if-exists"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.output)["best_dev_utility"] == json.loads(first.output)["best_dev_utility"]
        changed = runner.invoke(main, ["search", str(cfg), "--no-progress", "--resume-if-exists",
                                       "--max-iters", "9"])
        assert changed.exit_code != 0 and "swarm.max_iters (6 in the run, 9 now)" in changed.output
        plain = runner.invoke(main, ["search", str(cfg), "--no-progress"])
        assert plain.exit_code != 0 and "already holds a run" in plain.output
    finally:
        sys.path.remove(str(tmp_path))


def test_collective_errors_are_one_clear_line():
    from swarmkern.distributed import _first_sentence

    err = RuntimeError("[/x/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:5. This is "
                       "typically caused by a remote worker crashing.\nmore")
    assert _first_sentence(err) == "Connection closed by peer [127.0.0.1]:5"
    assert issubclass(DistributedError, RuntimeError)


class _Block:
    """A collective stand-in for loading: rank `rank` of `world` (no process group needed)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world_size = rank, world

    def owned(self, n: int) -> range:
        return block_partition(n, self.world_size, self.rank)


def test_an_unfinished_iteration_is_skipped_and_rows_reshard(tmp_path):
    from swarmkern.swarm.checkpoint import save_checkpoint

    P, dim = 5, 3
    rows = {t: torch.arange(P * dim, dtype=torch.float32).reshape(P, dim) + 100 * t for t in (1, 2, 3)}

    def write(t: int, rank: int) -> None:
        own = block_partition(P, 2, rank)
        state = {"book": {"n_particles": P, "iteration": t}, "dtype": "float32", "dim": dim,
                 "owned": [own.start, own.stop], "world_size": 2}
        part = rows[t][own.start:own.stop].clone()
        tensors = {"x": part, "v": -part, "pbest": part * 2, "gworst": rows[t][0].clone()}
        save_checkpoint(tmp_path, t, tensors, state, rank)

    for t in (1, 2):
        write(t, 0)
        write(t, 1)
    write(3, 0)  # rank 1 died before writing iteration 3
    names = sorted(p.name for p in (tmp_path / "checkpoint").glob("ckpt-*.json"))
    assert names == ["ckpt-0000001-rank1.json", "ckpt-0000002-rank0.json", "ckpt-0000002-rank1.json",
                     "ckpt-0000003-rank0.json"]  # each rank keeps its previous shard
    for world in (1, 2, 3):
        got = [load_sharded(tmp_path, _Block(r, world)) for r in range(world)]
        assert all(state["book"]["iteration"] == 2 for _, state in got)
        assert torch.equal(torch.cat([t["x"] for t, _ in got]), rows[2])
        assert torch.equal(torch.cat([t["pbest"] for t, _ in got]), rows[2] * 2)
        assert all(torch.equal(t["gworst"], rows[2][0]) for t, _ in got)
