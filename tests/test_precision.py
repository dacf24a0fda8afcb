"""Compute dtype `auto`: bf16 only where the device computes it natively (probes monkeypatched here, and
the real ISA caps in a subprocess); an explicit emulated dtype is honoured with one warning line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmkern.evaluate import precision
from swarmkern.evaluate.precision import resolve_compute_dtype

ROOT = Path(__file__).resolve().parents[1]


def _cpu(monkeypatch, *, flags=(), isa="AVX512", onednn=True):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {f: True for f in flags})
    monkeypatch.setattr(precision, "_aten_capability", lambda: isa)
    monkeypatch.setattr(precision, "_onednn_supports", lambda kind: onednn)
    monkeypatch.setattr(precision, "_WARNED", set())


@pytest.mark.parametrize("flags", [("avx512_bf16",), ("amx_bf16",), ("avx512_bf16", "amx_bf16")])
def test_auto_is_bf16_on_a_native_bf16_cpu(monkeypatch, flags):
    _cpu(monkeypatch, flags=flags)
    choice = resolve_compute_dtype("auto", "cpu")
    assert choice.dtype == torch.bfloat16 and "natively" in choice.reason


@pytest.mark.parametrize("flags,isa,onednn,why", [
    ((), "AVX512", True, "no AVX512_BF16 or AMX_BF16"),
    (("amx_bf16",), "AVX2", True, "ATEN_CPU_CAPABILITY"),
    (("avx512_bf16",), "AVX512", False, "ONEDNN_MAX_CPU_ISA"),
])
def test_auto_is_fp32_where_bf16_is_emulated(monkeypatch, flags, isa, onednn, why):
    _cpu(monkeypatch, flags=flags, isa=isa, onednn=onednn)
    choice = resolve_compute_dtype("auto", "cpu")
    assert choice.dtype == torch.float32 and why in choice.reason and choice.name == "fp32"


def test_explicit_emulated_dtype_is_honoured_with_one_warning_line(monkeypatch, capsys):
    _cpu(monkeypatch, flags=())
    for _ in range(3):
        assert resolve_compute_dtype("bfloat16", "cpu").dtype == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16 was requested" in err and "emulated" in err
    assert resolve_compute_dtype("float16", "cpu").dtype == torch.float16
    assert capsys.readouterr().err.count("fp16 was requested") == 1
    assert resolve_compute_dtype("float32", "cpu").dtype == torch.float32
    assert capsys.readouterr().err == ""


def test_explicit_native_dtype_does_not_warn(monkeypatch, capsys):
    _cpu(monkeypatch, flags=("amx_bf16",))
    assert resolve_compute_dtype("bf16", "cpu").dtype == torch.bfloat16
    assert capsys.readouterr().err == ""


def test_cuda_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_compute_dtype("auto", "cuda").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    choice = resolve_compute_dtype("auto", "cuda:0")
    assert choice.dtype == torch.float32 and "no native bf16" in choice.reason


def test_bad_dtype_names_the_field():
    with pytest.raises(ValueError, match="dtype: expected 'auto'"):
        resolve_compute_dtype("float8", "cpu")


def test_utilities_default_to_auto():
    from swarmkern.utilities import parse_utility_config

    cfg = parse_utility_config({"type": "multiple_choice", "dev": "x.jsonl"})
    assert cfg.dtype == "auto"
    assert parse_utility_config({"type": "exact_match", "dev": "x.jsonl", "dtype": "float32"}).dtype == "float32"


def _info_line(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "swarmkern", "info"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, timeout=120).stdout
    return next(line for line in out.splitlines() if line.startswith("compute dtype auto on cpu"))


def test_isa_caps_make_auto_fp32_in_a_real_process():
    """Under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (how this project emulates a CPU without
    native bf16) `swarmkern info` must say fp32, whatever this machine has."""
    line = _info_line({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    assert line.startswith("compute dtype auto on cpu: fp32 (") and "emulated" in line
    uncapped = _info_line({})
    native, _ = precision.cpu_low_precision(torch.bfloat16)
    assert uncapped.startswith(f"compute dtype auto on cpu: {'bf16' if native else 'fp32'} (")
