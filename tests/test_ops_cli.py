"""`swarmkern info`, `swarmkern bench` and the prepared GPU script's CPU dry run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarmkern import ops
from swarmkern.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_every_backend_with_a_reason():
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "kernel backends:" in result.output
    for name in ("cpu", "cuda", "triton", "reference"):
        assert f"  {name} " in result.output
    assert "default: cpu tensors ->" in result.output


def test_bench_prints_a_table_against_copy():
    result = CliRunner().invoke(main, ["bench", "-P", "3", "-D", "5000", "--rounds", "1", "--dtype", "fp32,bf16"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("| pso_step_") or ln.startswith("| combine")]
    variants = {ln.split("|")[4].strip() for ln in lines}
    assert {"copy", "eager reference", "torch.mm"} <= variants
    if "cpu" in ops.available_backends("cpu"):
        assert "cpu" in variants
    assert any("% " in ln or "%" in ln.split("|")[8] for ln in lines if "copy" not in ln)


@pytest.mark.parametrize("args,message", [(["--dtype", "fp64"], "unknown dtype"), (["-D", "1.5"], "positive integer"),
                                          (["-D", "abc"], "not a number")])
def test_bench_rejects_bad_options(args, message):
    result = CliRunner().invoke(main, ["bench", "--rounds", "1", *args])
    assert result.exit_code != 0 and message in result.output


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "ops_gpu.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--rounds", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if "no compiled backend" in proc.stderr:
        pytest.skip("C++ extension not built")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all checks passed" in proc.stdout
    assert "| pso_step_ |" in out.read_text() and "Checks: all passed" in out.read_text()


def test_package_works_without_the_compiled_extension():
    """Without swarmkern._C (a build without torch, or a failed build) the ops fall back to the
    reference and `swarmkern info` says why."""
    code = (
        "import sys; sys.modules['swarmkern._C'] = None\n"
        "import torch\n"
        "from swarmkern import ops\n"
        "from swarmkern.cli import main\n"
        "from click.testing import CliRunner\n"
        "assert ops.default_backend('cpu') == 'reference', ops.backend_summary()\n"
        "x, v, p = (torch.randn(2, 5) for _ in range(3))\n"
        "ops.pso_step_(x, v, p, p[0], torch.randn(5), torch.full((2, 4), 0.25), 1.0)\n"
        "out = CliRunner().invoke(main, ['info']).output\n"
        "assert 'swarmkern._C' in out and 'not built' in out or 'failed to load' in out, out\n"
        "print('fallback ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "fallback ok" in proc.stdout, proc.stdout + proc.stderr
