"""Local models and tokenizers, loaded once per process and cached (the search evaluates thousands of
particles with one base model; reloading it per evaluation is what made the reference code slow).

Every loader takes a local directory or a Hugging Face Hub id (`org/name[@revision]`, resolved by
swarmkern/hub.py: an existing local path wins, then the Hub cache, then a download) and returns an
eval-mode model whose parameters do not require gradients. Cache keys are (kind, resolved path, dtype,
device).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .precision import resolve_compute_dtype

__all__ = ["resolve_device", "resolve_dtype", "load_tokenizer", "load_causal_lm", "load_reward_model",
           "check_vocab", "clear_cache", "ModelLoadError"]

_CACHE: dict[tuple, Any] = {}


class ModelLoadError(ValueError):
    """A model or tokenizer directory is missing, unreadable or does not fit its partner."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "auto") -> torch.dtype:
    """A dtype name, a torch.dtype or "auto" (what the device computes natively: see precision.py)."""
    return resolve_compute_dtype(dtype, device).dtype


def _local_dir(path: str | os.PathLike, what: str) -> Path:
    from swarmkern.hub import resolve_local

    p = resolve_local(path, what=what, kind="tokenizer" if what == "tokenizer" else "model")
    if not p.is_dir():
        raise ModelLoadError(f"{what}: {p} is not a local directory (nor a Hub id org/name[@revision])")
    if not (p / "config.json").is_file() and what != "tokenizer":
        raise ModelLoadError(f"{what}: {p} has no config.json (not a transformers model directory)")
    return p.resolve()


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer from a local directory (cached). Gets a pad token (eos) when it has none."""
    from transformers import AutoTokenizer

    p = _local_dir(path, "tokenizer")
    key = ("tokenizer", str(p))
    if key not in _CACHE:
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"tokenizer: cannot load from {p}: {err}") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        _CACHE[key] = tok
    return _CACHE[key]


def _load(kind: str, cls_name: str, path, dtype, device, private: bool = False):
    import transformers

    p = _local_dir(path, kind)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = (kind, str(p), dtype, str(device))
    if private or key not in _CACHE:
        cls = getattr(transformers, cls_name)
        try:
            model = cls.from_pretrained(str(p), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{kind}: cannot load {cls_name} from {p}: {err}") from None
        model.to(device).eval()
        model.requires_grad_(False)
        if private:
            return model
        _CACHE[key] = model
    return _CACHE[key]


def load_causal_lm(path: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                   device: str | torch.device = "auto", private: bool = False):
    """An AutoModelForCausalLM from a local directory, in `dtype` ("auto": bf16 where the device computes
    it natively, else fp32) on `device` (cached per process). private=True: a fresh copy that is neither
    taken from nor put in the cache (for a caller that modifies the model, e.g. patches its layers)."""
    return _load("model", "AutoModelForCausalLM", path, dtype, device, private)


def load_reward_model(path: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                      device: str | torch.device = "auto"):
    """An AutoModelForSequenceClassification with exactly one label (a scalar reward), cached."""
    model = _load("reward_model", "AutoModelForSequenceClassification", path, dtype, device)
    if model.config.num_labels != 1:
        raise ModelLoadError(f"reward_model: {path} has {model.config.num_labels} labels; a reward model "
                             "must have exactly one (num_labels=1)")
    return model


def check_vocab(tokenizer, model, what: str) -> None:
    """Raise ModelLoadError when the tokenizer can produce ids the model has no embedding for."""
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ModelLoadError(f"{what}: tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has {len(tokenizer)} "
                             f"tokens but the model's embedding has only {n_embed} rows (tokenizer/model mismatch)")


def clear_cache() -> None:
    """Forget every cached model and tokenizer (tests; freeing memory between runs)."""
    _CACHE.clear()
