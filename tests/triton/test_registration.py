"""The torch.library registration of the Triton ops, and the module's availability contract."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from swarmkern.ops import reference as ref
from swarmkern.ops import triton_backend as tb
from tlib import assert_bitwise_equal, rand


def test_schemas_mark_what_is_mutated():
    ops = tb.ops()
    assert "Tensor(a0!) x, Tensor(a1!) v" in str(ops.pso_step_.default._schema)
    assert "Tensor(a0!) x, Tensor(a1!) v" in str(ops.pso_step_random_.default._schema)
    assert "Tensor(a2!) out" in str(ops.combine_out.default._schema)
    assert "!" not in str(ops.combine.default._schema)


def test_registered_ops_run_eagerly(device):
    ops = tb.ops()
    P, D = 3, 45
    x, v, pbest = (rand((P, D), torch.float32, device) for _ in range(3))
    g, w, coef = pbest[1], rand((D,), torch.float32, device), torch.rand((P, 4)).to(device)
    x_ref, v_ref = x.clone(), v.clone()
    ref.pso_step_(x_ref, v_ref, pbest, g, w, coef, 0.5)
    ops.pso_step_(x, v, pbest, g, w, coef, 0.5)
    assert_bitwise_equal(x, x_ref, "x")
    ref.pso_step_random_(x_ref, v_ref, pbest, g, w, coef, 0.5, 3, 2, 1, 0.0, 1.0, True)
    ops.pso_step_random_(x, v, pbest, g, w, coef, 0.5, 3, 0, 2, 1, 0.0, 1.0, True)
    assert_bitwise_equal(v, v_ref, "v")
    src, weights = rand((4, D), torch.float32, device), torch.randn((2, 4)).to(device)
    assert_bitwise_equal(ops.combine(src, weights), ref.combine(src, weights), "combine")
    out = torch.full((2, D), float("nan"), device=device)
    ops.combine_out(src, weights, out)
    assert_bitwise_equal(out, ref.combine(src, weights), "combine_out")


def test_opcheck(device):
    """Schema and FakeTensor checks everywhere; the autograd/AOT checks need compiled kernels (GPU):
    the interpreter cannot run under FakeTensor/AOT tracing."""
    ops = tb.ops()
    utils = ("test_schema", "test_faketensor") if tb.INTERPRET else (
        "test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    P, D = 2, 19
    x, v, pbest = (rand((P, D), torch.float32, device) for _ in range(3))
    g, w, coef = pbest[0], rand((D,), torch.float32, device), torch.rand((P, 4)).to(device)
    src, weights = rand((3, D), torch.bfloat16, device), torch.randn((2, 3)).to(device)
    cases = [
        (ops.pso_step_.default, (x, v, pbest, g, w, coef, 0.5)),
        (ops.pso_step_random_.default, (x, v, pbest, g, w, coef, 0.5, 1, 2, 3, 4, 0.0, 1.0, True)),
        (ops.combine.default, (src, weights)),
        (ops.combine_out.default, (src, weights, torch.empty((2, D), dtype=torch.bfloat16, device=device))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.gpu
def test_torch_compile_traces_the_kernels(device):
    """On a GPU the ops are triton_op's: torch.compile(fullgraph=True) keeps them in one graph and the
    compiled function gives the reference's bits."""
    P, D = 4, 5000
    x, v, pbest = (rand((P, D), torch.float32, device) for _ in range(3))
    g, w, coef = pbest[2], rand((D,), torch.float32, device), torch.rand((P, 4)).to(device)
    src, weights = rand((P, D), torch.float32, device), torch.randn((3, P)).to(device)

    def f(x, v):
        tb.pso_step_(x, v, pbest, g, w, coef, 0.75)
        tb.pso_step_random_(x, v, pbest, g, w, coef, 0.75, 11, 1)
        return tb.combine(src, weights) + 0.0

    x_ref, v_ref = x.clone(), v.clone()
    ref.pso_step_(x_ref, v_ref, pbest, g, w, coef, 0.75)
    ref.pso_step_random_(x_ref, v_ref, pbest, g, w, coef, 0.75, 11, 1)
    out = torch.compile(f, fullgraph=True)(x, v)
    assert_bitwise_equal(x, x_ref, "x")
    assert_bitwise_equal(v, v_ref, "v")
    assert_bitwise_equal(out, ref.combine(src, weights), "combine")


def _probe(code: str, env_updates: dict[str, str | None]) -> str:
    env = dict(os.environ)
    for k, val in env_updates.items():
        if val is None:
            env.pop(k, None)
        else:
            env[k] = val
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


PROBE = ("from swarmkern.ops import triton_backend as tb\n"
         "print(tb.AVAILABLE, tb.INTERPRET, tb.DEVICE_TYPE, '|', tb.REASON)\n"
         "import torch\n"
         "try:\n"
         "    tb.combine(torch.ones(1, 1), torch.ones(1, 1))\n"
         "except RuntimeError as e:\n"
         "    print('raised', e)\n")


@pytest.mark.no_backend_needed
def test_import_never_raises_without_triton():
    out = _probe("import sys; sys.modules['triton'] = None\n" + PROBE, {"TRITON_INTERPRET": "1"})
    first, second = out.splitlines()
    assert first.startswith("False False") and "triton is not importable" in first
    assert second.startswith("raised swarmkern Triton backend unavailable: triton is not importable")


@pytest.mark.no_backend_needed
def test_reason_without_gpu_or_interpreter():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = _probe(PROBE, {"TRITON_INTERPRET": None, "CUDA_VISIBLE_DEVICES": ""})
    first, second = out.splitlines()
    assert first.startswith("False False cuda") and "TRITON_INTERPRET" in first and "no CUDA GPU" in first
    assert second.startswith("raised swarmkern Triton backend unavailable")


@pytest.mark.no_backend_needed
def test_interpreter_makes_it_available():
    out = _probe(PROBE, {"TRITON_INTERPRET": "1"})
    assert out.startswith("True True cpu") and "raised" not in out


def test_ops_live_beside_the_compiled_ones():
    """One namespace for every kernel: the Triton ops are swarmkern::triton_<op>."""
    ops = tb.ops()
    assert ops.pso_step_.default.name() == "swarmkern::triton_pso_step_"
    assert ops.pso_step_random_.default.name() == "swarmkern::triton_pso_step_random_"
    assert ops.combine.default.name() == "swarmkern::triton_combine"
    assert ops.combine_out.default.name() == "swarmkern::triton_combine_out"
