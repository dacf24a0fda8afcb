"""Shared benchmark plumbing: the `ops_table` fixture collects kernel timings and prints (and, with
--ops-table PATH, writes) a markdown table of GB/s, % of the copy measured in the same group, and
speedups over the eager reference and torch.compile(reference)."""
from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import dataclass, field

import pytest

from swarmkern.atomic import atomic_write_text


def pytest_addoption(parser):
    parser.addoption("--ops-table", default=None, metavar="PATH",
                     help="write the kernel benchmark table (markdown) to PATH")


@dataclass
class OpsTable:
    rows: dict = field(default_factory=dict)  # group -> {variant: (min_s, median_s, bytes)}

    def record(self, group: str, variant: str, min_s: float, median_s: float, nbytes: int) -> None:
        self.rows.setdefault(group, {})[variant] = (min_s, median_s, nbytes)

    def markdown(self) -> str:
        lines = ["| group | variant | min ms | median ms | GB/s (min) | % of copy | x eager | x compiled / x mm |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for group, variants in self.rows.items():
            copy_bw = _bw(variants.get("copy"))
            eager = variants.get("eager reference")
            # The second bar: torch.compile(reference) for pso_step_, torch.mm for combine.
            second_name = "torch.compile" if "torch.compile" in variants else "torch.mm"
            compiled = variants.get(second_name)
            for name, (t_min, t_med, nbytes) in variants.items():
                bw = nbytes / t_min / 1e9
                pct = f"{100 * bw / copy_bw:.0f}%" if copy_bw and name != "copy" else ""
                x_eager = f"{eager[0] / t_min:.2f}" if eager and name not in ("copy", "eager reference") else ""
                x_comp = f"{compiled[0] / t_min:.2f}" if compiled and name not in ("copy", second_name) else ""
                lines.append(f"| {group} | {name} | {t_min * 1e3:.1f} | {t_med * 1e3:.1f} | {bw:.1f} | {pct} | "
                             f"{x_eager} | {x_comp} |")
        return "\n".join(lines)


    def targets(self) -> str:
        """The issue's CPU targets, checked on this run's numbers (benchmarks, not tests)."""
        out = []
        for group, variants in self.rows.items():
            cpu = variants.get("cpu")
            if not cpu:
                continue
            for base, goal in (("eager reference", 5.0), ("torch.compile", 1.0), ("torch.mm", 1.0)):
                if base in variants:
                    ratio = variants[base][0] / cpu[0]
                    if base == "torch.compile" and not group.endswith("fp32"):  # the issue sets it for fp32
                        out.append(f"- {group}: cpu {ratio:.2f}x {base} (no target)")
                        continue
                    out.append(f"- {group}: cpu {ratio:.2f}x {base} (target >= {goal:g}x: "
                               f"{'met' if ratio >= goal else 'NOT met'})")
            if group.startswith("pso_step_") and group.endswith(" bf16"):
                fp32 = self.rows.get(group[: -len("bf16")] + "fp32", {}).get("cpu")
                if fp32:
                    ratio = fp32[0] / cpu[0]
                    out.append(f"- {group[: -len(' bf16')]}: cpu bf16 {ratio:.2f}x faster than fp32 "
                               f"(target >= 1.6x: {'met' if ratio >= 1.6 else 'NOT met'})")
        return "\n".join(out)


def _bw(entry) -> float | None:
    return entry[2] / entry[0] / 1e9 if entry else None


_TABLE = OpsTable()


@pytest.fixture(scope="session")
def ops_table() -> OpsTable:
    return _TABLE


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = ""
    try:
        from swarmkern.ops import _extension

        info = _extension.cpu_status().reason
    except Exception:  # the table is still useful without it
        pass
    return (f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"swarmkern cpu backend: {info}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _TABLE.rows:
        return
    table = _TABLE.markdown()
    terminalreporter.write_sep("=", "swarmkern kernel benchmarks")
    terminalreporter.write_line(table)
    path = config.getoption("--ops-table")
    if path:
        command = " ".join(shlex.quote(a) for a in ["python", "-m", "pytest", *sys.argv[1:]])
        env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "SWARMKERN_BENCH_SCALE",
                                                          "SWARMKERN_BENCH_ROUNDS") if k in os.environ)
        text = (f"# Kernel benchmarks (CPU)\n\nCommand: `{(env + ' ') if env else ''}{command}`\n\n"
                f"Machine: {_machine()}\n\n"
                "GB/s from the modelled bytes (docs/KERNELS.md); \"% of copy\" against a copy of the same data timed in "
                "the same group; \"x eager\" / \"x compiled / x mm\": speedup over the eager reference / "
                "torch.compile(reference) (pso_step_) or torch.mm (combine) in the same run (min of the rounds; the machine is shared and noisy).\n\n"
                f"{table}\n\nTargets (CPU):\n\n{_TABLE.targets()}\n")
        atomic_write_text(path, text)
        terminalreporter.write_line(f"wrote {path}")
