"""`swarmkern sweep CONFIG.yaml`: the configurations of the config's `sweep:` section, in lockstep."""
from __future__ import annotations

from pathlib import Path

import click

from .options import config_file_options, overwrite_option

from .search import _fail, _interrupted, _print_result


def _report(result) -> None:
    s = result.summary
    w = s["configurations"][s["winner"]]
    fields = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in w["fields"].items())
    click.echo(f"sweep of {s['n_configurations']}: {s['evaluations']} evaluations in {s['utility_calls']} "
               f"utility calls, {s['wall_seconds']:.1f} s")
    line = f"winner #{s['winner']} (chosen on {s['selected_on']}): {fields or 'base config'}; dev {w['best_dev']}"
    if w["select"] is not None:
        line += f", select {w['select']}"
    if w["test"] is not None:
        line += f", test {w['test']}"
    click.echo(line)
    export = s.get("export") or {}
    if export.get("message"):
        click.echo(export["message"])
    if s.get("verdict"):
        click.echo(s["verdict"])
    if result.output_dir is not None:
        click.echo(f"outputs in {result.output_dir}: sweep.json, sweep.md, sweep.png, runs/NNN/ "
                   f"(best: {result.best_path})")


@click.command("sweep")
@config_file_options("sweep.n=16")
@overwrite_option("sweep")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@click.option("--resume-if-exists", is_flag=True, default=False,
              help="Continue the sweep in the output directory when there is one (same config), else start.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json instead of a short report.")
def sweep_cmd(config, overrides, output_dir, overwrite, no_progress, resume_if_exists, as_json):
    """Run the searches of CONFIG's `sweep:` section together (one batched utility call serves all of
    them) and keep the best on dev or on a held-out select split. Under torchrun every process holds a
    block of every swarm's particles."""
    from swarmkern.config import ConfigError, load_run_config
    from swarmkern.runner import check_same_run, run_sweep
    from swarmkern.distributed import DistributedError, distributed_session
    from swarmkern.flat import IncompatibleExperts
    from swarmkern.swarm.sweep import SWEEP_STATE

    cfg = None
    try:
        cfg = load_run_config(config, overrides, output_dir=output_dir, overwrite=overwrite,
                              progress=False if no_progress else None)
        if cfg.sweep is None:
            raise ConfigError(f"{config}: no `sweep:` section (see docs/CONFIG.md); `swarmkern search` runs one search")
        out = Path(cfg.output.dir)
        resume = resume_if_exists and not cfg.output.overwrite and (out / SWEEP_STATE).is_file()
        if resume:
            check_same_run(cfg, out)
        with distributed_session(cfg.swarm.device) as coll:
            result = run_sweep(cfg, collective=coll, resume=resume)
            if coll is not None and coll.rank != 0:
                return
    except (ConfigError, IncompatibleExperts, FileNotFoundError, FileExistsError, ValueError,
            DistributedError) as err:
        _fail(err)
    except KeyboardInterrupt:
        hint = cfg.output.dir if cfg is not None else None
        if hint is not None:
            click.echo(f"interrupted; continue with: swarmkern sweep {config} --resume-if-exists", err=True)
            raise SystemExit(130)
        _interrupted(None)
    _print_result(result, as_json, _report)


def register(group: click.Group) -> None:
    group.add_command(sweep_cmd)
