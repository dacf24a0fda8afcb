"""A whole search through the CLI on a tiny model: `swarmkern search config.yaml` with a multi-task
utility (multiple choice + exact match), then the exported best adapter is re-scored."""
from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from click.testing import CliRunner  # noqa: E402

from swarmkern.cli import main  # noqa: E402
from swarmkern.testing import cached_tiny_setup  # noqa: E402


def test_search_end_to_end_through_the_cli(tmp_path):
    setup = cached_tiny_setup(reward=False, judge=False)
    d = setup.data
    config = {
        "experts": {"paths": [str(p) for p in setup.expert_dirs]},
        "swarm": {"n_particles": 5, "max_iters": 3, "patience": 3, "seed": 1, "progress": False},
        "utility": {"type": "multitask", "combine": "mean", "tasks": {
            "mc": {"type": "multiple_choice", "dev": str(d["mc_dev"]), "test": str(d["mc_test"]), "micro_batch": 32},
            "qa": {"type": "exact_match", "dev": str(d["qa_dev"]), "test": str(d["qa_test"]), "max_new_tokens": 3,
                   "normalize": ["number"]}}},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["search", str(path), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] >= 1
    assert "test_utility" in summary
    front = json.loads((tmp_path / "run" / "pareto_front.json").read_text())
    assert front["tasks"] == ["mc", "qa"] and front["evaluated"] >= 5

    # the exported adapter (chosen on the held-out select split, each task split on its own) scores its
    # reported test utility when loaded on its own
    from swarmkern.flat import load_experts
    from swarmkern.utilities import build_utility

    assert summary["export"]["selected_on"] == "select" and set(summary["export"]["split"]) >= {"select_examples"}
    best = summary["best_path"]
    pool = load_experts([best])
    rescored = build_utility(config["utility"], pool).test(pool.weights)
    chosen = next(c for c in summary["export"]["candidates"] if c["name"] == summary["export"]["chosen"])
    assert float(rescored[0]) == pytest.approx(summary["test_utility"]) == pytest.approx(chosen["test"])
