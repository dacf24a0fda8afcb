"""The run config: one YAML file with four sections (see docs/CONFIG.md for a complete example).

    experts:  {paths: [...] | glob: "...", names: [...]}     which experts start the swarm
    swarm:    SwarmConfig fields                              the search's hyperparameters
    utility:  {type: ..., ...}                                the objective (swarmkern.utilities registry)
    output:   {dir: ..., overwrite: false, plot: true}        where results go
    sweep:    SweepSection fields (optional)                  `swarmkern sweep`: S searches in lockstep

Relative paths are relative to the YAML file. Unknown or ill-typed fields raise ConfigError with a
one-line message naming the file and the field. `overrides` ("swarm.max_iters=5") replace fields
before validation, so they are checked the same way.
"""
from __future__ import annotations

import glob as globlib
import os
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swarmkern.swarm.config import SwarmConfig
from swarmkern.swarm.sweep import SweepSpace

RUN_CONFIG_NAME = "config.yaml"  # the resolved config, saved in the output dir (read by resume)


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


class RunConfig(BaseModel):
    """A whole search: experts, swarm hyperparameters, utility, output (and, for `swarmkern sweep`, sweep)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    experts: ExpertsSection
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    utility: dict[str, Any]
    output: OutputSection
    sweep: SweepSection | None = Field(None, description="The configurations of `swarmkern sweep` (ignored by search).")

    @field_validator("utility")
    @classmethod
    def _check_utility(cls, spec: dict[str, Any]) -> dict[str, Any]:
        from swarmkern.utilities import parse_utility_config

        parse_utility_config(spec)  # raises "utility.<field>: ..." on a bad field
        return spec

    def expert_sources(self) -> list[str]:
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


def resolve_config_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths absolute against the config file's directory."""
    experts = data.get("experts")
    if isinstance(experts, dict):
        if isinstance(experts.get("paths"), list):
            experts["paths"] = [str(base / p) if isinstance(p, str) and not os.path.isabs(os.path.expanduser(p))
                                else os.path.expanduser(p) if isinstance(p, str) else p for p in experts["paths"]]
        g = experts.get("glob")
        if isinstance(g, str) and not os.path.isabs(os.path.expanduser(g)):
            experts["glob"] = str(base / g)
    if isinstance(data.get("utility"), dict):
        from swarmkern.utilities.common import resolve_utility_paths  # light: no transformers import

        data["utility"] = resolve_utility_paths(data["utility"], base)
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("dir"), str):
        d = os.path.expanduser(output["dir"])
        output["dir"] = d if os.path.isabs(d) else str(base / d)


def validate_run_config(data: Any, where: str = "config") -> RunConfig:
    """A parsed YAML mapping -> RunConfig, or ConfigError("<where>: <field>: <problem>")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sections experts, swarm, utility, output")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown field"
        elif first["type"] == "missing":
            msg = "missing required field"
        elif first["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if loc == "utility":  # the registry's message already names the field
                raise ConfigError(f"{where}: {msg}") from None
        given = first.get("input")
        extra = f" (got {given!r})" if first["type"] not in ("extra_forbidden", "missing") and \
            not isinstance(given, (dict, list)) and loc != "utility" else ""
        raise ConfigError(f"{where}: {loc or 'config'}: {msg}{extra}") from None
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


def save_run_config(config: RunConfig, output_dir: Path) -> Path:
    """The resolved config as YAML in the output dir (what `resume` reads)."""
    import yaml

    from swarmkern.swarm.checkpoint import atomic_write_bytes

    path = Path(output_dir) / RUN_CONFIG_NAME
    atomic_write_bytes(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode())
    return path


def run_search(config: RunConfig, *, collective=None):
    """Load the experts, build the utility, run the search, let the utility write its own outputs.
    Returns the SwarmResult."""
    from swarmkern.flat import load_experts
    from swarmkern.swarm import Swarm
    from swarmkern.utilities import build_utility

    pool = load_experts(config.expert_sources(), names=config.experts.names)
    built = build_utility(config.utility, pool)
    out = Path(config.output.dir)
    swarm = Swarm(config.swarm, pool, built.dev, test_utility=built.test, output_dir=out,
                  collective=collective, overwrite=config.output.overwrite)
    if swarm.collective.rank == 0:
        save_run_config(config, out)
    result = swarm.run()
    if swarm.collective.rank == 0:
        built.finalize(out)
    return result


def resume_search(output_dir: str | Path, *, collective=None):
    """Continue the run in `output_dir` from its latest checkpoint (same config, same utility)."""
    from swarmkern.flat import ExpertPool, load_experts
    from swarmkern.swarm import Swarm
    from swarmkern.swarm.search import EXPERTS_JSON
    from swarmkern.utilities import build_utility

    import json

    output_dir = Path(output_dir)
    cfg_path = output_dir / RUN_CONFIG_NAME
    if not cfg_path.is_file():
        raise ConfigError(f"{output_dir}: no {RUN_CONFIG_NAME}; is this a swarmkern search output directory?")
    config = load_run_config(cfg_path)
    try:
        pool = load_experts(config.expert_sources(), names=config.experts.names)
    except (OSError, ValueError):  # experts moved: their description is enough to export
        pool = ExpertPool.from_description(json.loads((output_dir / EXPERTS_JSON).read_text()))
    built = build_utility(config.utility, pool)
    swarm = Swarm.resume(output_dir, built.dev, built.test, collective=collective, pool=pool)
    result = swarm.run()
    if swarm.collective.rank == 0:
        built.finalize(output_dir)
    return result


SELECT_DIR = "select"  # a sweep's carved select split: search.jsonl, select.jsonl (see utilities/holdout.py)


def _sweep_utilities(config: RunConfig, pool, out: Path):
    """(built utility of the searches, select scorer or None, select info or None) of a sweep."""
    from swarmkern.utilities import build_utility

    sweep = config.sweep
    if sweep.select == "dev":
        return build_utility(config.utility, pool), None, None
    from swarmkern.utilities.holdout import carve_select

    search_spec, select_spec, info = carve_select(config.utility, out / SELECT_DIR, fraction=sweep.select_fraction,
                                                  size=sweep.select_size, seed=sweep.select_seed)
    return build_utility(search_spec, pool), build_utility(select_spec, pool).dev, info


def run_sweep(config: RunConfig, *, collective=None, resume: bool = False):
    """Run (or, with resume, continue) the sweep of a RunConfig: every configuration of `config.sweep`
    applied to `config.swarm`, in lockstep; returns the SweepResult."""
    from swarmkern.flat import load_experts
    from swarmkern.swarm.checkpoint import atomic_write_json
    from swarmkern.swarm.sweep import Sweep

    if config.sweep is None:
        raise ConfigError("sweep: the config has no `sweep:` section (see docs/CONFIG.md)")
    out = Path(config.output.dir)
    try:
        configs = config.sweep.expand(config.swarm)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    pool = load_experts(config.expert_sources(), names=config.experts.names)
    built, select, info = _sweep_utilities(config, pool, out)
    rank0 = collective is None or collective.rank == 0
    if resume:
        sweep = Sweep.resume(out, built.dev, test_utility=built.test, select_utility=select, collective=collective,
                             pool=pool, progress=config.swarm.progress)
    else:
        sweep = Sweep(configs, pool, built.dev, test_utility=built.test, select_utility=select, output_dir=out,
                      collective=collective, overwrite=config.output.overwrite, batch_size=config.swarm.batch_size,
                      progress=config.swarm.progress)
        if rank0:
            save_run_config(config, out)
            if info is not None:
                atomic_write_json(out / SELECT_DIR / "split.json", info, indent=1)
    result = sweep.run()
    if rank0:
        built.finalize(out)
    return result
