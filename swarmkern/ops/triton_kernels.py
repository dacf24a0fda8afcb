"""Triton kernels of the swarm ops (the glue, block-size rules and op registration are in triton_backend.py).

Every kernel reproduces swarmkern/ops/reference.py bit for bit in fp32: the same operations in the same
order, each fp32 multiply, add, subtract and divide rounded on its own. On a GPU that takes explicit
round-to-nearest PTX (mul.rn.f32 & co. as inline asm), because LLVM and ptxas would otherwise contract
a*b + c into an FMA (a different rounding) unless every launch passes enable_fp_fusion=False, which
torch.compile's launches of user kernels do not promise. The interpreter (TRITON_INTERPRET=1) has no
inline asm and never fuses, so there the plain operators are used.

Layout: x, v, pbest rows of D elements with a row stride (element 1 of a row is next to element 0);
gbest, gworst [D] contiguous; coef / phi [P, 4] fp32 with a row stride. Offsets are int64 throughout, so
buffers beyond 2^31 elements are addressed correctly. Importing this module needs triton (not a GPU).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # the knob triton itself reads when @triton.jit decides between compiling and interpreting
    INTERPRET: bool = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older triton without knobs
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    @triton.jit
    def _mul(a, b):
        return a * b

    @triton.jit
    def _add(a, b):
        return a + b

    @triton.jit
    def _sub(a, b):
        return a - b

    @triton.jit
    def _div(a, b):
        return a / b
else:
    # PTX with an explicit rounding mode is never contracted into an FMA (neither by LLVM nor ptxas) and,
    # unlike libdevice's __nv_fmul_rn (which follows the launch's enable_reflect_ftz, on by default),
    # keeps subnormals as torch does.
    @triton.jit
    def _mul(a, b):
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def _add(a, b):
        return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def _sub(a, b):
        return tl.inline_asm_elementwise("sub.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def _div(a, b):
        return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)


@triton.jit
def _philox_words(k_lo, k_hi, elem, particle, iteration, BLOCK: tl.constexpr):
    """Philox-4x32-10 with key (k_lo, k_hi) and counter (elem lo, elem hi, particle, iteration).
    elem: [BLOCK] int64 element indices; particle, iteration: scalars holding uint32 values.
    Returns four [BLOCK] uint32 words (Random123 / philox.py order)."""
    zero = tl.zeros([BLOCK], dtype=tl.int64)
    seed = (k_hi.to(tl.uint64) << 32) | k_lo.to(tl.uint64)
    c0 = (elem & 0xFFFFFFFF).to(tl.uint32)
    c1 = (elem >> 32).to(tl.uint32)
    c2 = ((zero + particle) & 0xFFFFFFFF).to(tl.uint32)
    c3 = ((zero + iteration) & 0xFFFFFFFF).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def _uniform(word):
    """uint32 word -> fp32 uniform in [0, 1) with 24 random bits (exact)."""
    return (word >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24, as swarmkern/ops/philox.py


@triton.jit(do_not_specialize=["k_lo", "k_hi", "iteration", "particle"])
def philox_words_kernel(out_ptr, k_lo, k_hi, elem_start, particle, iteration, N, BLOCK: tl.constexpr):
    """out [N, 4] int64 <- the four words for elements elem_start .. elem_start + N - 1 (a test hook for the
    exact stream that pso_step_random_kernel draws)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    w0, w1, w2, w3 = _philox_words(k_lo, k_hi, elem_start + offs, particle, iteration, BLOCK)
    base = out_ptr + offs * 4
    tl.store(base, w0.to(tl.int64), mask=mask)
    tl.store(base + 1, w1.to(tl.int64), mask=mask)
    tl.store(base + 2, w2.to(tl.int64), mask=mask)
    tl.store(base + 3, w3.to(tl.int64), mask=mask)


@triton.jit(do_not_specialize=["k_lo", "k_hi"])
def philox_kernel(ctr_ptr, out_ptr, k_lo, k_hi, N, BLOCK: tl.constexpr):
    """Plain Philox-4x32-10 over N counters: ctr [N, 4] int64 holding uint32 values -> out [N, 4] int64
    (a test hook for the known-answer vectors)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    base = offs * 4
    c0 = tl.load(ctr_ptr + base, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(ctr_ptr + base + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(ctr_ptr + base + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(ctr_ptr + base + 3, mask=mask, other=0).to(tl.uint32)
    seed = (k_hi.to(tl.uint64) << 32) | k_lo.to(tl.uint64)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    tl.store(out_ptr + base, w0.to(tl.int64), mask=mask)
    tl.store(out_ptr + base + 1, w1.to(tl.int64), mask=mask)
    tl.store(out_ptr + base + 2, w2.to(tl.int64), mask=mask)
    tl.store(out_ptr + base + 3, w3.to(tl.int64), mask=mask)


@triton.jit
def _block_start(x_ptr, v_ptr, p_ptr, g_ptr, w_ptr, D, stride_x, stride_v, stride_p, PARTICLES_PER_PROGRAM,
                 BLOCK: tl.constexpr):
    """The program's BLOCK of element offsets, its gbest and gworst values (loaded once, fp32) and the
    row pointers of its first particle."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_d = offs < D
    g = tl.load(g_ptr + offs, mask=in_d, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=in_d, other=0.0).to(tl.float32)
    first = tl.program_id(1).to(tl.int64) * PARTICLES_PER_PROGRAM
    return (offs, g, w, first, x_ptr + first * stride_x + offs, v_ptr + first * stride_v + offs,
            p_ptr + first * stride_p + offs)


@triton.jit
def _velocity(x, v, p, g, w, a, b, c, d):
    """a*v + b*(p - x) + c*(g - x) + d*(x - w), left to right, unfused (the reference's order)."""
    n = _add(_mul(a, v), _mul(b, _sub(p, x)))
    n = _add(n, _mul(c, _sub(g, x)))
    return _add(n, _mul(d, _sub(x, w)))


@triton.jit
def pso_step_kernel(x_ptr, v_ptr, p_ptr, g_ptr, w_ptr, coef_ptr, step, P, D,
                    stride_x, stride_v, stride_p, stride_c, PARTICLES_PER_PROGRAM,
                    BLOCK: tl.constexpr):
    """Grid (cdiv(D, BLOCK), cdiv(P, PARTICLES_PER_PROGRAM)). Each program loads its BLOCK of gbest and
    gworst once and walks its particles:
        v <- c_v*v + c_p*(p - x) + c_g*(g - x) + c_w*(x - w);  x <- x + step*v   (fp32, left to right)."""
    offs, g, w, first, xp, vp, pp = _block_start(x_ptr, v_ptr, p_ptr, g_ptr, w_ptr, D, stride_x, stride_v,
                                                 stride_p, PARTICLES_PER_PROGRAM, BLOCK)
    for j in range(PARTICLES_PER_PROGRAM):
        # rows past P (the last program's spare particles) store nothing; `in_d & live` would be the
        # natural spelling, but the interpreter turns a block & scalar of bools into int64
        mask = offs < tl.where(first + j < P, D, 0)
        # (a scalar load cannot be masked under the interpreter: spare particles read the last row)
        cp = coef_ptr + tl.minimum(first + j, P - 1) * stride_c
        c_v = tl.load(cp)
        c_p = tl.load(cp + 1)
        c_g = tl.load(cp + 2)
        c_w = tl.load(cp + 3)
        x = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(vp, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(pp, mask=mask, other=0.0).to(tl.float32)
        nv = _velocity(x, v, p, g, w, c_v, c_p, c_g, c_w)
        nx = _add(x, _mul(step, nv))
        tl.store(vp, nv.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(xp, nx.to(x_ptr.dtype.element_ty), mask=mask)
        xp += stride_x
        vp += stride_v
        pp += stride_p


@triton.jit(do_not_specialize=["k_lo", "k_hi", "iteration", "particle_offset"])
def pso_step_random_kernel(x_ptr, v_ptr, p_ptr, g_ptr, w_ptr, phi_ptr, step, r_lo, r_span,
                           k_lo, k_hi, iteration, particle_offset, elem_start, P, D,
                           stride_x, stride_v, stride_p, stride_c, PARTICLES_PER_PROGRAM,
                           NORMALIZE: tl.constexpr, BLOCK: tl.constexpr, RANDOM_INERTIA: tl.constexpr = True):
    """As pso_step_kernel, with per-element coefficients: for particle i and element j the Philox words
    of counter (j lo, j hi, particle_offset + i, iteration) give r_k = r_lo + r_span*u_k and
    a, b, c, d = r_k * phi[i, k] (a = phi[i, 0] without RANDOM_INERTIA);  n = a*v + b*(p - x) + c*(g - x) + d*(x - w);
    v <- n / (a + b + c + d) (0 where the sum is 0) if NORMALIZE else n;  x <- x + step*v.
    elem_start shifts the element index of the stream (0 for a whole buffer)."""
    offs, g, w, first, xp, vp, pp = _block_start(x_ptr, v_ptr, p_ptr, g_ptr, w_ptr, D, stride_x, stride_v,
                                                 stride_p, PARTICLES_PER_PROGRAM, BLOCK)
    elem = elem_start + offs
    for j in range(PARTICLES_PER_PROGRAM):
        # rows past P (the last program's spare particles) store nothing; `in_d & live` would be the
        # natural spelling, but the interpreter turns a block & scalar of bools into int64
        mask = offs < tl.where(first + j < P, D, 0)
        cp = phi_ptr + tl.minimum(first + j, P - 1) * stride_c
        ph_v = tl.load(cp)
        ph_p = tl.load(cp + 1)
        ph_g = tl.load(cp + 2)
        ph_w = tl.load(cp + 3)
        u0, u1, u2, u3 = _philox_words(k_lo, k_hi, elem, particle_offset + first + j, iteration, BLOCK)
        if RANDOM_INERTIA:
            a = _mul(_add(r_lo, _mul(r_span, _uniform(u0))), ph_v)
        else:  # the classic constant inertia weight, broadcast to the block
            a = tl.zeros([BLOCK], dtype=tl.float32) + ph_v
        b = _mul(_add(r_lo, _mul(r_span, _uniform(u1))), ph_p)
        c = _mul(_add(r_lo, _mul(r_span, _uniform(u2))), ph_g)
        d = _mul(_add(r_lo, _mul(r_span, _uniform(u3))), ph_w)
        x = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(vp, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(pp, mask=mask, other=0.0).to(tl.float32)
        n = _velocity(x, v, p, g, w, a, b, c, d)
        if NORMALIZE:
            total = _add(_add(_add(a, b), c), d)
            nonzero = total != 0.0
            n = tl.where(nonzero, _div(n, tl.where(nonzero, total, 1.0)), 0.0)
        nx = _add(x, _mul(step, n))
        tl.store(vp, n.to(v_ptr.dtype.element_ty), mask=mask)
        tl.store(xp, nx.to(x_ptr.dtype.element_ty), mask=mask)
        xp += stride_x
        vp += stride_v
        pp += stride_p


@triton.jit
def combine_kernel(src_ptr, w_ptr, out_ptr, K, M, D, stride_src, stride_wm, stride_wk, stride_out,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(D, BLOCK_D), cdiv(M, BLOCK_M)). out[m, :] = sum_k w[m, k] * src[k, :], fp32, k = 0..K-1,
    starting from 0.0 as the reference does. With M <= BLOCK_M every src element is read once."""
    offs_d = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_m = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_d = offs_d < D
    in_m = offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    sp = src_ptr + offs_d
    wp = w_ptr + offs_m * stride_wm
    for k in range(K):
        s = tl.load(sp, mask=in_d, other=0.0).to(tl.float32)
        wk = tl.load(wp, mask=in_m, other=0.0).to(tl.float32)
        acc = _add(acc, _mul(wk[:, None], s[None, :]))
        sp += stride_src
        wp += stride_wk
    out = out_ptr + offs_m[:, None] * stride_out + offs_d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=in_m[:, None] & in_d[None, :])
