"""The op surface: one function per op, several backends behind it.

    pso_step_(x, v, pbest, gbest, gworst, coef, step, *, backend=None)
    pso_step_random_(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset=0,
                     r_lo=0.0, r_hi=1.0, normalize=True, random_inertia=True, *, backend=None)
    combine(src, weights, out=None, *, backend=None)

Backends: "cpu" (C++ at::vec + OpenMP), "cuda" (CUDA kernels), "triton" (GPU, or its interpreter with
TRITON_INTERPRET=1) and "reference" (pure PyTorch: the spec, swarmkern/ops/reference.py).
backend=None picks the fastest available for the tensors' device: cpu -> "cpu", cuda -> "cuda", then
"triton"; "reference" when nothing compiled is available. Every backend computes the same numbers:
fp32 bit for bit (the order of operations is part of the spec), bf16/fp16 storage with fp32 math.
Arguments are checked here, once, for every backend (ValueError/TypeError naming the argument).
"""
from __future__ import annotations

import torch

from . import _extension, _validate, reference
from .philox import element_uniforms, philox4x32, split_seed, uniform_from_words

__all__ = ["pso_step_", "pso_step_random_", "combine", "available_backends", "backend_summary",
           "default_backend", "BACKENDS", "philox4x32", "element_uniforms", "split_seed", "uniform_from_words",
           "reference"]

BACKENDS = ("cpu", "cuda", "triton", "reference")

# Load the compiled libraries now (cheap), so that their schemas and fake implementations exist before
# anyone traces a call, and so that tracing only reads cached results.
_extension.cpu_status()
_extension.cuda_status()


def _status(name: str) -> _extension.BackendStatus:
    if name == "cpu":
        return _extension.cpu_status()
    if name == "cuda":
        return _extension.cuda_status()
    if name == "triton":
        return _extension.triton_status()
    return _extension.BackendStatus(True, "pure PyTorch (the spec)")


def _runs_on(name: str, device_type: str) -> bool:
    if name == "cpu":
        return device_type == "cpu"
    if name == "cuda":
        return device_type == "cuda"
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and _extension.triton_interpreter())
    return True


def default_backend(device: torch.device | str) -> str:
    """The backend that backend=None uses for tensors on `device`. Triton is only imported when the
    device is a GPU and the CUDA extension is missing."""
    device_type = torch.device(device).type
    if device_type == "cpu":
        return "cpu" if _extension.cpu_status().available else "reference"
    if device_type == "cuda":
        if _extension.cuda_status().available:
            return "cuda"
        if _extension.triton_status().available:
            return "triton"
    return "reference"


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable for tensors on `device` (all devices when None), fastest first.
    Asking about a GPU (or about every device) imports the Triton module to learn whether it works."""
    device_type = None if device is None else torch.device(device).type
    names = []
    for name in BACKENDS:
        if device_type is not None and not _runs_on(name, device_type):
            continue
        if name == "triton" and device_type is None and not (torch.cuda.is_available()
                                                             or _extension.triton_interpreter()):
            continue
        if _status(name).available:
            names.append(name)
    return names


def backend_summary() -> str:
    """One line per backend: whether it is available and why, then what backend=None picks."""
    lines = []
    for name in BACKENDS:
        status = _status(name)
        lines.append(f"  {name:<9} {'yes' if status.available else 'no ':<3}  {status.reason}")
    picks = [f"cpu tensors -> {default_backend('cpu')}"]
    if torch.cuda.is_available():
        picks.append(f"cuda tensors -> {default_backend('cuda')}")
    lines.append("  default: " + "; ".join(picks))
    return "\n".join(lines)


def _resolve(op: str, backend: str | None, device: torch.device) -> str:
    if backend is None:
        return default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    if not _runs_on(backend, device.type):
        hint = " (set TRITON_INTERPRET=1 before importing triton to run it on the CPU)" if backend == "triton" else ""
        raise ValueError(f"{op}: backend {backend!r} cannot run on {device.type} tensors{hint}")
    status = _status(backend)
    if not status.available:
        raise RuntimeError(f"{op}: backend {backend!r} is unavailable: {status.reason}")
    return backend


def pso_step_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor, gworst: torch.Tensor,
              coef: torch.Tensor, step: float, *, backend: str | None = None) -> None:
    """One swarm step, in place, for every particle i (x, v, pbest: [P, D]; gbest, gworst: [D]):

        v_i <- c_v*v_i + c_p*(pbest_i - x_i) + c_g*(gbest - x_i) + c_w*(x_i - gworst)
        x_i <- x_i + step * v_i

    coef: [P, 4] weights (c_v, c_p, c_g, c_w) per particle, already normalised by the caller; any float
    dtype, on x's device or the CPU (used as float32). State dtype: float32, bfloat16 or float16 (all
    five the same), fp32 math. Rows need unit column stride (row stride is free: column slices of a
    bigger buffer work). gbest may be a row (view) of pbest; x and v must not overlap the other tensors.
    """
    op = "swarmkern.ops.pso_step_"
    coef32, step = _validate.check_swarm(op, x, v, pbest, gbest, gworst, coef, "coef", step)
    name = _resolve(op, backend, x.device)
    if name in ("cpu", "cuda"):
        torch.ops.swarmkern.pso_step_(x, v, pbest, gbest, gworst, coef32, step)
    elif name == "triton":
        _extension.triton_module().pso_step_(x, v, pbest, gbest, gworst, coef32, step)
    else:
        reference.pso_step_(x, v, pbest, gbest, gworst, coef32, step)


def pso_step_random_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
                     gworst: torch.Tensor, phi: torch.Tensor, step: float, seed: int, iteration: int,
                     particle_offset: int = 0, r_lo: float = 0.0, r_hi: float = 1.0, normalize: bool = True,
                     random_inertia: bool = True, *, backend: str | None = None) -> None:
    """Classic PSO step with per-element random coefficients, in place (shapes as pso_step_).

    For particle i (global index particle_offset + i) and element j, Philox-4x32-10 keyed by `seed` with
    counter (j mod 2^32, j >> 32, particle, iteration mod 2^32) gives u_0..u_3 in [0, 1);
    r_k = r_lo + (r_hi - r_lo)*u_k; a, b, c, d = r_k * phi[i, k] (phi: [P, 4] = phi_v, phi_p, phi_g, phi_w),
    except a = phi_v when random_inertia is False (the classic constant inertia weight; u_0 is drawn anyway);
    v <- (a*v + b*(pbest - x) + c*(gbest - x) + d*(x - gworst)) / (a+b+c+d) if normalize (0 where the sum
    is 0) else the numerator; x <- x + step*v. The same numbers on every backend and any sharding.
    """
    op = "swarmkern.ops.pso_step_random_"
    phi32, step = _validate.check_swarm(op, x, v, pbest, gbest, gworst, phi, "phi", step)
    seed_i64, iteration, particle_offset, r_lo, r_hi, normalize, random_inertia = _validate.check_random_scalars(
        op, seed, iteration, particle_offset, r_lo, r_hi, normalize, random_inertia)
    name = _resolve(op, backend, x.device)
    if name in ("cpu", "cuda"):
        torch.ops.swarmkern.pso_step_random_(x, v, pbest, gbest, gworst, phi32, step, seed_i64, iteration,
                                             particle_offset, r_lo, r_hi, normalize, random_inertia)
        return
    seed_u64 = seed_i64 & 0xFFFFFFFFFFFFFFFF
    if name == "triton":
        _extension.triton_module().pso_step_random_(x, v, pbest, gbest, gworst, phi32, step, seed_u64, iteration,
                                                    particle_offset, r_lo, r_hi, normalize, random_inertia)
    else:
        reference.pso_step_random_(x, v, pbest, gbest, gworst, phi32, step, seed_u64, iteration, particle_offset,
                                   r_lo, r_hi, normalize, random_inertia)


def combine(src: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None, *,
            backend: str | None = None) -> torch.Tensor:
    """Linear combinations of rows, in one pass over src: out[m] = sum_k weights[m, k] * src[k].

    src [K, D] (float32/bfloat16/float16), weights [M, K] (any float dtype, on src's device or the CPU;
    used as float32) -> [M, D], accumulated in fp32 in the order k = 0..K-1. Without `out`, a new
    tensor in src's dtype; with `out` ([M, D], any of the three dtypes), written in place and returned.
    `out` may share memory with src (e.g. rows of the same swarm buffer): the result is as if src were
    read completely before out is written.
    """
    weights32 = _validate.check_combine(src, weights, out)
    name = _resolve("swarmkern.ops.combine", backend, src.device)
    if name in ("cpu", "cuda"):
        if out is None:
            return torch.ops.swarmkern.combine(src, weights32)
        torch.ops.swarmkern.combine_out(src, weights32, out)
        return out
    if name == "triton":
        triton = _extension.triton_module()
        if out is not None and not torch.compiler.is_compiling() and _validate.overlaps(src, out):
            tmp = torch.empty_like(out)  # read all of src before writing any of out
            triton.combine(src, weights32, tmp)
            return out.copy_(tmp)
        return triton.combine(src, weights32, out)
    return reference.combine(src, weights32, out)
