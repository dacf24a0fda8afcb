"""A tiny character-level causal LM built from a config (no model hub, milliseconds per forward pass
on a CPU): what `swarmkern demo --tiny` runs on, and the base of the test fixtures in swarmkern.testing.

    char_tokenizer(save_dir=None)         one token per printable ASCII character (tokenizers library)
    tiny_llama_config(vocab_size, ...)    a LlamaConfig small enough for a CPU
    init_weights(model, seed)             deterministic, fairly large random weights
    build_tiny_causal_lm(save_dir, ...)   a random LlamaForCausalLM and its tokenizer, saved
"""
from __future__ import annotations

import os
import string
from pathlib import Path

import torch

__all__ = ["SPECIAL_TOKENS", "CHARS", "char_tokenizer", "tiny_llama_config", "init_weights", "build_tiny_causal_lm"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = string.printable[:-2]  # printable ASCII plus "\t\n" (drops \r \x0b \x0c)


def char_tokenizer(save_dir: str | os.PathLike | None = None):
    """A character-level PreTrainedTokenizerFast: ids 0-3 are <pad> <s> </s> <unk>, then one id per
    printable ASCII character. Encoding prepends <s>; decoding joins characters without spaces."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    # A BPE model without merges splits a string into its characters; no pre-tokenizer keeps spaces.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="right")
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def tiny_llama_config(vocab_size: int, *, hidden_size: int = 32, num_layers: int = 4, num_heads: int = 4,
                      num_kv_heads: int = 2, intermediate_size: int = 64, max_positions: int = 512, **extra):
    """A LlamaConfig small enough to run a forward pass in milliseconds on a CPU."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **extra)


def init_weights(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Deterministic, fairly large random weights so that particles give visibly different outputs."""
    gen = torch.Generator().manual_seed(seed)
    # norm scales by module type too: GPT-2 / Falcon name theirs ln_1, ln_f (zeros would silence the model)
    norm_scales = {id(m.weight) for m in model.modules()
                   if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.Tensor)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "norm" in name or id(p) in norm_scales:
                p.fill_(1.0)
            else:
                p.zero_()


def build_tiny_causal_lm(save_dir: str | os.PathLike, *, seed: int = 0, num_layers: int = 4,
                         hidden_size: int = 32) -> Path:
    """A random tiny LlamaForCausalLM plus its char tokenizer, saved to `save_dir` (returned)."""
    from transformers import LlamaForCausalLM

    save_dir = Path(save_dir).absolute()
    tok = char_tokenizer(save_dir)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), num_layers=num_layers, hidden_size=hidden_size))
    init_weights(model, seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(save_dir))
    return save_dir
