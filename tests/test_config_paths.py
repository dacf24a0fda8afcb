"""Relative paths in a run config are resolved against the YAML file's folder, utility paths included."""
from pathlib import Path

import yaml

from swarmkern.config import load_run_config


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    (cfg_dir / "experts" / "a").mkdir(parents=True)  # an existing local path always wins over a Hub id
    (cfg_dir / "run.yaml").write_text(yaml.safe_dump({
        "experts": {"paths": ["experts/a", "my-org/expert-b@v1", "./missing/c"]},
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
    assert cfg.experts.paths[1] == "my-org/expert-b@v1"  # no such path: a Hub id, resolved when loaded
    assert Path(cfg.experts.paths[2]) == cfg_dir / "missing/c"  # ./ is always a path


def test_compare_method_paths_go_through_the_same_resolver(tmp_path: Path):
    from swarmkern.config import resolve_config_paths

    data = {"experts": {"paths": ["e", "~/x"], "glob": "more/*"}, "output": {"dir": "out"},
            "utility": {"type": "exact_match", "dev": "d.jsonl"},
            "compare": {"methods": ["ties", {"type": "ensemble", "dev": "mc.jsonl", "test": "/t.jsonl"}]}}
    resolve_config_paths(data, tmp_path)
    assert data["experts"]["paths"] == [str(tmp_path / "e"), str(Path("~/x").expanduser())]
    assert data["experts"]["glob"] == str(tmp_path / "more/*")
    assert data["output"]["dir"] == str(tmp_path / "out")
    assert data["utility"]["dev"] == str(tmp_path / "d.jsonl")
    assert data["compare"]["methods"] == ["ties", {"type": "ensemble", "dev": str(tmp_path / "mc.jsonl"),
                                                   "test": "/t.jsonl"}]


def test_first_error_is_one_line_naming_the_field():
    import pytest
    from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

    from swarmkern.configfile import first_error

    class Section(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 1
        name: str = "x"

        @field_validator("name")
        @classmethod
        def _named(cls, v):
            if v.startswith("sec."):
                raise ValueError(f"{v}: names its own field")
            if not v:
                raise ValueError("must not be empty")
            return v

    def err(**data) -> ValidationError:
        with pytest.raises(ValidationError) as info:
            Section.model_validate(data)
        return info.value

    assert first_error(err(colour=1), "sec") == "sec.colour: Extra inputs are not permitted"
    assert first_error(err(colour=1), "sec", friendly=True) == "sec.colour: unknown field"
    assert first_error(err(n="abc"), "sec", show_input=True).endswith("(got 'abc')")
    assert first_error(err(name=""), "sec") == "sec.name: must not be empty"  # no "Value error, "
    # a nested registry already named the field: its message is kept as it is
    assert first_error(err(name="sec.name.inner"), "sec") == "sec.name.inner: names its own field"
