"""Kernel benchmarks (pytest-benchmark): pso_step_ and combine at sizes far beyond the last-level cache.

    OMP_WAIT_POLICY=PASSIVE python -m pytest benchmarks/bench_ops.py -q --benchmark-disable-gc \\
        --ops-table benchmarks/results/ops_cpu.md

Every group (op, shape, dtype) times a plain copy of the same data in the same run, so the table's
"% of copy" and speedups are ratios measured side by side (this machine is shared and noisy).
GB/s come from the modelled bytes of docs/KERNELS.md, not from what a variant actually moves:
  pso_step_: (2*s_x + 2*s_v + s_p) * P * D + (s_g + s_w) * D;  combine: (K + M) * D * s;  copy: 2 * s * numel.
SWARMKERN_BENCH_SCALE (default 1) scales D down for a quick smoke run; SWARMKERN_BENCH_ROUNDS (default 5).
"""
from __future__ import annotations

import os

import pytest
import torch

from swarmkern import ops
from swarmkern.ops import reference

SCALE = float(os.environ.get("SWARMKERN_BENCH_SCALE", "1"))
ROUNDS = int(os.environ.get("SWARMKERN_BENCH_ROUNDS", "5"))
PSO_SHAPES = [(10, 8_000_000), (32, 2_000_000)]
COMBINE_SHAPES = [(10, 10, 8_000_000), (32, 32, 2_000_000)]  # (K, M, D)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BACKEND = "cpu" if "cpu" in ops.available_backends("cpu") else None

_state: dict = {}


def _cached(key, make):
    """One set of big tensors alive at a time (they are hundreds of MB each)."""
    if _state.get("key") != key:
        _state.clear()
        _state["value"] = make()
        _state["key"] = key
    return _state["value"]


def _swarm(P: int, D: int, dtype: torch.dtype):
    def make():
        g = torch.Generator().manual_seed(0)
        x, v, p = (torch.randn(P, D, generator=g).to(dtype) * 0.1 for _ in range(3))
        gb, gw = (torch.randn(D, generator=g).to(dtype) * 0.1 for _ in range(2))
        coef = torch.rand(P, 4, generator=g)
        coef /= coef.sum(1, keepdim=True)
        # Steps keep the state bounded: the coefficients form a convex combination.
        return dict(x=x, v=v, p=p, gb=gb, gw=gw, coef=coef, copy_dst=torch.empty_like(x))
    return _cached(("pso", P, D, dtype), make)


_compiled = {}


def _compiled_reference():
    if "pso" not in _compiled:
        _compiled["pso"] = torch.compile(reference.pso_step_)
    return _compiled["pso"]


@pytest.fixture
def run(benchmark, ops_table):
    """Times fn with pytest-benchmark and records it for the table (benchmarks/conftest.py)."""
    def _go(fn, group: str, variant: str, nbytes: int):
        _run(benchmark, ops_table, fn, group, variant, nbytes)
    return _go


def _run(benchmark, ops_table, fn, group: str, variant: str, nbytes: int):
    benchmark.group = group
    benchmark.extra_info.update(variant=variant, modelled_bytes=nbytes)
    warmup = 2 if variant == "torch.compile" else 1  # the first compiled call compiles
    # The eager reference takes seconds per call here: fewer rounds (it is the slow baseline).
    rounds = min(ROUNDS, 2) if variant == "eager reference" else ROUNDS
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0 if variant == "eager reference" else warmup, iterations=1)
    ops_table.record(group, variant, benchmark.stats.stats.min, benchmark.stats.stats.median, nbytes)


@pytest.mark.parametrize("variant", ["copy", "cpu", "reference", "torch.compile"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("P,D", PSO_SHAPES, ids=[f"P{p}-D{d:.0e}" for p, d in PSO_SHAPES])
def test_pso_step(run, P, D, dtype_name, variant):
    D = max(1, int(D * SCALE))
    dtype = DTYPES[dtype_name]
    s = torch.finfo(dtype).bits // 8
    st = _swarm(P, D, dtype)
    group = f"pso_step_ P={P} D={D:.3g} {dtype_name}"
    args = (st["x"], st["v"], st["p"], st["gb"], st["gw"], st["coef"], 0.5)
    if variant == "copy":
        run(lambda: st["copy_dst"].copy_(st["x"]), group, variant, 2 * s * P * D)
        return
    nbytes = 5 * s * P * D + 2 * s * D
    if variant == "cpu":
        if CPU_BACKEND is None:
            pytest.skip("C++ extension not built")
        run(lambda: ops.pso_step_(*args, backend="cpu"), group, variant, nbytes)
    elif variant == "reference":
        run(lambda: reference.pso_step_(*args), group, "eager reference", nbytes)
    else:
        compiled = _compiled_reference()
        run(lambda: compiled(*args), group, variant, nbytes)


def _combine_inputs(K: int, M: int, D: int, dtype: torch.dtype):
    def make():
        g = torch.Generator().manual_seed(1)
        src = torch.randn(K, D, generator=g).to(dtype)
        weights = torch.randn(M, K, generator=g) / K
        return dict(src=src, weights=weights, weights_t=weights.to(dtype), out=torch.empty(M, D, dtype=dtype),
                    copy_dst=torch.empty_like(src))
    return _cached(("combine", K, M, D, dtype), make)


@pytest.mark.parametrize("variant", ["copy", "cpu", "torch.mm", "reference"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("K,M,D", COMBINE_SHAPES, ids=[f"K{k}-M{m}-D{d:.0e}" for k, m, d in COMBINE_SHAPES])
def test_combine(run, K, M, D, dtype_name, variant):
    D = max(1, int(D * SCALE))
    dtype = DTYPES[dtype_name]
    s = torch.finfo(dtype).bits // 8
    st = _combine_inputs(K, M, D, dtype)
    group = f"combine K={K} M={M} D={D:.3g} {dtype_name}"
    nbytes = (K + M) * D * s
    if variant == "copy":
        run(lambda: st["copy_dst"].copy_(st["src"]), group, variant, 2 * s * K * D)
    elif variant == "cpu":
        if CPU_BACKEND is None:
            pytest.skip("C++ extension not built")
        run(lambda: ops.combine(st["src"], st["weights"], st["out"], backend="cpu"), group, variant,
             nbytes)
    elif variant == "torch.mm":
        run(lambda: torch.mm(st["weights_t"], st["src"], out=st["out"]), group, variant, nbytes)
    else:
        run(lambda: reference.combine(st["src"], st["weights"], st["out"]), group, "eager reference",
             nbytes)
