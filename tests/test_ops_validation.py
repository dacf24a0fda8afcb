"""Every bad input to the op surface fails with a clear one-line error naming the argument, for every
backend (the checks live in the surface), and before anything is written."""
from __future__ import annotations

import pytest
import torch

from swarmkern import ops

BACKENDS = ["reference"] + (["cpu"] if "cpu" in ops.available_backends("cpu") else [])
P, D = 3, 10


def _state(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x, v, p = (torch.randn(P, D, generator=g).to(dtype) for _ in range(3))
    return dict(x=x, v=v, pbest=p, gbest=torch.randn(D, generator=g).to(dtype),
                gworst=torch.randn(D, generator=g).to(dtype), coef=torch.full((P, 4), 0.25), step=1.0)


def _swap(**changes):
    args = _state()
    args.update(changes)
    return args


def _alias(key, make):
    """A fresh state whose `key` is replaced by a view of another of its tensors."""
    args = _state()
    args[key] = make(args)
    return args


def _bad_swarm_cases():
    s = _state()
    wide = torch.randn(P, 2 * D)
    return [
        ("x", TypeError, _swap(x=s["x"].numpy())),
        ("x", ValueError, _swap(x=torch.randn(D))),
        ("v", ValueError, _swap(v=torch.randn(P, D + 1))),
        ("pbest", ValueError, _swap(pbest=torch.randn(P + 1, D))),
        ("gbest", ValueError, _swap(gbest=torch.randn(D + 1))),
        ("gworst", ValueError, _swap(gworst=torch.randn(1, D))),
        ("x", TypeError, _swap(**{k: t.double() if isinstance(t, torch.Tensor) and k != "coef" else t
                                  for k, t in _state().items()})),
        ("pbest", TypeError, _swap(pbest=s["pbest"].bfloat16())),
        ("gworst", TypeError, _swap(gworst=torch.arange(D))),
        ("coef", ValueError, _swap(coef=torch.full((P, 3), 0.25))),
        ("coef", TypeError, _swap(coef=torch.ones(P, 4, dtype=torch.int64))),
        ("x", ValueError, _swap(x=wide[:, ::2])),  # non-unit column stride
        ("gbest", ValueError, _swap(gbest=torch.randn(2 * D)[::2])),
        ("x", ValueError, _swap(x=torch.randn(1, D).expand(P, D))),  # rows overlap each other
        ("v", ValueError, _alias("v", lambda a: a["x"])),  # v is x
        ("x", ValueError, _alias("pbest", lambda a: a["x"])),  # an input aliases an output
        ("v", ValueError, _alias("gbest", lambda a: a["v"][1])),
        ("x", ValueError, _alias("gworst", lambda a: a["x"][0])),
        ("x", ValueError, _swap(x=s["x"].to_sparse())),
        ("step", TypeError, _swap(step="0.5")),
        ("step", TypeError, _swap(step=torch.tensor([0.5]))),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,error,args", _bad_swarm_cases())
def test_pso_step_rejects_bad_input(backend, name, error, args):
    snapshot = {k: t.clone() for k, t in args.items() if isinstance(t, torch.Tensor) and t.layout == torch.strided}
    with pytest.raises(error) as info:
        ops.pso_step_(**args, backend=backend)
    message = str(info.value)
    assert "\n" not in message and name in message and "pso_step_" in message, message
    for k, before in snapshot.items():  # nothing was written
        assert torch.equal(args[k], before), k


@pytest.mark.parametrize("name,error,changes", [
    ("seed", TypeError, dict(seed=1.5)),
    ("iteration", TypeError, dict(iteration="3")),
    ("particle_offset", ValueError, dict(particle_offset=1 << 63)),
    ("r_lo", TypeError, dict(r_lo=None)),
    ("normalize", TypeError, dict(normalize=1)),
    ("phi", ValueError, dict(phi=torch.ones(P + 1, 4))),
])
def test_pso_step_random_rejects_bad_input(name, error, changes):
    s = _state()
    args = dict(x=s["x"], v=s["v"], pbest=s["pbest"], gbest=s["gbest"], gworst=s["gworst"], phi=torch.ones(P, 4),
                step=1.0, seed=1, iteration=0, particle_offset=0, r_lo=0.0, r_hi=1.0, normalize=True)
    args.update(changes)
    with pytest.raises(error, match=name):
        ops.pso_step_random_(**args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_beyond_63_bits_is_accepted(backend):
    """A seed in [2^63, 2^64) is the same 64-bit key on every backend, and not the seed 2^63 - 1."""
    def step(seed):
        s = _state()
        ops.pso_step_random_(s["x"], s["v"], s["pbest"], s["gbest"], s["gworst"], torch.ones(P, 4), 1.0,
                             seed=seed, iteration=(1 << 32) + 1, backend=backend)
        return s["x"]

    x = step((1 << 64) - 1)
    assert torch.equal(x, step(-1))  # the same 64 bits read as a signed integer
    assert not torch.equal(x, step((1 << 63) - 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,error,src,weights,out", [
    ("src", ValueError, torch.randn(D), torch.ones(2, 1), None),
    ("src", TypeError, torch.randn(3, D).double(), torch.ones(2, 3), None),
    ("src", TypeError, [[1.0]], torch.ones(1, 1), None),
    ("weights", ValueError, torch.randn(3, D), torch.ones(2, 4), None),
    ("weights", TypeError, torch.randn(3, D), torch.ones(2, 3, dtype=torch.int32), None),
    ("out", ValueError, torch.randn(3, D), torch.ones(2, 3), torch.empty(2, D + 1)),
    ("out", TypeError, torch.randn(3, D), torch.ones(2, 3), torch.empty(2, D, dtype=torch.float64)),
    ("out", ValueError, torch.randn(3, D), torch.ones(2, 3), torch.empty(2, 2 * D)[:, ::2]),
    ("out", ValueError, torch.randn(3, D), torch.ones(2, 3), torch.empty(1, D).expand(2, D)),
    ("src", ValueError, torch.randn(3, 2 * D)[:, ::2], torch.ones(2, 3), None),
])
def test_combine_rejects_bad_input(backend, name, error, src, weights, out):
    with pytest.raises(error) as info:
        ops.combine(src, weights, out, backend=backend)
    message = str(info.value)
    assert "\n" not in message and name in message and "combine" in message, message


def test_unknown_or_impossible_backend():
    s = _state()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.pso_step_(**s, backend="fortran")
    with pytest.raises(ValueError, match="cannot run on cpu"):
        ops.pso_step_(**s, backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_backend_unavailable_reason_is_stated():
    assert "cuda" not in ops.available_backends("cuda")
    assert "cuda" in ops.backend_summary()


def test_coef_on_cpu_with_any_float_dtype_is_accepted():
    s, s32 = _state(), _state()
    s["coef"] = torch.full((P, 4), 0.25, dtype=torch.float64)
    ops.pso_step_(**s)
    ops.pso_step_(**s32)  # float32 coefficients of the same (exact) values
    assert torch.equal(s["x"], s32["x"]) and torch.equal(s["v"], s32["v"])
    assert not torch.equal(s["x"], _state()["x"])  # the step moved the particles
