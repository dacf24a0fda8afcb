"""The compiled backends against the reference (the spec), on fresh random inputs.

fp32 must match bit for bit (the kernels keep the reference's operation order and are built without
FMA contraction); bf16/fp16 storage with fp32 math rounds once to nearest even, like the reference,
so they match bit for bit as well (stricter than the 1-ulp contract). GPU cases are marked `gpu`.
"""
from __future__ import annotations

import pytest
import torch

from swarmkern import ops
from swarmkern.ops import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
P_VALUES = [1, 3, 8]
D_VALUES = [1, 7, 4097, 278011]
STEPS = 7

_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# (backend, device): every compiled backend this package builds. Triton has its own suite (tests/triton).
BACKENDS = [pytest.param(("cpu", "cpu"), id="cpu"), pytest.param(("cuda", "cuda"), id="cuda", marks=_gpu)]


def _need(backend: str) -> None:
    if backend not in ops.available_backends(backend):
        pytest.skip(f"backend {backend} unavailable: {ops.backend_summary()}")


@pytest.fixture(autouse=True)
def _threads():
    # Two threads exercise the parallel split without fighting the other jobs on this machine.
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _state(P: int, D: int, dtype, device, seed: int):
    g = _gen(seed)
    x, v, p = (torch.randn(P, D, generator=g).to(dtype).to(device) for _ in range(3))
    gbest, gworst = (torch.randn(D, generator=g).to(dtype).to(device) for _ in range(2))
    return x, v, p, gbest, gworst


def _coef(P: int, seed: int) -> torch.Tensor:
    c = torch.rand(P, 4, generator=_gen(seed)) + 0.05
    return c / c.sum(dim=1, keepdim=True)


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bit-for-bit equality (NaNs included), with the first mismatches in the message."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    int_type = {4: torch.int32, 2: torch.int16}[actual.element_size()]
    a = actual.detach().cpu().contiguous().view(int_type)
    e = expected.detach().cpu().contiguous().view(int_type)
    bad = (a != e).nonzero()
    if len(bad):
        idx = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {len(bad)} of {a.numel()} elements differ; first at {idx}: "
                             f"{actual.cpu()[idx].item()!r} vs reference {expected.cpu()[idx].item()!r}")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", D_VALUES)
@pytest.mark.parametrize("P", P_VALUES)
def test_pso_step_matches_reference(backend_device, P, D, dtype):
    backend, device = backend_device
    _need(backend)
    x, v, p, gb, gw = _state(P, D, dtype, device, seed=1000 * P + D)
    rx, rv = x.clone(), v.clone()
    inputs = [t.clone() for t in (p, gb, gw)]
    ptrs = (x.data_ptr(), v.data_ptr())
    for it in range(STEPS):
        coef = _coef(P, seed=it).to(device)
        step = 0.5 + 0.07 * it
        ops.pso_step_(x, v, p, gb, gw, coef, step, backend=backend)
        reference.pso_step_(rx, rv, p, gb, gw, coef, step)
        assert_bits_equal(v, rv, f"v after step {it}")
        assert_bits_equal(x, rx, f"x after step {it}")
    assert (x.data_ptr(), v.data_ptr()) == ptrs, "pso_step_ must update in place"
    for before, after, name in zip(inputs, (p, gb, gw), ("pbest", "gbest", "gworst")):
        assert_bits_equal(after, before, f"{name} must not change")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("P,D", [(1, 1), (3, 7), (8, 4097), (3, 278011)])
# (normalize, random_inertia): Model Swarms' per-element variant, unnormalised, and the classic update
@pytest.mark.parametrize("normalize,random_inertia", [(True, True), (False, True), (False, False)],
                         ids=["normalized", "raw", "classic"])
def test_pso_step_random_matches_reference(backend_device, P, D, dtype, normalize, random_inertia):
    backend, device = backend_device
    _need(backend)
    x, v, p, gb, gw = _state(P, D, dtype, device, seed=7 * P + D)
    rx, rv = x.clone(), v.clone()
    phi = torch.tensor([[0.4, 0.3, 0.3, 0.3]]).repeat(P, 1) * torch.linspace(0.5, 1.5, P).unsqueeze(1)
    if P > 1:
        phi[1] = 0.0  # a zero normaliser: velocity 0, not NaN
    phi = phi.to(device)
    steps = STEPS if P * D < 100_000 else 2  # the pure-torch Philox reference is slow at 2M elements
    for it in range(steps):
        args = (0.8, 0xDEADBEEFCAFEF00D, 40 + it, 5, 0.1, 0.9, normalize, random_inertia)
        ops.pso_step_random_(x, v, p, gb, gw, phi, *args, backend=backend)
        reference.pso_step_random_(rx, rv, p, gb, gw, phi, *args)
        assert_bits_equal(v, rv, f"v after step {it}")
        assert_bits_equal(x, rx, f"x after step {it}")
    if P > 1 and normalize:
        assert not torch.isnan(v[1].float()).any()


@pytest.mark.parametrize("backend_device", BACKENDS + [pytest.param(("reference", "cpu"), id="reference")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_constant_inertia_is_phi_v_exactly(backend_device, dtype):
    """random_inertia=False: with only phi_v nonzero the new velocity is phi_v * v exactly (no random
    factor), and x moves by step * that; with the random factor it is not (the flag is honoured)."""
    backend, device = backend_device
    if backend != "reference":
        _need(backend)
    x, v, p, gb, gw = _state(3, 1001, dtype, device, seed=11)
    phi = torch.tensor([[0.7, 0.0, 0.0, 0.0]]).repeat(3, 1).to(device)
    x0, v0 = x.float().clone(), v.float().clone()
    ops.pso_step_random_(x, v, p, gb, gw, phi, 1.0, 5, 1, 0, 0.0, 1.0, False, False, backend=backend)
    expected_v = torch.tensor(0.7) * v0
    assert_bits_equal(v, expected_v.to(dtype), "v = phi_v * v")
    assert_bits_equal(x, (x0 + expected_v).to(dtype), "x = x + v")
    x, v = x0.to(dtype), v0.to(dtype)
    ops.pso_step_random_(x, v, p, gb, gw, phi, 1.0, 5, 1, 0, 0.0, 1.0, False, True, backend=backend)
    assert (v.float() - expected_v.to(dtype).float()).abs().max() > 0.1, "random inertia must differ"


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_gbest_row_view_and_strided_rows(backend_device):
    """gbest is a row of pbest; x, v, pbest are column slices of wider buffers (row stride > D)."""
    backend, device = backend_device
    _need(backend)
    P, D, W = 4, 1001, 1300
    g = _gen(3)
    xb, vb, pb = (torch.randn(P, W, generator=g).to(device) for _ in range(3))
    x, v, p = xb[:, 5:5 + D], vb[:, 17:17 + D], pb[:, :D]
    gb, gw = p[2], torch.randn(D, generator=g).to(device)
    rx, rv = x.clone(), v.clone()
    outside = [xb[:, :5].clone(), xb[:, 5 + D:].clone(), vb[:, :17].clone()]
    coef = _coef(P, 5).to(device)
    ops.pso_step_(x, v, p, gb, gw, coef, 0.9, backend=backend)
    reference.pso_step_(rx, rv, p, gb, gw, coef, 0.9)
    assert_bits_equal(x, rx, "x")
    assert_bits_equal(v, rv, "v")
    for before, after in zip(outside, (xb[:, :5], xb[:, 5 + D:], vb[:, :17])):
        assert_bits_equal(after, before, "memory outside the slices must not change")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("src_dtype,out_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
                                                 (torch.float32, torch.float16)], ids=str)
@pytest.mark.parametrize("D", D_VALUES)
@pytest.mark.parametrize("K,M", [(1, 1), (3, 8), (8, 3)])
def test_combine_matches_reference(backend_device, K, M, D, src_dtype, out_dtype):
    backend, device = backend_device
    _need(backend)
    g = _gen(K * 100 + M + D)
    src = torch.randn(K, D, generator=g).to(src_dtype).to(device)
    weights = torch.randn(M, K, generator=g).to(device)
    src_before = src.clone()
    expected = reference.combine(src, weights, torch.empty(M, D, dtype=out_dtype, device=device))
    if out_dtype == src_dtype:
        assert_bits_equal(ops.combine(src, weights, backend=backend), expected, "combine(src, weights)")
    out = torch.full((M, D), float("nan"), dtype=out_dtype, device=device)  # poisoned
    ptr = out.data_ptr()
    result = ops.combine(src, weights, out, backend=backend)
    assert result is out and out.data_ptr() == ptr
    assert_bits_equal(out, expected, "combine(src, weights, out)")
    assert_bits_equal(src, src_before, "src must not change")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_out_aliasing_rows_of_src(backend_device, dtype):
    """Crossover in place: children written over rows of the buffer their parents live in."""
    backend, device = backend_device
    _need(backend)
    g = _gen(11)
    for D in (7, 4097):
        buf = torch.randn(6, D, generator=g).to(dtype).to(device)
        weights = torch.randn(3, 6, generator=g).to(device)
        expected = reference.combine(buf.clone(), weights)
        out = buf[2:5]  # the outputs overwrite rows 2..4, which are also inputs
        ops.combine(buf, weights, out, backend=backend)
        assert_bits_equal(out, expected, f"aliased rows (D={D})")


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_combine_out_partially_overlapping_src(backend_device):
    """out overlaps src shifted by some columns: still as if src were read first."""
    backend, device = backend_device
    _need(backend)
    g = _gen(12)
    flat = torch.randn(4 * 300, generator=g).to(device)
    src = flat[: 3 * 300].view(3, 300)
    out = flat[150: 150 + 3 * 300].view(3, 300)
    weights = torch.randn(3, 3, generator=g).to(device)
    expected = reference.combine(src.clone(), weights)
    ops.combine(src, weights, out, backend=backend)
    assert_bits_equal(out, expected, "overlapping out")


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [7, 64])  # scalar tail only, vector path + tail
def test_rounding_of_special_values(backend_device, out_dtype, D):
    """fp32 -> bf16/fp16 rounding on store (ties, subnormals, overflow, inf, NaN) equals torch's."""
    backend, device = backend_device
    _need(backend)
    specials = torch.tensor([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
                             2.0 ** -25, 1.5 * 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -14 - 2.0 ** -25, 65504.0, 65519.0,
                             65520.0, 3.0e38, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40,
                             -2.5 * 2.0 ** -24])
    src = specials.repeat((D + len(specials) - 1) // len(specials))[:D].unsqueeze(0).to(device)
    out = torch.empty(1, D, dtype=out_dtype, device=device)
    ops.combine(src, torch.ones(1, 1), out, backend=backend)
    expected = reference.combine(src, torch.ones(1, 1, device=device), torch.empty_like(out))
    assert_bits_equal(out, expected, "rounded store")


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_empty_inputs_are_no_ops(backend_device):
    backend, device = backend_device
    _need(backend)
    x = torch.empty(0, 5, device=device)
    ops.pso_step_(x, x.clone(), x.clone(), torch.zeros(5, device=device), torch.zeros(5, device=device),
                  torch.empty(0, 4), 1.0, backend=backend)
    src = torch.randn(0, 6, device=device)
    out = ops.combine(src, torch.empty(2, 0), backend=backend)
    assert out.shape == (2, 6) and not out.any()  # an empty sum is zero


def test_default_backend_on_cpu_is_the_extension():
    _need("cpu")
    assert ops.default_backend("cpu") == "cpu"
    assert "cpu" in ops.available_backends("cpu") and "reference" in ops.available_backends("cpu")
    summary = ops.backend_summary()
    assert "cpu" in summary and "reference" in summary and "default:" in summary


def test_reference_backend_is_selectable():
    x, v, p, gb, gw = _state(2, 9, torch.float32, "cpu", seed=2)
    rx, rv = x.clone(), v.clone()
    coef = _coef(2, 1)
    ops.pso_step_(x, v, p, gb, gw, coef, 1.0, backend="reference")
    reference.pso_step_(rx, rv, p, gb, gw, coef, 1.0)
    assert_bits_equal(x, rx, "x")
