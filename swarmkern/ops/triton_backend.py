"""The Triton backend of the swarm ops: launch rules, torch.library registration, and the op functions.

    pso_step_(x, v, pbest, gbest, gworst, coef, step) -> None
    pso_step_random_(x, v, pbest, gbest, gworst, phi, step, seed, iteration, particle_offset=0,
                     r_lo=0.0, r_hi=1.0, normalize=True) -> None
    combine(src, weights, out=None) -> Tensor

Same signatures and results as swarmkern/ops/reference.py (fp32 bit for bit; 16-bit storage rounded
once from the same fp32 values). The caller (swarmkern.ops dispatch) validates shapes, dtypes and
layouts; this module only checks that it can run at all.

AVAILABLE says whether the ops can run here and REASON why not. Tensors must be on DEVICE_TYPE:
"cuda" on a GPU, "cpu" under the interpreter (TRITON_INTERPRET=1 set before triton is imported).
On a GPU the ops are torch.library.triton_op's registered beside the C++/CUDA ops in the namespace
"swarmkern", named triton_<op> (swarmkern::triton_pso_step_, ...), so torch.compile traces into the
kernels. Under the interpreter the same ops are registered (eager calls and FakeTensor
work) but the functions here launch the kernels directly: torch.compile cannot trace an interpreted
kernel (inductor needs a compiled one).

Importing this module never raises.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

AVAILABLE: bool = False
REASON: str = ""
INTERPRET: bool = False
DEVICE_TYPE: str = "cuda"
NAMESPACE = "swarmkern"  # the C++/CUDA ops' namespace (csrc/ops.cpp); these ops are triton_<op>
PREFIX = "triton_"

try:
    from . import triton_kernels as _k
    import triton
except Exception as exc:  # noqa: BLE001 - a broken triton install must not break `import swarmkern`
    _k = None
    REASON = f"triton is not importable ({type(exc).__name__}: {exc})"
else:
    INTERPRET = _k.INTERPRET
    if INTERPRET:
        DEVICE_TYPE = "cpu"
        AVAILABLE, REASON = True, "Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors"
    else:
        try:
            if not torch.cuda.is_available():
                REASON = ("no CUDA GPU visible to torch and TRITON_INTERPRET is not '1' "
                          "(set it before triton is imported to run the kernels on CPU)")
            elif torch.version.hip is not None:
                REASON = "ROCm GPU: the kernels round with NVIDIA PTX instructions (mul.rn.f32 & co.)"
            else:
                # no device query here: that would initialise CUDA at import (and break fork())
                AVAILABLE = True
                REASON = f"Triton {triton.__version__} on CUDA (kernels compile on first use)"
        except Exception as exc:  # noqa: BLE001
            REASON = f"CUDA check failed ({type(exc).__name__}: {exc})"


def _require() -> None:
    if not AVAILABLE:
        raise RuntimeError(f"swarmkern Triton backend unavailable: {REASON}")


# ---- launch rules: a simple rule, no autotuning --------------------------------------------------------
# The ops update their inputs in place, and the buffers are often most of GPU memory, so triton.autotune
# (which runs each config on the live buffers, or needs restore_value copies of them) is not used.
# Under the interpreter a program costs Python overhead per op, so blocks are large.

_SM_COUNT: int | None = None


def _target_programs() -> int:
    """How many programs keep the device busy (4 waves of SMs); 1 under the interpreter."""
    global _SM_COUNT
    if INTERPRET:
        return 1
    if _SM_COUNT is None:
        _SM_COUNT = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 4 * _SM_COUNT


def _elementwise_block(D: int, itemsize: int) -> int:
    if INTERPRET:
        return max(16, min(4096, triton.next_power_of_2(D)))
    # 32 bytes per thread per row with 4 warps: two 16-byte vector accesses per tensor
    return 1024 if itemsize >= 4 else 2048


def _particle_split(P: int, D: int, block: int) -> int:
    """Particles per program: all P (gbest/gworst read once) unless D alone gives too few programs."""
    blocks = triton.cdiv(D, block)
    groups = max(1, min(P, triton.cdiv(_target_programs(), blocks)))
    return triton.cdiv(P, groups)


def _split_seed(seed: int) -> tuple[int, int]:
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


def _launch_pso_step(x, v, pbest, gbest, gworst, coef, step: float, *, block: int | None = None,
                     particles_per_program: int | None = None, launch=None) -> None:
    P, D = x.shape
    if P == 0 or D == 0:
        return
    block = block or _elementwise_block(D, x.element_size())
    ppp = particles_per_program or _particle_split(P, D, block)
    kernel = launch(_k.pso_step_kernel) if launch else _k.pso_step_kernel
    grid = (triton.cdiv(D, block), triton.cdiv(P, ppp))
    kernel[grid](x, v, pbest, gbest, gworst, coef, float(step), P, D,
                 x.stride(0), v.stride(0), pbest.stride(0), coef.stride(0), ppp, BLOCK=block)


def _launch_pso_step_random(x, v, pbest, gbest, gworst, phi, step: float, k_lo: int, k_hi: int,
                            iteration: int, particle_offset: int, r_lo: float, r_hi: float, normalize: bool,
                            *, elem_start: int = 0, block: int | None = None,
                            particles_per_program: int | None = None, launch=None) -> None:
    P, D = x.shape
    if P == 0 or D == 0:
        return
    # Philox needs registers for 4 words per element: fp32-sized blocks whatever the storage
    block = block or _elementwise_block(D, 4)
    ppp = particles_per_program or _particle_split(P, D, block)
    kernel = launch(_k.pso_step_random_kernel) if launch else _k.pso_step_random_kernel
    grid = (triton.cdiv(D, block), triton.cdiv(P, ppp))
    # r_span is rounded to fp32 from the double difference, exactly as the reference does
    kernel[grid](x, v, pbest, gbest, gworst, phi, float(step), float(r_lo), float(r_hi - r_lo),
                 int(k_lo), int(k_hi), int(iteration) & 0xFFFFFFFF, int(particle_offset) & 0xFFFFFFFF,
                 int(elem_start), P, D, x.stride(0), v.stride(0), pbest.stride(0), phi.stride(0), ppp,
                 NORMALIZE=bool(normalize), BLOCK=block)


def _combine_blocks(M: int, D: int) -> tuple[int, int]:
    if INTERPRET:
        block_m = min(64, triton.next_power_of_2(M))
        return block_m, max(16, min(triton.next_power_of_2(D), 16384 // block_m))
    block_m = min(16, triton.next_power_of_2(M))  # up to 16 outputs per pass over src
    return block_m, max(128, 4096 // block_m)


def _launch_combine(src, weights, out, *, blocks: tuple[int, int] | None = None, launch=None) -> None:
    K, D = src.shape
    M = weights.shape[0]
    if M == 0 or D == 0:
        return
    block_m, block_d = blocks or _combine_blocks(M, D)
    kernel = launch(_k.combine_kernel) if launch else _k.combine_kernel
    grid = (triton.cdiv(D, block_d), triton.cdiv(M, block_m))
    kernel[grid](src, weights, out, K, M, D, src.stride(0), weights.stride(0), weights.stride(1),
                 out.stride(0), BLOCK_M=block_m, BLOCK_D=block_d)


# ---- torch.library registration --------------------------------------------------------------------

_OPS = None


def _register():
    """Registers the triton_op's once; returns the torch.ops namespace (None when unavailable)."""
    global _OPS
    if _OPS is not None or not AVAILABLE:
        return _OPS
    from torch.library import triton_op, wrap_triton

    @triton_op(f"{NAMESPACE}::{PREFIX}pso_step_", mutates_args={"x", "v"})
    def _pso_step_op(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
                     gworst: torch.Tensor, coef: torch.Tensor, step: float) -> None:
        _launch_pso_step(x, v, pbest, gbest, gworst, coef, step, launch=wrap_triton)

    @triton_op(f"{NAMESPACE}::{PREFIX}pso_step_random_", mutates_args={"x", "v"})
    def _pso_step_random_op(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
                            gworst: torch.Tensor, phi: torch.Tensor, step: float, key_lo: int, key_hi: int,
                            iteration: int, particle_offset: int, r_lo: float, r_hi: float,
                            normalize: bool) -> None:
        _launch_pso_step_random(x, v, pbest, gbest, gworst, phi, step, key_lo, key_hi, iteration,
                                particle_offset, r_lo, r_hi, normalize, launch=wrap_triton)

    @triton_op(f"{NAMESPACE}::{PREFIX}combine", mutates_args={})
    def _combine_op(src: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.empty((weights.shape[0], src.shape[1]), dtype=src.dtype, device=src.device)
        _launch_combine(src, weights, out, launch=wrap_triton)
        return out

    @triton_op(f"{NAMESPACE}::{PREFIX}combine_out", mutates_args={"out"})
    def _combine_out_op(src: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> None:
        _launch_combine(src, weights, out, launch=wrap_triton)

    if INTERPRET:
        # triton_op derives its fake kernel by running the body under FakeTensorMode, which the
        # interpreter cannot do (it reads data pointers); mutating ops need no fake output.
        _pso_step_op.register_fake(lambda *args: None)
        _pso_step_random_op.register_fake(lambda *args: None)
        _combine_out_op.register_fake(lambda *args: None)

        @_combine_op.register_fake
        def _(src, weights):
            return src.new_empty((weights.shape[0], src.shape[1]))

    namespace = getattr(torch.ops, NAMESPACE)
    _OPS = SimpleNamespace(**{op: getattr(namespace, PREFIX + op)
                              for op in ("pso_step_", "pso_step_random_", "combine", "combine_out")})
    return _OPS


def ops():
    """The registered ops torch.ops.swarmkern.triton_{pso_step_, pso_step_random_, combine, combine_out},
    as attributes pso_step_, pso_step_random_, combine, combine_out; raises RuntimeError when the backend
    is unavailable."""
    _require()
    return _register()


# ---- the op functions (the dispatcher's entry points) -----------------------------------------------

def pso_step_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
              gworst: torch.Tensor, coef: torch.Tensor, step: float) -> None:
    """In place: v <- c_v*v + c_p*(pbest - x) + c_g*(gbest - x) + c_w*(x - gworst); x <- x + step*v.
    x, v, pbest [P, D] (unit element stride, any row stride); gbest, gworst [D] contiguous (gbest may
    be a row of pbest); coef [P, 4] float32 (c_v, c_p, c_g, c_w)."""
    _require()
    if INTERPRET:
        _launch_pso_step(x, v, pbest, gbest, gworst, coef, step)
    else:
        _register().pso_step_(x, v, pbest, gbest, gworst, coef, float(step))


def pso_step_random_(x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor,
                     gworst: torch.Tensor, phi: torch.Tensor, step: float, seed: int, iteration: int,
                     particle_offset: int = 0, r_lo: float = 0.0, r_hi: float = 1.0,
                     normalize: bool = True) -> None:
    """In place, classic PSO with per-element Philox-4x32-10 coefficients (see reference.pso_step_random_).
    Shapes as pso_step_, phi [P, 4] float32 (phi_v, phi_p, phi_g, phi_w); seed is any 64-bit integer."""
    _require()
    k_lo, k_hi = _split_seed(seed)
    if INTERPRET:
        _launch_pso_step_random(x, v, pbest, gbest, gworst, phi, step, k_lo, k_hi, iteration,
                                particle_offset, r_lo, r_hi, normalize)
    else:
        _register().pso_step_random_(x, v, pbest, gbest, gworst, phi, float(step), k_lo, k_hi,
                                     int(iteration) & 0xFFFFFFFF, int(particle_offset) & 0xFFFFFFFF,
                                     float(r_lo), float(r_hi), bool(normalize))


def _may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a and b intersect (conservatively True while tracing)."""
    if torch.compiler.is_compiling():
        return True
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        if t.numel() == 0:
            return t.data_ptr(), t.data_ptr()
        last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def combine(src: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[m] = sum_k weights[m, k] * src[k], fp32 accumulation in the order k = 0..K-1.
    src [K, D] (unit element stride), weights [M, K] (any strides) -> out [M, D] in src's dtype, or
    written into out (any dtype, unit element stride; it may overlap src: then a temporary is used)."""
    _require()
    if out is not None and (_may_overlap(out, src) or _may_overlap(out, weights)):
        out.copy_(combine(src, weights))
        return out
    if INTERPRET:
        if out is None:
            out = torch.empty((weights.shape[0], src.shape[1]), dtype=src.dtype, device=src.device)
        _launch_combine(src, weights, out)
        return out
    if out is None:
        return _register().combine(src, weights)
    _register().combine_out(src, weights, out)
    return out


def philox_words(seed: int, iteration: int, particle: int, elem_start: int, n: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The Philox words pso_step_random_ draws for one particle and elements elem_start .. +n-1:
    [n, 4] int64 holding uint32 values (for tests against swarmkern.ops.philox)."""
    _require()
    out = torch.empty((n, 4), dtype=torch.int64, device=device or DEVICE_TYPE)
    k_lo, k_hi = _split_seed(seed)
    block = 1024
    _k.philox_words_kernel[(triton.cdiv(n, block),)](out, k_lo, k_hi, int(elem_start),
                                                     int(particle) & 0xFFFFFFFF, int(iteration) & 0xFFFFFFFF,
                                                     n, BLOCK=block)
    return out


def philox4x32(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox-4x32-10 of counter [N, 4] (int64 holding uint32 values) with key (lo, hi) -> [N, 4] int64,
    computed by tl.philox (for the known-answer tests)."""
    _require()
    counter = counter.to(torch.int64).contiguous()
    out = torch.empty_like(counter)
    n, block = counter.shape[0], 1024
    _k.philox_kernel[(triton.cdiv(n, block),)](counter, out, int(key[0]) & 0xFFFFFFFF,
                                               int(key[1]) & 0xFFFFFFFF, n, BLOCK=block)
    return out


__all__ = ["AVAILABLE", "REASON", "INTERPRET", "DEVICE_TYPE", "NAMESPACE", "PREFIX", "pso_step_", "pso_step_random_",
           "combine", "ops", "philox_words", "philox4x32"]
