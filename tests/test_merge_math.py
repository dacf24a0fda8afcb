"""Each merge method's math on small tensors whose answers can be checked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from swarmkern.merge import (MergeContext, Segment, dare_keep_mask, delta_merge, delta_weights, disjoint_merge,
                             elect_sign, factorize, lora_pairs, magnitude_trim, outlier_trim, parse_method_config,
                             segments_of, slerp, spherical_mean, task_arithmetic, ties_merge, whole)
from swarmkern.merge.dare import dare_merge
from swarmkern.merge.greedy_soup import greedy_soup
from swarmkern.ops.philox import philox4x32, split_seed


def test_magnitude_trim_keeps_top_k_per_row():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -0.2, 1.0]])
    out = magnitude_trim(x, 0.5)  # k = 2 per row
    assert torch.equal(out, torch.tensor([[0.0, -3.0, 2.0, 0.0], [4.0, 0.0, 0.0, 1.0]]))
    assert torch.equal(magnitude_trim(x, 1.0), x)
    assert torch.equal(magnitude_trim(x, 0.1), torch.zeros_like(x))  # int(0.4) = 0 kept


def test_outlier_trim_drops_outliers_and_small_entries():
    x = torch.tensor([[10.0, -9.0, 8.0, 7.0, -6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    out = outlier_trim(x, density=0.5, gamma=0.1)  # drop the top 1, keep the next 5
    assert torch.equal(out, torch.tensor([[0.0, -9.0, 8.0, 7.0, -6.0, 5.0, 0.0, 0.0, 0.0, 0.0]]))
    # gamma too large for density: the top shrinks so that density is still kept
    assert int((outlier_trim(x, 0.95, 0.2) != 0).sum()) == 9


def test_elect_sign_and_disjoint_merge_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                      [2.0, 1.0, 0.0, -1.0],
                      [-4.0, 0.5, 0.0, -1.0]])
    # column sums: -1, -0.5, 0, 1 -> signs -1, -1, +1 (tie), +1
    assert torch.equal(elect_sign(x, "total"), torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    # votes: +1, +1, 0, -1 -> +1, +1, +1, -1
    assert torch.equal(elect_sign(x, "frequency"), torch.tensor([1.0, 1.0, 1.0, -1.0]))
    w = torch.tensor([1.0, 2.0, 0.5])
    out = disjoint_merge(x, w, elect_sign(x, "total"))
    # col0: only -4*0.5 agrees -> -2; col1: only -2*1 -> -2; col2: nothing agrees -> 0; col3: 3*1 -> 3
    assert torch.equal(out, torch.tensor([-2.0, -2.0, 0.0, 3.0]))


def test_ties_merge_trims_then_elects():
    x = torch.tensor([[1.0, 0.1, -5.0, 0.2], [0.3, -2.0, 4.0, 0.2]])
    out = ties_merge(x, torch.ones(2), density=0.5, fused=False)
    # trimmed: [[1, 0, -5, 0], [0, -2, 4, 0]]; signs: +, -, - (mass -1), + (tie) -> [1, -2, -5, 0]
    assert torch.equal(out, torch.tensor([1.0, -2.0, -5.0, 0.0]))


def test_task_arithmetic_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert torch.equal(task_arithmetic(x, torch.tensor([0.5, 2.0])), torch.tensor([6.5, -1.0]))


def test_dare_keep_mask_is_the_documented_philox_stream():
    seed, density = 99, 0.3
    mask = dare_keep_mask(2, 5, 6, density, seed)  # elements 5..10 of experts 0, 1
    for e in range(2):
        for j in range(5, 11):
            words = philox4x32((torch.tensor(j // 4), torch.tensor(0), torch.tensor(e), torch.tensor(0x44415245)),
                               split_seed(seed))
            u = (int(words[j % 4]) >> 8) * 2.0 ** -24
            assert bool(mask[e, j - 5]) == (u < density)


def test_dare_keep_mask_is_chunking_invariant_and_has_the_right_rate():
    full = dare_keep_mask(3, 0, 40_001, 0.25, seed=7)
    parts = torch.cat([dare_keep_mask(3, a, b - a, 0.25, seed=7) for a, b in ((0, 13), (13, 30_002), (30_002, 40_001))], 1)
    assert torch.equal(full, parts)
    assert torch.equal(dare_keep_mask(2, 0, 100, 0.25, seed=7, expert_offset=1), full[1:, :100])
    assert abs(full.float().mean().item() - 0.25) < 0.01
    assert not torch.equal(full, dare_keep_mask(3, 0, 40_001, 0.25, seed=8))


def test_dare_linear_is_unbiased_and_dare_full_density_is_exact():
    x = torch.randn(3, 20_000, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([0.2, 0.3, 0.5])
    exact = task_arithmetic(x, w)
    assert torch.allclose(dare_merge(x, w, 1.0, seed=1, fused=False), exact)
    # each entry is rescaled by 1/density: the mean over many elements matches
    d = dare_merge(x, w, 0.5, seed=1, fused=False)
    keep = dare_keep_mask(3, 0, 20_000, 0.5, 1)
    assert torch.allclose(d, task_arithmetic(x * keep / 0.5, w))
    assert abs((d - exact).mean().item()) < 0.02


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-7)
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-7)
    # parallel vectors: linear interpolation
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)
    # the angle is 1/3 of the way at t=1/3
    third = slerp(a, b, 1 / 3)
    assert math.isclose(math.atan2(third[1], third[0]), math.pi / 6, rel_tol=1e-6)


def test_spherical_mean_reduces_to_slerp_for_two_models():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(50, generator=g)
    b = torch.randn(50, generator=g)
    b = b / b.norm() * a.norm()  # equal norms
    for t in (0.25, 0.5, 0.8):
        got = spherical_mean(torch.stack([a, b]), torch.tensor([1 - t, t]))
        assert torch.allclose(got, slerp(a, b, t), atol=1e-5)
    # three orthonormal directions, uniform weights: the mean direction is (1,1,1)/sqrt(3)
    got = spherical_mean(torch.eye(3) * 2.0, torch.ones(3))
    assert torch.allclose(got, torch.full((3,), 2.0 / math.sqrt(3)), atol=1e-6)


def test_factorize_is_exact_for_low_rank_and_balanced():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    A2, B2, kept, total = factorize(B @ A, 2)
    assert torch.allclose(B2 @ A2, B @ A, atol=1e-5)
    assert math.isclose(kept, total, rel_tol=1e-6)
    assert torch.allclose(B2.norm(dim=0), A2.norm(dim=1), atol=1e-5)  # sqrt(S) on both sides
    A3, B3, kept3, total3 = factorize(B @ A, 1)
    assert kept3 < total3 and A3.shape == (1, 5) and B3.shape == (6, 1)
    A8, B8, _, _ = factorize(B @ A, 8)  # more rank than the matrix has: zero padded
    assert A8.shape == (8, 5) and torch.equal(A8[5:], torch.zeros(3, 5))


def _lora_layout(r=2, out=4, inn=3):
    return segments_of({"m.lora_A.weight": (r, inn), "m.lora_B.weight": (out, r), "m.bias": (out,)})


def test_lora_pairs_and_delta_weights():
    segs = _lora_layout()
    pairs, others = lora_pairs(segs)
    assert [p.module for p in pairs] == ["m"] and [s.name for s in others] == ["m.bias"]
    row = torch.arange(sum(s.numel for s in segs), dtype=torch.float32)
    A = row[:6].reshape(2, 3)
    B = row[6:14].reshape(4, 2)
    assert torch.allclose(delta_weights(row, segs, scaling=2.0)["m.weight"], 2.0 * B @ A)
    with pytest.raises(ValueError, match="no matching"):
        lora_pairs(segments_of({"x.lora_A.weight": (2, 3)}))


def test_delta_space_linear_merge_equals_mean_of_delta_w():
    segs = _lora_layout(r=2, out=4, inn=3)
    g = torch.Generator().manual_seed(1)
    experts = torch.randn(3, sum(s.numel for s in segs), generator=g)
    row, kept = delta_merge(experts, segs, lambda block, seg: block.mean(0))
    # mean of 3 rank-2 updates has rank <= 3 = min(4, 3): exact at rank 2 only if kept == 1, so compare
    # against the best rank-2 approximation of the mean ΔW
    mean_dw = torch.stack([delta_weights(e, segs)["m.weight"] for e in experts]).mean(0)
    U, S, Vh = torch.linalg.svd(mean_dw)
    best2 = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]
    assert torch.allclose(delta_weights(row, segs)["m.weight"], best2, atol=1e-5)
    assert math.isclose(kept, float((S[:2] ** 2).sum() / (S ** 2).sum()), rel_tol=1e-5)
    assert torch.allclose(row[14:], experts[:, 14:].mean(0))  # the bias is merged as stored


def _ctx(experts, segments, score=None, **kw):
    score = score or (lambda rows: -(rows.float() - 1.0).pow(2).sum(1))
    return MergeContext(experts=experts, segments=segments, dev=score, **kw)


def test_static_methods_through_the_registry():
    experts = torch.tensor([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, 1.0, 0.5]])
    ctx = _ctx(experts, whole(4))
    soup = parse_method_config("uniform_soup").run(ctx)
    assert torch.equal(soup.row, torch.tensor([2.0, 0.0, 0.0, 0.5]))
    ta = parse_method_config({"type": "task_arithmetic", "scaling": 0.5}).run(ctx)
    assert torch.equal(ta.row, torch.tensor([2.0, 0.0, 0.0, 0.5]))
    ties = parse_method_config({"type": "ties", "density": 1.0}).run(ctx)
    # signs by mass: +, + (tie 0), + (tie), +; agreeing means: 2, 2, 1, 0.5
    assert torch.equal(ties.row, torch.tensor([2.0, 2.0, 1.0, 0.5]))


def test_scaling_grid_is_chosen_by_dev_and_counted():
    experts = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    ctx = _ctx(experts, whole(2))  # utility peaks at rows of ones: sum of 2 experts * 0.5
    ctx.begin()
    res = parse_method_config({"type": "task_arithmetic", "scaling": [0.3, 0.5, 1.0]}).run(ctx)
    assert res.info["scaling"] == 0.5 and res.dev == 0.0 and ctx.evaluations == 3


def test_greedy_soup_adds_only_helpful_ingredients():
    experts = torch.tensor([[1.0], [0.0], [2.0], [1.2]])
    score = lambda rows: -(rows[:, 0].float() - 1.0).abs()  # noqa: E731 - best soup value 1.0
    ctx = _ctx(experts, whole(1), score=score)
    ctx.begin()
    res = parse_method_config("greedy_soup").run(ctx)
    # order by score: 1.0 (e0), 1.2 (e3), 0.0/2.0 tie (e1 then e2): soup {1.0}; +1.2 -> 1.1 worse; +0 -> 0.5
    # worse; +2 -> 1.5 worse -> only e0
    assert res.info["ingredients"] == ["expert_0"] and torch.equal(res.row, torch.tensor([1.0]))
    assert ctx.evaluations == 4 + 3
    ing, best, soup = greedy_soup(torch.tensor([[0.0], [2.0]]), torch.tensor([-1.0, -1.0]), score)
    assert ing == [0, 1] and best == 0.0 and torch.equal(soup, torch.tensor([1.0]))


def test_best_single_and_slerp_pick_by_dev():
    experts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    score = lambda rows: -(rows.float() - torch.tensor([0.6, 0.8])).pow(2).sum(1)  # noqa: E731
    ctx = _ctx(experts, whole(2), score=score)
    ctx.begin()
    best = parse_method_config("best_single").run(ctx)
    assert best.info["expert"] == "expert_0" and ctx.evaluations == 3
    sl = parse_method_config("slerp").run(ctx)
    assert sl.info["experts"] == ["expert_0", "expert_1"]
    assert torch.allclose(sl.row, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    named = parse_method_config({"type": "slerp", "experts": ["expert_1", 2], "t": 0.0}).run(ctx)
    assert torch.allclose(named.row, experts[1])


def test_bad_method_configs_name_the_field():
    with pytest.raises(ValueError, match="compare.methods.type: unknown method 'tie'"):
        parse_method_config("tie")
    with pytest.raises(ValueError, match=r"compare.methods.density"):
        parse_method_config({"type": "ties", "density": "lots"})
    with pytest.raises(ValueError, match=r"compare.methods.bogus"):
        parse_method_config({"type": "ties", "bogus": 1})
    ctx = _ctx(torch.ones(2, 3), whole(3))
    with pytest.raises(ValueError, match="ties.weights: expected 2 weights"):
        parse_method_config({"type": "ties", "weights": [1.0]}).run(ctx)
    with pytest.raises(ValueError, match="delta"):
        parse_method_config({"type": "ties", "space": "delta"}).run(ctx)  # not LoRA experts


def test_delta_space_method_reports_energy():
    segs = _lora_layout()
    experts = torch.randn(3, sum(s.numel for s in segs), generator=torch.Generator().manual_seed(5))
    ctx = _ctx(experts, segs)
    res = parse_method_config({"type": "uniform_soup", "space": "delta"}).run(ctx)
    assert 0.5 < res.info["delta_energy_kept"] <= 1.0
    lora = parse_method_config("uniform_soup").run(ctx)
    assert not torch.allclose(res.row, lora.row)  # the two spaces really differ
