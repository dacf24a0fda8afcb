"""The cross-call cache of the frozen lower layers' outputs: same results with and without it, the lower
layers run once over several calls, the memory bound evicts, full-weight particles never use it."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from transformers import AutoModelForCausalLM  # noqa: E402

from swarmkern.evaluate import LoraEvaluator  # noqa: E402
from swarmkern.evaluate.full import FullWeightEvaluator  # noqa: E402
from swarmkern.evaluate.models import load_tokenizer  # noqa: E402
from swarmkern.flat import FlatLayout, load_experts  # noqa: E402
from swarmkern.testing import cached_tiny_setup  # noqa: E402

TEXTS = ["Question: Hi\nAnswer:", "Question: What is 3+4?\nAnswer:", "The quick brown fox", "x y",
         "Question: Name a colour.\nAnswer:", "abc"]


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
    assert ev.layer_cache.hits == 2 * 3 and len(ev.layer_cache) == 3
    for a, b in zip(ev.logits(rows, ctxs[:3], micro_batch=6), ref_logits):  # the whole-sequence path too
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert ev.logits(rows[:1], ctxs[:1])[0].shape[0] == 1 and ev.shared_layers[0][0] is not None
    assert all(type(m).__name__ != "SkipLayer" for m in ev.shared_layers[0])  # the real layers are back
    # the unadapted model (rows=None) shares the same lower layers and the cache keeps serving it
    torch.testing.assert_close(ev.next_token_logits(None, ctxs, cands, micro_batch=6),
                               ref_ev.next_token_logits(None, ctxs, cands, micro_batch=6), rtol=1e-6, atol=1e-6)


def test_memory_bound_evicts_least_recently_used(setup):
    ev, rows, ctxs, cands = _evaluator(setup, 2**30)
    ev.next_token_logits(rows, ctxs, cands, micro_batch=6)
    sizes = [t.numel() * t.element_size() for t in ev.layer_cache._data.values()]
    assert len(sizes) == 3
    ev2, *_ = _evaluator(setup, max(sizes) + min(sizes) - 1)  # room for one entry, never two
    ref = ev.next_token_logits(rows, ctxs, cands, micro_batch=6)
    for _ in range(2):
        torch.testing.assert_close(ev2.next_token_logits(rows, ctxs, cands, micro_batch=6), ref, rtol=1e-6, atol=1e-6)
    assert ev2.layer_cache.bytes <= ev2.layer_cache.limit_bytes and len(ev2.layer_cache) == 1
    assert ev2.layer_cache.evictions >= 4
    ev2.layer_cache.resize(0)
    assert len(ev2.layer_cache) == 0 and ev2.layer_cache.bytes == 0


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
