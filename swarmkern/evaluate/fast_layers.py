"""Cheaper forwards for two Llama-family modules, swapped in on the evaluator's model.

Outside the matrix products, a decoder layer's time on a CPU goes mostly to elementwise passes over the
activations. Transformers' RMSNorm makes five of them (square, mean, scale, cast, weight) and its MLP
allocates one more [tokens, intermediate] tensor for SiLU(gate) * up. Both are replaced, per module
instance, by forwards that compute the same numbers:

- RMSNorm: `torch.nn.functional.rms_norm` (one fused kernel) in fp32, then the cast and the weight as
  transformers does them, so a bf16 model rounds where it rounded before;
- SiLU-gated MLP: SiLU and the product in place on the gate's output.

Both only without autograd: the demo trains its experts through the same model, backward needs the
unmodified gate, and training keeps exactly the gradients it had (`--retrain` rebuilds the shipped
experts bit for bit).

Only module classes known to compute exactly `weight * (x / rms(x))` (norms) or
`down(silu(gate(x)) * up(x))` (MLPs) are touched; every other module keeps its own forward.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["speed_up", "RMS_NORMS", "GATED_MLPS"]

# norms computing weight * (x_fp32 * rsqrt(mean(x_fp32^2) + eps)).to(input dtype) (Gemma's 1 + weight is not)
# (tests/test_fast_layers.py checks that each one's forward is still Llama's in the installed transformers)
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm",
                       "SmolLM3RMSNorm"})
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "SmolLM3MLP"})


def _rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():  # training keeps transformers' own graph (and its gradients, bit for bit)
        return type(self).forward(self, hidden_states)
    x = hidden_states.to(torch.float32)
    y = F.rms_norm(x, (x.shape[-1],), None, self.variance_epsilon)
    return self.weight * y.to(hidden_states.dtype)


def _gated_mlp(self, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():
        return type(self).forward(self, x)
    gate = self.gate_proj(x)
    return self.down_proj(F.silu(gate, inplace=True).mul_(self.up_proj(x)))


def _is_silu(act: nn.Module) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in {"SiLUActivation", "SiLU"}


def speed_up(model: nn.Module) -> int:
    """Swap the faster forwards into every known RMSNorm and SiLU-gated MLP of `model` (in place, on the
    instances); returns how many modules were changed. Calling it twice changes nothing more."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if "forward" in vars(module):  # already swapped (or patched by someone else): leave it
            continue
        if name in RMS_NORMS and hasattr(module, "variance_epsilon") and isinstance(getattr(module, "weight", None), torch.Tensor):
            module.forward = types.MethodType(_rms_norm, module)
            changed += 1
        elif (name in GATED_MLPS and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj"))
              and _is_silu(getattr(module, "act_fn", None))):
            module.forward = types.MethodType(_gated_mlp, module)
            changed += 1
    return changed
