"""The evaluator's faster RMSNorm and SiLU-gated MLP forwards (swarmkern/evaluate/fast_layers.py)
compute what transformers' modules compute, in fp32 and bf16, with and without autograd, and touch
only the module classes they know."""
from __future__ import annotations

import copy

import pytest
import torch

import transformers as tf

from swarmkern.evaluate.fast_layers import GATED_MLPS, RMS_NORMS, speed_up

SMALL = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _model(cls, cfg_cls, **extra):
    torch.manual_seed(0)
    model = cls(cfg_cls(**SMALL, **extra)).eval()
    with torch.no_grad():  # norms away from 1, so a dropped weight would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


FAMILIES = {"llama": (tf.LlamaForCausalLM, tf.LlamaConfig), "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config)}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_logits_as_transformers(family, dtype):
    ref = _model(*FAMILIES[family]).to(dtype)
    fast = copy.deepcopy(ref)
    assert speed_up(fast) == 2 * 3 + 1 + 3  # two norms per layer, the final norm, an MLP per layer
    assert speed_up(fast) == 0  # already swapped
    ids = torch.randint(3, 97, (5, 13))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.inference_mode():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = fast(input_ids=ids, attention_mask=mask).logits
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    else:  # same roundings in the same places: bf16 logits agree to bf16 precision
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert not torch.equal(want, ref(input_ids=ids.flip(1), attention_mask=mask).logits)  # the test can fail


def test_training_through_the_swapped_modules_gives_the_same_gradients():
    ref = _model(*FAMILIES["llama"])
    fast = copy.deepcopy(ref)
    speed_up(fast)
    ids = torch.randint(3, 97, (3, 9))
    grads = []
    for m in (ref, fast):
        m.zero_grad()
        m(input_ids=ids, labels=ids).loss.backward()  # in-place SiLU must not run under autograd
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:  # under autograd both swapped forwards defer to transformers': bit for bit
        assert torch.equal(grads[1][n], grads[0][n]), n


def test_other_norms_and_mlps_keep_their_own_forward():
    gemma = tf.Gemma2ForCausalLM(tf.Gemma2Config(**SMALL, head_dim=12))  # its norm scales by 1 + weight
    assert speed_up(gemma) == 0
    gelu = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, hidden_act="gelu"))
    assert speed_up(gelu) == 2 * 3 + 1  # the norms only: its MLP is not SiLU-gated


def _forward_source(class_name: str) -> str:
    import importlib
    import inspect
    import re

    family = class_name.removesuffix("RMSNorm").removesuffix("MLP").lower()
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    return re.sub(r"\s+", " ", inspect.getsource(getattr(module, class_name).forward))


@pytest.mark.parametrize("name", sorted(RMS_NORMS | GATED_MLPS))
def test_every_listed_class_still_computes_what_llama_computes(name):
    """The swap is by class name: in this transformers, each listed class's forward is Llama's."""
    llama = "LlamaRMSNorm" if name.endswith("RMSNorm") else "LlamaMLP"
    assert _forward_source(name) == _forward_source(llama)
