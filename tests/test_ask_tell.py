"""Ask/tell: `Swarm.ask()` / `Swarm.tell(scores)` drive the search; `run()` is a loop over them.

The trajectories in tests/data/asktell_trajectories.json were recorded with the loop as it was before
ask/tell existed (commit 21585e4): history without timings, summaries without wall-clock fields, the
sequence of utility calls (rows per call) and the sha256 of the final x, v, pbest and gworst buffers.
The current code must reproduce them bit for bit. Regenerate (only on purpose, it resets the
reference): `python tests/test_ask_tell.py --write`.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from swarmkern.objectives import neg_rastrigin, neg_sphere
from swarmkern.swarm import Ask, Swarm, SwarmConfig, score_rows

FIXTURE = Path(__file__).parent / "data" / "asktell_trajectories.json"

# name -> (SwarmConfig fields, objective, with a test utility)
CASES: dict[str, tuple[dict, str, bool]] = {
    "particle_dropn": (dict(seed=1, n_particles=10, max_iters=12, patience=100, drop_n=0.2), "rastrigin", True),
    "element": (dict(seed=2, n_particles=9, max_iters=10, patience=100, randomness="element"), "rastrigin", False),
    "off_no_repel": (dict(seed=3, n_particles=8, max_iters=10, randomness="off", repel=False), "sphere", False),
    "dropk_batched": (dict(seed=4, n_particles=12, max_iters=14, patience=100, drop_k=0.3, batch_size=5),
                      "rastrigin", True),
    "restarts_patience": (dict(seed=5, max_iters=40, patience=4, restart_patience=0.5, step=0.6), "rastrigin", False),
    "include_base_best": (dict(seed=6, n_particles=11, max_iters=10, patience=100, include_base=True,
                               velocity_init="best", crossover_weight=(-0.5, 1.5)), "sphere", True),
    "zero_velocity_nan": (dict(seed=7, n_particles=10, max_iters=10, patience=100, velocity_init="zero",
                               drop_n=0.3), "nan", False),
    "no_restart_iter_patience": (dict(seed=8, n_particles=7, max_iters=30, patience=3, patience_mode="iterations",
                                      restart=False, step_factor=0.8, min_step=0.2), "sphere", False),
}
K, D = 5, 96


def _objective(name: str):
    if name == "sphere":
        return neg_sphere
    if name == "rastrigin":
        return neg_rastrigin

    def with_nan(p: torch.Tensor) -> torch.Tensor:  # NaN for some locations: counted as -inf
        u = neg_rastrigin(p)
        return torch.where(p[:, 0] > 1.5, torch.full_like(u, math.nan), u)
    return with_nan


def _points() -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(11)) * 1.5 + 0.3


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _strip_summary(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("wall_seconds", "best_path", "config")}


def record(name: str, drive=None, output_dir=None) -> dict:
    """Run one case and return everything that must not change. `drive(swarm)` replaces `swarm.run()`
    and returns its SwarmResult (and may return another Swarm object's, e.g. a resumed one's)."""
    fields, objective, with_test = CASES[name]
    fn = _objective(objective)
    calls: list[int] = []

    def utility(p: torch.Tensor) -> torch.Tensor:
        calls.append(int(p.shape[0]))
        return fn(p)

    sw = Swarm(SwarmConfig(progress=False, **fields), _points(), utility, fn if with_test else None,
               output_dir=output_dir)
    result = (drive or Swarm.run)(sw)
    sw = getattr(result, "swarm", sw)
    history = [{k: v for k, v in h.items() if k != "timings"} for h in sw.history]
    return {"history": json.loads(json.dumps(history)), "summary": json.loads(json.dumps(_strip_summary(result.summary))),
            "calls": calls, "buffers": {k: _sha(t) for k, t in sw.buffers.tensors().items()},
            "best": _sha(result.best)}


def _load() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_reproduces_the_recorded_trajectory(name):
    assert record(name) == _load()[name]


def _drive_by_hand(sw: Swarm):
    """The loop a user writes around ask/tell (what run() does, without the progress bar)."""
    while not sw.done:
        asked = sw.ask()
        assert isinstance(asked, Ask) and asked.rows.shape == (len(asked.indices), D)
        sw.tell(score_rows(sw.utility, asked.rows, sw.config.batch_size))
    return sw.finish()


@pytest.mark.parametrize("name", sorted(CASES))
def test_ask_tell_loop_reproduces_the_recorded_trajectory(name):
    assert record(name, _drive_by_hand) == _load()[name]


@pytest.mark.parametrize("name", ["particle_dropn", "dropk_batched", "restarts_patience"])
def test_abandoned_ask_then_resume_reproduces_the_recorded_trajectory(tmp_path, name):
    """Tell 4 iterations, ask the 5th and lose the process: resuming from the checkpoints re-asks
    that iteration and ends on the recorded trajectory."""
    def crash_then_resume(sw: Swarm):
        for _ in range(5):
            sw.tell(score_rows(sw.utility, sw.ask().rows, sw.config.batch_size))
        sw.ask()  # never told
        resumed = Swarm.resume(tmp_path, sw.utility, sw.test_utility)
        assert resumed.book.iteration == 4 and resumed.ask().iteration == 5
        result = resumed.run()
        result.swarm = resumed
        return result

    assert record(name, crash_then_resume, output_dir=tmp_path) == _load()[name]


def test_ask_is_idempotent_until_told_and_rows_are_views():
    sw = Swarm(SwarmConfig(progress=False, n_particles=6, max_iters=2), _points(), neg_sphere)
    first = sw.ask()
    assert first.iteration == 0 and first.indices == list(range(6))
    assert sw.ask() is first
    assert first.rows.untyped_storage().data_ptr() == sw.buffers.x.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="tell: 5 scores for 6 asked particles"):
        sw.tell(torch.zeros(5))
    sw.tell([float(v) for v in neg_sphere(first.rows)])  # any sequence of floats
    assert sw.book.iteration == 0 and sw.book.evaluations_total == 6
    with pytest.raises(RuntimeError, match="without a pending ask"):
        sw.tell(torch.zeros(6))
    second = sw.ask()
    assert second.iteration == 1
    with pytest.raises(RuntimeError, match="ask pending"):
        sw.finish()
    sw.tell(neg_sphere(second.rows))
    sw.tell(neg_sphere(sw.ask().rows))
    assert sw.done
    with pytest.raises(RuntimeError, match=r"stopped \(max_iters\)"):
        sw.ask()
    assert sw.finish().stop_reason == "max_iters"


def test_skipped_particles_are_not_asked_and_keep_their_score():
    """dropN: the asked indices leave out the skipped particles; rows are gathered in their order."""
    sw = Swarm(SwarmConfig(progress=False, n_particles=10, max_iters=6, patience=100, drop_n=0.4, seed=3),
               _points(), neg_sphere)
    sw.tell(neg_sphere(sw.ask().rows))
    partial = 0
    while not sw.done:
        before = list(sw.book.u_now)
        asked = sw.ask()
        skipped = sorted(set(range(10)) - set(asked.indices))
        partial += 0 < len(skipped) < 10
        assert torch.equal(asked.rows, sw.buffers.x[asked.indices])
        sw.tell(neg_sphere(asked.rows))
        assert sw.history[-1]["skipped"] == skipped
        assert all(sw.book.u_now[i] == before[i] for i in skipped)
    assert partial >= 2


def test_finish_early_says_so():
    sw = Swarm(SwarmConfig(progress=False, n_particles=6, max_iters=50, patience=100), _points(), neg_sphere)
    for _ in range(3):
        sw.tell(neg_sphere(sw.ask().rows))
    res = sw.finish()
    assert res.iterations == 2 and res.stop_reason == "stopped by the caller"


if __name__ == "__main__" and "--write" in sys.argv:
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({n: record(n) for n in sorted(CASES)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
