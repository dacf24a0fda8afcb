"""Philox-4x32-10: the Python spec against the Random123 known-answer vectors, and the uniforms that
each compiled backend draws inside pso_step_random_ against the spec's stream."""
from __future__ import annotations

import pytest
import torch

from swarmkern import ops
from swarmkern.ops.philox import element_uniforms, philox4x32, split_seed, uniform_from_words

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, expected words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BACKENDS = [pytest.param(("cpu", "cpu"), id="cpu"), pytest.param(("reference", "cpu"), id="reference"),
            pytest.param(("cuda", "cuda"), id="cuda", marks=_gpu)]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    words = philox4x32(tuple(torch.tensor(c) for c in counter), key)
    assert [int(w) for w in words] == list(expected)


def test_batched_counters_match_one_at_a_time():
    counters = torch.tensor([kat[0] for kat in KAT], dtype=torch.int64)
    words = philox4x32(counters, KAT[2][1])
    for row, (counter, _, _) in zip(words, KAT):
        single = philox4x32(tuple(torch.tensor(c) for c in counter), KAT[2][1])
        assert torch.equal(row, single)


def test_uniforms_are_24_bit_and_in_range():
    words = torch.tensor([0, 255, 256, 0xFFFFFFFF], dtype=torch.int64)
    u = uniform_from_words(words)
    assert u.tolist() == [0.0, 0.0, 2.0 ** -24, 1.0 - 2.0 ** -24]


def test_split_seed():
    assert split_seed(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    assert split_seed(-1) == (0xFFFFFFFF, 0xFFFFFFFF)


def _kernel_uniforms(backend: str, device: str, P: int, D: int, seed: int, iteration: int, offset: int):
    """The four uniforms a backend draws per element, read back through v: with x = pbest = gbest =
    gworst = 0, r in [0, 1), normalize off and phi = one-hot(k), the new v is exactly u_k (or u_k * 1)."""
    out = []
    for k in range(4):
        zeros = torch.zeros(P, D, device=device)
        x, p = zeros.clone(), zeros.clone()
        v = torch.ones(P, D, device=device) if k == 0 else zeros.clone()
        if k == 1:
            p.fill_(1.0)  # b * (pbest - x) = u_1
        g = torch.ones(D, device=device) if k == 2 else torch.zeros(D, device=device)  # c * (gbest - x)
        w = -torch.ones(D, device=device) if k == 3 else torch.zeros(D, device=device)  # d * (x - gworst)
        phi = torch.zeros(P, 4, device=device)
        phi[:, k] = 1.0
        ops.pso_step_random_(x, v, p, g, w, phi, 1.0, seed, iteration, offset, 0.0, 1.0, False, backend=backend)
        out.append(v.cpu())
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("seed,iteration,offset", [(0, 0, 0), (0xDEADBEEFCAFEF00D, 123456, 7),
                                                   (2 ** 64 - 1, 2 ** 32 - 1, 2 ** 32 - 2)])
def test_backends_draw_the_spec_stream(backend_device, seed, iteration, offset):
    backend, device = backend_device
    if backend not in ops.available_backends(device):
        pytest.skip(f"backend {backend} unavailable")
    P, D = 3, 70  # vector blocks and a scalar tail
    got = _kernel_uniforms(backend, device, P, D, seed, iteration, offset)
    particles = torch.arange(offset, offset + P, dtype=torch.int64).unsqueeze(1)
    expected = element_uniforms(seed, iteration, particles, torch.arange(D, dtype=torch.int64).unsqueeze(0))
    assert torch.equal(got, expected)
    assert (got >= 0).all() and (got < 1).all() and got.unique().numel() > 0.99 * got.numel()
