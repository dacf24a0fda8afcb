"""Fixtures shared by test modules. A module that needs another tiny setup defines its own `setup`
(and `pool`), which takes precedence over these."""
from __future__ import annotations

import socket

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


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """A fresh HF_HOME, offline, and no socket may connect: a test that reaches for the network fails
    at once instead of hanging. Hub ids resolved by an earlier test are forgotten before and after."""
    from swarmkern.hub import clear_resolved

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise RuntimeError("a test tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    clear_resolved()
    yield
    clear_resolved()
