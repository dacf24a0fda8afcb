"""A resumed search ends bit-identical to an uninterrupted one with the utility's caches on (the
prediction memo and the lower-layer cache), in fp32 and bf16, resumed without its experts given."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.testing import run_record


def _build(setup, pool, dtype: str):
    from swarmkern.utilities import build_utility, common

    from swarmkern.evaluate import models

    common._EVALUATORS.clear()  # a new process: no evaluator, no cache, no memo
    models._CACHE.clear()
    return build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"]),
                          "test": str(setup.data["mc_test"]), "dtype": dtype, "micro_batch": 8}, pool)


def _config() -> SwarmConfig:
    # drop_n varies the batches; restarts and reports score rows seen before (memo hits); snapshots
    # every 3 iterations leave iterations to redo after the snapshot
    return SwarmConfig(seed=3, n_particles=7, max_iters=10, patience=1000, restart_patience=0.002, drop_n=0.3,
                       progress=False, snapshot_every=3, report_ensemble_k=[1, 3], report_emergence=True,
                       report_pbest_test=True)


def _outputs(out: Path) -> dict:
    history, summary = run_record(out)
    return {"history": history, "summary": summary, "reports": json.loads((out / "reports.json").read_text()),
            "best": load_file(str(out / "best" / "adapter_model.safetensors"))}


class _Killed(Exception):
    pass


def _die_at(utility, call: int) -> None:
    """Make the utility raise at its `call`-th call (the search dies there, as if killed)."""
    real, calls = utility.evaluate, {"n": 0}

    def evaluate(particles):
        calls["n"] += 1
        if calls["n"] == call:
            raise _Killed()
        return real(particles)

    utility.evaluate = evaluate


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_with_caches_is_bit_identical(setup, pool, tmp_path, dtype):
    full = tmp_path / "full"
    whole = _build(setup, pool, dtype)
    uninterrupted = Swarm(_config(), pool, whole.dev, whole.test, output_dir=full)
    uninterrupted.run()
    expected = _outputs(full)
    assert whole.dev.memo.hits > 0  # the run did serve rows from the memo

    part = tmp_path / "part"
    for first, kill_at in ((True, 6), (False, 4)):  # iterations 5 and 7 (after the resume from snapshot 3)
        built = _build(setup, pool, dtype)
        _die_at(built.dev, kill_at)
        with pytest.raises(_Killed):
            if first:
                Swarm(_config(), pool, built.dev, built.test, output_dir=part).run()
            else:
                Swarm.resume(part, built.dev, built.test).run()
    built = _build(setup, pool, dtype)
    resumed = Swarm.resume(part, built.dev, built.test)  # no pool=: the experts are read from their paths
    resumed.run()
    got = _outputs(part)
    # what the reports (and compare) read: the personal bests' per-example predictions, served from the
    # memo, bit for bit (recomputed in another batch, fp32 differs in the last bits)
    for split in ("dev", "test"):
        a = getattr(whole, split).predict(uninterrupted.buffers.pbest).scores
        b = getattr(built, split).predict(resumed.buffers.pbest).scores
        assert torch.equal(a, b), split
    assert got["history"] == expected["history"]
    assert got["summary"] == expected["summary"]
    assert got["reports"] == expected["reports"]
    for name, t in expected["best"].items():
        assert torch.equal(t, got["best"][name]), name


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if "seconds" not in k and k not in ("timings", "best_path", "wall_s")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _sweep_outputs(out: Path, n: int) -> dict:
    runs = {}
    for i in range(n):
        run = out / "runs" / f"{i:03d}"
        runs[i] = {"history": [_strip_times(json.loads(line)) for line in (run / "history.jsonl").read_text().splitlines()],
                   "summary": _strip_times(json.loads((run / "summary.json").read_text()))}
    return {"sweep": _strip_times(json.loads((out / "sweep.json").read_text())), "runs": runs,
            "best": load_file(str(out / "best" / "adapter_model.safetensors"))}


def test_sweep_killed_in_the_middle_of_a_round_resumes_bit_identical(setup, pool, tmp_path):
    """A sweep of 3 configurations scored in calls of batch_size rows (several per round), killed inside a
    round's utility calls, then between two swarms' tells of a round; resumed without pool=, it ends as
    the uninterrupted sweep (fp32 on a CPU: a row's scores depend on its batch, so the rounds must be
    the same)."""
    from swarmkern.swarm.sweep import Sweep, SweepSpace

    base = SwarmConfig(seed=2, n_particles=5, max_iters=6, patience=1000, drop_n=0.2, progress=False,
                       report_ensemble_k=[2], report_emergence=True)
    configs = SweepSpace(mode="random", n=3, seed=1).expand(base)

    def build():
        return _build(setup, pool, "float32")

    whole = build()
    full = tmp_path / "full"
    Sweep(configs, pool, whole.dev, test_utility=whole.test, output_dir=full, batch_size=4, progress=False).run()
    expected = _sweep_outputs(full, 3)

    part = tmp_path / "part"
    built = build()
    _die_at(built.dev, 9)  # 15 rows less repeats per round, 4 per call: call 9 is inside round 2
    with pytest.raises(_Killed):
        Sweep(configs, pool, built.dev, test_utility=built.test, output_dir=part, batch_size=4, progress=False).run()

    built = build()
    sweep = Sweep.resume(part, built.dev, test_utility=built.test, progress=False)
    real_tell, told = sweep.swarms[1].tell, {"n": 0}

    def tell(scores):  # swarm 1 dies in its third tell: swarm 0 has journaled that round, swarm 2 not
        told["n"] += 1
        if told["n"] == 3:
            raise _Killed()
        real_tell(scores)

    sweep.swarms[1].tell = tell
    with pytest.raises(_Killed):
        sweep.run()

    built = build()
    Sweep.resume(part, built.dev, test_utility=built.test, progress=False).run()
    got = _sweep_outputs(part, 3)
    assert got["sweep"] == expected["sweep"]
    for i in range(3):
        assert got["runs"][i]["history"] == expected["runs"][i]["history"], i
        assert got["runs"][i]["summary"] == expected["runs"][i]["summary"], i
    for name, t in expected["best"].items():
        assert torch.equal(t, got["best"][name]), name


def test_resume_search_with_moved_experts_writes_every_output(setup, tmp_path):
    """`swarmkern resume` after the experts were moved: the search finishes, writes summary.json and
    reports.json, and says why the report that needs the experts' numbers is missing."""
    import shutil

    import yaml

    from swarmkern.config import validate_run_config
    from swarmkern.runner import resume_search, save_run_config
    from swarmkern.swarm.checkpoint import CHECKPOINT_DIR
    from swarmkern.swarm.journal import read

    experts = tmp_path / "experts"
    shutil.copytree(setup.expert_dirs[0].parent, experts)
    out = tmp_path / "run"
    config = validate_run_config({
        "experts": {"paths": [str(experts / p.name) for p in setup.expert_dirs]},
        "swarm": {"seed": 0, "max_iters": 4, "progress": False, "snapshot_every": 2, "report_emergence": True},
        "utility": {"type": "multiple_choice", "dev": str(setup.data["mc_dev"]), "test": str(setup.data["mc_test"]),
                    "dtype": "float32"},
        "output": {"dir": str(out)}}, "test")
    from swarmkern.flat import load_experts

    pool = load_experts(config.expert_sources())
    built = _build(setup, pool, "float32")
    _die_at(built.dev, 4)  # iteration 3: snapshot 2
    out.mkdir()
    save_run_config(config, out)  # as `swarmkern search` does
    with pytest.raises(_Killed):
        Swarm(config.swarm, pool, built.dev, built.test, output_dir=out).run()
    assert read(out / CHECKPOINT_DIR)[0][-1].iteration == 2
    shutil.move(str(experts), str(tmp_path / "moved"))
    _build(setup, pool, "float32")
    resume_search(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4
    assert "have moved" in summary["reports"]["skipped"]["emergence"]
    assert (out / "best" / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["swarm"]["max_iters"] == 4
