"""Paired comparisons of two answers on the same examples: the difference, its bootstrap interval, a
paired test and a plain verdict (docs/STATISTICS.md).

    cmp = compare_paired(candidate_scores, reference_scores, seed=0)   # per-example scores [N] each
    cmp.to_dict()   # {"candidate", "reference", "difference", "ci_low", "ci_high", "p_value", "verdict", "text", ...}
    cmp.text        # "+2.3 [-1.4, +5.8], p = 0.23"

- the interval: a percentile bootstrap of the mean per-example difference, resampling examples (the
  pairs stay together), seeded, 2,000 resamples by default;
- the test: exact McNemar (a two-sided binomial test on the discordant pairs) when every score is 0 or
  1, else a paired sign-flip permutation test of the mean difference (exact for up to 16 differing
  pairs, else 10,000 seeded random flips);
- the verdict: "gain" / "loss" when the test rejects "no difference" at `alpha` (0.05), else
  "no detectable difference".

Scores on a 0..1 scale (accuracies, rates) are printed in points (x100); others as they are.
`sample_size_table` gives the number of examples a gain needs to be detected (the table in
docs/STATISTICS.md). Only numpy and the standard library; no state, no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

__all__ = ["Comparison", "compare_paired", "paired_bootstrap_ci", "mcnemar_exact", "sign_flip_test",
           "unavailable", "verdict_line", "sample_size_paired", "sample_size_table", "format_sample_size_table",
           "detectable_gain", "format_detectable_table",
           "DEFAULT_RESAMPLES", "DEFAULT_ALPHA"]

DEFAULT_RESAMPLES = 2000
DEFAULT_ALPHA = 0.05
DEFAULT_FLIPS = 10000
EXACT_FLIPS_UP_TO = 16  # nonzero differences; 2^16 sign patterns


def _as_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: per-example scores must be finite")
    return a


def paired_bootstrap_ci(diff: Sequence[float] | np.ndarray, *, level: float = 0.95,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example differences (examples resampled with
    replacement; `seed` makes it reproducible). Memory: resamples x N indices, drawn in blocks."""
    d = _as_array(diff, "differences")
    n = d.size
    if n == 0:
        raise ValueError("no examples to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, min(resamples, 4_000_000 // n))
    for s in range(0, resamples, block):
        m = min(block, resamples - s)
        means[s:s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def mcnemar_exact(candidate: Sequence[float], reference: Sequence[float]) -> tuple[float, int, int]:
    """Exact two-sided McNemar test of paired 0/1 scores: (p, b, c) with b = pairs only the candidate
    got right, c = pairs only the reference got right; p = min(1, 2 P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)."""
    a, r = _as_array(candidate, "candidate"), _as_array(reference, "reference")
    b, c = int(((a == 1) & (r == 0)).sum()), int(((a == 0) & (r == 1)).sum())
    m = b + c
    if m == 0:
        return 1.0, b, c
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m  # exact integers, then one division
    return min(1.0, 2.0 * tail), b, c


def sign_flip_test(diff: Sequence[float] | np.ndarray, *, flips: int = DEFAULT_FLIPS, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean(diff) = 0: under the null each difference is as likely
    to have either sign. Exact over all sign patterns of the nonzero differences when there are at most
    16 of them; else `flips` seeded random patterns, p = (1 + #{|mean| >= observed}) / (flips + 1)."""
    d = _as_array(diff, "differences")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))  # float sums of the same multiset may differ in the last bit
    if d.size <= EXACT_FLIPS_UP_TO:
        patterns = ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
        return float((np.abs(patterns @ d) >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    hits, block = 0, max(1, min(flips, 2_000_000 // d.size))
    for s in range(0, flips, block):
        m = min(block, flips - s)
        signs = rng.integers(0, 2, size=(m, d.size)) * 2 - 1
        hits += int((np.abs(signs @ d) >= observed - tol).sum())
    return (1 + hits) / (flips + 1)


@dataclass(frozen=True)
class Comparison:
    """A candidate against a reference on the same N examples (see the module docstring)."""
    candidate: float
    reference: float
    difference: float
    ci_low: float
    ci_high: float
    ci_level: float
    resamples: int
    p_value: float
    test: str
    n: int
    verdict: str
    unit: str  # "points" (0..1 scores shown x100) or "utility"

    @property
    def text(self) -> str:
        k = 100.0 if self.unit == "points" else 1.0
        if self.unit == "points":
            num = lambda x: f"{k * x:+.1f}"  # noqa: E731
        else:
            num = lambda x: f"{x:+.4g}"  # noqa: E731
        return f"{num(self.difference)} [{num(self.ci_low)}, {num(self.ci_high)}], p = {format_p(self.p_value)}"

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "reference": self.reference, "difference": self.difference,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_level": self.ci_level,
                "resamples": self.resamples, "p_value": self.p_value, "test": self.test, "n": self.n,
                "verdict": self.verdict, "unit": self.unit, "text": self.text}


def format_p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def compare_paired(candidate: Sequence[float], reference: Sequence[float], *, seed: int = 0,
                   resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                   alpha: float = DEFAULT_ALPHA) -> Comparison:
    """The paired comparison of per-example scores `candidate` and `reference` (same examples, same
    order; higher is better)."""
    a, r = _as_array(candidate, "candidate"), _as_array(reference, "reference")
    if a.shape != r.shape:
        raise ValueError(f"paired scores differ in length: {a.size} and {r.size} examples")
    if a.size == 0:
        raise ValueError("no examples to compare")
    d = a - r
    lo, hi = paired_bootstrap_ci(d, level=level, resamples=resamples, seed=seed)
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(r, (0.0, 1.0)).all())
    if binary:
        p, test = mcnemar_exact(a, r)[0], "mcnemar_exact"
    else:
        p, test = sign_flip_test(d, seed=seed), "sign_flip_permutation"
    diff = float(d.mean())
    verdict = "no detectable difference" if p >= alpha or diff == 0 else ("gain" if diff > 0 else "loss")
    unit = "points" if bool(((a >= 0) & (a <= 1)).all() and ((r >= 0) & (r <= 1)).all()) else "utility"
    return Comparison(float(a.mean()), float(r.mean()), diff, lo, hi, level, resamples, float(p), test,
                      int(a.size), verdict, unit)


def unavailable(reason: str) -> dict[str, str]:
    """The comparison block of a utility without per-example scores."""
    return {"unavailable": reason}


def verdict_line(split: str, block: dict[str, Any] | None, reference: str) -> str:
    """One plain sentence for a comparison block (a Comparison.to_dict() or `unavailable`)."""
    if not block:
        return f"{split}: no comparison with {reference}"
    if "unavailable" in block:
        return f"{split}: no interval against {reference}: {block['unavailable']}"
    case = {"gain": f"significant gain over {reference}", "loss": f"significant loss against {reference}",
            "no detectable difference": f"no detectable difference from {reference}"}[block["verdict"]]
    return f"{split}: {case}: {block['text']} (n = {block['n']})"


# -- how many examples a gain needs ---------------------------------------------------------------------
def sample_size_paired(gain: float, discordant: float, *, alpha: float = DEFAULT_ALPHA, power: float = 0.8) -> int:
    """Examples needed for a two-sided paired test of 0/1 scores (McNemar, normal approximation of
    Connor 1987) to detect a true gain `gain` (e.g. 0.05) with probability `power`, when a fraction
    `discordant` of the examples is answered right by exactly one of the two models."""
    if not 0 < gain <= discordant <= 1:
        raise ValueError("need 0 < gain <= discordant <= 1")
    z = NormalDist()
    za, zb = z.inv_cdf(1 - alpha / 2), z.inv_cdf(power)
    n = (za * math.sqrt(discordant) + zb * math.sqrt(discordant - gain ** 2)) ** 2 / gain ** 2
    return math.ceil(n)


def sample_size_table(gains: Sequence[float] = (0.02, 0.05, 0.10),
                      discordant: Sequence[float] = (0.10, 0.20, 0.30), *, alpha: float = DEFAULT_ALPHA,
                      power: float = 0.8) -> list[dict[str, Any]]:
    """One row per discordant fraction: {"discordant", "n": {gain: examples or None if impossible}}."""
    return [{"discordant": q, "n": {g: (sample_size_paired(g, q, alpha=alpha, power=power) if g <= q else None)
                                    for g in gains}} for q in discordant]


def format_sample_size_table(rows: list[dict[str, Any]], power: float = 0.8) -> str:
    gains = list(rows[0]["n"])
    head = "| examples answered right by only one model | " + " | ".join(
        f"gain of {100 * g:g} points" for g in gains) + " |"
    lines = [head, "|" + " --- |" * (len(gains) + 1)]
    for r in rows:
        cells = [f"{r['n'][g]:,}" if r["n"][g] is not None else "—" for g in gains]
        lines.append(f"| {100 * r['discordant']:g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(two-sided test at 5%, {100 * power:g}% power)"


def detectable_gain(n: int, discordant: float, *, alpha: float = DEFAULT_ALPHA, power: float = 0.8) -> float:
    """The smallest true gain that n paired 0/1 examples detect with probability `power` (the inverse of
    sample_size_paired, by bisection)."""
    lo, hi = 1e-6, discordant
    if sample_size_paired(hi, discordant, alpha=alpha, power=power) > n:
        return math.nan
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sample_size_paired(mid, discordant, alpha=alpha, power=power) > n else (lo, mid)
    return hi


def format_detectable_table(ns: Sequence[int] = (100, 200, 300, 500, 1000, 2000),
                            discordant: Sequence[float] = (0.10, 0.20, 0.30)) -> str:
    lines = ["| examples | " + " | ".join(f"{100 * q:g}% answered right by only one model" for q in discordant) + " |",
             "|" + " --- |" * (len(discordant) + 1)]
    for n in ns:
        lines.append(f"| {n:,} | " + " | ".join(f"{100 * detectable_gain(n, q):.1f} points" for q in discordant) + " |")
    return "\n".join(lines) + "\n\n(the smallest true gain detected with 80% power by a two-sided test at 5%)"


if __name__ == "__main__":  # the tables of docs/STATISTICS.md: python -m swarmkern.stats
    print(format_sample_size_table(sample_size_table()))
    print()
    print(format_detectable_table())
