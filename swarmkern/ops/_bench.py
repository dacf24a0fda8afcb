"""A small kernel benchmark shared by `swarmkern bench` and benchmarks/gpu_check.py: each backend of
pso_step_ / combine against a copy of the same data timed in the same run, in GB/s of the modelled
bytes (docs/KERNELS.md):  pso_step_: (2*s_x + 2*s_v + s_p)*P*D + (s_g + s_w)*D;  combine: (K + M)*D*s;
copy: 2*s*numel. (The pytest-benchmark suite is benchmarks/bench_ops.py.)"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import combine, pso_step_, reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    variant: str
    min_s: float
    median_s: float
    nbytes: int
    copy_gbs: float | None = None

    @property
    def gbs(self) -> float:
        return self.nbytes / self.min_s / 1e9


def time_fn(fn: Callable[[], object], device: torch.device, rounds: int = 5, warmup: int = 1) -> tuple[float, float]:
    """(min, median) seconds of fn over `rounds` calls after `warmup` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def pso_bytes(P: int, D: int, dtype: torch.dtype) -> int:
    s = torch.finfo(dtype).bits // 8
    return 5 * s * P * D + 2 * s * D


def swarm_state(P: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random bounded swarm state (the coefficients are convex, so repeated steps stay finite)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return (torch.randn(*shape, generator=g, device=device) * 0.1).to(dtype)

    coef = torch.rand(P, 4, generator=g, device=device)
    return dict(x=randn(P, D), v=randn(P, D), pbest=randn(P, D), gbest=randn(D), gworst=randn(D),
                coef=coef / coef.sum(1, keepdim=True))


def pso_rows(P: int, D: int, dtype_name: str, device: torch.device, backends: list[str], rounds: int = 5,
             compiled: bool = False, eager: bool = True) -> list[Row]:
    """Times copy, each backend, the eager reference and optionally torch.compile(reference)."""
    dtype = DTYPES[dtype_name]
    st = swarm_state(P, D, dtype, device)
    args = (st["x"], st["v"], st["pbest"], st["gbest"], st["gworst"], st["coef"], 0.5)
    shape, nbytes = f"P={P} D={D:.3g}", pso_bytes(P, D, dtype)
    dst = torch.empty_like(st["x"])
    t_copy = time_fn(lambda: dst.copy_(st["x"]), device, rounds)
    copy_row = Row("pso_step_", shape, dtype_name, "copy", *t_copy, 2 * dst.numel() * dst.element_size())
    rows = [copy_row]
    del dst
    variants: list[tuple[str, Callable[[], object], int]] = [
        (name, (lambda name=name: pso_step_(*args, backend=name)), 1) for name in backends]
    if eager:
        variants.append(("eager reference", lambda: reference.pso_step_(*args), 1))
    if compiled:
        fn = torch.compile(reference.pso_step_)
        variants.append(("torch.compile", lambda: fn(*args), 2))
    for name, fn, warmup in variants:
        rows.append(Row("pso_step_", shape, dtype_name, name, *time_fn(fn, device, rounds, warmup), nbytes))
    for row in rows:
        row.copy_gbs = copy_row.gbs
    return rows


def combine_rows(K: int, M: int, D: int, dtype_name: str, device: torch.device, backends: list[str],
                 rounds: int = 5) -> list[Row]:
    """Times copy, combine on each backend and torch.mm (the dense-library baseline)."""
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(1)
    src = torch.randn(K, D, generator=g, device=device).to(dtype)
    weights = torch.randn(M, K, generator=g, device=device) / K
    out = torch.empty(M, D, dtype=dtype, device=device)
    shape, s = f"K={K} M={M} D={D:.3g}", torch.finfo(dtype).bits // 8
    dst = torch.empty_like(src)
    copy_row = Row("combine", shape, dtype_name, "copy", *time_fn(lambda: dst.copy_(src), device, rounds), 2 * s * K * D)
    rows = [copy_row]
    weights_t = weights.to(dtype)
    for name in backends:
        t = time_fn(lambda name=name: combine(src, weights, out, backend=name), device, rounds)
        rows.append(Row("combine", shape, dtype_name, name, *t, (K + M) * D * s))
    rows.append(Row("combine", shape, dtype_name, "torch.mm",
                    *time_fn(lambda: torch.mm(weights_t, src, out=out), device, rounds), (K + M) * D * s))
    for row in rows:
        row.copy_gbs = copy_row.gbs
    return rows


def markdown(rows: list[Row]) -> str:
    """Markdown table; 'x eager' and 'x best other' are speedups measured in the same run."""
    lines = ["| op | shape | dtype | variant | min ms | median ms | GB/s | % of copy | x eager reference |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    eager = {(r.op, r.shape, r.dtype): r.min_s for r in rows if r.variant == "eager reference"}
    for r in rows:
        pct = f"{100 * r.gbs / r.copy_gbs:.0f}%" if r.copy_gbs and r.variant != "copy" else ""
        e = eager.get((r.op, r.shape, r.dtype))
        x_eager = f"{e / r.min_s:.2f}" if e and r.variant not in ("copy", "eager reference") else ""
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.variant} | {r.min_s * 1e3:.2f} | {r.median_s * 1e3:.2f} | "
                     f"{r.gbs:.1f} | {pct} | {x_eager} |")
    return "\n".join(lines)
