"""Build swarmkern's compiled operator libraries when torch is importable.

    pip install --no-build-isolation .        # or -e . : builds against the installed torch
    pip install .                             # isolated build: no torch there -> pure-Python package

Extensions:
  swarmkern._C       the one TORCH_LIBRARY schema file (csrc/ops.cpp) and every C++ CPU kernel,
                     csrc/cpu/*.cpp: the swarm ops and the fused merge kernels (OpenMP, the build
                     machine's vector ISA or SWARMKERN_CPU_CAPABILITY, -ffp-contract=off for bit-exact fp32).
  swarmkern._C_cuda  CUDA kernels: csrc/cuda/*.cu + *.cpp (CUDA implementations of the same schemas),
                     built when the installed torch has CUDA and nvcc exists.
Every C++ file is compiled with the same base flags (CXX_FLAGS); no kernel is JIT-built at run time.

Environment variables:
  SWARMKERN_NO_EXTENSION=1       build no extension at all (pure-Python package).
  SWARMKERN_CPU_CAPABILITY=X     AVX512 | AVX2 | DEFAULT instead of the build machine's ISA.
  SWARMKERN_BUILD_CUDA=0|1       0: never build CUDA; 1: fail if it cannot be built; unset: when possible.
  TORCH_CUDA_ARCH_LIST           e.g. "9.0" or "8.0;9.0" (default: the visible GPUs, else 9.0).
  CUDA_HOME                      the CUDA toolkit (default: where the nvcc on PATH really lives).
  MAX_JOBS                       parallel compile jobs (torch's BuildExtension).
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(message: str) -> None:
    print(f"swarmkern setup: {message}", file=sys.stderr)


def _rel(pattern: str) -> list[str]:
    """Sorted source paths relative to the project root (setuptools wants relative paths)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# ---------------------------------------------------------------------------------------------- CPU
_ISA_FLAGS = {
    # at::vec picks its implementation from CPU_CAPABILITY_*; the -m flags let the compiler emit it.
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
               "-mf16c"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def _cpu_flags_of_this_machine() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> tuple[str, list[str]]:
    """(capability name, compiler flags) for the build machine, or SWARMKERN_CPU_CAPABILITY."""
    forced = os.environ.get("SWARMKERN_CPU_CAPABILITY", "").strip().upper()
    flags = _cpu_flags_of_this_machine()
    if forced:
        if forced not in _ISA_FLAGS:
            raise SystemExit(f"SWARMKERN_CPU_CAPABILITY={forced!r}: expected one of {', '.join(_ISA_FLAGS)}")
        name = forced
    elif platform.machine().lower() not in ("x86_64", "amd64"):
        name = "DEFAULT"
    elif {"avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"} <= flags:
        name = "AVX512"
    elif {"avx2", "fma", "f16c"} <= flags:
        name = "AVX2"
    else:
        name = "DEFAULT"
    extra = list(_ISA_FLAGS[name])
    if name == "AVX512" and "avx512_bf16" in flags:
        extra.append("-mavx512bf16")
    return name, extra


# --------------------------------------------------------------------------------------------- CUDA
def find_cuda_home() -> str | None:
    """The CUDA toolkit folder. The nvcc on PATH may be a wrapper script (torch's own guess, the
    parent of PATH's nvcc, is then wrong), so ask nvcc itself where its toolkit is."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        probe = subprocess.run([nvcc, "-v", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                               capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ TOP=(.+)$", probe.stdout + probe.stderr, re.M)
        if match:
            return os.path.realpath(match.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def cuda_arch_list(torch) -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    try:
        if torch.cuda.is_available():
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    except Exception as exc:  # a broken driver must not break the build
        _log(f"could not query the GPUs ({exc}); using arch 9.0")
    return "9.0"


# ------------------------------------------------------------------------------------------- build
# Every C++ translation unit: no FMA contraction (fp32 results bit-identical to the reference), only
# PyInit_* exported.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fvisibility=hidden"]


def extensions() -> tuple[list, dict]:
    if os.environ.get("SWARMKERN_NO_EXTENSION") == "1":
        _log("SWARMKERN_NO_EXTENSION=1: pure-Python package (reference backend only)")
        return [], {}
    want_cuda = os.environ.get("SWARMKERN_BUILD_CUDA", "").strip()
    cuda_home = find_cuda_home() if want_cuda != "0" else None
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _log("torch is not importable: installing the pure-Python package (reference backend only); "
             "install torch first and use `pip install --no-build-isolation .` to build the kernels")
        return [], {}

    include = [os.path.join(ROOT, "csrc", "include")]
    isa, isa_flags = cpu_isa()
    _log(f"building the C++ CPU extension (ISA {isa})")
    cxx = [*CXX_FLAGS, "-fopenmp", *isa_flags]
    exts = [CppExtension(
        "swarmkern._C",
        sources=_rel("csrc/ops.cpp") + _rel("csrc/cpu/*.cpp"),
        include_dirs=include,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )]

    reason = None
    if want_cuda == "0":
        reason = "SWARMKERN_BUILD_CUDA=0"
    elif not torch.version.cuda:
        reason = f"the installed torch {torch.__version__} has no CUDA"
    elif cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        reason = "nvcc not found (set CUDA_HOME)"
    if reason is None:
        from torch.utils.cpp_extension import CUDAExtension

        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list(torch)
        _log(f"building the CUDA extension (CUDA_HOME={cuda_home}, "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
        # pip's CUDA wheels ship headers (cuda_bf16.h, ...) next to torch.
        site = os.path.dirname(os.path.dirname(torch.__file__))
        cuda_include = include + sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
        exts.append(CUDAExtension(
            "swarmkern._C_cuda",
            sources=_rel("csrc/cuda/*.cpp") + _rel("csrc/cuda/*.cu"),
            include_dirs=cuda_include,
            extra_compile_args={
                "cxx": list(CXX_FLAGS),
                # No FMA contraction: fp32 results stay bit-identical to the reference.
                "nvcc": ["-O3", "--fmad=false", "-lineinfo"],
            },
        ))
    elif want_cuda == "1":
        raise SystemExit(f"SWARMKERN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    else:
        _log(f"not building the CUDA extension: {reason}")
    return exts, {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


_ext_modules, _cmdclass = extensions()
setup(ext_modules=_ext_modules, cmdclass=_cmdclass)
