"""pso_step_ and pso_step_random_ (Triton) against swarmkern/ops/reference.py."""
from __future__ import annotations

import pytest
import torch

from swarmkern.ops import reference as ref
from swarmkern.ops import triton_backend as tb
from tlib import assert_bitwise_equal, assert_rounded_from, rand, rows_with_padding

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# every (P, D) of P in {1, 3, 8} x D in {1, 7, 4097}, plus a size far past one block with an odd tail
SHAPES = [(P, D) for P in (1, 3, 8) for D in (1, 7, 4097)] + [(3, 278011)]


def make_inputs(P, D, dtype, device, gbest_row: int | None = 0):
    """x, v, pbest [P, D], gbest (a row view of pbest when gbest_row is set), gworst [D], coef [P, 4]."""
    x, v, pbest = (rand((P, D), dtype, device) for _ in range(3))
    gbest = pbest[gbest_row] if gbest_row is not None else rand((D,), dtype, device)
    gworst = rand((D,), dtype, device)
    coef = torch.rand((P, 4), dtype=torch.float32).to(device) * 2 - 0.5
    return x, v, pbest, gbest, gworst, coef


def fp32_reference(fn, x, v, *rest, **kw):
    """The reference's fp32 results (before rounding to the storage dtype) for the same stored inputs."""
    x32, v32 = x.float().clone(), v.float().clone()
    rest32 = [t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in rest]
    fn(x32, v32, *rest32, **kw)
    return x32, v32


def check_step(dtype, x, v, x_ref32, v_ref32, x_ref, v_ref, what):
    if dtype == torch.float32:
        assert_bitwise_equal(v, v_ref, f"{what}: v")
        assert_bitwise_equal(x, x_ref, f"{what}: x")
    else:
        assert_rounded_from(v, v_ref32, f"{what}: v")
        assert_rounded_from(x, x_ref32, f"{what}: x")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("P,D", SHAPES)
def test_pso_step_matches_reference(P, D, dtype, device):
    x, v, pbest, gbest, gworst, coef = make_inputs(P, D, dtype, device, gbest_row=P - 1)
    step = 0.7
    x_ref, v_ref = x.clone(), v.clone()
    x32, v32 = fp32_reference(ref.pso_step_, x, v, pbest, gbest, gworst, coef, step)
    ref.pso_step_(x_ref, v_ref, pbest, gbest, gworst, coef, step)
    ptr_x, ptr_v = x.data_ptr(), v.data_ptr()
    tb.pso_step_(x, v, pbest, gbest, gworst, coef, step)
    assert (x.data_ptr(), v.data_ptr()) == (ptr_x, ptr_v)
    check_step(dtype, x, v, x32, v32, x_ref, v_ref, f"pso_step_ P={P} D={D} {dtype}")


@pytest.mark.parametrize("P,D", [(1, 7), (3, 4097), (8, 1)])
@pytest.mark.parametrize("random_variant", [False, True], ids=["pso_step_", "pso_step_random_"])
def test_in_place_rows_with_stride_and_poisoned_padding(P, D, random_variant, device):
    """Rows of a larger buffer (row stride D + 5): the kernels write exactly the [P, D] view, in place."""
    dtype = torch.float32
    x, xbuf = rows_with_padding(P, D, dtype, device, pad=5)
    v, vbuf = rows_with_padding(P, D, dtype, device, pad=5)
    pbest, gworst = rand((P, D), dtype, device), rand((D,), dtype, device)
    gbest = pbest[0]
    coef = torch.rand((P, 4)).to(device)
    x_ref, v_ref = x.clone(), v.clone()
    xbuf_before, vbuf_before = xbuf.clone(), vbuf.clone()
    if random_variant:
        args = (pbest, gbest, gworst, coef, 0.9, 77, 3)
        ref.pso_step_random_(x_ref, v_ref, *args)
        tb.pso_step_random_(x, v, *args)
    else:
        args = (pbest, gbest, gworst, coef, 0.9)
        ref.pso_step_(x_ref, v_ref, *args)
        tb.pso_step_(x, v, *args)
    assert x.data_ptr() == xbuf.data_ptr() and v.data_ptr() == vbuf.data_ptr()
    assert_bitwise_equal(x, x_ref, "x")
    assert_bitwise_equal(v, v_ref, "v")
    for buf, before, name in ((xbuf, xbuf_before, "x"), (vbuf, vbuf_before, "v")):
        outside = torch.ones_like(buf, dtype=torch.bool)
        outside[:P, :D] = False
        assert torch.isnan(buf[outside]).all(), f"{name}: the kernel wrote outside the [P, D] view"
        assert torch.isnan(before[outside]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_seven_chained_steps(dtype, device):
    """fp32: 7 chained steps bit for bit against 7 reference steps. 16-bit: every step is the rounded
    reference of the kernel's own previous state (independent chains may drift apart by the 1-ulp store
    rounding the interpreter allows, then amplify it)."""
    P, D = 8, 1031
    x, v, pbest, gbest, gworst, coef = make_inputs(P, D, dtype, device, gbest_row=2)
    x_ref, v_ref = x.clone(), v.clone()
    for it in range(7):
        coef = torch.rand((P, 4)).to(device)
        step = 0.5 + 0.1 * it
        if dtype == torch.float32:
            ref.pso_step_(x_ref, v_ref, pbest, gbest, gworst, coef, step)
            tb.pso_step_(x, v, pbest, gbest, gworst, coef, step)
        else:
            x32, v32 = fp32_reference(ref.pso_step_, x, v, pbest, gbest, gworst, coef, step)
            tb.pso_step_(x, v, pbest, gbest, gworst, coef, step)
            check_step(dtype, x, v, x32, v32, None, None, f"step {it}")
    if dtype == torch.float32:
        assert_bitwise_equal(x, x_ref, "x after 7 steps")
        assert_bitwise_equal(v, v_ref, "v after 7 steps")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("P,D", [(1, 1), (3, 7), (8, 4097), (3, 278011)])
@pytest.mark.parametrize("normalize", [True, False])
def test_pso_step_random_matches_reference(P, D, dtype, normalize, device):
    if D == 278011 and dtype != torch.float32:
        pytest.skip("the large size runs in fp32 only (interpreter time)")
    x, v, pbest, gbest, gworst, _ = make_inputs(P, D, dtype, device, gbest_row=0)
    phi = torch.rand((P, 4)).to(device)
    # a 64-bit seed with both halves in use, an iteration and particle offset past 2^31
    args = (pbest, gbest, gworst, phi, 0.8, 0xDEADBEEF12345678, 2**31 + 5, 2**32 - 2, -0.25, 1.5, normalize)
    x_ref, v_ref = x.clone(), v.clone()
    ref.pso_step_random_(x_ref, v_ref, *args)
    x32, v32 = fp32_reference(ref.pso_step_random_, x, v, *args)
    tb.pso_step_random_(x, v, *args)
    check_step(dtype, x, v, x32, v32, x_ref, v_ref, f"pso_step_random_ P={P} D={D} {dtype}")


def test_pso_step_random_zero_total_gives_zero_velocity(device):
    """A particle whose phi are all 0: a + b + c + d = 0, so v = 0 and x is unchanged (normalize=True)."""
    P, D = 3, 37
    x, v, pbest, gbest, gworst, _ = make_inputs(P, D, torch.float32, device)
    phi = torch.rand((P, 4)).to(device)
    phi[1] = 0.0
    x0 = x.clone()
    x_ref, v_ref = x.clone(), v.clone()
    ref.pso_step_random_(x_ref, v_ref, pbest, gbest, gworst, phi, 1.0, 5, 0)
    tb.pso_step_random_(x, v, pbest, gbest, gworst, phi, 1.0, 5, 0)
    assert torch.equal(v[1], torch.zeros_like(v[1])) and torch.equal(x[1], x0[1])
    assert_bitwise_equal(x, x_ref, "x")
    assert_bitwise_equal(v, v_ref, "v")


def test_pso_step_random_stream_depends_on_seed_iteration_and_particle(device):
    """Different seeds, iterations or particle offsets give different draws (the stream is really keyed)."""
    P, D = 2, 64
    base = make_inputs(P, D, torch.float32, device)
    phi = torch.rand((P, 4)).to(device)

    def run(seed, it, off):
        x, v = base[0].clone(), base[1].clone()
        tb.pso_step_random_(x, v, base[2], base[3], base[4], phi, 1.0, seed, it, off)
        return x

    first = run(1, 0, 0)
    assert torch.equal(first, run(1, 0, 0))
    for other in (run(2, 0, 0), run(1 + 2**32, 0, 0), run(1, 1, 0), run(1, 0, 1)):
        assert not torch.equal(first, other)


@pytest.mark.parametrize("ppp,block", [(2, 16), (1, 16), (3, 32)])
def test_particle_split_and_small_blocks(ppp, block, device):
    """The launch variants a GPU picks for small D (several programs per column block, spare particles in
    the last program) and many blocks with a masked tail, forced here through the internal launchers."""
    P, D = 5, 101
    for random_variant in (False, True):
        x, v, pbest, gbest, gworst, coef = make_inputs(P, D, torch.float32, device, gbest_row=4)
        x_ref, v_ref = x.clone(), v.clone()
        if random_variant:
            ref.pso_step_random_(x_ref, v_ref, pbest, gbest, gworst, coef, 0.6, 9, 4, 11, 0.0, 1.0, True)
            tb._launch_pso_step_random(x, v, pbest, gbest, gworst, coef, 0.6, 9, 0, 4, 11, 0.0, 1.0, True,
                                       block=block, particles_per_program=ppp)
        else:
            ref.pso_step_(x_ref, v_ref, pbest, gbest, gworst, coef, 0.6)
            tb._launch_pso_step(x, v, pbest, gbest, gworst, coef, 0.6, block=block, particles_per_program=ppp)
        assert_bitwise_equal(x, x_ref, f"x random={random_variant}")
        assert_bitwise_equal(v, v_ref, f"v random={random_variant}")


def test_empty_shapes_are_no_ops(device):
    """Empty views of bigger buffers: the ops return without touching a byte around them."""
    for P, D in ((0, 5), (3, 0)):
        bufs = [torch.full((4, 6), 7.0, device=device) for _ in range(3)]
        x, v, pbest = (b[:P, :D] for b in bufs)
        g, w = torch.empty(D, device=device), torch.empty(D, device=device)
        coef = torch.ones((P, 4), device=device)
        assert tb.pso_step_(x, v, pbest, g, w, coef, 1.0) is None
        assert tb.pso_step_random_(x, v, pbest, g, w, coef, 1.0, 1, 1) is None
        for b in bufs:
            assert torch.equal(b, torch.full((4, 6), 7.0, device=device))
