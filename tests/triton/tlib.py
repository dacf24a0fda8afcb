"""Helpers for the Triton tests: fresh random inputs, rounding-aware comparison of 16-bit results."""
from __future__ import annotations

import torch

INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def rand(shape, dtype, device, scale: float = 1.0) -> torch.Tensor:
    """Normal values (never zeros) rounded to dtype."""
    return (torch.randn(shape, dtype=torch.float32) * scale).to(dtype).to(device)


def rows_with_padding(P: int, D: int, dtype, device, pad: int, poison: float = float("nan")):
    """A [P, D] tensor of random values whose rows sit in a [P + 1, D + pad] buffer filled with poison,
    so writes past a row end or past the last row are visible. Returns (view, buffer)."""
    buf = torch.full((P + 1, D + pad), poison, dtype=dtype, device=device)
    view = buf[:P, :D]
    view.copy_(rand((P, D), dtype, device))
    return view, buf


def assert_rounded_from(out: torch.Tensor, exact32: torch.Tensor, what: str) -> None:
    """out (bf16/fp16/fp32) must be exact32 (the reference's fp32 values) rounded to nearest-even, or, for
    16-bit storage, rounded toward zero (the interpreter truncates bf16 stores): at most 1 ulp."""
    out, exact32 = out.cpu(), exact32.cpu().float()
    rne = exact32.to(out.dtype)
    if out.dtype == torch.float32:
        bad = out.view(torch.int32) != rne.view(torch.int32)
    else:
        iv = INT_VIEW[out.dtype]
        steps = (out.view(iv).to(torch.int32) - rne.view(iv).to(torch.int32)).abs()
        toward_zero = (steps == 1) & (out.float().abs() <= exact32.abs()) & (rne.float().abs() > exact32.abs())
        bad = (steps != 0) & ~toward_zero
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements are not the rounded reference; "
                             f"first at flat index {i}: got {out.flatten()[i].item()!r}, fp32 reference "
                             f"{exact32.flatten()[i].item()!r}, rounded {rne.flatten()[i].item()!r}")


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    iv = INT_VIEW.get(a.dtype)
    bad = (a.view(iv) != b.view(iv)) if iv else (a != b)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; first at flat index {i}: "
                             f"{a.flatten()[i].item()!r} vs {b.flatten()[i].item()!r}")

