"""The run config: one YAML file with four sections (see docs/CONFIG.md for a complete example).

    experts:  {paths: [...] | glob: "...", names: [...]}     which experts start the swarm
    swarm:    SwarmConfig fields                              the search's hyperparameters
    utility:  {type: ..., ...}                                the objective (swarmkern.utilities registry)
    output:   {dir: ..., overwrite: false}                     where results go
    sweep:    SweepSection fields (optional)                  `swarmkern sweep`: S searches in lockstep
    select:   SelectSection fields (optional)                 how the export is chosen (held-out split, guard)

Relative paths are relative to the YAML file. Unknown or ill-typed fields raise ConfigError with a
one-line message naming the file and the field. `overrides` ("swarm.max_iters=5") replace fields
before validation, so they are checked the same way. This module only reads, resolves and validates;
running and resuming a search is swarmkern/runner.py.
"""
from __future__ import annotations

import glob as globlib
import os
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swarmkern.configfile import first_error, resolve_path_fields
from swarmkern.swarm.config import SwarmConfig
from swarmkern.swarm.sweep import SweepSpace

class ConfigError(ValueError):
    """A bad run config; the message is one line naming the file and field."""


class ExpertsSection(BaseModel):
    """The starting experts: PEFT adapter dirs, .safetensors files or dirs of .safetensors shards."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    paths: list[str] = Field(default_factory=list, description="Expert sources, in order.")
    glob: str | None = Field(None, description="A glob pattern (sorted) adding sources after `paths`.")
    names: list[str] | None = Field(None, description="Display names (default: the file/dir names).")


class OutputSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dir: str = Field(..., description="Output directory (checkpoints, history.jsonl, summary.json, best expert, plot).")
    overwrite: bool = Field(False, description="Start afresh even if the directory holds a run.")


class SweepSection(SweepSpace):
    """`swarmkern sweep`: the configurations (SweepSpace: a grid or random draws varying `swarm:` fields)
    and how the winner is chosen: on dev (the searches' own utility) or on a `select` split carved
    from dev (seeded) that the searches never see."""
    select: Literal["dev", "split"] = Field("dev", description=(
        "dev: the best final dev utility wins; split: hold out a part of dev, search on the rest, and "
        "the best utility on the held-out part wins."))
    select_fraction: float = Field(0.3, gt=0, lt=1, description="split: the fraction of dev held out.")
    select_size: int | None = Field(None, ge=1, description="split: the number of dev examples held out (overrides the fraction).")
    select_seed: int = Field(0, ge=0, lt=2 ** 64, description="split: key of the draw that picks the held-out examples.")

    @model_validator(mode="after")
    def _select_options(self) -> "SweepSection":
        if self.select == "dev" and self.select_size is not None:
            raise ValueError("select_size: only used with select: split")
        return self


class SelectSection(BaseModel):
    """How the exported expert is chosen (swarm/selection.py, docs/STATISTICS.md): on a `split` held out
    from dev (seeded; the search runs on the rest) among the global best, the top-k personal bests,
    their average and the best starting expert, or on `dev` as in the paper (the global best). `select:
    dev` / `select: split` is short for `select: {mode: ...}`."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["auto", "split", "dev"] = Field("auto", description=(
        "auto: split when the utility reads its dev examples from a JSONL file, else dev; split: hold out a "
        "part of dev and choose the export on it; dev: the paper's rule (the global best on dev)."))
    fraction: float = Field(0.3, gt=0, lt=1, description="split: the fraction of dev held out.")
    size: int | None = Field(None, ge=1, description="split: the number of dev examples held out (overrides fraction).")
    seed: int = Field(0, ge=0, lt=2 ** 64, description="split: key of the draw that picks the held-out examples.")
    top_k: int = Field(3, ge=1, description="Personal bests among the candidates (and averaged into pbest_soup).")
    guard: bool = Field(True, description=(
        "Export the best starting expert unless a candidate beats it on the held-out split (search and "
        "sweep winner); false: export the best candidate even when it is worse."))
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples of every paired interval.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data


class RunConfig(BaseModel):
    """A whole search: experts, swarm hyperparameters, utility, output (and, for `swarmkern sweep`, sweep)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    experts: ExpertsSection
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    utility: dict[str, Any]
    output: OutputSection
    sweep: SweepSection | None = Field(None, description="The configurations of `swarmkern sweep` (ignored by search).")
    select: SelectSection = Field(default_factory=SelectSection, description="How the export is chosen.")

    @field_validator("utility")
    @classmethod
    def _check_utility(cls, spec: dict[str, Any]) -> dict[str, Any]:
        from swarmkern.utilities import parse_utility_config

        parse_utility_config(spec)  # raises "utility.<field>: ..." on a bad field
        return spec

    def expert_sources(self) -> list[str]:
        """`paths` (local paths or Hub ids, which load_experts resolves: swarmkern/hub.py), then the
        `glob` matches (local files only)."""
        sources = list(self.experts.paths)
        if self.experts.glob:
            matched = sorted(globlib.glob(self.experts.glob))
            if not matched:
                raise ConfigError(f"experts.glob: {self.experts.glob!r} matches nothing")
            sources += matched
        if not sources:
            raise ConfigError("experts: give `paths` or `glob`")
        return sources


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """"swarm.max_iters=5" -> ("swarm.max_iters", 5); the value is parsed as YAML."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. swarm.max_iters=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse {raw!r} ({str(err).splitlines()[0]})") from None
    return key.strip(), value


# Fields holding file or directory paths, per section of a config file (resolved against its directory).
UTILITY_PATH_FIELDS = ("model", "tokenizer", "dev", "test", "reward_model", "reward_tokenizer", "judge",
                       "judge_tokenizer", "include_path")
METHOD_PATH_FIELDS = ("dev", "test", "model")  # options of compare methods (e.g. an ensemble's files)
# Of those, the fields that may also name a Hub id (org/name[@revision]): kept as they are unless a path
# of that name exists next to the config file (swarmkern/hub.py resolves them when they are loaded).
MODEL_FIELDS = ("model", "tokenizer", "reward_model", "reward_tokenizer", "judge", "judge_tokenizer", "paths",
                "dataset")


def _resolve_fields(mapping: dict[str, Any], fields: Sequence[str], base: str | Path) -> dict[str, Any]:
    """resolve_path_fields, leaving Hub ids of the MODEL_FIELDS alone."""
    from swarmkern.hub import keep_hub_id

    out = resolve_path_fields(mapping, fields, base)
    for key in fields:
        if key not in MODEL_FIELDS or key not in mapping:
            continue
        value = mapping[key]
        if isinstance(value, list):
            out[key] = [v if keep_hub_id(v, base) else r for v, r in zip(value, out[key])]
        elif keep_hub_id(value, base):
            out[key] = value
    return out


def resolve_utility_paths(spec: Any, base: str | Path) -> Any:
    """A copy of a utility spec with its path fields made absolute against `base`; multitask specs
    are resolved task by task. Other fields (and non-mappings) are untouched."""
    if not isinstance(spec, dict):
        return spec
    out = _resolve_fields(spec, UTILITY_PATH_FIELDS, base)
    for split in ("dev", "test"):  # a data source mapping: its local file or dataset directory
        source = out.get(split)
        if isinstance(source, dict):
            out[split] = _resolve_fields(source, ("path", "dataset"), base)
    if isinstance(out.get("tasks"), dict):
        out["tasks"] = {k: resolve_utility_paths(t, base) for k, t in out["tasks"].items()}
    return out


def resolve_config_paths(data: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a config file (run, compare) absolute against its directory `base`,
    in place: experts.paths / glob, utility files (every task's), output.dir, compare.methods options."""
    for section, fields in (("experts", ("paths", "glob")), ("output", ("dir",))):
        if isinstance(data.get(section), dict):
            data[section] = _resolve_fields(data[section], fields, base)
    if isinstance(data.get("utility"), dict):
        data["utility"] = resolve_utility_paths(data["utility"], base)
    compare = data.get("compare")
    if isinstance(compare, dict) and isinstance(compare.get("methods"), list):
        compare["methods"] = [_resolve_fields(m, METHOD_PATH_FIELDS, base) if isinstance(m, dict) else m
                              for m in compare["methods"]]


def validate_run_config(data: Any, where: str = "config") -> RunConfig:
    """A parsed YAML mapping -> RunConfig, or ConfigError("<where>: <field>: <problem>")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sections experts, swarm, utility, output")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {first_error(err, friendly=True, show_input=True)}") from None
    except ValueError as err:  # raised by a nested validator outside pydantic's error list
        raise ConfigError(f"{where}: {err}") from None


def read_config_mapping(path: str | Path, overrides: Sequence[str] = (), sections: str = "experts, swarm, utility, output",
                        **options: Any) -> dict[str, Any]:
    """Read a YAML config file and apply overrides ("section.field=value" strings) and options
    (`output_dir`, `overwrite`, or any SwarmConfig field; None = keep the file's). Paths are not resolved
    and nothing is validated yet; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {sections}")
    for item in overrides:
        key, value = parse_override(item)
        _set_path(data, key, value)
    for key, value in options.items():
        if value is None:
            continue
        if key == "output_dir":
            _set_path(data, "output.dir", os.path.abspath(value))
        elif key == "overwrite":
            _set_path(data, "output.overwrite", value)
        elif key in SwarmConfig.model_fields:
            _set_path(data, f"swarm.{key}", value)
        else:
            raise ConfigError(f"unknown option {key!r}")
    return data


def load_run_config(path: str | Path, overrides: Sequence[str] = (), **options: Any) -> RunConfig:
    """Read, override and validate a run config. overrides: "section.field=value" strings;
    options: `output_dir`, `seed`, `max_iters`, ... set their fields (None = keep the file's)."""
    path = Path(path)
    data = read_config_mapping(path, overrides, **options)
    resolve_config_paths(data, path.parent.absolute())
    return validate_run_config(data, str(path))
