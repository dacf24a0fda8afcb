"""The demo's utility: multiple-choice accuracy of many LoRA particles at once, from flat swarm rows.

Rows [B, D] are in an ExpertPool's FlatLayout (PEFT tensor names); each adapted module's A and B are
strided [B, r, in] / [B, out, r] views of the rows (no copies), set on the SplitModel's LoRA slots.
The lower layers' states are computed once per split, so a call costs only the top layers.
"""
from __future__ import annotations

import torch

from swarmkern.flat import FlatLayout

from .experts import PEFT_PREFIX
from .stack import Encoded, SplitModel


def slot_names(layout: FlatLayout, split: SplitModel) -> dict[str, tuple[str, str]]:
    """{slot module name: (layout name of lora_A, of lora_B)}; every slot must be covered."""
    out = {}
    for slot in split.slots:
        a, b = f"{PEFT_PREFIX}{slot}.lora_A.weight", f"{PEFT_PREFIX}{slot}.lora_B.weight"
        if a not in layout.names or b not in layout.names:
            raise ValueError(f"the experts have no LoRA tensors for {slot} (expected {a})")
        out[slot] = (a, b)
    extra = set(layout.names) - {n for pair in out.values() for n in pair}
    if extra:
        raise ValueError(f"the experts adapt modules outside the top layers: {sorted(extra)[:3]}")
    return out


class ChoiceAccuracy:
    """f(rows [B, D]) -> accuracy [B] on one split (the lower-layer states `h` [N, T, H] of `enc`)."""

    def __init__(self, split: SplitModel, layout: FlatLayout, scale: float, enc: Encoded, h: torch.Tensor,
                 chunk: int = 8):
        self.split, self.layout, self.scale, self.enc, self.h = split, layout, scale, enc, h
        self.names = slot_names(layout, split)
        self.chunk = chunk
        self.calls = 0

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        out = []
        for s in range(0, rows.shape[0], self.chunk):
            part = rows[s:s + self.chunk]
            self.split.set_adapter({slot: (self.layout.batched_view(part, a), self.layout.batched_view(part, b))
                                    for slot, (a, b) in self.names.items()}, self.scale)
            try:
                out.append(self.split.accuracy(self.h, self.enc, part.shape[0]))
            finally:
                self.split.set_adapter(None)
        self.calls += rows.shape[0]
        return torch.cat(out)
