"""Argument checks shared by every backend: one clear line naming the bad argument.

Shape and memory-overlap problems raise ValueError; wrong Python types and dtypes raise TypeError.
Under torch.compile tracing, checks that need real memory (data_ptr) are skipped.
"""
from __future__ import annotations

import numbers

import torch

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_NAMES = "float32, bfloat16 or float16"


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _tensor(op: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _unit_inner_stride(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must have stride 1 along its last dimension (call .contiguous()), "
                         f"got strides {tuple(t.stride())}")


def _rows_disjoint(op: str, name: str, t: torch.Tensor) -> None:
    if t.shape[0] > 1 and t.stride(0) < t.shape[1]:
        raise ValueError(f"{op}: rows of {name} overlap in memory (row stride {t.stride(0)} < D={t.shape[1]})")


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) bytes spanned by a tensor with non-negative strides."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device:
        return False
    (a0, a1), (b0, b1) = byte_range(a), byte_range(b)
    return a0 < b1 and b0 < a1


def _table(op: str, name: str, t: object, rows: int, device: torch.device) -> torch.Tensor:
    """A [rows, 4] coefficient table as contiguous float32 on `device` (it may come from the CPU)."""
    t = _tensor(op, name, t)
    if tuple(t.shape) != (rows, 4):
        raise ValueError(f"{op}: {name} must be [P, 4] = [{rows}, 4], got {tuple(t.shape)}")
    if t.device != device and t.device.type != "cpu":
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {device}")
    return t.to(device=device, dtype=torch.float32).contiguous()


def _real(op: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    return float(value)


def _integer(op: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    return int(value)


def check_swarm(op: str, x, v, pbest, gbest, gworst, table, table_name: str, step) -> tuple[torch.Tensor, float]:
    """Checks the state tensors of pso_step_ / pso_step_random_; returns (float32 table on x's device, step)."""
    tensors = {"x": x, "v": v, "pbest": pbest, "gbest": gbest, "gworst": gworst}
    for name, t in tensors.items():
        _tensor(op, name, t)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D [P, D], got shape {tuple(x.shape)}")
    P, D = x.shape
    for name in ("v", "pbest"):
        if tensors[name].shape != x.shape:
            raise ValueError(f"{op}: {name} must have x's shape {tuple(x.shape)}, got {tuple(tensors[name].shape)}")
    for name in ("gbest", "gworst"):
        if tuple(tensors[name].shape) != (D,):
            raise ValueError(f"{op}: {name} must be [D] = [{D}], got {tuple(tensors[name].shape)}")
    if x.dtype not in STORAGE_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}; supported: {_DTYPE_NAMES}")
    for name, t in tensors.items():
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but x has {x.dtype}; all state tensors share one dtype")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
        _unit_inner_stride(op, name, t)
    _rows_disjoint(op, "x", x)
    _rows_disjoint(op, "v", v)
    step = _real(op, "step", step)
    coef = _table(op, table_name, table, P, x.device)
    if not _compiling():
        for out_name in ("x", "v"):
            for name, t in tensors.items():
                if name != out_name and not (out_name == "v" and name == "x") and overlaps(tensors[out_name], t):
                    raise ValueError(f"{op}: {out_name} and {name} share memory; x and v are updated in place "
                                     "and must not overlap each other or the inputs")
    return coef, step


def check_random_scalars(op: str, seed, iteration, particle_offset, r_lo, r_hi, normalize,
                         random_inertia=True) -> tuple:
    """(seed as a signed int64 holding the 64-bit key, iteration mod 2^32, particle_offset, r_lo, r_hi, normalize,
    random_inertia)."""
    seed = _integer(op, "seed", seed) & 0xFFFFFFFFFFFFFFFF
    seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    iteration = _integer(op, "iteration", iteration) & 0xFFFFFFFF
    particle_offset = _integer(op, "particle_offset", particle_offset)
    if not -(1 << 62) <= particle_offset < 1 << 62:
        raise ValueError(f"{op}: particle_offset must fit in 62 bits, got {particle_offset}")
    r_lo, r_hi = _real(op, "r_lo", r_lo), _real(op, "r_hi", r_hi)
    if not isinstance(normalize, bool):
        raise TypeError(f"{op}: normalize must be a bool, got {type(normalize).__name__}")
    if not isinstance(random_inertia, bool):
        raise TypeError(f"{op}: random_inertia must be a bool, got {type(random_inertia).__name__}")
    return seed, iteration, particle_offset, r_lo, r_hi, normalize, random_inertia


def check_combine(src, weights, out) -> torch.Tensor:
    """Checks combine's arguments; returns the weights as contiguous float32 on src's device."""
    op = "swarmkern.ops.combine"
    _tensor(op, "src", src)
    if src.dim() != 2:
        raise ValueError(f"{op}: src must be 2-D [K, D], got shape {tuple(src.shape)}")
    if src.dtype not in STORAGE_DTYPES:
        raise TypeError(f"{op}: src has dtype {src.dtype}; supported: {_DTYPE_NAMES}")
    _unit_inner_stride(op, "src", src)
    _tensor(op, "weights", weights)
    K, D = src.shape
    if weights.dim() != 2 or weights.shape[1] != K:
        raise ValueError(f"{op}: weights must be [M, K] with K={K} (src rows), got {tuple(weights.shape)}")
    if weights.device != src.device and weights.device.type != "cpu":
        raise ValueError(f"{op}: weights is on {weights.device} but src is on {src.device}")
    if out is not None:
        _tensor(op, "out", out)
        if tuple(out.shape) != (weights.shape[0], D):
            raise ValueError(f"{op}: out must be [M, D] = [{weights.shape[0]}, {D}], got {tuple(out.shape)}")
        if out.dtype not in STORAGE_DTYPES:
            raise TypeError(f"{op}: out has dtype {out.dtype}; supported: {_DTYPE_NAMES}")
        if out.device != src.device:
            raise ValueError(f"{op}: out is on {out.device} but src is on {src.device}")
        _unit_inner_stride(op, "out", out)
        _rows_disjoint(op, "out", out)
        if not _compiling() and overlaps(out, weights):
            raise ValueError(f"{op}: out and weights share memory")
    return weights.to(device=src.device, dtype=torch.float32).contiguous()
