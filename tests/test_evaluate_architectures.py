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

from swarmkern.testing import _init_weights, char_tokenizer, write_lora_experts  # noqa: E402

from test_evaluate import check_against_peft  # noqa: E402  (tests/ is on sys.path)

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
