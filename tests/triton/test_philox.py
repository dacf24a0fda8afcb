"""tl.philox as the kernels use it, against Random123's known answers and swarmkern/ops/philox.py."""
from __future__ import annotations

import pytest
import torch

from swarmkern.ops import philox
from swarmkern.ops import triton_backend as tb

# Random123 kat_vectors: philox4x32 with 10 rounds, (counter, key) -> words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_tl_philox_known_answers(counter, key, expected, device):
    words = tb.philox4x32(torch.tensor([counter], device=device), key)
    assert [int(w) for w in words[0]] == list(expected)
    assert [int(w) for w in philox.philox4x32(torch.tensor([counter]), key)[0]] == list(expected)


def test_tl_philox_random_counters_match_reference(device):
    ctr = torch.randint(0, 2**32, (1000, 4), dtype=torch.int64)
    key = (0x89ABCDEF, 0x01234567)
    assert torch.equal(tb.philox4x32(ctr.to(device), key).cpu(), philox.philox4x32(ctr, key))


@pytest.mark.parametrize("seed,iteration,particle,start", [
    (0, 0, 0, 0),
    (0xDEADBEEF12345678, 7, 3, 1000),
    (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 50),  # element indices cross 2^32: the hi counter word
    (12345, 2**31, 2**31 + 1, 3 * 2**32 + 17),
])
def test_element_stream_words_match_reference(seed, iteration, particle, start, device):
    """The words pso_step_random_kernel draws (counter = (elem lo, elem hi, particle, iteration), key = the
    64-bit seed split lo/hi) equal swarmkern.ops.philox's, including 64-bit element indices."""
    n = 100
    got = tb.philox_words(seed, iteration, particle, start, n, device=device).cpu()
    elems = torch.arange(start, start + n, dtype=torch.int64).unsqueeze(0)
    expected = philox.philox4x32(
        (elems & 0xFFFFFFFF, elems >> 32, torch.tensor(particle & 0xFFFFFFFF), torch.tensor(iteration & 0xFFFFFFFF)),
        philox.split_seed(seed))[0]
    assert torch.equal(got, expected)


def test_uniforms_of_the_step_equal_reference_uniforms(device):
    """pso_step_random_ with x = v = pbest = gbest = gworst = 0 except v = 1, phi = (1, 0, 0, 0),
    normalize=False, r in [0, 1): v becomes u_0 exactly, the reference generator's first uniform."""
    P, D, seed, it = 3, 300, 99, 4
    z = torch.zeros((P, D), device=device)
    x, v, pbest = z.clone(), torch.ones((P, D), device=device), z.clone()
    g, w = torch.zeros(D, device=device), torch.zeros(D, device=device)
    phi = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * P, device=device)
    tb.pso_step_random_(x, v, pbest, g, w, phi, 1.0, seed, it, 5, 0.0, 1.0, False)
    u = philox.element_uniforms(seed, it, torch.arange(5, 5 + P).unsqueeze(1), torch.arange(D).unsqueeze(0))
    assert torch.equal(v.cpu(), u[..., 0])
    assert torch.equal(x.cpu(), u[..., 0])
