"""Where each tensor of an expert lives in the flat row, and which LoRA tensors pair up.

Merge methods that work "per tensor" (TIES trimming, Breadcrumbs, SLERP, the ΔW space) need the
boundaries of every tensor inside the flat [K, D] expert buffer. They take a list of `Segment`s, built
from a `swarmkern.flat.FlatLayout` (or anything with `.entries` of name/shape/offset/numel) by
`segments_of`, so the math here never imports the state layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["Segment", "segments_of", "whole", "LoraPair", "lora_pairs"]


@dataclass(frozen=True)
class Segment:
    """One tensor of an expert: elements [offset, offset + numel) of a row, of shape `shape`."""
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int

    @property
    def stop(self) -> int:
        return self.offset + self.numel


def segments_of(layout: Any) -> list[Segment]:
    """Segments of a FlatLayout (anything with `.entries` of name/shape/offset/numel), of a list of
    Segments (returned as is), or of a mapping {name: shape} laid out in order."""
    if isinstance(layout, (list, tuple)) and all(isinstance(s, Segment) for s in layout):
        return list(layout)
    if hasattr(layout, "entries"):
        return [Segment(e.name, tuple(e.shape), int(e.offset), int(e.numel)) for e in layout.entries]
    if isinstance(layout, dict):
        out, offset = [], 0
        for name, shape in layout.items():
            n = math.prod(shape)
            out.append(Segment(name, tuple(shape), offset, n))
            offset += n
        return out
    raise TypeError(f"cannot read tensor boundaries from {type(layout).__name__}")


def whole(numel: int) -> list[Segment]:
    """The whole row as one segment (for flat vectors without tensor structure)."""
    return [Segment("flat", (numel,), 0, numel)]


def check_segments(segments: Sequence[Segment], D: int) -> None:
    """Segments must tile [0, D) in order without gaps or overlaps."""
    pos = 0
    for s in segments:
        if s.offset != pos:
            raise ValueError(f"segment {s.name!r} starts at {s.offset}, expected {pos}")
        pos = s.stop
    if pos != D:
        raise ValueError(f"segments cover {pos} elements, the rows have D={D}")


@dataclass(frozen=True)
class LoraPair:
    """A LoRA module: ΔW = B @ A with A [r, in] and B [out, r] (nn.Linear convention).
    `transpose` marks embedding LoRAs (lora_embedding_A [r, num_embeddings], lora_embedding_B
    [dim, r]) whose weight delta is (B @ A).T."""
    module: str
    a: Segment
    b: Segment
    transpose: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]


_PAIR_TOKENS = ((".lora_A.", ".lora_B.", False), (".lora_embedding_A", ".lora_embedding_B", True))


def lora_pairs(segments: Iterable[Segment]) -> tuple[list[LoraPair], list[Segment]]:
    """Split segments into LoRA (A, B) pairs, matched by name as PEFT writes them
    (`<module>.lora_A.weight` / `<module>.lora_B.weight`, `<module>.lora_embedding_A` / `_B`), and the
    other tensors (biases, modules_to_save, DoRA magnitudes). A lone A or B is an error."""
    segs = list(segments)
    by_name = {s.name: s for s in segs}
    pairs, used = [], set()
    for s in segs:
        for tok_a, tok_b, transpose in _PAIR_TOKENS:
            if tok_a.rstrip(".") in s.name:
                b_name = s.name.replace(tok_a.rstrip("."), tok_b.rstrip("."), 1)
                if b_name not in by_name:
                    raise ValueError(f"LoRA tensor {s.name!r} has no matching {b_name!r}")
                b = by_name[b_name]
                if len(s.shape) != 2 or len(b.shape) != 2 or s.shape[0] != b.shape[1]:
                    raise ValueError(f"LoRA pair {s.name!r} {list(s.shape)} / {b_name!r} {list(b.shape)}: "
                                     "expected A [r, in] and B [out, r]")
                module = s.name.split(tok_a.rstrip("."))[0].rstrip(".")
                pairs.append(LoraPair(module, s, b, transpose))
                used.update((s.name, b_name))
                break
    for s in segs:
        if s.name not in used and any(tok_b.rstrip(".") in s.name for _, tok_b, _ in _PAIR_TOKENS):
            raise ValueError(f"LoRA tensor {s.name!r} has no matching lora_A tensor")
    others = [s for s in segs if s.name not in used]
    return pairs, others
