"""Entry points of a search: run a config, resume an output directory, and the launch policy that
chooses between them on every rank of a torchrun job.

    run_search(config)            load the experts, build the utility, run the swarm, let the utility
                                  write its own outputs (the Python equivalent of `swarmkern search`)
    resume_search(output_dir)     continue a run from its latest checkpoint (same config, same utility)
    launch_search(config, resume_if_exists=False)   `swarmkern search`: start or resume, one process
                                  or every rank of a torchrun job
    launch_resume(output_dir)     `swarmkern resume`
    run_sweep(config)             `swarmkern sweep`: the searches of the `sweep:` section in lockstep

The config module (swarmkern/config.py) only parses and validates; the process-group transport is
swarmkern/distributed.py. Rank 0 decides (start, resume or refuse) and every rank follows.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from swarmkern.atomic import atomic_write_bytes, atomic_write_json
from swarmkern.config import ConfigError, RunConfig, load_run_config
from swarmkern.provenance import record_run
from swarmkern.distributed import LaunchEnv, TorchDistributedCollective, distributed_session, launch_env

__all__ = ["RUN_CONFIG_NAME", "LAUNCH_JSON", "SELECT_DIR", "save_run_config", "run_search", "resume_search",
           "run_sweep", "launch_search", "launch_resume"]

RUN_CONFIG_NAME = "config.yaml"  # the resolved config, saved in the output dir (read by resume)
LAUNCH_JSON = "launch.json"  # written by rank 0 of a run started under torchrun (auto-resume on restarts)


def save_run_config(config: RunConfig, output_dir: Path) -> Path:
    """The resolved config as YAML in the output dir (what `resume` reads)."""
    import yaml

    path = Path(output_dir) / RUN_CONFIG_NAME
    atomic_write_bytes(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode())
    return path


def run_search(config: RunConfig, *, collective=None):
    """Load the experts, build the utility, run the search, let the utility write its own outputs.
    Returns the SwarmResult."""
    from swarmkern.flat import load_experts
    from swarmkern.swarm import Swarm

    pool = load_experts(config.expert_sources(), names=config.experts.names)
    out = Path(config.output.dir)
    rank0 = collective is None or collective.rank == 0
    plan = _search_plan(config, out, resume=False, rank0=rank0)
    built, select = _built_utilities(plan, pool)
    swarm = Swarm(config.swarm, pool, built.dev, test_utility=built.test, output_dir=out,
                  collective=collective, overwrite=config.output.overwrite)
    if swarm.collective.rank == 0:
        save_run_config(config, out)
    result = swarm.run()
    if swarm.collective.rank == 0:
        _choose_export(swarm, result, plan, select)
        built.finalize(out)
        record_run(out, getattr(result, "summary", None))
    return result


def _search_plan(config: RunConfig, out: Path, *, resume: bool, rank0: bool):
    """The select split of a search (swarm/selection.py), carved once the output dir may be used."""
    from swarmkern.swarm.checkpoint import has_checkpoint
    from swarmkern.swarm.selection import prepare_search
    from swarmkern.utilities.holdout import SelectSplitError

    if not resume and rank0 and has_checkpoint(out) and not config.output.overwrite:
        raise FileExistsError(f"{out}: already holds a run; resume it (swarmkern resume DIR / Swarm.resume) "
                              "or start afresh (--overwrite / overwrite=True)")
    try:
        return prepare_search(config, out, resume=resume, write=rank0)
    except SelectSplitError as err:
        raise ConfigError(f"select: {err}") from None


def _built_utilities(plan, pool):
    from swarmkern.utilities import build_utility

    built = build_utility(plan.search_spec, pool)
    select = build_utility(plan.select_spec, pool).dev if plan.select_spec is not None else None
    return built, select


def _choose_export(swarm, result, plan, select) -> None:
    """The candidates, the guard and the intervals (swarm/selection.py) into the result's summary."""
    from swarmkern.swarm.selection import finish_search

    added = finish_search(swarm, plan, select, swarm.config.seed)
    added.pop("_row")
    result.summary.update(added)
    if "best_path" in added:
        result.best_path = Path(added["best_path"])


def resume_search(output_dir: str | Path, *, collective=None):
    """Continue the run in `output_dir` from its latest checkpoint (same config, same utility)."""
    from swarmkern.flat import ExpertPool, load_experts
    from swarmkern.swarm import Swarm
    from swarmkern.swarm.search import EXPERTS_JSON

    output_dir = Path(output_dir)
    cfg_path = output_dir / RUN_CONFIG_NAME
    if not cfg_path.is_file():
        raise ConfigError(f"{output_dir}: no {RUN_CONFIG_NAME}; is this a swarmkern search output directory?")
    config = load_run_config(cfg_path)
    try:
        pool = load_experts(config.expert_sources(), names=config.experts.names)
    except (OSError, ValueError):  # experts moved: their description is enough to export
        pool = ExpertPool.reload(json.loads((output_dir / EXPERTS_JSON).read_text()))
    rank0 = collective is None or collective.rank == 0
    plan = _search_plan(config, output_dir, resume=True, rank0=rank0)
    built, select = _built_utilities(plan, pool)
    swarm = Swarm.resume(output_dir, built.dev, built.test, collective=collective, pool=pool)
    result = swarm.run()
    if swarm.collective.rank == 0:
        _choose_export(swarm, result, plan, select)
        built.finalize(output_dir)
        record_run(output_dir, getattr(result, "summary", None))
    return result


# -- launch policy under torchrun: start or resume, on every rank -----------------------------------------
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
    sweep.guard, sweep.resamples = config.select.guard, config.select.resamples
    result = sweep.run()
    if rank0:
        built.finalize(out)
        record_run(out, getattr(result, "summary", None))
    return result


def _check_device(config: Any, env: LaunchEnv | None) -> None:
    """An explicit cuda:N would put every local rank on the same GPU."""
    if env is None or env.local_world_size <= 1:
        return
    for where, value in (("swarm.device", config.swarm.device), ("utility.device", config.utility.get("device"))):
        if isinstance(value, str) and re.fullmatch(r"cuda:\d+", value):
            raise ValueError(f"{where}: {value!r} names one GPU but torchrun starts {env.local_world_size} "
                             "processes on this node; use 'cuda' (each process takes cuda:LOCAL_RANK)")


def _comparable(config: Any) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    data["output"].pop("overwrite", None)
    data["swarm"].pop("progress", None)
    return data


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{where} ({b!r} in the run, {a!r} now)"


def _decide(config: Any, resume_if_exists: bool, env: LaunchEnv | None) -> str:
    """'resume' or 'start' (raises FileExistsError / ConfigError): decided on rank 0 only."""
    from swarmkern.swarm.checkpoint import has_checkpoint

    out = Path(config.output.dir)
    if not has_checkpoint(out):
        return "start"
    marker = _read_json(out / LAUNCH_JSON)
    restarted = env is not None and env.restart_count > 0 and marker.get("run_id") == env.run_id
    if not (resume_if_exists or restarted):
        if config.output.overwrite:
            return "start"
        raise FileExistsError(f"{out}: already holds a run; resume it (--resume-if-exists, swarmkern resume DIR) "
                              "or start afresh (--overwrite)")
    check_same_run(config, out)
    return "resume"


def check_same_run(config: Any, out: Path) -> None:
    """ConfigError naming the first field where `config` differs from the run saved in `out` (its
    config.yaml; output.overwrite and swarm.progress aside): only the same run is continued."""
    saved = Path(out) / RUN_CONFIG_NAME
    if saved.is_file():
        diff = _first_difference(_comparable(config), _comparable(load_run_config(saved)))
        if diff:
            raise ConfigError(f"{out}: cannot resume, the config differs from the run's: {diff}; "
                              "start afresh with --overwrite or use the same config")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _agree(collective: TorchDistributedCollective | None, fn) -> Any:
    """Run `fn` on rank 0 and give every rank its result (or raise its exception on every rank)."""
    if collective is None:
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if collective.rank == 0:
        try:
            outcome = ("ok", fn())
        except Exception as err:  # re-raised on every rank below, so that no rank waits for the others
            outcome = ("error", err)
    outcome = collective.broadcast_object(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def launch_search(config: Any, *, resume_if_exists: bool = False) -> Any:
    """Run (or resume) the search of a RunConfig on every rank of a torchrun job, or in this process
    alone outside torchrun. Returns the SwarmResult on rank 0 and None on the other ranks.

    Resumes when the output directory holds a checkpoint and either `resume_if_exists` is set or
    torchrun restarted the workers of a run this torchrun job started (TORCHELASTIC_RESTART_COUNT > 0
    and TORCHELASTIC_RUN_ID equal to the one in output_dir/launch.json); the config must then equal
    the run's own (output.overwrite and swarm.progress aside).
    """

    env = launch_env()
    _check_device(config, env)
    with distributed_session(config.swarm.device) as coll:
        action = _agree(coll, lambda: _decide(config, resume_if_exists, env))
        if action == "resume":
            result = resume_search(config.output.dir, collective=coll)
        else:
            if env is not None and (coll is None or coll.rank == 0):
                out = Path(config.output.dir)
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_json(out / LAUNCH_JSON, {"run_id": env.run_id, "world_size": env.world_size})
            result = run_search(config, collective=coll)
        return result if coll is None or coll.rank == 0 else None


def launch_resume(output_dir: str | Path) -> Any:
    """`swarmkern resume OUTPUT_DIR` on every rank of a torchrun job (any world size: the checkpoint
    is re-sharded) or in this process alone. Returns the SwarmResult on rank 0, None elsewhere."""

    cfg_path = Path(output_dir) / RUN_CONFIG_NAME
    if not cfg_path.is_file():
        raise ConfigError(f"{output_dir}: no {RUN_CONFIG_NAME}; is this a swarmkern search output directory?")
    config = load_run_config(cfg_path)
    _check_device(config, launch_env())
    with distributed_session(config.swarm.device) as coll:
        result = resume_search(output_dir, collective=coll)
        return result if coll is None or coll.rank == 0 else None
