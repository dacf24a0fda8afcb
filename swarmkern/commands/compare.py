"""`swarmkern compare CONFIG.yaml`: the swarm and the composition baselines side by side."""
from __future__ import annotations


import click

from .options import config_file_options, overwrite_option


@click.command("compare")
@config_file_options("compare.budget=50", config_required=False)
@click.option("--seed", type=int, default=None, help="swarm.seed (also the baselines' seed unless compare.seed)")
@click.option("--max-iters", type=int, default=None, help="swarm.max_iters")
@click.option("--methods", default=None, help="Comma-separated method names (replaces compare.methods).")
@click.option("--no-swarm", is_flag=True, default=False, help="Run only the baselines (compare.swarm=false).")
@overwrite_option("compare run")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the swarm's progress bar.")
@click.option("--list-methods", is_flag=True, default=False, help="List the available methods and exit.")
def compare_cmd(config, overrides, output_dir, seed, max_iters, methods, no_swarm, overwrite, no_progress,
                list_methods):
    """Run the swarm and every composition baseline on the same experts and utility (CONFIG: the search
    YAML plus a `compare:` section); write compare.json, compare.md and compare.png; print the table."""
    from swarmkern.compare import load_compare_config, run_compare
    from swarmkern.config import ConfigError
    from swarmkern.flat import IncompatibleExperts

    if list_methods:
        from swarmkern.merge import available_methods
        click.echo("\n".join(available_methods()))
        return
    if config is None:
        raise click.UsageError("missing argument CONFIG (a search YAML with a compare: section)")
    extra = list(overrides)
    if methods:
        extra.append("compare.methods=[" + ",".join(m.strip() for m in methods.split(",") if m.strip()) + "]")
    if no_swarm:
        extra.append("compare.swarm=false")
    try:
        cfg = load_compare_config(config, extra, output_dir=output_dir, seed=seed, max_iters=max_iters,
                                  overwrite=overwrite, progress=False if no_progress else None)
        run_compare(cfg, echo=click.echo)
    except (ConfigError, IncompatibleExperts, FileNotFoundError, FileExistsError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)


def register(group: click.Group) -> None:
    group.add_command(compare_cmd)
