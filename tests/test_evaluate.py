"""The batched LoRA / full-weight evaluators against PEFT and plain transformers, on tiny models."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from swarmkern.evaluate import LoraEvaluator, UnsupportedAdapter, encode_requests  # noqa: E402
from swarmkern.evaluate.full import FullWeightEvaluator  # noqa: E402
from swarmkern.evaluate.models import ModelLoadError, load_tokenizer  # noqa: E402
from swarmkern.flat import FlatLayout, load_experts  # noqa: E402
from swarmkern.testing import build_tiny_causal_lm, cached_tiny_setup, write_lora_experts  # noqa: E402

TEXTS = ["Hi", "What is 3+4?\nAnswer: 7", "The quick brown fox jumps", "x"]


@pytest.fixture(scope="module")
def setup():
    return cached_tiny_setup(judge=False, reward=False)


def fresh_model(path):
    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def peft_logits(model_dir, adapter_dir, seqs):
    """Reference: PEFT's own model, each sequence alone (no padding)."""
    pm = PeftModel.from_pretrained(fresh_model(model_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return [pm(input_ids=torch.tensor([s])).logits[0] for s in seqs]


def assert_rel_close(a, b, rel=1e-5):
    err = (a - b).abs().max() / b.abs().max()
    assert err <= rel, f"relative error {err:.2e} > {rel}"


def check_against_peft(model_dir, adapter_dirs, **ev_kwargs):
    tok = load_tokenizer(model_dir)
    pool = load_experts(adapter_dirs)
    rows = pool.weights
    ev = LoraEvaluator(fresh_model(model_dir), tok, pool.layout, pool.adapter_config, **ev_kwargs)
    seqs = [tok(t)["input_ids"] for t in TEXTS]  # mixed lengths -> padding inside every batch
    # all particles in one pass / particles split over passes / the first again: its lower layers are
    # then served from the cross-call cache (when the adapters leave lower layers unadapted)
    for micro_batch in (64, 3, 64):
        got = ev.logits(rows, seqs, micro_batch=micro_batch)
        for k, d in enumerate(adapter_dirs):
            ref = peft_logits(model_dir, d, seqs)
            for i in range(len(seqs)):
                assert_rel_close(got[i][k], ref[i])
    lower = ev.shared_layers is not None and ev.shared_layers[1] > 0 and ev.share_prefix
    assert (ev.layer_cache.hits > 0) == lower
    return ev, rows, seqs


def test_matches_peft_per_particle_with_padding(setup):
    # experts adapt the top two layers: the shared-prefix path is used
    ev, rows, seqs = check_against_peft(setup.model_dir, setup.expert_dirs)
    assert ev.shared_layers is not None and ev.shared_layers[1] == 2
    base = fresh_model(setup.model_dir)
    with torch.no_grad():
        plain = base(input_ids=torch.tensor([seqs[1]])).logits[0]
    assert (ev.logits(rows[:1], [seqs[1]])[0][0] - plain).abs().max() > 1e-3  # the adapters matter


def test_matches_peft_rslora_patterns_all_layers(tmp_path, setup):
    from peft import LoraConfig, get_peft_model

    dirs = []
    for k in range(2):
        cfg = LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                         rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, task_type="CAUSAL_LM")
        pm = get_peft_model(fresh_model(setup.model_dir), cfg)
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        pm.save_pretrained(str(tmp_path / f"e{k}"))
        dirs.append(tmp_path / f"e{k}")
    ev, _, _ = check_against_peft(setup.model_dir, dirs)
    assert ev.shared_layers[1] == 0
    scales = {t.module.split(".")[-1]: t.scale for t in ev.targets}
    assert scales == pytest.approx({"q_proj": 6 / 2.0, "v_proj": 3 / 2.0, "down_proj": 6 / 2 ** 0.5})


def test_prefix_sharing_and_micro_batch_do_not_change_results(setup):
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    rows = pool.weights
    req = encode_requests(tok, ["Q: 1+1=", "Hello", "abc"], [" 2", " world", "d"])
    a = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config)
    b = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config, share_prefix=False)
    ref = b.loglikelihood(rows, req)
    for mb in (64, 4, 1):
        torch.testing.assert_close(a.loglikelihood(rows, req, micro_batch=mb), ref, rtol=1e-6, atol=1e-6)
    # strided (non-contiguous) row views are fine
    big = torch.zeros(2 * rows.shape[0], rows.shape[1])
    big[::2] = rows
    torch.testing.assert_close(a.loglikelihood(big[::2], req), ref, rtol=1e-6, atol=1e-6)


def test_shared_context_scoring_matches_peft(setup):
    """Choices of one question reuse its KV cache: sums must equal PEFT's whole-sequence scores."""
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    ctx = ["Q: What is 3+4?\nA:"] * 3 + ["Hi"] * 2 + ["a much longer context, yes"] * 3
    cont = [" 7", " 12", " seven", " there", "!", " x", " yz", " 1234"]
    req = encode_requests(tok, ctx, cont)
    assert len(req.contexts) == 3 and req.owner == [0, 0, 0, 1, 1, 2, 2, 2]
    for share_prefix in (True, False):
        ev = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config,
                           share_prefix=share_prefix)
        ev.share_context = False
        whole = ev.loglikelihood(pool.weights, req)
        ev.share_context = True
        for mb in (64, 5, 1):
            torch.testing.assert_close(ev.loglikelihood(pool.weights, req, micro_batch=mb), whole,
                                       rtol=1e-6, atol=1e-5)
    for k, d in enumerate(setup.expert_dirs):
        ref = peft_logits(setup.model_dir, d, req.ids)
        sums = torch.tensor([lg.log_softmax(-1)[len(s) - n - 1:len(s) - 1].gather(1, torch.tensor(s[len(s) - n:])[:, None]).sum()
                             for lg, s, n in zip(ref, req.ids, req.n_cont)], dtype=torch.float64)
        torch.testing.assert_close(whole[k], sums, rtol=1e-5, atol=1e-5)


def test_generation_matches_peft_generate(setup):
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    ev = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config)
    prompts = [tok(t)["input_ids"] for t in ["Hi", "What is 3+4?", "abc def ghi"]]
    for micro_batch in (64, 2):
        got = ev.generate(pool.weights, prompts, max_new_tokens=7, micro_batch=micro_batch)
        for k, d in enumerate(setup.expert_dirs):
            pm = PeftModel.from_pretrained(fresh_model(setup.model_dir), str(d)).eval()
            for e, p in enumerate(prompts):
                out = pm.generate(input_ids=torch.tensor([p]), max_new_tokens=7, do_sample=False)
                assert got[k][e] == tok.decode(out[0, len(p):], skip_special_tokens=True)


def test_generation_stops_at_stop_strings(setup):
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    ev = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config)
    prompts = [tok(t)["input_ids"] for t in ["Hi", "What is 3+4?"]]
    full = ev.generate(pool.weights, prompts, max_new_tokens=12)
    char = full[0][0][3]  # a character the first particle generates: use it as a stop string
    cut = ev.generate(pool.weights, prompts, max_new_tokens=12, stop=[char])
    for row_full, row_cut in zip(full, cut):
        for f, c in zip(row_full, row_cut):
            assert c == f.split(char)[0]


def test_bfloat16_compute_is_close(setup):
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    ref = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config).logits(pool.weights, seqs)
    bf = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.bfloat16).eval()
    got = LoraEvaluator(bf, tok, pool.layout, pool.adapter_config).logits(pool.weights, seqs)
    for g, r in zip(got, ref):  # bf16 has 8 mantissa bits: compare on average, not element by element
        assert g.dtype == torch.float32
        assert (g - r).abs().mean() / r.abs().mean() < 0.03


def test_full_weight_particles_match_loaded_models(setup, tmp_path):
    from safetensors.torch import save_file

    tok = load_tokenizer(setup.model_dir)
    models, paths = [], []
    for k in range(2):
        m = fresh_model(setup.model_dir)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "layers.3" in n:  # experts cover only the top layer: the rest is the base model's
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) * 0.1)
        save_file({n: p.contiguous() for n, p in m.named_parameters() if "layers.3" in n}, str(tmp_path / f"f{k}.safetensors"))
        models.append(m)
        paths.append(tmp_path / f"f{k}.safetensors")
    pool = load_experts(paths)
    ev = FullWeightEvaluator(fresh_model(setup.model_dir), tok, pool.layout)
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    got = ev.logits(pool.weights, seqs)
    for k, m in enumerate(models):
        with torch.no_grad():
            for i, s in enumerate(seqs):
                assert_rel_close(got[i][k], m(input_ids=torch.tensor([s])).logits[0])
    prompts = seqs[:2]
    gen = ev.generate(pool.weights, prompts, max_new_tokens=5)
    for k, m in enumerate(models):
        for e, p in enumerate(prompts):
            out = m.generate(input_ids=torch.tensor([p]), max_new_tokens=5, do_sample=False)
            assert gen[k][e] == tok.decode(out[0, len(p):], skip_special_tokens=True)
    # the bound parameters are views of the particle row, not copies
    rows = pool.weights
    with ev.bind(rows[:1]):
        ptr = next(iter(ev._params.values())).untyped_storage().data_ptr()
    assert ptr == rows.untyped_storage().data_ptr()


def test_full_weight_layout_must_fit_model(setup):
    tok = load_tokenizer(setup.model_dir)
    with pytest.raises(ValueError, match="does not exist in the model"):
        FullWeightEvaluator(fresh_model(setup.model_dir), tok, FlatLayout([("layers.0.mlp.up_proj.weight", (64, 32), torch.float32)]))
    with pytest.raises(ValueError, match="has shape"):
        FullWeightEvaluator(fresh_model(setup.model_dir), tok, FlatLayout([("lm_head.weight", (3, 3), torch.float32)]))


# -- bad adapters and mismatches ----------------------------------------------------------------
def _pool(setup):
    return load_experts(setup.expert_dirs)


@pytest.mark.parametrize("field,value,match", [
    ("use_dora", True, "DoRA"),
    ("modules_to_save", ["lm_head"], "modules_to_save"),
    ("target_parameters", ["mlp.experts.down_proj"], "target_parameters"),
    ("bias", "all", "biases"),
    ("peft_type", "IA3", "LORA only"),
])
def test_unsupported_adapter_features_are_rejected(setup, field, value, match):
    pool = _pool(setup)
    cfg = {**pool.adapter_config, field: value}
    with pytest.raises(UnsupportedAdapter, match=match):
        LoraEvaluator(fresh_model(setup.model_dir), load_tokenizer(setup.model_dir), pool.layout, cfg)


def test_missing_and_non_linear_targets_are_rejected(setup):
    pool = _pool(setup)
    tok = load_tokenizer(setup.model_dir)
    renamed = FlatLayout([(e.name.replace("q_proj", "qq_proj"), e.shape, e.dtype) for e in pool.layout.entries])
    with pytest.raises(UnsupportedAdapter, match="qq_proj.*does not exist in the model"):
        LoraEvaluator(fresh_model(setup.model_dir), tok, renamed, pool.adapter_config)
    norm = FlatLayout([("base_model.model.model.norm.lora_A.weight", (4, 32), torch.float32),
                       ("base_model.model.model.norm.lora_B.weight", (32, 4), torch.float32)])
    with pytest.raises(UnsupportedAdapter, match="only nn.Linear"):
        LoraEvaluator(fresh_model(setup.model_dir), tok, norm, pool.adapter_config)
    emb = FlatLayout([("base_model.model.model.embed_tokens.lora_embedding_A", (4, 102), torch.float32)])
    with pytest.raises(UnsupportedAdapter, match="not a lora_A/lora_B weight"):
        LoraEvaluator(fresh_model(setup.model_dir), tok, emb, pool.adapter_config)
    wrong = FlatLayout([(e.name, (e.shape[0], e.shape[1] + 1) if "lora_A" in e.name else e.shape, e.dtype)
                        for e in pool.layout.entries])
    with pytest.raises(UnsupportedAdapter, match="do not fit a Linear"):
        LoraEvaluator(fresh_model(setup.model_dir), tok, wrong, pool.adapter_config)


def test_adapter_for_a_bigger_model_is_rejected(tmp_path, setup):
    big = build_tiny_causal_lm(tmp_path / "big", num_layers=6)
    dirs = write_lora_experts(big, tmp_path / "big_experts", 1, layers_to_transform=[5])
    pool = load_experts(dirs)
    with pytest.raises(UnsupportedAdapter, match=r"layers\.5\..*does not exist"):
        LoraEvaluator(fresh_model(setup.model_dir), load_tokenizer(setup.model_dir), pool.layout, pool.adapter_config)


def test_tokenizer_model_vocab_mismatch_is_rejected(setup, tmp_path):
    from transformers import LlamaForCausalLM

    from swarmkern.testing import tiny_llama_config

    small = LlamaForCausalLM(tiny_llama_config(50)).eval()  # the char tokenizer has 102 tokens
    pool = _pool(setup)
    with pytest.raises(ModelLoadError, match="102 tokens but the model's embedding has only 50"):
        LoraEvaluator(small, load_tokenizer(setup.model_dir), pool.layout, pool.adapter_config)


def test_model_patched_twice_is_an_error(setup):
    pool = _pool(setup)
    tok = load_tokenizer(setup.model_dir)
    model = fresh_model(setup.model_dir)
    ev = LoraEvaluator(model, tok, pool.layout, pool.adapter_config)
    with pytest.raises(UnsupportedAdapter, match="already patched"):
        LoraEvaluator(model, tok, pool.layout, pool.adapter_config)
    ev.unpatch()
    LoraEvaluator(model, tok, pool.layout, pool.adapter_config)  # fine again


def test_encode_requests_cuts_context_from_the_left(setup):
    tok = load_tokenizer(setup.model_dir)
    req = encode_requests(tok, ["abcdefgh"], ["xy"], max_length=5)
    assert req.ids == [tok("abcdefgh")["input_ids"][-3:] + tok("xy", add_special_tokens=False)["input_ids"]]
    assert req.n_cont == [2]
    with pytest.raises(ValueError, match="exceeds max_length"):
        encode_requests(tok, ["a"], ["xyz"], max_length=3)


def test_unbound_model_is_the_base_model(setup):
    pool = _pool(setup)
    tok = load_tokenizer(setup.model_dir)
    model = fresh_model(setup.model_dir)
    seq = torch.tensor([tok("hello")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=seq).logits
        LoraEvaluator(model, tok, pool.layout, pool.adapter_config)
        after = model(input_ids=seq).logits
    torch.testing.assert_close(before, after)
    json.dumps(pool.adapter_config)  # the pool's config stays plain JSON


def test_shared_context_runs_only_tokens_that_predict_a_scored_one(setup):
    """Contexts once per particle, then each continuation without its last token (its output scores
    nothing): the decoder sees exactly those token positions, and the sums still equal whole-sequence
    scoring."""
    tok = load_tokenizer(setup.model_dir)
    pool = load_experts(setup.expert_dirs)
    ctx = ["Q: What is 3+4?\nA:"] * 3 + ["Hi"] * 2
    cont = [" 7", " twelve and more", " seven", " there you go", "!"]
    req = encode_requests(tok, ctx, cont)
    ev = LoraEvaluator(fresh_model(setup.model_dir), tok, pool.layout, pool.adapter_config)
    widths = []
    handle = ev.model.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: widths.append((a[0] if a else kw["input_ids"]).shape[1]), with_kwargs=True)
    got = ev.loglikelihood(pool.weights, req)
    handle.remove()
    longest_ctx = max(len(c) for c in req.contexts)
    assert widths == [longest_ctx, max(req.n_cont) - 1]
    ev.share_context = False
    torch.testing.assert_close(got, ev.loglikelihood(pool.weights, req), rtol=1e-6, atol=1e-5)
