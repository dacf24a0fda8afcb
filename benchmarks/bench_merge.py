"""Fused CPU merge kernels vs PEFT (peft.utils.merge_utils) and the pure-PyTorch spec.

    python benchmarks/bench_merge.py                        # writes benchmarks/results/merge_cpu.md
    python benchmarks/bench_merge.py --k 8 --n 4000000 --threads 1 --repeats 3

Inputs are K task tensors of n fp32 numbers (K*n*4 bytes: far beyond the last-level cache). Each case is
checked against PEFT before timing (DARE under the same mask, by replaying our Philox mask through
torch.bernoulli). GB/s counts the modelled traffic: K*n*4 bytes read + n*4 written. Cases:
- elect + disjoint mean on trimmed tensors: PEFT's calculate_majority_sign_mask + disjoint_merge, our
  pure version (elect_sign + disjoint_merge), torch.compile of it, and the fused kernel;
- TIES end to end (trim + elect + disjoint): PEFT ties() vs ours (pure / fused elect+disjoint);
- DARE-TIES and DARE-linear: PEFT (torch.bernoulli masks) vs ours pure (Philox mask in PyTorch) vs fused
  (Philox drawn in the kernel).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from peft.utils import merge_utils as pm

from swarmkern.atomic import atomic_write_text
from swarmkern.merge import dare_keep_mask, disjoint_merge, elect_sign, kernels, magnitude_trim
from swarmkern.merge.dare import dare_merge
from swarmkern.merge.ties import ties_merge


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peft_elect_disjoint(trimmed: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mask = pm.calculate_majority_sign_mask(trimmed, "total")
    return pm.disjoint_merge(trimmed * pm.reshape_weight_task_tensors(trimmed, w), mask)


def ours_elect_disjoint(trimmed: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return disjoint_merge(trimmed, w, elect_sign(trimmed, "total"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow first call)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "merge_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("bench_merge: the fused merge kernels (swarmkern._C) are not built")
    K, n, d, R = args.k, args.n, args.density, args.repeats
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K, n, generator=g)
    ts = list(x)
    w = torch.linspace(0.5, 1.5, K)
    trimmed = magnitude_trim(x, 0.2)
    gb = (K * n * 4 + n * 4) / 1e9
    rows: list[tuple[str, str, float]] = []

    def case(name: str, variant: str, fn, ref: torch.Tensor | None = None, rtol: float = 1e-6) -> None:
        if ref is not None:
            got = fn()
            assert torch.allclose(got, ref, rtol=rtol, atol=1e-6), f"{name} / {variant} disagrees with PEFT"
        t = best_time(fn, R)
        rows.append((name, variant, t))
        print(f"{name:28s} {variant:34s} {t * 1e3:9.1f} ms {gb / t:6.2f} GB/s", flush=True)

    # 1. sign election + disjoint mean
    ref = peft_elect_disjoint(trimmed, w)
    case("elect + disjoint mean", "PEFT merge_utils", lambda: peft_elect_disjoint(trimmed, w))
    case("elect + disjoint mean", "ours, pure PyTorch", lambda: ours_elect_disjoint(trimmed, w), ref)
    if not args.no_compile:
        compiled = torch.compile(ours_elect_disjoint)
        case("elect + disjoint mean", "ours, torch.compile", lambda: compiled(trimmed, w), ref)
    case("elect + disjoint mean", "ours, fused C++", lambda: kernels.ties_disjoint_merge(trimmed, w), ref)

    # 2. TIES end to end
    ref = pm.ties(ts, w, 0.2)
    case("TIES (trim 0.2)", "PEFT ties()", lambda: pm.ties(ts, w, 0.2))
    case("TIES (trim 0.2)", "ours, pure", lambda: ties_merge(x, w, 0.2, fused=False), ref)
    case("TIES (trim 0.2)", "ours, fused elect+disjoint", lambda: ties_merge(x, w, 0.2, fused=True), ref)

    # 3. DARE: PEFT with its own torch.bernoulli masks for timing; agreement under our mask
    keep = dare_keep_mask(K, 0, n, d, seed=1)
    real_bernoulli = torch.bernoulli
    for ties, peft_fn, name in ((True, pm.dare_ties, "DARE-TIES"), (False, pm.dare_linear, "DARE-linear")):
        it = iter(keep)
        torch.bernoulli = lambda p, *a, **k: next(it).to(p.dtype)  # replay our mask once for the check
        try:
            ref = peft_fn(ts, w, d)
        finally:
            torch.bernoulli = real_bernoulli
        label = f"{name} (density {d})"
        case(label, "PEFT (torch.bernoulli mask)", lambda: peft_fn(ts, w, d))
        case(label, "ours, pure (Philox in PyTorch)", lambda: dare_merge(x, w, d, 1, 0, ties, fused=False), ref)
        case(label, "ours, fused (Philox in kernel)", lambda: dare_merge(x, w, d, 1, 0, ties, fused=True), ref)

    peft_time = {name: t for name, v, t in rows if v.startswith("PEFT")}
    lines = [f"# Merge kernels on the CPU: K={K} task tensors of n={n:,} fp32",
             "",
             f"Machine: {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
             f"{os.cpu_count()} cores (shared with other work: expect noise). Kernels: the current "
             f"csrc/cpu/merge_*.cpp in swarmkern._C as setup.py builds it ({torch.ops.swarmkern.build_info()}). Best of {R} after a warm-up. "
             f"GB/s = modelled bytes (K*n*4 read + n*4 written = {gb:.3f} GB) / time. Every variant is "
             "checked against PEFT first (DARE under the same mask).",
             "",
             f"Command: `python benchmarks/bench_merge.py --k {K} --n {n} --density {d} --threads {args.threads} "
             f"--repeats {R}{' --no-compile' if args.no_compile else ''}`",
             "",
             "| case | variant | ms | GB/s | speedup vs PEFT |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, variant, t in rows:
        lines.append(f"| {name} | {variant} | {t * 1e3:.1f} | {gb / t:.2f} | {peft_time[name] / t:.1f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
