"""Which compute dtype a model runs in: `auto` picks bf16 only where the device computes it natively.

On a CPU without native bf16 (no AVX512-BF16 and no AMX, or with those capped away by the
ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY environment variables) PyTorch emulates bf16 and a matmul is
about 10x slower than in fp32, so `auto` means fp32 there. An explicit bf16 / fp16 is honoured, with one
warning line per process when it is emulated.

    choice = resolve_compute_dtype("auto", "cpu")
    choice.dtype    # torch.float32 or torch.bfloat16
    choice.reason   # why, in words (what `swarmkern info` prints)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

__all__ = ["DtypeChoice", "resolve_compute_dtype", "cpu_low_precision", "DTYPE_NAMES"]

DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32,
                                       "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                                       "float16": torch.float16, "fp16": torch.float16}
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_WARNED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved compute dtype and the reason for it (one line)."""
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return _SHORT.get(self.dtype, str(self.dtype).removeprefix("torch."))


def _cpu_flags() -> dict[str, bool]:
    """What torch's cpuinfo reports about the CPU (the hardware, ignoring the environment caps)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {k: bool(caps.get(k, False)) for k in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")}


def _aten_capability() -> str:
    """The vector ISA ATen's kernels dispatch to ("AVX512", "AVX2", "DEFAULT", ...): honours ATEN_CPU_CAPABILITY."""
    return torch.backends.cpu.get_cpu_capability()


def _onednn_supports(kind: str) -> bool:
    """Whether oneDNN runs `kind` ("bf16"/"fp16") matmuls natively: honours ONEDNN_MAX_CPU_ISA."""
    probe = getattr(torch.ops.mkldnn, f"_is_mkldnn_{kind}_supported", None)
    if probe is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(probe())
    except RuntimeError:
        return False


def cpu_low_precision(dtype: torch.dtype) -> tuple[bool, str]:
    """(native, reason): whether this CPU computes `dtype` (bf16 or fp16) natively, as torch reports it.

    Native needs all three: the hardware instructions (AVX512-BF16 or AMX for bf16; AVX512-FP16 or
    AMX-FP16 for fp16), ATen's kernels at AVX512 (ATEN_CPU_CAPABILITY not capped lower) and oneDNN's
    low-precision matmul (ONEDNN_MAX_CPU_ISA not capped lower)."""
    kind = _SHORT[dtype]
    flags = _cpu_flags()
    hw = ["avx512_bf16", "amx_bf16"] if dtype == torch.bfloat16 else ["avx512_fp16", "amx_fp16"]
    have = [f for f in hw if flags.get(f)]
    if not have:
        return False, f"the CPU has no {' or '.join(f.upper() for f in hw)}, so {kind} is emulated"
    isa = _aten_capability()
    if not isa.upper().startswith("AVX512"):
        return False, (f"the CPU has {'+'.join(f.upper() for f in have)} but ATen kernels run at {isa} "
                       f"(ATEN_CPU_CAPABILITY), so {kind} is emulated")
    if not _onednn_supports(kind):
        return False, (f"the CPU has {'+'.join(f.upper() for f in have)} but oneDNN has no native {kind} "
                       "matmul (ONEDNN_MAX_CPU_ISA caps it, or it is unavailable), so it is emulated")
    return True, f"the CPU computes {kind} natively ({'+'.join(f.upper() for f in have)}, ATen at {isa})"


def _device_type(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_compute_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto", *,
                          warn: bool = True) -> DtypeChoice:
    """The compute dtype for `device`. "auto": bf16 on a CUDA device with bf16 support and on a CPU
    that computes bf16 natively, else fp32 (fp16 is never picked automatically: it can overflow).
    An explicit dtype is returned as it is; bf16 / fp16 on a CPU that emulates it prints one warning
    line (once per process and dtype) unless warn=False."""
    dev = _device_type(device)
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype: expected 'auto' or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
        dtype = DTYPE_NAMES[dtype]
    if isinstance(dtype, torch.dtype):
        reason = "explicitly requested"
        if dtype in (torch.bfloat16, torch.float16) and dev.type == "cpu":
            native, why = cpu_low_precision(dtype)
            reason = f"explicitly requested; {why}"
            key = (_SHORT[dtype], "cpu")
            if not native and warn and key not in _WARNED:
                _WARNED.add(key)
                print(f"swarmkern: warning: {_SHORT[dtype]} was requested but {why} (often ~10x slower than "
                      "fp32); dtype: auto picks fp32 here", file=sys.stderr, flush=True)
        return DtypeChoice(dtype, reason)
    if dtype != "auto":
        raise ValueError(f"dtype: expected 'auto', a name or a torch.dtype, got {dtype!r}")
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else 0
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return DtypeChoice(torch.bfloat16, f"CUDA device {index} ({torch.cuda.get_device_name(index)}) "
                                               "supports bf16")
        return DtypeChoice(torch.float32, "the CUDA device has no native bf16 (fp16 is not picked "
                                          "automatically: it can overflow)")
    if dev.type == "cpu":
        native, why = cpu_low_precision(torch.bfloat16)
        return DtypeChoice(torch.bfloat16 if native else torch.float32, why)
    return DtypeChoice(torch.float32, f"{dev.type} device: fp32 is the safe default")
