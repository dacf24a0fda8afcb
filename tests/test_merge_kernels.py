"""The fused CPU merge kernels against their pure-PyTorch spec (ties.py / dare.py)."""
from __future__ import annotations

import pytest
import torch

from swarmkern.merge import dare_keep_mask, disjoint_merge, elect_sign, kernels, magnitude_trim
from swarmkern.merge.dare import dare_merge


pytestmark = pytest.mark.skipif(not kernels.available(), reason="swarmkern._C (the fused merge kernels) not built")


def _x(k, n, seed=0, dtype=torch.float32):
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("k,n", [(1, 1), (2, 7), (5, 513), (9, 4099)])
@pytest.mark.parametrize("method", ["total", "frequency"])
def test_ties_kernel_is_bit_exact(k, n, method):
    trimmed = magnitude_trim(_x(k, n, 1), 0.4)
    w = torch.linspace(-0.5, 1.5, k)
    expect = disjoint_merge(trimmed, w, elect_sign(trimmed, method))
    assert torch.equal(kernels.ties_disjoint_merge(trimmed, w, method), expect)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ties_kernel_low_precision_storage(dtype):
    trimmed = magnitude_trim(_x(4, 1000, 2), 0.5).to(dtype)
    w = torch.rand(4, generator=torch.Generator().manual_seed(0))
    t32 = trimmed.float()
    expect = disjoint_merge(t32, w, elect_sign(t32)).to(dtype)
    got = kernels.ties_disjoint_merge(trimmed, w)
    assert got.dtype == dtype and torch.equal(got, expect)


@pytest.mark.parametrize("n,offset", [(1, 0), (3, 1), (600, 2), (5000, 3), (1027, 4096 + 1)])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 2 ** 40 + 17, 2 ** 64 - 5])
def test_dare_kernel_matches_the_reference_mask(n, offset, ties, seed):
    x, w = _x(3, n, 3), torch.tensor([0.2, -0.7, 1.1])
    got = kernels.dare_merge(x, w, 0.3, seed, offset, ties)
    expect = dare_merge(x, w, 0.3, seed, offset, ties, fused=False)
    assert torch.allclose(got, expect, rtol=1e-6, atol=1e-6)
    # the mask itself is the reference's, bit for bit: isolate one expert with a one-hot weight
    keep = dare_keep_mask(3, offset, n, 0.3, seed)
    for e in range(3):
        one = torch.zeros(3)
        one[e] = 1.0
        assert torch.equal(kernels.dare_merge(x, one, 0.3, seed, offset, False), x[e] * keep[e] / 0.3)


def test_dare_kernel_is_chunking_invariant():
    x, w = _x(4, 10_001, 4), torch.ones(4)
    whole = kernels.dare_merge(x, w, 0.5, 9, 0, True)
    parts = torch.cat([kernels.dare_merge(x[:, a:b], w, 0.5, 9, a, True) for a, b in ((0, 5), (5, 7777), (7777, 10_001))])
    assert torch.equal(whole, parts)


def test_kernels_accept_row_strided_views():
    big = _x(6, 300, 5)
    x = big[::2, 10:210]  # row stride 600, unit inner stride
    w = torch.ones(3)
    assert torch.equal(kernels.ties_disjoint_merge(x, w), kernels.ties_disjoint_merge(x.contiguous(), w))
    assert torch.equal(kernels.dare_merge(x, w, 0.5, 1, 0), kernels.dare_merge(x.contiguous(), w, 0.5, 1, 0))


def test_bad_inputs_are_clear_errors():
    x = _x(3, 10)
    with pytest.raises(RuntimeError, match="weights must be \\[3\\]"):
        kernels.ties_disjoint_merge(x, torch.ones(2))
    with pytest.raises(RuntimeError, match="src must be 2-D"):
        torch.ops.swarmkern.merge_ties_disjoint(x[0], torch.ones(3), 0)
    with pytest.raises(RuntimeError, match="density must be in"):
        kernels.dare_merge(x, torch.ones(3), 0.0, 1, 0)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        kernels.ties_disjoint_merge(x.double(), torch.ones(3))
    with pytest.raises(ValueError, match="majority_sign_method"):
        kernels.ties_disjoint_merge(x, torch.ones(3), "mass")


def test_opcheck():
    x, w = _x(3, 37), torch.rand(3)
    torch.library.opcheck(torch.ops.swarmkern.merge_ties_disjoint.default, (x, w, 1),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.swarmkern.merge_dare.default, (x, w, 0.5, 3, 0, True, 0),
                          test_utils=("test_schema", "test_faketensor"))
    for dtype in (torch.bfloat16, torch.float16):
        torch.library.opcheck(torch.ops.swarmkern.merge_dare.default, (x.to(dtype), w, 0.3, -5, 7, False, 1))


def test_fused_paths_use_the_kernels(monkeypatch):
    """ties_merge / dare_merge with fused=None go through the compiled ops (not silently the pure path)."""
    from swarmkern.merge.ties import ties_merge

    calls = []
    real = kernels.ties_disjoint_merge
    monkeypatch.setattr(kernels, "ties_disjoint_merge", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w = _x(3, 100), torch.rand(3)
    assert torch.equal(ties_merge(x, w, 0.5), ties_merge(x, w, 0.5, fused=False))
    assert calls == [1]
