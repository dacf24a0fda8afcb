"""swarmkern.stats against known cases: exact McNemar values, bootstrap coverage on simulated data, the
permutation test's uniform p-values under the null, the verdicts and the sample-size table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from swarmkern import stats


@pytest.mark.parametrize("b,c,p", [
    (1, 9, 22 / 1024),           # 2 * (C(10,0) + C(10,1)) / 2^10
    (0, 5, 2 / 32),              # 2 / 2^5
    (3, 3, 1.0),                 # balanced: capped at 1
    (10, 20, 0.098737),          # scipy.stats.binomtest(10, 30).pvalue
    (59, 37, 0.031548),          # scipy.stats.binomtest(37, 96).pvalue
])
def test_mcnemar_exact_matches_the_binomial_table(b, c, p):
    cand = [1] * b + [0] * c + [1] * 7 + [0] * 4   # 7 both right, 4 both wrong: not counted
    ref = [0] * b + [1] * c + [1] * 7 + [0] * 4
    got, gb, gc = stats.mcnemar_exact(cand, ref)
    assert (gb, gc) == (b, c)
    assert got == pytest.approx(p, abs=1e-6)


def test_mcnemar_without_discordant_pairs_is_one():
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])[0] == 1.0


def test_bootstrap_interval_covers_the_true_difference_about_95_percent():
    """Paired 0/1 data with a known true difference (+0.05); over 200 seeds the 95% interval holds it
    about 95% of the time (binomial sd of the rate over 200 seeds: 1.5 points)."""
    rng = np.random.default_rng(123)
    n, hits, trials = 300, 0, 200
    for seed in range(trials):
        # P(cand right, ref wrong) = 0.15, P(ref right, cand wrong) = 0.10: true difference +0.05
        u = rng.random(n)
        cand = ((u < 0.15) | (u >= 0.25) & (u < 0.75)).astype(float)
        ref = ((u >= 0.15) & (u < 0.75)).astype(float)
        lo, hi = stats.paired_bootstrap_ci(cand - ref, seed=seed)
        hits += lo <= 0.05 <= hi
    assert 0.90 <= hits / trials <= 0.99


def test_bootstrap_is_seeded():
    d = np.random.default_rng(0).normal(size=50)
    assert stats.paired_bootstrap_ci(d, seed=3) == stats.paired_bootstrap_ci(d, seed=3)
    assert stats.paired_bootstrap_ci(d, seed=3) != stats.paired_bootstrap_ci(d, seed=4)


def test_sign_flip_p_values_are_uniform_under_the_null():
    """Symmetric differences (the null): P(p <= a) is about a for a = 0.05, 0.2, 0.5."""
    rng = np.random.default_rng(7)
    ps = np.array([stats.sign_flip_test(rng.normal(size=40), flips=999, seed=s) for s in range(300)])
    for a in (0.05, 0.2, 0.5):
        assert abs((ps <= a).mean() - a) < 0.065, (a, (ps <= a).mean())


def test_sign_flip_exact_for_few_pairs():
    # 4 positive differences of 1: only the all-plus and all-minus patterns reach |sum| = 4 -> p = 2/16
    assert stats.sign_flip_test([1.0, 1.0, 1.0, 1.0, 0.0]) == pytest.approx(2 / 16)
    assert stats.sign_flip_test([0.0, 0.0]) == 1.0


def test_sign_flip_detects_a_shift():
    d = np.random.default_rng(1).normal(loc=0.5, size=100)
    assert stats.sign_flip_test(d) < 0.001


def test_compare_paired_binary_gain_loss_and_noise():
    cand = np.array([1] * 60 + [0] * 40, dtype=float)
    ref = np.array([1] * 40 + [0] * 60, dtype=float)
    g = stats.compare_paired(cand, ref)
    assert g.test == "mcnemar_exact" and g.verdict == "gain" and g.unit == "points"
    assert g.difference == pytest.approx(0.2) and g.ci_low > 0 and g.n == 100
    assert g.text.startswith("+20.0 [") and "p = < 0.001" in g.text or "p = 0.0" in g.text
    l = stats.compare_paired(ref, cand)
    assert l.verdict == "loss" and l.ci_high < 0
    same = stats.compare_paired(cand, np.roll(cand, 1))
    assert same.verdict == "no detectable difference"
    d = g.to_dict()
    assert set(d) >= {"candidate", "reference", "difference", "ci_low", "ci_high", "ci_level", "resamples",
                      "p_value", "test", "n", "verdict", "text"}
    assert d["resamples"] >= 2000


def test_compare_paired_continuous_uses_the_permutation_test():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=80)
    c = stats.compare_paired(ref + 0.01 * rng.normal(size=80), ref)
    assert c.test == "sign_flip_permutation" and c.unit == "utility"
    with pytest.raises(ValueError, match="differ in length"):
        stats.compare_paired([1.0, 2.0], [1.0])


def test_verdict_line_says_which_case_holds():
    g = stats.compare_paired([1.0] * 30 + [0.0] * 10, [0.0] * 30 + [1.0] * 10).to_dict()
    assert stats.verdict_line("test", g, "expert_0").startswith("test: significant gain over expert_0: +50.0 [")
    u = stats.unavailable("utility 'python' gives no per-example scores")
    assert "no per-example scores" in stats.verdict_line("test", u, "expert_0")


def test_sample_size_grows_as_the_gain_shrinks():
    n2 = stats.sample_size_paired(0.02, 0.2)
    n5 = stats.sample_size_paired(0.05, 0.2)
    n10 = stats.sample_size_paired(0.10, 0.2)
    assert n2 > n5 > n10
    # Connor's formula by hand: (1.95996 * sqrt(.2) + 0.84162 * sqrt(.2 - .0025))^2 / .0025
    want = (1.959964 * math.sqrt(0.2) + 0.841621 * math.sqrt(0.1975)) ** 2 / 0.0025
    assert n5 == math.ceil(want)
    table = stats.sample_size_table()
    assert [r["discordant"] for r in table] == [0.1, 0.2, 0.3]
    assert "gain of 5 points" in stats.format_sample_size_table(table)


def test_detectable_gain_inverts_the_sample_size():
    g = stats.detectable_gain(626, 0.2)
    assert g == pytest.approx(0.05, abs=5e-4)
    assert stats.sample_size_paired(g, 0.2) <= 626
