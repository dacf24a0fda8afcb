"""`swarmkern search CONFIG.yaml` and `swarmkern resume OUTPUT_DIR`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .options import config_file_options, overwrite_option


def _report(result) -> None:
    s = result.summary
    origin = s["best_particle_origin"]
    lines = [f"best dev utility {s['best_dev_utility']} (initial best {s['initial_best_dev_utility']}) "
             f"after {s['iterations']} iterations ({s['stop_reason']}), {s['wall_seconds']:.1f} s",
             f"best particle {s['best_particle_index']} started as {origin['kind']} {origin['name']}"]
    if "test_utility" in s:
        lines.append(f"test utility {s['test_utility']}")
    export = s.get("export") or {}
    if export.get("chosen"):
        lines.append(f"exported: {export['chosen']} (chosen on {export['selected_on']})")
    if export.get("message"):
        lines.append(export["message"])
    if s["nonfinite_utilities"]:
        lines.append(f"{s['nonfinite_utilities']} non-finite utilities were counted as the worst possible")
    if result.output_dir is not None:
        lines.append(f"outputs in {result.output_dir} (best: {s.get('best_path')})")
    if s.get("verdict"):
        lines.append(s["verdict"])  # last: the one line a user acts on
    for line in lines:
        click.echo(line)


def _print_result(result, as_json: bool, report=None) -> None:
    """The run's summary as JSON, or a short report (`report(result)`, default: a search's)."""
    if as_json:
        click.echo(json.dumps(result.summary, indent=2))
    else:
        (report or _report)(result)


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)


def _interrupted(output_dir) -> None:
    hint = f"; continue with: swarmkern resume {output_dir}" if output_dir is not None else ""
    click.echo(f"interrupted{hint}", err=True)
    raise SystemExit(130)


@click.command("search")
@config_file_options("swarm.max_iters=5")
@click.option("--seed", type=int, default=None, help="swarm.seed")
@click.option("--max-iters", type=int, default=None, help="swarm.max_iters")
@click.option("--n-particles", type=int, default=None, help="swarm.n_particles")
@click.option("--device", default=None, help="swarm.device (cpu, cuda, cuda:1, ...)")
@click.option("--backend", default=None, help="swarm.backend (kernel backend)")
@overwrite_option("run")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
@click.option("--resume-if-exists", is_flag=True, default=False,
              help="Resume the run in the output directory when it holds a checkpoint (same config), else start. "
                   "Under torchrun --max-restarts, restarted workers resume automatically (docs/DISTRIBUTED.md).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of a short report.")
def search_cmd(config, overrides, output_dir, seed, max_iters, n_particles, device, backend, overwrite,
               no_progress, resume_if_exists, as_json):
    """Run a Model Swarms search described by CONFIG (YAML: experts, swarm, utility, output)."""
    from swarmkern.config import ConfigError, load_run_config
    from swarmkern.distributed import DistributedError
    from swarmkern.runner import launch_search
    from swarmkern.flat import IncompatibleExperts

    cfg = None
    try:
        cfg = load_run_config(config, overrides, output_dir=output_dir, seed=seed, max_iters=max_iters,
                              n_particles=n_particles, device=device, backend=backend, overwrite=overwrite,
                              progress=False if no_progress else None)
        result = launch_search(cfg, resume_if_exists=resume_if_exists)  # torchrun: one rank per process
    except (ConfigError, IncompatibleExperts, FileNotFoundError, FileExistsError, ValueError,
            DistributedError) as err:
        _fail(err)
    except KeyboardInterrupt:
        _interrupted(cfg.output.dir if cfg is not None else None)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return
    _print_result(result, as_json)


@click.command("resume")
@click.argument("output_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of a short report.")
def resume_cmd(output_dir, as_json):
    """Continue a killed search from the last checkpoint in OUTPUT_DIR (ends as if never interrupted)."""
    from swarmkern.config import ConfigError
    from swarmkern.distributed import DistributedError
    from swarmkern.runner import launch_resume

    try:
        result = launch_resume(output_dir)  # under torchrun: any number of processes (re-sharded)
    except (ConfigError, FileNotFoundError, ValueError, DistributedError) as err:
        _fail(err)
    except KeyboardInterrupt:
        _interrupted(output_dir)
    if result is None:
        return
    _print_result(result, as_json)


def register(group: click.Group) -> None:
    group.add_command(search_cmd)
    group.add_command(resume_cmd)
