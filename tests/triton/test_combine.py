"""combine (Triton) against swarmkern/ops/reference.py."""
from __future__ import annotations

import pytest
import torch

from swarmkern.ops import reference as ref
from swarmkern.ops import triton_backend as tb
from tlib import assert_bitwise_equal, assert_rounded_from, rand

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def exact32(src, weights):
    return ref.combine(src.float(), weights.float())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K,M", [(1, 1), (3, 8), (8, 3)])
@pytest.mark.parametrize("D", [1, 7, 4097, 100003])
def test_combine_matches_reference(K, M, D, dtype, device):
    if D == 100003 and (K, M) != (8, 3):
        pytest.skip("the large size runs for one (K, M) (interpreter time)")
    src = rand((K, D), dtype, device)
    weights = torch.randn((M, K)).to(device)
    out = tb.combine(src, weights)
    assert out.shape == (M, D) and out.dtype == dtype and out.device == src.device
    if dtype == torch.float32:
        assert_bitwise_equal(out, ref.combine(src, weights), "combine")
    else:
        assert_rounded_from(out, exact32(src, weights), "combine")


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_combine_out_form_poisoned(out_dtype, device):
    """out= is written completely (poisoned with NaN first), in place, in out's dtype, and returned."""
    K, M, D = 4, 3, 517
    src = rand((K, D), torch.bfloat16, device)
    weights = torch.randn((M, K)).to(device)
    out = torch.full((M, D), float("nan"), dtype=out_dtype, device=device)
    ptr = out.data_ptr()
    res = tb.combine(src, weights, out=out)
    assert res is out and out.data_ptr() == ptr
    expected = ref.combine(src, weights, out=torch.empty_like(out))
    if out_dtype == torch.float32:
        assert_bitwise_equal(out, expected, "combine out=")
    else:
        assert_rounded_from(out, exact32(src, weights), "combine out=")


def test_combine_out_rows_of_a_larger_buffer(device):
    """out may be a row-strided view: only its [M, D] elements are written."""
    K, M, D = 3, 2, 70
    src = rand((K, D), torch.float32, device)
    weights = torch.randn((M, K)).to(device)
    buf = torch.full((M + 1, D + 9), float("nan"), device=device)
    out = buf[:M, :D]
    tb.combine(src, weights, out=out)
    assert_bitwise_equal(out, ref.combine(src, weights), "combine into a view")
    outside = torch.ones_like(buf, dtype=torch.bool)
    outside[:M, :D] = False
    assert torch.isnan(buf[outside]).all()


def test_combine_in_place_over_src(device):
    """out=src (crossover / soups over the pool buffer): every output reads the original src."""
    K, D = 5, 1000
    src = rand((K, D), torch.float32, device)
    weights = torch.randn((K, K)).to(device)
    expected = ref.combine(src.clone(), weights)
    ptr = src.data_ptr()
    tb.combine(src, weights, out=src)
    assert src.data_ptr() == ptr
    assert_bitwise_equal(src, expected, "combine in place")


def test_combine_weights_any_strides_and_dtype(device):
    K, M, D = 6, 4, 333
    src = rand((K, D), torch.float16, device)
    w_t = torch.randn((K, M)).to(device)
    weights = w_t.t()  # [M, K] with strides (1, M)
    assert_rounded_from(tb.combine(src, weights), exact32(src, weights), "transposed weights")
    w16 = torch.randn((M, K)).to(torch.bfloat16).to(device)
    assert_rounded_from(tb.combine(src, w16), exact32(src, w16), "bf16 weights")


@pytest.mark.parametrize("blocks", [(2, 16), (4, 32), (1, 16)])
def test_combine_tiled_outputs(blocks, device):
    """M split over several programs (more outputs than one pass holds) and D over several blocks."""
    K, M, D = 3, 9, 77
    src = rand((K, D), torch.float32, device)
    weights = torch.randn((M, K)).to(device)
    out = torch.full((M, D), float("nan"), device=device)
    tb._launch_combine(src, weights, out, blocks=blocks)
    assert_bitwise_equal(out, ref.combine(src, weights), f"blocks={blocks}")


def test_combine_empty(device):
    src = rand((3, 10), torch.float32, device)
    assert tb.combine(src, torch.empty((0, 3), device=device)).shape == (0, 10)
    out = tb.combine(torch.empty((0, 10), device=device), torch.empty((2, 0), device=device))
    assert torch.equal(out, torch.zeros((2, 10), device=device))


def test_combine_signed_zeros_follow_the_reference(device):
    """The reference starts from +0.0: 0.0 + (-1 * 0.0) = +0.0, where starting from the first product
    would give -0.0."""
    src = torch.zeros((2, 8), device=device)
    weights = torch.tensor([[-1.0, -2.0], [1.0, -1.0]], device=device)
    out = tb.combine(src, weights)
    expected = ref.combine(src, weights)
    assert not torch.signbit(expected).any()
    assert_bitwise_equal(out.view(torch.int32), expected.view(torch.int32), "signed zeros")
