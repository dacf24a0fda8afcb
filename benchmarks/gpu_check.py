"""One prepared GPU session: build the CUDA extension, check every GPU backend against the reference
on the GPU, then print (and write) the GB/s table: cuda vs triton vs torch.compile(reference) vs a
device-to-device copy measured in the same run.

On the lent H200 (torch + CUDA + nvcc, no network), from the repository root:

    python benchmarks/gpu_check.py --build --out benchmarks/results/ops_gpu.md

Without a GPU, `python benchmarks/gpu_check.py --dry-run` runs the same checks and table on the CPU
at small sizes (cpu/reference backends) to make sure the script itself works.
Exit status: 0 when every check passed, 1 otherwise (the table is still printed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build() -> None:
    """Compile both extensions in place against the installed torch (CUDA required)."""
    env = dict(os.environ, SWARMKERN_BUILD_CUDA="1", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n")
        raise SystemExit("gpu_check: build failed")
    print(f"gpu_check: built in {time.time() - t0:.0f} s")


def _ulps(a, b):
    """Largest distance in units in the last place between two tensors of the same float dtype."""
    import torch

    bits = {4: torch.int32, 2: torch.int16}[a.element_size()]
    ia, ib = a.contiguous().view(bits).long(), b.contiguous().view(bits).long()
    sign = 1 << (8 * a.element_size() - 1)
    ia = torch.where(ia < 0, -(ia + sign), ia)  # sign-magnitude -> monotonic integers
    ib = torch.where(ib < 0, -(ib + sign), ib)
    return int((ia - ib).abs().max()) if a.numel() else 0


def check(device, backends: list[str], sizes: list[tuple[int, int]]) -> list[str]:
    """Every backend vs the reference, 3 chained steps; returns failure messages. cuda/cpu must be
    bit-exact in every dtype; triton within 1 ulp in bf16/fp16 (its stores truncate) and exact in fp32."""
    import torch

    from swarmkern import ops
    from swarmkern.ops import _bench, reference

    failures = []
    for backend in backends:
        for dtype_name, dtype in _bench.DTYPES.items():
            tol = 1 if backend == "triton" and dtype != torch.float32 else 0
            for P, D in sizes:
                st = _bench.swarm_state(P, D, dtype, device, seed=P + D)
                ref = {k: t.clone() for k, t in st.items()}
                worst = 0
                for it in range(3):
                    ops.pso_step_(st["x"], st["v"], st["pbest"], st["gbest"], st["gworst"], st["coef"], 0.7,
                                  backend=backend)
                    reference.pso_step_(ref["x"], ref["v"], ref["pbest"], ref["gbest"], ref["gworst"], ref["coef"], 0.7)
                    ops.pso_step_random_(st["x"], st["v"], st["pbest"], st["gbest"], st["gworst"], st["coef"], 0.7,
                                         2**63 + 5, it, 3, 0.0, 1.0, True, backend=backend)
                    reference.pso_step_random_(ref["x"], ref["v"], ref["pbest"], ref["gbest"], ref["gworst"],
                                               ref["coef"], 0.7, 2**63 + 5, it, 3, 0.0, 1.0, True)
                    worst = max(worst, _ulps(st["x"], ref["x"]), _ulps(st["v"], ref["v"]))
                    if tol:  # keep the chains together so that one-ulp differences do not compound
                        ref["x"].copy_(st["x"])
                        ref["v"].copy_(st["v"])
                weights = torch.randn(5, P, device=device)
                out = torch.full((5, D), float("nan"), dtype=dtype, device=device)
                ops.combine(st["x"], weights, out, backend=backend)
                worst_c = _ulps(out, reference.combine(st["x"], weights))
                status = "ok" if max(worst, worst_c) <= tol else "FAIL"
                line = (f"{status:4} {backend:7} {dtype_name} P={P} D={D}: pso max {worst} ulp, "
                        f"combine max {worst_c} ulp (allowed {tol})")
                print("gpu_check:", line)
                if status != "ok":
                    failures.append(line)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="build the extensions in place first")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small sizes: check the script itself")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.build:
        build()
    sys.path.insert(0, str(ROOT))
    import torch

    from swarmkern import ops
    from swarmkern.ops import _bench

    if args.dry_run:
        device = torch.device("cpu")
        check_sizes = [(3, 4097), (2, 70001)]
        table_sizes, combine_sizes, compiled = [(10, 200_000)], [(10, 10, 200_000)], False
        backends = [b for b in ops.available_backends("cpu") if b != "reference"]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA GPU visible (use --dry-run to exercise the script on a CPU)")
        device = torch.device("cuda")
        check_sizes = [(1, 1), (3, 4097), (8, 278011), (4, 1 << 20)]
        # ~4 GB per [P, D] fp32 buffer: far beyond the 50 MB L2, small next to 141 GB of HBM.
        table_sizes, combine_sizes, compiled = [(10, 100_000_000), (32, 32_000_000)], [(10, 10, 100_000_000)], True
        backends = [b for b in ("cuda", "triton") if b in ops.available_backends("cuda")]
    print("gpu_check: device", torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    print(ops.backend_summary())
    if not backends:
        raise SystemExit("gpu_check: no compiled backend available for this device")

    failures = check(device, backends, check_sizes)
    rows = []
    for dtype_name in ("fp32", "bf16"):
        for P, D in table_sizes:
            rows += _bench.pso_rows(P, D, dtype_name, device, backends, args.rounds, compiled=compiled, eager=True)
        for K, M, D in combine_sizes:
            rows += _bench.combine_rows(K, M, D, dtype_name, device, backends, args.rounds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = _bench.markdown(rows)
    print(table)
    if args.out:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
        text = (f"# Kernel benchmarks ({name})\n\nCommand: `python benchmarks/gpu_check.py "
                f"{' '.join(sys.argv[1:])}`\n\ntorch {torch.__version__}; {ops.backend_summary()}\n\n"
                f"Checks: {'all passed' if not failures else 'FAILED: ' + '; '.join(failures)}\n\n{table}\n")
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, args.out)
        print("gpu_check: wrote", args.out)
    print("gpu_check:", "all checks passed" if not failures else f"{len(failures)} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
