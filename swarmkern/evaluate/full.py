"""Full-weight particles: each particle row holds (some of) the model's own tensors, named as in
`model.state_dict()`. The model is run with torch.func.functional_call over row views of the
particle, so no particle is ever copied into the model; tensors missing from the layout keep the
base model's values (experts may cover only part of the model, e.g. a few layers)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from .base import ParticleEvaluator

__all__ = ["FullWeightEvaluator", "check_full_layout"]


def check_full_layout(layout, model: nn.Module) -> None:
    """Raise ValueError naming the first layout tensor that the model lacks or that has another shape."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for e in layout.entries:
        if e.name not in own:
            hint = f" (the model has {'model.' + e.name!r})" if f"model.{e.name}" in own else ""
            raise ValueError(f"full-weight expert tensor {e.name!r} does not exist in the model "
                             f"({type(model).__name__}){hint}")
        if tuple(own[e.name].shape) != tuple(e.shape):
            raise ValueError(f"full-weight expert tensor {e.name!r} has shape {list(e.shape)}, the model's has "
                             f"{list(own[e.name].shape)}")


class FullWeightEvaluator(ParticleEvaluator):
    """Evaluates full-weight particles one at a time (a forward pass per particle and batch of examples):

        ev = FullWeightEvaluator(model, tokenizer, pool.layout)
        ll = ev.loglikelihood(rows, requests)       # rows [P, D] -> [P, E]
    """
    max_particles = 1

    def __init__(self, model: nn.Module, tokenizer, layout):
        super().__init__(model, tokenizer, share_prefix=False)
        check_full_layout(layout, model)
        self.layout = layout
        self._params: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def bind(self, rows: torch.Tensor) -> Iterator[None]:
        if rows.dim() != 2 or rows.shape[0] != 1 or rows.shape[1] != self.layout.numel:
            raise ValueError(f"full-weight particles are bound one at a time as [1, {self.layout.numel}], "
                             f"got {list(rows.shape)}")
        dtype = next(self.model.parameters()).dtype
        views = self.layout.views(rows[0])
        # a cast (bf16 compute of fp32 particles) is the only copy; otherwise these are views
        self._params = {f"model.{k}": (v if v.dtype == dtype else v.to(dtype)) for k, v in views.items()}
        try:
            yield
        finally:
            self._params = None

    def _call(self, rows: torch.Tensor | None, **kwargs) -> torch.Tensor:
        if self._params is None:
            return self.runner(**kwargs)
        return functional_call(self.runner, self._params, args=(), kwargs=kwargs, strict=False)
