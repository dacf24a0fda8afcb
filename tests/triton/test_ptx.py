"""The compiled (GPU) form of the kernels, checked without a GPU: compile them to PTX for sm_90 (triton and
ptxas do not need a device) and look at the instructions that decide exactness and bandwidth."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ptx_summary() -> dict[str, dict]:
    if not (shutil.which("ptxas") or os.environ.get("TRITON_PTXAS_PATH")):
        pytest.skip("no ptxas on PATH (TRITON_PTXAS_PATH unset): cannot compile the kernels for sm_90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # fusion allowed: the kernels must still contain no FMA
    r = subprocess.run([sys.executable, os.path.join(HERE, "ptx_check.py")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return {row["kernel"]: row for row in rows}


KERNELS = [f"{k}/{dt}" for dt in ("fp32", "bf16", "fp16")
           for k in ("pso_step_kernel", "pso_step_random_kernel", "pso_step_random_kernel_classic", "combine_kernel")]


@pytest.mark.no_backend_needed
@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_kernel_is_exact(kernel, ptx_summary):
    row = ptx_summary[kernel]
    assert row["fma"] == 0, "an FMA changes the rounding: the reference rounds every product and sum"
    assert row["ftz"] == 0, "flush-to-zero differs from torch on subnormals"
    assert row["f32_div_inexact"] == 0, "fp32 division must be IEEE div.rn"
    assert row["f32_mul_rn"] > 0
    if kernel.startswith("pso_step_random_kernel/"):  # the classic variant does not normalise: no division
        assert row["f32_div_rn"] > 0
    if not kernel.endswith("fp32"):
        assert row["narrowing_cvt_rn"] > 0 and row["narrowing_cvt_other"] == 0, "16-bit stores round to nearest"


@pytest.mark.no_backend_needed
@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.startswith("pso_step")])
def test_aligned_rows_use_16_byte_accesses(kernel, ptx_summary):
    row = ptx_summary[kernel]
    assert row["vector_loads"] >= 5 and row["vector_stores"] >= 2, row
