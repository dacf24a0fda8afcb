"""The fused CPU merge kernels (csrc/cpu/merge_ties.cpp, merge_dare.cpp), behind Python functions
whose pure-PyTorch counterparts in ties.py / dare.py are the spec.

The kernels live in swarmkern._C (setup.py compiles every csrc/cpu/*.cpp). When that extension is
missing or predates these ops, `available()` is False and every caller uses the pure path.
`load_jit()` compiles the current csrc/cpu/merge_*.cpp with torch.utils.cpp_extension into the private
op namespace `swarmkern_merge_jit` and switches these wrappers to it (tests and benchmarks use it, so
they always exercise the sources, never a stale swarmkern._C).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

__all__ = ["available", "use_fused", "ties_disjoint_merge", "dare_merge", "load_jit"]

_SIGN_METHODS = {"total": 0, "frequency": 1}
_JIT_NAMESPACE = "swarmkern_merge_jit"
_state: dict[str, object] = {"ns": "swarmkern"}


def _ops():
    return getattr(torch.ops, str(_state["ns"]))


def namespace() -> str:
    """The op namespace the wrappers call: "swarmkern" (swarmkern._C) or the JIT build's."""
    return str(_state["ns"])


def available() -> bool:
    """True when the fused merge ops are registered (importing swarmkern._C if needed)."""
    if not _state.get("ok"):
        if _state["ns"] == "swarmkern":
            try:
                importlib.import_module("swarmkern._C")
            except ImportError:
                pass
        try:
            _ops().merge_ties_disjoint, _ops().merge_dare  # noqa: B018 - lookups raise when missing
            _state["ok"] = True
            _register_fakes()
        except (AttributeError, RuntimeError):
            _state["ok"] = False
    return _state["ok"]


def _register_fakes() -> None:
    """Meta implementations, so torch.compile / FakeTensor can trace the ops (once per namespace)."""
    ns = str(_state["ns"])
    if _state.get(f"fakes:{ns}"):
        return
    _state[f"fakes:{ns}"] = True

    def _ties_fake(trimmed, weights, method):
        return trimmed.new_empty((trimmed.shape[1],))

    def _dare_fake(src, weights, density, seed, offset, ties, method):
        return src.new_empty((src.shape[1],))

    for name, fn in ((f"{ns}::merge_ties_disjoint", _ties_fake), (f"{ns}::merge_dare", _dare_fake)):
        try:
            torch.library.register_fake(name, fn)
        except RuntimeError:  # already registered (e.g. by swarmkern.ops)
            pass


def use_fused(fused: bool | None, t: torch.Tensor) -> bool:
    """fused=None: use the kernel when built and t is a CPU fp32/bf16/fp16 tensor; True: require it."""
    ok_tensor = t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if fused is None:
        return ok_tensor and available()
    if fused and not available():
        raise RuntimeError("the fused merge kernels are not built (swarmkern._C without merge ops); "
                           "reinstall with `pip install --no-build-isolation -e .`")
    if fused and not ok_tensor:
        raise ValueError(f"the fused merge kernels need a CPU float tensor, got {t.dtype} on {t.device}")
    return bool(fused)


def ties_disjoint_merge(trimmed: torch.Tensor, weights: torch.Tensor, majority_sign_method: str = "total") -> torch.Tensor:
    """Fused elect_sign + disjoint_merge: trimmed [K, n], weights [K] -> [n] (trimmed's dtype, fp32 math)."""
    if majority_sign_method not in _SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    return _ops().merge_ties_disjoint(_rows(trimmed), weights.to(torch.float32).contiguous(),
                                      _SIGN_METHODS[majority_sign_method])


def dare_merge(src: torch.Tensor, weights: torch.Tensor, density: float, seed: int, offset: int = 0,
               ties: bool = False, majority_sign_method: str = "total") -> torch.Tensor:
    """Fused DARE (Philox mask drawn in the kernel) + linear or TIES merge: src [K, n] at flat offset
    `offset`, weights [K] -> [n]. Same result as the pure dare.dare_merge(fused=False)."""
    if majority_sign_method not in _SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if seed >= 1 << 63:  # the schema's int is signed 64-bit; the kernel reads the same 64 bits unsigned
        seed -= 1 << 64
    return _ops().merge_dare(_rows(src), weights.to(torch.float32).contiguous(), float(density), seed,
                             int(offset), bool(ties), _SIGN_METHODS[majority_sign_method])


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def load_jit(build_dir: str | Path | None = None, verbose: bool = False) -> str:
    """Compile the current csrc/cpu/merge_*.cpp (cached by torch while the sources are unchanged) into
    the op namespace swarmkern_merge_jit and use it from now on. Returns the namespace."""
    if _state["ns"] == _JIT_NAMESPACE:
        return _JIT_NAMESPACE
    from torch.utils.cpp_extension import load

    root = Path(__file__).resolve().parents[2]
    sources = sorted(str(p) for p in (root / "csrc" / "cpu").glob("merge_*.cpp"))
    if not sources:
        raise FileNotFoundError(f"no csrc/cpu/merge_*.cpp under {root}")
    # built on and for this machine: its own vector ISA; no FMA contraction (bit-exact with PyTorch)
    flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-march=native",
             f"-DSWARMKERN_MERGE_LIBRARY={_JIT_NAMESPACE}"]
    if build_dir is not None:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
    load(_JIT_NAMESPACE, sources, extra_cflags=flags, extra_ldflags=["-fopenmp"],
         extra_include_paths=[str(root / "csrc" / "include"), str(root / "csrc" / "cpu")],
         build_directory=str(build_dir) if build_dir else None, is_python_module=False, verbose=verbose)
    _state["ns"] = _JIT_NAMESPACE
    _state.pop("ok", None)
    if not available():
        raise RuntimeError("built the merge kernels but their ops are not registered")
    return _JIT_NAMESPACE
