"""The batched LoRA evaluator is not Llama-only: on tiny models of other families (grouped-query
attention, fused qkv projections, tied embeddings, GPT-2's Conv1D layers, parallel attention/MLP
blocks) every particle's logits equal the same adapter loaded with PEFT, with padding and mixed
lengths, adapting all layers and only the upper ones (prefix sharing)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

import transformers as tf  # noqa: E402

from peft import PeftModel  # noqa: E402

from swarmkern.evaluate import encode_requests  # noqa: E402
from swarmkern.testing import _init_weights, char_tokenizer, write_lora_experts  # noqa: E402

from test_evaluate import check_against_peft, fresh_model, peft_logits  # noqa: E402  (tests/ is on sys.path)

IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
GQA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=256, **IDS)
FAMILIES = {  # family: (config class, its kwargs, model class, adapted modules)
    "qwen2": (tf.Qwen2Config, dict(GQA, tie_word_embeddings=True), tf.Qwen2ForCausalLM,
              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi3": (tf.Phi3Config, GQA, tf.Phi3ForCausalLM, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "gemma2": (tf.Gemma2Config, dict(GQA, head_dim=8), tf.Gemma2ForCausalLM, ["q_proj", "v_proj", "up_proj"]),
    "gpt_neox": (tf.GPTNeoXConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                        max_position_embeddings=256, **IDS), tf.GPTNeoXForCausalLM,
                 ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
    "opt": (tf.OPTConfig, dict(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                               max_position_embeddings=256, word_embed_proj_dim=32, **IDS), tf.OPTForCausalLM,
            ["q_proj", "v_proj", "fc1", "fc2"]),
    "gpt2": (tf.GPT2Config, dict(n_embd=32, n_layer=3, n_head=4, n_positions=256, **IDS), tf.GPT2LMHeadModel,
             ["c_attn", "c_proj", "c_fc"]),
    "falcon": (tf.FalconConfig, dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     new_decoder_architecture=False, **IDS), tf.FalconForCausalLM,
               ["query_key_value", "dense", "dense_h_to_4h"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_peft_on_other_model_families(tmp_path, family):
    config_cls, kwargs, model_cls, targets = FAMILIES[family]
    tok = char_tokenizer(tmp_path / "model")
    model = model_cls(config_cls(vocab_size=len(tok), **kwargs))
    _init_weights(model, seed=0)
    model.save_pretrained(str(tmp_path / "model"))
    for layers in (None, [1, 2]):  # every layer / the upper two (the lower one is shared across particles)
        dirs = write_lora_experts(tmp_path / "model", tmp_path / f"experts_{layers}", k=3, target_modules=targets,
                                  layers_to_transform=layers, std=0.1)
        ev, rows, seqs = check_against_peft(tmp_path / "model", dirs)
        # the decoder's layer list was found: layers below the first adapted one run once per batch
        assert ev.shared_layers is not None and ev.shared_layers[1] == (layers or [0])[0]
        # the particles differ from each other and from the base model: the comparison can fail
        got = ev.logits(rows, seqs[:1])[0]
        assert not torch.allclose(got[0], got[1]) and not torch.allclose(got[0], ev.logits(None, seqs[:1])[0][0])
        # scoring a few candidate tokens at the last position (LM-head rows only, the last layer's MLP at
        # that position only, lower layers from the cache on the second call) equals the full logits
        full = ev.logits(rows, seqs)
        cands = [[3, 5, 7, 11]] * len(seqs)
        for _ in range(2):
            nt = ev.next_token_logits(rows, seqs, cands, micro_batch=6)
            for i in range(len(seqs)):
                torch.testing.assert_close(nt[:, i].float(), full[i][:, -1, cands[i]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "opt", "phi3", "gpt_neox"])
def test_scoring_and_generation_match_peft_on_other_families(tmp_path, family):
    """Choices scored from a shared context's KV cache, and greedy generation (left padding, absolute
    or rotary positions), equal PEFT's per particle."""
    config_cls, kwargs, model_cls, targets = FAMILIES[family]
    tok = char_tokenizer(tmp_path / "model")
    model = model_cls(config_cls(vocab_size=len(tok), **kwargs))
    _init_weights(model, seed=1)
    model.save_pretrained(str(tmp_path / "model"))
    dirs = write_lora_experts(tmp_path / "model", tmp_path / "experts", k=2, target_modules=targets,
                              layers_to_transform=[1, 2], std=0.1)
    ev, rows, _ = check_against_peft(tmp_path / "model", dirs)
    req = encode_requests(tok, ["Q: 3+4?\nA:"] * 2 + ["Hi"] * 2, [" 7", " seven", " there", "!"])
    ll = ev.loglikelihood(rows, req, micro_batch=3)
    hits = ev.layer_cache.hits
    # again: both passes (context prefill, continuations) now skip the lower layer (cached, placeholders
    # in the KV cache below the adapted layers), with the same result
    torch.testing.assert_close(ev.loglikelihood(rows, req, micro_batch=3), ll, rtol=1e-6, atol=1e-6)
    assert ev.layer_cache.hits > hits
    prompts = [tok(t)["input_ids"] for t in ["Hi", "What is 3+4?", "abc def ghi"]]
    texts = ev.generate(rows, prompts, max_new_tokens=6, micro_batch=4)
    assert sum(len(t) for row in texts for t in row) >= 6 * len(prompts)  # real text, not empty strings
    for k, d in enumerate(dirs):
        ref = peft_logits(tmp_path / "model", d, req.ids)
        sums = torch.tensor([lg.log_softmax(-1)[len(s) - n - 1:len(s) - 1].gather(1, torch.tensor(s[len(s) - n:])[:, None]).sum()
                             for lg, s, n in zip(ref, req.ids, req.n_cont)], dtype=torch.float64)
        torch.testing.assert_close(ll[k], sums, rtol=1e-5, atol=1e-5)
        pm = PeftModel.from_pretrained(fresh_model(tmp_path / "model"), str(d)).eval()
        for e, p in enumerate(prompts):
            out = pm.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert texts[k][e] == tok.decode(out[0, len(p):], skip_special_tokens=True), (k, e)
