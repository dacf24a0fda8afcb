"""Fixtures shared by test modules. A module that needs another tiny setup defines its own `setup`
(and `pool`), which takes precedence over these."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def setup():
    """The tiny causal LM with its LoRA experts and datasets (no reward model, no judge)."""
    from swarmkern.testing import cached_tiny_setup

    return cached_tiny_setup(judge=False, reward=False)


@pytest.fixture(scope="module")
def pool(setup):
    """The tiny setup's LoRA experts as an ExpertPool."""
    from swarmkern.flat import load_experts

    return load_experts(setup.expert_dirs)
