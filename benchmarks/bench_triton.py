"""Triton swarm ops on a CUDA GPU: each op vs the eager reference vs torch.compile(reference) vs a copy.

    python -m pytest benchmarks/bench_triton.py --benchmark-columns=median,rounds -q -s
    SWARMKERN_BENCH_OUT=benchmarks/results/triton_h200.json python -m pytest benchmarks/bench_triton.py -q -s

Skipped without CUDA (and under TRITON_INTERPRET=1). Achieved GB/s = modelled bytes / median time, the
modelled bytes of docs/KERNELS.md: per step P*D*(2*s_x + 2*s_v + s_p) + D*(s_g + s_w);
combine K*D*s_src + M*D*s_out; a copy of B bytes moves 2*B. "% of copy" is against the device-to-device
copy of the same run. Before timing, each Triton op is checked bit for bit against the reference.
"""
from __future__ import annotations

import os

import pytest
import torch

from swarmkern.atomic import atomic_write_json
from swarmkern.ops import reference as ref
from swarmkern.ops import triton_backend as tb

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and tb.AVAILABLE and not tb.INTERPRET),
    reason=f"needs compiled Triton kernels on a CUDA GPU ({tb.REASON})")

PSO_SIZES = [(10, 8_000_000), (32, 2_000_000), (32, 32_000_000)]
RANDOM_SIZES = [(10, 8_000_000), (32, 2_000_000)]
COMBINE_SIZES = [(32, 4, 8_000_000), (8, 8, 32_000_000)]  # (K, M, D)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROUNDS, WARMUP = 20, 3

_RESULTS: list[dict] = []
_COPY_GBPS: dict[str, float] = {}
_COMPILED: dict = {}


def _sync_run(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def _record(benchmark, op: str, impl: str, size: str, dtype: str, nbytes: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the checks ran, nothing was timed
        return
    median = benchmark.stats.stats.median
    gbps = nbytes / median / 1e9
    benchmark.extra_info.update(gbps=round(gbps, 1), modelled_bytes=nbytes)
    _RESULTS.append(dict(op=op, impl=impl, size=size, dtype=dtype, median_ms=median * 1e3, gbps=gbps))


def _pso_inputs(P, D, dtype):
    dev = torch.device("cuda")
    x, v, pbest = (torch.randn((P, D), device=dev).to(dtype) for _ in range(3))
    gbest, gworst = pbest[0], torch.randn(D, device=dev).to(dtype)
    coef = torch.rand((P, 4), device=dev)
    coef /= coef.sum(1, keepdim=True)
    return x, v, pbest, gbest, gworst, coef


def _pso_bytes(P, D, s):
    return P * D * 5 * s + 2 * D * s


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    if not _RESULTS:
        return
    lines = [f"{'op':<17}{'impl':<18}{'size':<22}{'dtype':<6}{'ms':>9}{'GB/s':>9}{'% copy':>8}"]
    for r in _RESULTS:
        pct = 100 * r["gbps"] / _COPY_GBPS[r["dtype"]] if r["dtype"] in _COPY_GBPS else float("nan")
        r["pct_of_copy"] = pct
        lines.append(f"{r['op']:<17}{r['impl']:<18}{r['size']:<22}{r['dtype']:<6}{r['median_ms']:>9.3f}"
                     f"{r['gbps']:>9.0f}{pct:>7.0f}%")
    print("\n" + "\n".join(lines))
    out = os.environ.get("SWARMKERN_BENCH_OUT")
    if out:
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=tb.REASON,
                    command="python -m pytest benchmarks/bench_triton.py -q -s")
        atomic_write_json(out, dict(meta=meta, results=_RESULTS), indent=1)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_copy(benchmark, dtype):
    """The ceiling: a device-to-device copy of 1 GiB (2 GiB moved)."""
    n = 2**30 // DTYPES[dtype].itemsize
    a = torch.empty(n, dtype=DTYPES[dtype], device="cuda").normal_()
    b = torch.empty_like(a)
    benchmark.pedantic(_sync_run(lambda: b.copy_(a)), rounds=ROUNDS, warmup_rounds=WARMUP)
    _record(benchmark, "copy", "torch.copy_", f"{n}", dtype, 2 * a.numel() * a.element_size())
    if benchmark.stats is not None:
        _COPY_GBPS[dtype] = _RESULTS[-1]["gbps"]


@pytest.mark.parametrize("impl", ["triton", "reference", "compiled_reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("P,D", PSO_SIZES)
def test_pso_step(benchmark, P, D, dtype, impl):
    dt = DTYPES[dtype]
    x, v, pbest, gbest, gworst, coef = _pso_inputs(P, D, dt)
    if impl == "triton":
        xr, vr = x.clone(), v.clone()
        ref.pso_step_(xr, vr, pbest, gbest, gworst, coef, 0.5)
        tb.pso_step_(x, v, pbest, gbest, gworst, coef, 0.5)
        assert torch.equal(x, xr) and torch.equal(v, vr), "Triton pso_step_ differs from the reference"
        fn = tb.pso_step_
    elif impl == "reference":
        fn = ref.pso_step_
    else:
        fn = _COMPILED.setdefault("pso", torch.compile(ref.pso_step_))
    benchmark.pedantic(_sync_run(lambda: fn(x, v, pbest, gbest, gworst, coef, 0.5)), rounds=ROUNDS,
                       warmup_rounds=WARMUP)
    _record(benchmark, "pso_step_", impl, f"P={P} D={D}", dtype, _pso_bytes(P, D, dt.itemsize))


@pytest.mark.parametrize("impl", ["triton", "reference", "compiled_reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("P,D", RANDOM_SIZES)
def test_pso_step_random(benchmark, P, D, dtype, impl):
    dt = DTYPES[dtype]
    x, v, pbest, gbest, gworst, phi = _pso_inputs(P, D, dt)
    args = (pbest, gbest, gworst, phi, 0.5, 1234, 7)
    if impl == "triton":
        xr, vr = x.clone(), v.clone()
        ref.pso_step_random_(xr, vr, *args)
        tb.pso_step_random_(x, v, *args)
        assert torch.equal(x, xr) and torch.equal(v, vr), "Triton pso_step_random_ differs from the reference"
        fn = tb.pso_step_random_
    elif impl == "reference":
        fn = ref.pso_step_random_
    else:
        fn = _COMPILED.setdefault("random", torch.compile(ref.pso_step_random_))
    benchmark.pedantic(_sync_run(lambda: fn(x, v, *args)), rounds=ROUNDS, warmup_rounds=WARMUP)
    _record(benchmark, "pso_step_random_", impl, f"P={P} D={D}", dtype, _pso_bytes(P, D, dt.itemsize))


@pytest.mark.parametrize("impl", ["triton", "reference", "torch.mm"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("K,M,D", COMBINE_SIZES)
def test_combine(benchmark, K, M, D, dtype, impl):
    dt = DTYPES[dtype]
    src = torch.randn((K, D), device="cuda").to(dt)
    weights = torch.randn((M, K), device="cuda")
    out = torch.empty((M, D), dtype=dt, device="cuda")
    if impl == "triton":
        assert torch.equal(tb.combine(src, weights), ref.combine(src, weights)), "Triton combine differs"
        fn = lambda: tb.combine(src, weights, out=out)  # noqa: E731
    elif impl == "reference":
        fn = lambda: ref.combine(src, weights, out=out)  # noqa: E731
    else:
        w = weights.to(dt)
        fn = lambda: torch.mm(w, src, out=out)  # noqa: E731
    benchmark.pedantic(_sync_run(fn), rounds=ROUNDS, warmup_rounds=WARMUP)
    _record(benchmark, "combine", impl, f"K={K} M={M} D={D}", dtype, (K + M) * D * dt.itemsize)
