"""Predictions remembered by particle content (swarmkern/utilities/memo.py): a particle seen before is
not run again, distinct rows of one batch run once, order is kept, the bound evicts, 0 turns it off,
and every built-in Predictions type joins back what take split."""
from __future__ import annotations

import pytest
import torch

from swarmkern.utilities.memo import PredictionMemo, row_digest
from swarmkern.utilities.protocol import Answers, ClassScores, Responses, TaskPredictions


class _Counting:
    """predict(particles) -> ClassScores of each row's sum (one example, one class); counts rows run."""

    def __init__(self):
        self.rows_run = 0
        self.calls = 0

    def __call__(self, particles: torch.Tensor) -> ClassScores:
        self.rows_run += particles.shape[0]
        self.calls += 1
        return ClassScores(particles.double().sum(1)[:, None, None])


def _values(preds: ClassScores) -> list[float]:
    return preds.scores[:, 0, 0].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seen_rows_are_served_and_new_rows_run_once(dtype):
    x = torch.randn(5, 37).to(dtype)
    fn, memo = _Counting(), PredictionMemo(64)
    first = memo.predict(x, fn)
    assert fn.rows_run == 5 and _values(first) == _values(fn(x))
    fn.rows_run = 0
    # rows 1 and 3 again, one new row twice, row 0 again: only the new row runs, once
    new = torch.randn(1, 37).to(dtype)
    batch = torch.cat([x[3:4], new, x[1:2], new, x[0:1]])
    got = memo.predict(batch, fn)
    assert fn.rows_run == 1
    assert _values(got) == _values(fn(batch))
    assert memo.hits == 4 and memo.misses == 5 + 1  # rows not run: 3 seen + the repeat of the new one


def test_content_not_position_is_the_key():
    x = torch.randn(3, 11)
    fn, memo = _Counting(), PredictionMemo(8)
    memo.predict(x, fn)
    moved = x.flip(0).clone()  # the same particles in other rows of another buffer
    assert _values(memo.predict(moved, fn)) == _values(fn(moved))
    assert fn.calls == 2  # the first predict and the check above: nothing ran for `moved`
    changed = x.clone()
    changed[1, 7] = torch.nextafter(changed[1, 7], torch.tensor(1e9))  # one ulp in one weight
    memo.predict(changed, fn)
    assert fn.calls == 3 and fn.rows_run == 3 + 3 + 1  # only the changed row ran
    assert row_digest(x[0].to(torch.bfloat16)) != row_digest(x[0])  # dtype is part of the key


def test_the_bound_evicts_least_recently_used_and_zero_turns_it_off():
    x = torch.randn(4, 5)
    fn, memo = _Counting(), PredictionMemo(2)
    memo.predict(x[:2], fn)
    memo.predict(x[2:3], fn)  # evicts row 0 (least recently used)
    assert len(memo) == 2
    fn.rows_run = 0
    memo.predict(x[1:3], fn)
    assert fn.rows_run == 0
    memo.predict(x[0:1], fn)
    assert fn.rows_run == 1
    # a batch larger than the bound still comes back whole and in order
    got = PredictionMemo(1).predict(torch.cat([x, x[:1]]), fn)
    assert _values(got) == _values(fn(torch.cat([x, x[:1]])))
    off, fn2 = PredictionMemo(0), _Counting()
    off.predict(x, fn2)
    off.predict(x, fn2)
    assert fn2.rows_run == 8 and len(off) == 0


def test_every_builtin_prediction_type_joins_what_take_splits():
    from swarmkern.utilities.harness import LmEvalPredictions

    cs = ClassScores(torch.randn(3, 4, 2, dtype=torch.float64))
    ans = Answers([["a", None], ["b", "c"], [None, "d"]])
    rsp = Responses([["x y"], ["z"], [""]])
    lm = LmEvalPredictions(torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5) > 0.5,
                           [[["g0p0", "g0p1"], ["b", "c"], ["d", "e"]], [["q"], ["r"], ["s"]]])
    tp = TaskPredictions({"mc": cs, "qa": ans})
    for preds in (cs, ans, rsp, lm, tp):
        order = [2, 0, 1, 2]
        joined = type(preds).join([preds.take([i]) for i in order])
        expect = preds.take(order)
        assert len(joined) == 4
        if isinstance(preds, ClassScores):
            assert torch.equal(joined.scores, expect.scores)
        elif isinstance(preds, LmEvalPredictions):
            assert torch.equal(joined.ll, expect.ll) and torch.equal(joined.greedy, expect.greedy)
            assert joined.texts == expect.texts
        elif isinstance(preds, TaskPredictions):
            assert torch.equal(joined.tasks["mc"].scores, expect.tasks["mc"].scores)
            assert joined.tasks["qa"] == expect.tasks["qa"]
        else:
            assert joined == expect


# -- on a built utility (tiny model) -------------------------------------------------------------------
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from swarmkern.utilities import build_utility  # noqa: E402
from test_utilities import pool, setup  # noqa: E402,F401  (the tiny model and experts fixtures)


def _mc(setup, **kw) -> dict:
    d = setup.data
    return {"type": "multiple_choice", "dev": str(d["mc_dev"]), "test": str(d["mc_test"]), **kw}


def test_a_utility_runs_the_model_once_per_distinct_particle(setup, pool, monkeypatch):
    built = build_utility(_mc(setup, dtype="float32"), pool)
    reference = build_utility(_mc(setup, dtype="float32", memo_rows=0), pool)
    rows_run = []
    from swarmkern.evaluate.base import ParticleEvaluator

    original = ParticleEvaluator.loglikelihood

    def counting(self, rows, *args, **kwargs):
        rows_run.append(0 if rows is None else rows.shape[0])
        return original(self, rows, *args, **kwargs)
    monkeypatch.setattr(ParticleEvaluator, "loglikelihood", counting)
    w = pool.weights
    first = built.dev(w)
    assert sum(rows_run) == w.shape[0]
    mixed = torch.cat([w[1:2], 0.5 * (w[0:1] + w[1:2]), w[0:1]])
    got = built.dev.predict(mixed)
    assert sum(rows_run) == w.shape[0] + 1  # only the new mixture ran
    want = reference.dev.predict(mixed)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=1e-5)
    assert built.dev(w).tolist() == first.tolist()
    assert built.dev.memo.hits == 2 + w.shape[0]
    rows_run.clear()
    reference.dev(w)
    reference.dev(w)
    assert sum(rows_run) == 2 * w.shape[0]  # memo_rows: 0 runs every time
