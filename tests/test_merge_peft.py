"""Agreement with peft.utils.merge_utils on identical inputs (DARE under the same drop mask)."""
from __future__ import annotations

import warnings

import pytest
import torch
from peft.utils import merge_utils as pm

from swarmkern.merge import (MergeContext, dare_keep_mask, magnitude_trim, parse_method_config, segments_of,
                             task_arithmetic, ties_merge)
from swarmkern.merge.dare import dare_merge

from swarmkern.merge import kernels

SHAPES = [(8, 16), (33, 7), (5,)]


def _tensors(k, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(k)]


def _weights(k):
    return torch.linspace(0.3, 1.4, k)


@pytest.fixture(scope="module")
def merge_kernels():
    """Whether the fused kernels (swarmkern._C) are built: without them the fused cases skip."""
    return kernels.available()


@pytest.fixture
def bernoulli_from(monkeypatch):
    """Make torch.bernoulli (PEFT's random_pruning) return given masks, one per call, in order."""
    def install(masks):
        it = iter(masks)
        monkeypatch.setattr(torch, "bernoulli", lambda p, *a, **k: next(it).to(p.dtype).reshape(p.shape))
    return install


@pytest.mark.parametrize("shape", SHAPES)
def test_task_arithmetic_equals_peft(shape):
    ts, w = _tensors(4, shape, 0), _weights(4)
    ours = task_arithmetic(torch.stack(ts).reshape(4, -1), w).reshape(shape)
    assert torch.equal(ours, pm.task_arithmetic(ts, w))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.3, 0.7, 1.0])
def test_magnitude_prune_equals_peft(shape, density):
    ts, w = _tensors(3, shape, 1), _weights(3)
    ours = task_arithmetic(magnitude_trim(torch.stack(ts).reshape(3, -1), density), w).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that density 1 prunes nothing
        theirs = pm.magnitude_prune(ts, w, density)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("method", ["total", "frequency"])
@pytest.mark.parametrize("fused", [False, True])
def test_ties_equals_peft(shape, density, method, fused, merge_kernels):
    if fused and not merge_kernels:
        pytest.skip("fused merge kernels unavailable")
    ts, w = _tensors(5, shape, 2), _weights(5)
    ours = ties_merge(torch.stack(ts).reshape(5, -1), w, density, method, fused=fused).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = pm.ties(ts, w, density, method)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    if not fused:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_dare_equals_peft_under_the_same_mask(shape, ties, fused, bernoulli_from, merge_kernels):
    if fused and not merge_kernels:
        pytest.skip("fused merge kernels unavailable")
    k, density, seed = 4, 0.4, 1234
    ts, w = _tensors(k, shape, 3), _weights(k)
    n = ts[0].numel()
    keep = dare_keep_mask(k, 0, n, density, seed)
    bernoulli_from(list(keep))
    theirs = pm.dare_ties(ts, w, density, "total") if ties else pm.dare_linear(ts, w, density)
    ours = dare_merge(torch.stack(ts).reshape(k, -1), w, density, seed, 0, ties, fused=fused).reshape(shape)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    if not fused:
        assert torch.equal(ours, theirs)


def test_registry_ties_over_a_layout_equals_peft_per_tensor():
    """TIES trims per tensor, as PEFT does for each LoRA weight: the registry method over a two-tensor
    layout equals PEFT applied to each tensor separately."""
    layout = {"m.lora_A.weight": (4, 6), "m.lora_B.weight": (5, 4)}
    segs = segments_of(layout)
    g = torch.Generator().manual_seed(4)
    experts = torch.randn(3, sum(s.numel for s in segs), generator=g)
    w = [0.5, 1.0, 1.5]
    ctx = MergeContext(experts=experts, segments=segs, dev=lambda rows: torch.zeros(rows.shape[0]))
    row = parse_method_config({"type": "ties", "density": 0.3, "weights": w}).run(ctx).row
    for s in segs:
        ts = [experts[k, s.offset:s.stop].reshape(s.shape) for k in range(3)]
        assert torch.allclose(row[s.offset:s.stop].reshape(s.shape), pm.ties(ts, torch.tensor(w), 0.3),
                              rtol=1e-6, atol=1e-7)


def test_magnitude_trim_with_duplicate_magnitudes_equals_peft():
    """Rows with ties at the threshold take the topk path: the selection is still PEFT's."""
    x = torch.randint(-3, 4, (4, 1000), generator=torch.Generator().manual_seed(0)).float()
    out = magnitude_trim(x, 0.3)
    for r in range(4):
        assert torch.equal(out[r], pm.magnitude_based_pruning(x[r], 0.3))
        assert int((out[r] != 0).sum()) == 300
