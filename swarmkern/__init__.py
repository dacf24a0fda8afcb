"""swarmkern: Model Swarms (particle swarm search over LLM expert weights) with fused kernels.

Public API (imported lazily, so `import swarmkern` stays light and never imports transformers):

    Swarm, SwarmConfig, SwarmResult       the search engine (swarmkern.swarm)
    ExpertPool, FlatLayout, load_experts, save_expert   experts <-> flat rows (swarmkern.flat)
    RunConfig, load_run_config                         the YAML run config (swarmkern.config)
    run_search, resume_search                          run / resume a search from it (swarmkern.runner)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Swarm": "swarmkern.swarm",
    "SwarmConfig": "swarmkern.swarm",
    "SwarmResult": "swarmkern.swarm",
    "Collective": "swarmkern.swarm",
    "LocalCollective": "swarmkern.swarm",
    "ExpertPool": "swarmkern.flat",
    "FlatLayout": "swarmkern.flat",
    "IncompatibleExperts": "swarmkern.flat",
    "load_experts": "swarmkern.flat",
    "save_expert": "swarmkern.flat",
    "RunConfig": "swarmkern.config",
    "load_run_config": "swarmkern.config",
    "run_search": "swarmkern.runner",
    "resume_search": "swarmkern.runner",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmkern' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
