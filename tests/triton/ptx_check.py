"""Compiles the Triton kernels to PTX for sm_90 without a GPU (ptxas on PATH, TRITON_INTERPRET unset) and
prints one JSON line per kernel variant with what the tests check: fused multiply-adds, approximate
divisions, 16-byte vector accesses, and 64-bit address arithmetic. Run by test_ptx.py in a subprocess."""
from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "ptx_check.py must run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from swarmkern.ops import triton_kernels as K  # noqa: E402

ALIGNED = [["tt.divisibility", 16]]


def compile_ptx(fn, signature: dict, constexprs: dict, aligned: list[str]) -> str:
    attrs = {(fn.arg_names.index(name),): ALIGNED for name in aligned}
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}},
                    constexprs=constexprs, attrs=attrs)
    # no enable_fp_fusion option: the kernels must be exact whatever the launch asks for
    return triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]


def _narrowing(op: str) -> bool:
    """An f32 -> bf16/f16 conversion (the store rounding)."""
    return op.startswith("cvt.") and ".f32" in op and (".bf16" in op or ".f16" in op) and not op.startswith("cvt.f32")


def summary(name: str, ptx: str) -> dict:
    """Counts of the PTX instructions the tests care about (predicates such as `@%p1 ` stripped)."""
    ops = []
    for line in ptx.splitlines():
        line = line.strip()
        if line.startswith("@"):
            line = line.split(None, 1)[1] if " " in line else ""
        if line and not line.startswith(("//", ".", "$", "{", "}")):
            ops.append(line.split()[0])
    return {
        "kernel": name,
        "fma": sum(op.startswith("fma.") for op in ops),
        "ftz": sum(".ftz" in op for op in ops),
        "f32_div_inexact": sum(op.startswith(("div.full", "div.approx")) for op in ops),
        "f32_div_rn": sum(op == "div.rn.f32" for op in ops),
        "f32_mul_rn": sum(op == "mul.rn.f32" for op in ops),
        "vector_loads": sum(op.startswith("ld.global") and ".v4." in op for op in ops),
        "vector_stores": sum(op.startswith("st.global") and ".v4." in op for op in ops),
        "narrowing_cvt_rn": sum(_narrowing(op) and ".rn" in op for op in ops),
        "narrowing_cvt_other": sum(_narrowing(op) and ".rn" not in op for op in ops),
    }


def main() -> None:
    out = []
    for dt in ("fp32", "bf16", "fp16"):
        ptr = f"*{dt}"
        sig = {"x_ptr": ptr, "v_ptr": ptr, "p_ptr": ptr, "g_ptr": ptr, "w_ptr": ptr, "coef_ptr": "*fp32",
               "step": "fp32", "P": "i32", "D": "i32", "stride_x": "i32", "stride_v": "i32", "stride_p": "i32",
               "stride_c": "i32", "PARTICLES_PER_PROGRAM": "i32"}
        aligned = ["x_ptr", "v_ptr", "p_ptr", "g_ptr", "w_ptr", "coef_ptr", "D", "stride_x", "stride_v",
                   "stride_p"]
        ptx = compile_ptx(K.pso_step_kernel, sig, {"BLOCK": 1024 if dt == "fp32" else 2048}, aligned)
        out.append(summary(f"pso_step_kernel/{dt}", ptx))
        sig_r = {**{k: v for k, v in sig.items() if k != "coef_ptr"}, "phi_ptr": "*fp32", "r_lo": "fp32",
                 "r_span": "fp32", "k_lo": "i64", "k_hi": "i64", "iteration": "i64", "particle_offset": "i64",
                 "elem_start": "i64"}
        sig_r = {name: sig_r[name] for name in K.pso_step_random_kernel.arg_names if name in sig_r}
        aligned_r = [a if a != "coef_ptr" else "phi_ptr" for a in aligned]
        ptx = compile_ptx(K.pso_step_random_kernel, sig_r, {"NORMALIZE": True, "BLOCK": 1024, "RANDOM_INERTIA": True},
                          aligned_r)
        out.append(summary(f"pso_step_random_kernel/{dt}", ptx))
        # the classic update: no normalisation, constant inertia
        ptx = compile_ptx(K.pso_step_random_kernel, sig_r, {"NORMALIZE": False, "BLOCK": 1024,
                                                            "RANDOM_INERTIA": False}, aligned_r)
        out.append(summary(f"pso_step_random_kernel_classic/{dt}", ptx))
        sig_c = {"src_ptr": ptr, "w_ptr": "*fp32", "out_ptr": ptr, "K": "i32", "M": "i32", "D": "i32",
                 "stride_src": "i32", "stride_wm": "i32", "stride_wk": "i32", "stride_out": "i32"}
        ptx = compile_ptx(K.combine_kernel, sig_c, {"BLOCK_M": 8, "BLOCK_D": 512},
                          ["src_ptr", "out_ptr", "D", "stride_src", "stride_out"])
        out.append(summary(f"combine_kernel/{dt}", ptx))
    for row in out:
        print(json.dumps(row))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
