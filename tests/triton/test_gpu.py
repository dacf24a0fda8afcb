"""GPU-only checks of the compiled kernels (skipped under the interpreter and without CUDA): indexing past
2^31 elements, within one row and across rows. Each needs up to ~25 GB of GPU memory."""
from __future__ import annotations

import pytest
import torch

from swarmkern.ops import reference as ref
from swarmkern.ops import triton_backend as tb
from tlib import assert_bitwise_equal

pytestmark = pytest.mark.gpu
EDGE = 4099  # elements checked at each end


def _fill(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device=t.device).manual_seed(seed)
    return t.normal_(generator=g)


def _need(bytes_: int) -> None:
    free, _ = torch.cuda.mem_get_info()
    if free < bytes_ * 1.1:
        pytest.skip(f"needs {bytes_ / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} GiB free")


@pytest.mark.parametrize("P,D", [(1, 2**31 + 9), (3, 2**30 + 7)], ids=["one-row-past-2^31", "rows-past-2^31"])
def test_pso_step_past_2_31_elements(P, D):
    dtype, dev = torch.bfloat16, torch.device("cuda")
    _need((3 * P + 2) * D * 2)
    x, v, pbest = (_fill(torch.empty((P, D), dtype=dtype, device=dev), s) for s in (1, 2, 3))
    gbest, gworst = pbest[P - 1], _fill(torch.empty(D, dtype=dtype, device=dev), 4)
    coef = torch.rand((P, 4), device=dev)
    cols = [slice(0, EDGE), slice(D // 2 - EDGE, D // 2), slice(D - EDGE, D)]
    expected = []
    for c in cols:  # the op is elementwise over D: the reference on column slices is the reference
        xs, vs = x[:, c].clone(), v[:, c].clone()
        ref.pso_step_(xs, vs, pbest[:, c], gbest[c], gworst[c], coef, 0.6)
        expected.append((xs, vs))
    tb.pso_step_(x, v, pbest, gbest, gworst, coef, 0.6)
    for c, (xs, vs) in zip(cols, expected):
        assert_bitwise_equal(x[:, c], xs, f"x[:, {c}]")
        assert_bitwise_equal(v[:, c], vs, f"v[:, {c}]")


def test_combine_past_2_31_elements():
    K, M, D, dev = 2, 1, 2**31 + 9, torch.device("cuda")
    _need((K + M) * D * 2)
    src = _fill(torch.empty((K, D), dtype=torch.bfloat16, device=dev), 5)
    weights = torch.tensor([[0.3, -1.7]], device=dev)
    out = tb.combine(src, weights)
    for c in (slice(0, EDGE), slice(D - EDGE, D)):
        assert_bitwise_equal(out[:, c], ref.combine(src[:, c].contiguous(), weights), f"combine[:, {c}]")


def test_pso_step_random_element_index_past_2_31():
    """The Philox counter of element j >= 2^31 (hi word still 0) and of a 64-bit offset, on the GPU."""
    from swarmkern.ops import philox
    start = 2**32 - 7
    got = tb.philox_words(42, 3, 1, start, 64, device="cuda").cpu()
    e = torch.arange(start, start + 64).unsqueeze(0)
    assert torch.equal(got, philox.philox4x32((e & 0xFFFFFFFF, e >> 32, torch.tensor(1), torch.tensor(3)),
                                              philox.split_seed(42))[0])
