"""Relative paths in a run config are resolved against the YAML file's folder, utility paths included."""
from pathlib import Path

import yaml

from swarmkern.config import load_run_config


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "run.yaml").write_text(yaml.safe_dump({
        "experts": {"paths": ["experts/a"]},
        "utility": {"type": "multitask", "tasks": {
            "mc": {"type": "multiple_choice", "dev": "data/dev.jsonl", "test": "/abs/test.jsonl"},
            "em": {"type": "exact_match", "dev": "../em.jsonl"}}},
        "output": {"dir": "out"},
    }))
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    cfg = load_run_config(cfg_dir / "run.yaml")
    task = cfg.utility["tasks"]["mc"]
    assert task["dev"] == str(cfg_dir / "data/dev.jsonl")
    assert task["test"] == "/abs/test.jsonl"
    assert cfg.utility["tasks"]["em"]["dev"] == str(cfg_dir / "../em.jsonl")
    assert Path(cfg.experts.paths[0]) == cfg_dir / "experts/a"
