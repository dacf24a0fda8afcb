"""The cross-call cache of the frozen lower layers' outputs: same results with and without it, the lower
layers run once over several calls (also when the examples are grouped into other batches), the memory
bound evicts, full-weight particles never use it."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from transformers import AutoModelForCausalLM  # noqa: E402

from swarmkern.evaluate import LoraEvaluator, encode_requests  # noqa: E402
from swarmkern.evaluate.full import FullWeightEvaluator  # noqa: E402
from swarmkern.evaluate.models import load_tokenizer  # noqa: E402
from swarmkern.flat import FlatLayout, load_experts  # noqa: E402
from swarmkern.testing import cached_tiny_setup  # noqa: E402

TEXTS = ["Question: Hi\nAnswer:", "Question: What is 3+4?\nAnswer:", "The quick brown fox", "x y",
         "Question: Name a colour.\nAnswer:", "abc"]
CONTS = [" red", " blue sky", " 3 + 4 = 7"]  # multi-token: loglikelihood's continuation pass runs


@pytest.fixture(scope="module")
def setup():
    return cached_tiny_setup(judge=False, reward=False)


def _evaluator(setup, limit_bytes):
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir)).eval()
    ev = LoraEvaluator(model, tok, pool.layout, pool.adapter_config)
    ev.layer_cache.resize(limit_bytes)
    ctxs = [tok(t)["input_ids"] for t in TEXTS]
    cands = [[5, 6, 7]] * len(ctxs)
    return ev, pool.weights, ctxs, cands


class _Counter:
    """Counts the rows that pass through a module."""

    def __init__(self, module):
        self.rows = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, out):
        self.rows += (out[0] if isinstance(out, tuple) else out).shape[0]


def test_cached_and_uncached_results_are_equal_and_lower_layers_run_once(setup):
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ref_ev, _, _, _ = _evaluator(setup, 0)
    lowest = _Counter(ev.shared_layers[0][0])
    adapted = _Counter(ev.shared_layers[0][ev.shared_layers[1]])
    tail_positions = []  # the last layer's MLP runs only at the scored positions
    ev.tail_mlp.register_forward_hook(lambda m, args, out: tail_positions.append(args[0].shape[0] * args[0].shape[1]))
    ref = ref_ev.next_token_logits(rows, ctxs, cands, micro_batch=6)  # 3 particles x 2 examples per pass
    ref_logits = ref_ev.logits(rows, ctxs[:3], micro_batch=6)
    first = None
    for call in range(3):
        got = ev.next_token_logits(rows, ctxs, cands, micro_batch=6)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        if call == 0:
            first = lowest.rows
            assert first == len(ctxs)  # each example through the lower layers once (shared by the particles)
    assert lowest.rows == first  # later calls: served from the cache, the lower layers never ran
    assert adapted.rows == 3 * rows.shape[0] * len(ctxs)  # the adapted layers ran every call for every particle
    assert sum(tail_positions) == 3 * rows.shape[0] * len(ctxs)  # one position per context and particle
    assert ev.layer_cache.hits == 2 * 3 and len(ev.layer_cache) == len(ctxs)  # hits count batches; entries examples
    for a, b in zip(ev.logits(rows, ctxs[:3], micro_batch=6), ref_logits):  # the whole-sequence path too
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert ev.logits(rows[:1], ctxs[:1])[0].shape[0] == 1 and ev.shared_layers[0][0] is not None
    assert all(type(m).__name__ != "SkipLayer" for m in ev.shared_layers[0])  # the real layers are back
    # the unadapted model (rows=None) shares the same lower layers and the cache keeps serving it, here in
    # batches of 6 from entries recorded in batches of 2 (other matmul shapes: fp32 rounding differs)
    lowest_before = lowest.rows
    torch.testing.assert_close(ev.next_token_logits(None, ctxs, cands, micro_batch=6),
                               ref_ev.next_token_logits(None, ctxs, cands, micro_batch=6), rtol=0, atol=1e-5)
    assert lowest.rows == lowest_before


def test_memory_bound_evicts_least_recently_used(setup):
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ref = ev.next_token_logits(rows, ctxs, cands, micro_batch=6)
    order = list(ev.layer_cache._data)  # recorded batch by batch, shortest contexts first
    sizes = [t.numel() * t.element_size() for t in ev.layer_cache._data.values()]
    assert len(order) == len(ctxs) and sum(sizes) == ev.layer_cache.bytes
    assert len(set(sizes)) > 1  # entries hold the real positions only: contexts of other lengths differ
    ev2, *_ = _evaluator(setup, sizes[-2] + sizes[-1])  # room for the last batch's two entries, no more
    torch.testing.assert_close(ev2.next_token_logits(rows, ctxs, cands, micro_batch=6), ref, rtol=1e-6, atol=1e-6)
    assert list(ev2.layer_cache._data) == order[-2:] and ev2.layer_cache.evictions == len(ctxs) - 2
    assert ev2.layer_cache.bytes == sizes[-2] + sizes[-1] <= ev2.layer_cache.limit_bytes
    torch.testing.assert_close(ev2.next_token_logits(rows, ctxs, cands, micro_batch=6), ref, rtol=1e-6, atol=1e-6)
    assert ev2.layer_cache.bytes <= ev2.layer_cache.limit_bytes
    # a served batch becomes the most recently used: shrinking evicts the oldest entry that was not served
    shortest = sorted(range(len(ctxs)), key=lambda i: len(ctxs[i]))[:2]
    ev.next_token_logits(rows, [ctxs[i] for i in shortest], [cands[i] for i in shortest], micro_batch=6)
    ev.layer_cache.resize(sum(sizes) - 1)
    assert list(ev.layer_cache._data) == order[3:] + order[:2] and ev.layer_cache.evictions == 1
    ev2.layer_cache.resize(0)
    assert len(ev2.layer_cache) == 0 and ev2.layer_cache.bytes == 0
    ev3, *_ = _evaluator(setup, min(sizes) - 1)  # every entry larger than the limit: none is kept
    torch.testing.assert_close(ev3.next_token_logits(rows, ctxs, cands, micro_batch=6), ref, rtol=1e-6, atol=1e-6)
    assert len(ev3.layer_cache) == 0 and ev3.layer_cache.bytes == 0


def test_full_weight_particles_have_no_lower_layer_cache(setup):
    tok = load_tokenizer(setup.model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir)).eval()
    sd = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.3." in n}
    layout = FlatLayout.from_state_dict(sd)
    ev = FullWeightEvaluator(model, tok, layout)
    assert ev.shared_layers is None
    lowest = _Counter(model.model.layers[0])
    row = layout.flatten(sd)[None]
    ctxs = [tok(t)["input_ids"] for t in TEXTS]
    for _ in range(2):
        ev.next_token_logits(row, ctxs, [[5, 6]] * len(ctxs))
    assert lowest.rows == 2 * len(ctxs) and len(ev.layer_cache) == 0


def _calls(ev, tok, ctxs, cands):
    """One scoring method per kind: name -> fn(rows) -> tensor."""
    shared = encode_requests(tok, [t for t in TEXTS for _ in CONTS], [k for _ in TEXTS for k in CONTS])
    whole = encode_requests(tok, TEXTS, CONTS * 2)  # one continuation per context: whole sequences
    return {
        "first_token": lambda r: ev.next_token_logits(r, ctxs, cands, micro_batch=6),
        "loglik_shared_context": lambda r: ev.loglikelihood(r, shared, micro_batch=6),
        "loglik_whole": lambda r: ev.loglikelihood(r, whole, micro_batch=6),
        "logits": lambda r: torch.cat([x.flatten() for x in ev.logits(r, ctxs, micro_batch=6)]),
    }


@pytest.mark.parametrize("kind", ["first_token", "loglik_shared_context", "loglik_whole", "logits"])
def test_lower_layers_are_served_across_groupings(setup, kind):
    """3 particles (2 examples per pass), then 1 particle (6 per pass): the second call's batches are new
    groupings of cached examples, so the lowest layer runs no row and the results match an uncached
    evaluator. With shared contexts the prefill is left padded and the second call pairs contexts of
    different lengths, so the cached states are placed at other offsets than they were recorded at."""
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ref_ev, *_ = _evaluator(setup, 0)
    tok = load_tokenizer(setup.model_dir)
    call, ref_call = _calls(ev, tok, ctxs, cands)[kind], _calls(ref_ev, tok, ctxs, cands)[kind]
    assert rows.shape[0] >= 3
    lowest = _Counter(ev.shared_layers[0][0])
    torch.testing.assert_close(call(rows[:3]), ref_call(rows[:3]), rtol=0, atol=1e-5)
    ran, misses, hits = lowest.rows, ev.layer_cache.misses, ev.layer_cache.hits
    assert ran > 0 and len(ev.layer_cache) > 0 and hits == 0
    got = call(rows[:1])
    assert lowest.rows == ran  # every example of the new batches came from the cache
    assert ev.layer_cache.misses == misses and ev.layer_cache.hits > 0
    torch.testing.assert_close(got, ref_call(rows[:1]), rtol=0, atol=1e-5)
    if kind == "loglik_shared_context":  # the 1-particle prefill batches pair contexts of unequal length
        by_len = sorted(len(c) for c in ctxs)
        assert any(a != b for a, b in zip(by_len[0::2], by_len[1::2]))


def test_a_batch_with_a_missing_example_runs_whole_and_records_it(setup):
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ref_ev, *_ = _evaluator(setup, 0)
    lowest = _Counter(ev.shared_layers[0][0])
    ev.next_token_logits(rows[:1], ctxs[:3], cands[:3], micro_batch=6)
    assert lowest.rows == 3 and len(ev.layer_cache) == 3
    # all six in one batch: three are missing, so the lower layers run for the whole batch (6 rows)
    got = ev.next_token_logits(rows[:1], ctxs, cands, micro_batch=6)
    assert lowest.rows == 3 + 6 and len(ev.layer_cache) == 6
    torch.testing.assert_close(got, ref_ev.next_token_logits(rows[:1], ctxs, cands, micro_batch=6), rtol=0, atol=1e-5)
    ev.next_token_logits(rows[:3], ctxs, cands, micro_batch=6)  # 2 per pass: all served
    assert lowest.rows == 9


def test_context_prefill_and_continuations_are_served_together(setup):
    """first_token caches the whole contexts, which are also loglik's context prefill entries; their
    continuation passes are not cached yet, so neither pass is served (the KV cache's lower-layer slots
    must be all real or all placeholders) and both count as misses; the next call serves both."""
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ref_ev, *_ = _evaluator(setup, 0)
    tok = load_tokenizer(setup.model_dir)
    calls, ref_calls = _calls(ev, tok, ctxs, cands), _calls(ref_ev, tok, ctxs, cands)
    lowest = _Counter(ev.shared_layers[0][0])
    calls["first_token"](rows[:1])  # one batch of 6 contexts
    assert (lowest.rows, ev.layer_cache.hits, ev.layer_cache.misses) == (6, 0, 1)
    ref = ref_calls["loglik_shared_context"](rows[:1])
    torch.testing.assert_close(calls["loglik_shared_context"](rows[:1]), ref, rtol=0, atol=1e-5)
    n_batches = 3  # 6 contexts x 3 continuations at 6 rows per pass
    assert lowest.rows == 6 + 6 + 18  # the prefills ran again although their contexts were cached
    assert (ev.layer_cache.hits, ev.layer_cache.misses) == (0, 1 + 2 * n_batches)
    torch.testing.assert_close(calls["loglik_shared_context"](rows[:1]), ref, rtol=0, atol=1e-5)
    assert lowest.rows == 30 and ev.layer_cache.hits == 2 * n_batches


def test_layer_cache_mb_zero_turns_a_shared_evaluator_off(setup):
    """Two utilities share one evaluator: the one with layer_cache_mb: 0 turns its cache off, whichever is
    built first (the largest limit wins otherwise)."""
    from swarmkern.evaluate import models
    from swarmkern.flat import load_experts
    from swarmkern.utilities import build_utility, common

    pool = load_experts(setup.expert_dirs)
    for first, second in ((512, 0), (0, 512)):
        common._EVALUATORS.clear()  # as in a new process
        getattr(common, "_CACHE_OFF", set()).clear()
        models._CACHE.clear()
        built = [build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"]), "dtype": "float32",
                                "layer_cache_mb": mb}, pool) for mb in (first, second)]
        [ev] = common._EVALUATORS.values()
        assert ev.layer_cache.limit_bytes == 0
        built[0].dev(pool.weights[:2])
        assert len(ev.layer_cache) == 0
