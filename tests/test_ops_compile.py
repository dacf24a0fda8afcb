"""The registered ops are well-formed torch operators: torch.library.opcheck (schema and mutation
annotations, fake implementations, AOT dispatch) and torch.compile tracing without graph breaks."""
from __future__ import annotations

import pytest
import torch

from swarmkern import ops
from swarmkern.ops import reference

pytestmark = pytest.mark.skipif("cpu" not in ops.available_backends("cpu"), reason="C++ extension not built")

_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=_gpu)]


def _swarm(P: int, D: int, dtype, device, gbest_is_row: bool = False):
    g = torch.Generator().manual_seed(P * D)
    x, v, p = (torch.randn(P, D, generator=g).to(dtype).to(device) for _ in range(3))
    gb = p[0] if gbest_is_row else torch.randn(D, generator=g).to(dtype).to(device)
    gw = torch.randn(D, generator=g).to(dtype).to(device)
    coef = torch.rand(P, 4, generator=g).to(device)
    return x, v, p, gb, gw, coef


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gbest_is_row", [False, True])
def test_opcheck_pso_ops(device, dtype, gbest_is_row):
    x, v, p, gb, gw, coef = _swarm(3, 37, dtype, device, gbest_is_row)
    torch.library.opcheck(torch.ops.swarmkern.pso_step_.default, (x, v, p, gb, gw, coef, 0.7))
    torch.library.opcheck(torch.ops.swarmkern.pso_step_random_.default,
                          (x, v, p, gb, gw, coef, 0.7, -5, 3, 2, 0.0, 1.0, True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck_combine(device, dtype):
    g = torch.Generator().manual_seed(1)
    src = torch.randn(4, 45, generator=g).to(dtype).to(device)
    weights = torch.randn(2, 4, generator=g).to(device)
    torch.library.opcheck(torch.ops.swarmkern.combine.default, (src, weights))
    torch.library.opcheck(torch.ops.swarmkern.combine_out.default, (src, weights, torch.empty(2, 45, device=device)))


def test_torch_compile_traces_the_surface_without_graph_breaks():
    """The public functions (validation included) compile in one graph, and compute the same numbers."""
    x, v, p, gb, gw, coef = _swarm(4, 100, torch.float32, "cpu")
    rx, rv = x.clone(), v.clone()
    src, weights = torch.randn(3, 100), torch.randn(2, 3)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(x, v, p, gb, gw, coef, src, weights):
        ops.pso_step_(x, v, p, gb, gw, coef, 0.5)
        return ops.combine(src, weights)

    out = step(x, v, p, gb, gw, coef, src, weights)
    reference.pso_step_(rx, rv, p, gb, gw, coef, 0.5)
    assert torch.equal(x, rx) and torch.equal(v, rv)
    assert torch.equal(out, reference.combine(src, weights))


def test_one_schema_file_for_every_compiled_op():
    """csrc/ops.cpp is the only TORCH_LIBRARY of the C++/CUDA sources; every op it defines is loaded
    under torch.ops.swarmkern and has a fake implementation (so torch.compile can trace it)."""
    import re
    from pathlib import Path

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    defining = sorted(str(p.relative_to(csrc)) for p in csrc.rglob("*.c*")
                      if re.search(r"TORCH_LIBRARY(_FRAGMENT)?\s*\(", p.read_text()))
    assert defining == ["ops.cpp"]
    names = re.findall(r'm\.def\(\s*"(\w+)\(', (csrc / "ops.cpp").read_text())
    assert {"pso_step_", "pso_step_random_", "combine", "merge_ties_disjoint", "merge_dare"} <= set(names)
    for name in names:
        if name == "build_info":
            continue
        op = getattr(torch.ops.swarmkern, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta") or \
            torch._library.simple_registry.singleton.find(op.name()).fake_impl.kernel is not None, name
