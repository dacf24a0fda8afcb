"""The cost model of docs/SCALE.md: measures this machine's bandwidths, then tabulates bytes and
expected seconds per iteration for LoRA and full-weight pools of 135M, 7B and 70B models on this CPU
and on one H200 (public figures: ~4.3 TB/s device copy, ~790 dense bf16 TFLOP/s, 141 GB).

    python benchmarks/bench_scale.py        # ~1 minute; writes benchmarks/results/scale_cpu.md

Measured here: the copy bandwidth of RAM, the fused update (`ops.pso_step_`, fp32, bytes moved per
second), sequential disk writes (fsync'ed) and reads, one fdatasync'ed journal append, and fp32 / bf16
matmul throughput (the forward pass of an evaluation is matmul-bound).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from swarmkern import ops
from swarmkern.swarm.journal import Journal, Record

P = 20                 # particles (the reference scripts)
TOKENS = 20_000        # dev-set tokens scored per particle per iteration (~200 questions x 100 tokens)
RANK = 16              # LoRA rank, on q, k, v, o, gate, up, down of every layer
H200 = {"copy": 4.3e12, "flops": 790e12, "mem": 141e9}
MFU = {"gpu": 0.35, "cpu": 0.7}  # share of peak matmul throughput a batched evaluation reaches (assumed)
GPU_DISK = 2e9         # bytes/s of a snapshot on the GPU node (assumed: one NVMe, as measured here)

# name: (parameters, layers, hidden, intermediate, k/v projection width)
MODELS = {"135M (SmolLM2-135M)": (134.5e6, 30, 576, 1536, 192),
          "7B (Llama-2-7B shape)": (6.74e9, 32, 4096, 11008, 4096),
          "70B (Llama-2-70B shape)": (69.0e9, 80, 8192, 28672, 1024)}


def lora_dim(layers: int, h: int, inter: int, kv: int, r: int = RANK) -> float:
    """Numbers of one LoRA expert: r * (fan_in + fan_out) per adapted projection."""
    return layers * r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + inter))


def _median_time(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(workdir: Path) -> dict[str, float]:
    n = 64 << 20  # 256 MiB fp32 per buffer
    a, b = torch.randn(n), torch.empty(n)
    copy = 2 * 4 * n / _median_time(lambda: b.copy_(a))
    D, rows = 1 << 22, 8
    x, v, p = torch.randn(rows, D), torch.randn(rows, D), torch.randn(rows, D)
    g, w, coef = torch.randn(D), torch.randn(D), torch.full((rows, 4), 0.25)
    kernel = 5 * 4 * rows * D / _median_time(lambda: ops.pso_step_(x, v, p, g, w, coef, 0.5))
    path = workdir / "disk.bin"
    data = torch.randn(128 << 20).view(torch.uint8).numpy()  # 512 MiB

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    disk_w = data.nbytes / _median_time(write, 3)
    os.posix_fadvise(os.open(path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    disk_r = data.nbytes / (time.perf_counter() - t0)
    path.unlink()
    j = Journal(workdir, keep_bytes=0)
    rec = Record(1, [-1.2345678901234] * P, [], [], [], [], 0.95, 12345, 1.5)
    journal_s = _median_time(lambda: j.append(rec), 20)
    j.close()
    m = torch.randn(2048, 2048)
    f32 = 2 * 2048 ** 3 / _median_time(lambda: m @ m, 3)
    mb = m.to(torch.bfloat16)
    bf16 = 2 * 2048 ** 3 / _median_time(lambda: mb @ mb, 3)
    return {"copy": copy, "kernel": kernel, "disk_w": disk_w, "disk_r": disk_r, "journal_s": journal_s,
            "fp32": f32, "bf16": bf16, "ram": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}


def rows(m: dict[str, float]) -> list[dict]:
    out = []
    for name, (N, L, h, inter, kv) in MODELS.items():
        for kind, D, b in (("LoRA r=16", lora_dim(L, h, inter, kv), 4), ("full, fp32 rows", N, 4),
                           ("full, bf16 rows", N, 2)):
            if kind == "full, bf16 rows" and N < 1e9:
                continue
            buffers = 3 * P * D * b
            update = 5 * P * D * b           # read x, v, pbest; write x, v
            snapshot = 3 * P * D * b + D * b  # x, v, pbest, gworst
            flops = 2 * N * TOKENS * P        # one forward pass per token per particle
            weights = P * N * (b + 2) if kind != "LoRA r=16" else 0  # full: read each row, cast to bf16
            # CPU: from RAM when the buffers fit, else the update streams them from and to disk
            in_ram = buffers < 0.8 * m["ram"]
            cpu_update = update / m["kernel"] if in_ram else 3 * P * D * b / m["disk_r"] + 2 * P * D * b / m["disk_w"]
            cpu_eval = flops / (m["fp32"] * MFU["cpu"]) + weights / m["copy"]
            gpu_fits = buffers + N * 2 < H200["mem"]
            gpu_update = update / H200["copy"] if gpu_fits else float("nan")
            gpu_eval = flops / (H200["flops"] * MFU["gpu"]) + weights / H200["copy"]
            out.append(dict(model=name, kind=kind, D=D, buffers=buffers, update=update, snapshot=snapshot,
                            flops=flops, cpu_update=cpu_update, cpu_eval=cpu_eval, in_ram=in_ram,
                            cpu_snapshot=snapshot / m["disk_w"], gpu_fits=gpu_fits, gpu_update=gpu_update,
                            gpu_eval=gpu_eval, gpu_snapshot=snapshot / GPU_DISK, old_ckpt_cpu=snapshot / m["disk_w"]))
    return out


def _b(x: float) -> str:
    for unit, s in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= s:
            return f"{x / s:.3g} {unit}"
    return f"{x:.0f} B"


def _s(x: float) -> str:
    if x != x:
        return "does not fit"
    if x >= 3600:
        return f"{x / 3600:.3g} h"
    if x >= 1:
        return f"{x:.3g} s"
    return f"{x * 1e3:.3g} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale_cpu.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        m = measure(Path(tmp))
    print({k: f"{v:.4g}" for k, v in m.items()}, flush=True)
    table = rows(m)
    journal_b = len(Record(1, [-12.345678901234567] * P, [], [], [], [], 0.95, 123456, 1234.5).encode())
    cmd = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    lines = [
        "# Cost model inputs and per-iteration estimates (docs/SCALE.md)", "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), {m['ram'] / 1e9:.1f} GB RAM; "
        f"torch {torch.__version__}.", "",
        "## Measured on this machine", "",
        "| quantity | value |", "| --- | --- |",
        f"| RAM copy bandwidth (read + write bytes per second, 256 MiB fp32) | {m['copy'] / 1e9:.1f} GB/s |",
        f"| fused update `ops.pso_step_` (5 x P x D x 4 bytes per second) | {m['kernel'] / 1e9:.1f} GB/s |",
        f"| disk: sequential write + fsync, read (cold) | {m['disk_w'] / 1e9:.2f} GB/s, {m['disk_r'] / 1e9:.2f} GB/s |",
        f"| one journal record ({journal_b} bytes at P = {P}), written + fdatasync | {m['journal_s'] * 1e3:.2f} ms |",
        f"| matmul 2048^3, fp32 / bf16 | {m['fp32'] / 1e9:.0f} / {m['bf16'] / 1e9:.0f} GFLOP/s |", "",
        f"## Per iteration, P = {P} particles, {TOKENS:,} dev tokens per particle", "",
        "Update = read x, v, pbest and write x, v (5 P D b bytes; the pbest copies of improved particles add "
        "up to 2 D b each). Snapshot = x, v, pbest, gworst (3 P D b + D b), written only every so often now "
        f"(before: every iteration); the journal is one record of ~{journal_b} bytes + one fdatasync "
        f"({m['journal_s'] * 1e3:.1f} ms here) whatever D is. Evaluation = 2 N FLOP per token per particle "
        f"(at {int(MFU['cpu'] * 100)}% of the measured fp32 matmul rate on the CPU, {int(MFU['gpu'] * 100)}% of "
        "790 TFLOP/s on the H200: assumed), plus, for full weights, reading each particle's row and casting it "
        f"to bf16. H200 snapshots at an assumed {GPU_DISK / 1e9:.0f} GB/s disk. b = bytes per number "
        "(fp32 swarm buffers for LoRA).", "",
        "| model | experts | D | x+v+pbest | update bytes | eval FLOP | CPU: update | CPU: eval | CPU: one snapshot "
        "| H200: update | H200: eval | H200: one snapshot |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        upd = _s(r["cpu_update"]) + ("" if r["in_ram"] else " (disk)")
        lines.append(f"| {r['model']} | {r['kind']} | {r['D'] / 1e6:,.1f} M | {_b(r['buffers'])} | {_b(r['update'])} "
                     f"| {r['flops']:.2g} | {upd} | {_s(r['cpu_eval'])} | {_s(r['cpu_snapshot'])} "
                     f"| {_s(r['gpu_update'])} | {_s(r['gpu_eval'])} | {_s(r['gpu_snapshot'])} |")
    lines += ["", "\"does not fit\": x, v and pbest (plus the bf16 model) exceed one H200's 141 GB; see docs/SCALE.md "
              "for sharding them over GPUs with torchrun, or keeping them in host memory-mapped files.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
