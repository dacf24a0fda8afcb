"""Batched LoRA evaluation: many particles in one forward pass, their weights read in place.

Each adapted nn.Linear is wrapped so that, with Pb particle rows bound,

    y = base(h) + scale * (h @ A_p^T) @ B_p^T        for every batch row routed to particle p

where A_p [r, in] and B_p [out, r] are strided views of the particle rows (FlatLayout.batched_view:
no copy of any particle's weights) and batches are particle-major, so [Pb*n, T, in] reshapes to
[Pb, n*T, in] and two batched matmuls do every particle at once. With no rows bound a wrapped layer
is the plain base layer, so the model stays usable as itself (e.g. as a judge).

What PEFT features are supported: nn.Linear and transformers Conv1D (GPT-2 style, fan_in_fan_out)
targets, lora_alpha / r scaling, rslora (alpha / sqrt(r)), rank_pattern / alpha_pattern,
layers_to_transform (through the adapter's own tensor names). Rejected with a clear error: DoRA, bias
training, modules_to_save, other targets (embeddings, convolutions), target_parameters,
layer_replication, aLoRA, trainable tokens.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .base import ParticleEvaluator

__all__ = ["LoraTarget", "UnsupportedAdapter", "lora_scale", "lora_targets", "BatchedLoraLinear", "LoraEvaluator"]

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")


class UnsupportedAdapter(ValueError):
    """The adapter uses a PEFT feature the batched evaluator does not implement, or does not fit the model."""


@dataclass(frozen=True)
class LoraTarget:
    """One adapted module: its path in the model, the layout names of A [r, in] and B [out, r], the scale."""
    module: str
    name_a: str
    name_b: str
    rank: int
    scale: float


def _pattern_key(patterns, key: str) -> str:
    try:
        from peft.utils.other import get_pattern_key
        return get_pattern_key(list(patterns), key)
    except ImportError:  # same rule as PEFT: a pattern matches a suffix of the module path
        return next((p for p in patterns if re.match(rf"(.*\.)?({p})$", key)), key)


def lora_scale(adapter_config: dict[str, Any] | None, module: str | None = None) -> float:
    """PEFT's scale of one adapted module (the factor of B @ A): lora_alpha / r, or lora_alpha / sqrt(r)
    with use_rslora, where r and lora_alpha come from rank_pattern / alpha_pattern when a pattern
    matches `module` (its path in the model; a leading "base_model.model." is ignored), else from r /
    lora_alpha (PEFT's defaults: 8 and 8). module=None: the config's default scale. Torch-free: the
    one source of the scale for the evaluator, compare's ΔW export and anything else."""
    cfg = adapter_config or {}
    rank, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    if module is not None:
        module = module.removeprefix("base_model.model.")
        rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        rank = rank_pattern.get(_pattern_key(rank_pattern, module), rank)
        alpha = alpha_pattern.get(_pattern_key(alpha_pattern, module), alpha)
    return float(alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank)


def _check_config(cfg: dict[str, Any]) -> None:
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapter(f"adapter_config.peft_type: {peft_type} adapters are not supported (LORA only)")
    unsupported = [
        ("use_dora", bool(cfg.get("use_dora")), "DoRA (weight-decomposed LoRA)"),
        ("bias", cfg.get("bias", "none") not in (None, "none"), "trained biases"),
        ("lora_bias", bool(cfg.get("lora_bias")), "LoRA biases"),
        ("modules_to_save", bool(cfg.get("modules_to_save")), "fully trained modules (modules_to_save)"),
        ("target_parameters", bool(cfg.get("target_parameters")), "adapted nn.Parameters (target_parameters)"),
        ("layer_replication", bool(cfg.get("layer_replication")), "layer_replication"),
        ("alora_invocation_tokens", bool(cfg.get("alora_invocation_tokens")), "activated LoRA (aLoRA)"),
        ("trainable_token_indices", bool(cfg.get("trainable_token_indices")), "trainable tokens"),
        ("use_qalora", bool(cfg.get("use_qalora")), "QA-LoRA"),
    ]
    for field, bad, what in unsupported:
        if bad:
            raise UnsupportedAdapter(f"adapter_config.{field}: {what} is not supported by the batched LoRA "
                                     f"evaluator (value {cfg.get(field)!r})")


def lora_targets(layout, adapter_config: dict[str, Any], model: nn.Module) -> list[LoraTarget]:
    """The adapted modules of `model` named by the layout's lora_A / lora_B tensors, with PEFT's scale
    (lora_alpha / r, or / sqrt(r) with rslora; rank_pattern and alpha_pattern honoured).

    Raises UnsupportedAdapter for unsupported features, tensors that are not lora_A/lora_B of a
    Linear, modules missing in the model, and shapes that do not fit the module.
    """
    cfg = dict(adapter_config or {})
    _check_config(cfg)
    pairs: dict[str, dict[str, str]] = {}
    for name in layout.names:
        m = _KEY.match(name)
        if m is None:
            raise UnsupportedAdapter(f"adapter tensor {name!r} is not a lora_A/lora_B weight of a Linear layer "
                                     "(embedding, DoRA, bias or saved-module tensors are not supported)")
        pairs.setdefault(m["module"], {})[m["which"]] = name
    modules = dict(model.named_modules())
    r_default, rank_pattern = cfg.get("r", 8), cfg.get("rank_pattern") or {}
    targets = []
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise UnsupportedAdapter(f"adapter module {path!r} has lora_{next(iter(ab))} but not its partner")
        module = modules.get(path)
        if module is None:
            raise UnsupportedAdapter(f"adapter target module {path!r} (tensor {ab['A']!r}) does not exist in the "
                                     f"model ({type(model).__name__}); is the adapter for another base model?")
        if isinstance(module, BatchedLoraLinear):
            module = module.base
        features = _linear_features(module)
        if features is None:
            raise UnsupportedAdapter(f"adapter target module {path!r} is a {type(module).__name__}; only nn.Linear "
                                     "and transformers Conv1D (GPT-2 style) targets are supported")
        a_shape = layout.index[ab["A"]].shape
        b_shape = layout.index[ab["B"]].shape
        r = a_shape[0]
        if a_shape != (r, features[0]) or b_shape != (features[1], r):
            raise UnsupportedAdapter(f"adapter module {path!r}: lora_A {list(a_shape)} / lora_B {list(b_shape)} do "
                                     f"not fit a {type(module).__name__}({features[0]} -> {features[1]})")
        rank = rank_pattern.get(_pattern_key(rank_pattern, path), r_default)
        if rank != r:
            raise UnsupportedAdapter(f"adapter module {path!r}: lora_A has rank {r} but adapter_config says r={rank}")
        targets.append(LoraTarget(path, ab["A"], ab["B"], r, lora_scale(cfg, path)))
    if not targets:
        raise UnsupportedAdapter("adapter has no lora_A/lora_B tensors")
    return targets


def _linear_features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a layer computing h @ W^T + b: nn.Linear, or transformers' Conv1D (GPT-2),
    which stores W transposed. Its LoRA factors have the same [r, in] / [out, r] shapes and the same
    forward (PEFT's fan_in_fan_out only changes how W itself is merged), so both are served alike."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency of the evaluator
        return None
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


class _Binding:
    """The particle rows currently routed through the model (shared by every wrapped layer)."""

    def __init__(self, layout):
        self.layout = layout
        self.rows: torch.Tensor | None = None


class BatchedLoraLinear(nn.Module):
    """A Linear plus one LoRA update per particle, taken from the bound rows (see module docstring)."""

    def __init__(self, base: nn.Linear, target: LoraTarget, binding: _Binding):
        super().__init__()
        self.base = base
        self.target = target
        self._binding = binding  # not a submodule: plain attribute

    @property
    def weight(self) -> torch.Tensor:  # code that inspects layer.weight (dtype/device checks) keeps working
        return self.base.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.base(h)
        rows = self._binding.rows
        if rows is None:
            return out
        pb = rows.shape[0]
        if h.shape[0] % pb:
            raise RuntimeError(f"{self.target.module}: batch of {h.shape[0]} rows is not particle-major "
                               f"for {pb} particles")
        layout = self._binding.layout
        a = layout.batched_view(rows, self.target.name_a)  # [Pb, r, in]
        b = layout.batched_view(rows, self.target.name_b)  # [Pb, out, r]
        if a.dtype != h.dtype:  # bf16 compute: casting the small factors is the only copy
            a, b = a.to(h.dtype), b.to(h.dtype)
        x = h.reshape(pb, -1, h.shape[-1])
        # out += scale * (x A^T) B^T in place, one pass over `out` (an add and a scale each cost another;
        # in place is safe for autograd: the linear's backward does not need its output)
        out.view(pb, -1, out.shape[-1]).baddbmm_(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2),
                                                 alpha=self.target.scale)
        return out


class LoraEvaluator(ParticleEvaluator):
    """Evaluates LoRA particles (rows [P, D] of a PEFT ExpertPool's layout) on a causal LM, many per
    forward pass. Patches the model in place once; unbound, the model computes the base model.

        ev = LoraEvaluator(model, tokenizer, pool.layout, pool.adapter_config)
        ll = ev.loglikelihood(rows, encode_requests(tok, contexts, conts))     # [P, E]
        texts = ev.generate(rows, prompt_ids, max_new_tokens=16, stop=["\\n"])  # [P][E]
    """

    def __init__(self, model: nn.Module, tokenizer, layout, adapter_config: dict[str, Any], *,
                 share_prefix: bool = True):
        super().__init__(model, tokenizer, share_prefix=share_prefix)
        self.layout = layout
        self.targets = lora_targets(layout, adapter_config, model)
        self._binding = _Binding(layout)
        for t in self.targets:
            parent_name, _, child = t.module.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            current = getattr(parent, child)
            if isinstance(current, BatchedLoraLinear):
                raise UnsupportedAdapter(f"{t.module}: model is already patched by another LoraEvaluator; load a "
                                         "separate model instance (or reuse that evaluator)")
            setattr(parent, child, BatchedLoraLinear(current, t, self._binding))
        self.shared_layers = _first_adapted_layer(model, [t.module for t in self.targets])

    @contextlib.contextmanager
    def bind(self, rows: torch.Tensor) -> Iterator[None]:
        if rows.dim() != 2 or rows.shape[1] != self.layout.numel:
            raise ValueError(f"particles must be [P, {self.layout.numel}], got {list(rows.shape)}")
        self._binding.rows = rows
        try:
            yield
        finally:
            self._binding.rows = None

    def unpatch(self) -> None:
        """Put the original Linear layers back (the model is the plain base model again)."""
        for t in self.targets:
            parent_name, _, child = t.module.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            wrapped = getattr(parent, child)
            if isinstance(wrapped, BatchedLoraLinear):
                setattr(parent, child, wrapped.base)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _first_adapted_layer(model: nn.Module, paths: list[str]) -> tuple[nn.ModuleList, int] | None:
    """(decoder layer list, index of the first layer holding an adapted module), or None when the
    adapted modules do not all sit inside the decoder's layer list (then nothing is shared)."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)
             and any(mod is m for m in decoder.modules())]
    for name, layers in lists:
        prefix = f"{name}."
        idx = []
        for p in paths:
            m = re.match(re.escape(prefix) + r"(\d+)\.", p)
            if m is None:
                break
            idx.append(int(m.group(1)))
        else:
            return layers, min(idx)
    return None
