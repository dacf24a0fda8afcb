"""`swarmkern bench`: a quick kernel benchmark table (each backend vs a copy measured in the same run)."""
from __future__ import annotations

import click


def _parse_size(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number (e.g. 2e6)") from None
    if value < 1 or value != int(value):
        raise click.BadParameter(f"{text!r} must be a positive integer")
    return int(value)


@click.command("bench")
@click.option("-P", "particles", type=click.IntRange(min=1), default=10, show_default=True, help="Particles.")
@click.option("-D", "dims", default="2e6", show_default=True, help="Elements per particle (e.g. 8e6).")
@click.option("--dtype", "dtypes", default="fp32,bf16", show_default=True, help="Comma-separated: fp32, bf16, fp16.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when visible, else cpu).")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True, help="Timed calls per variant.")
@click.option("--compile", "compiled", is_flag=True, default=False,
              help="Also time torch.compile(reference) (compiling takes ~15 s per dtype on a CPU).")
@click.option("--no-combine", is_flag=True, default=False, help="Skip the combine table.")
def bench_cmd(particles, dims, dtypes, device, rounds, compiled, no_combine) -> None:
    """Time pso_step_ (and combine) on every available backend against the eager reference and a copy of
    the same data, and print a markdown table of modelled GB/s (docs/KERNELS.md)."""
    import torch

    from swarmkern import ops
    from swarmkern.ops import _bench

    D = _parse_size(dims)
    names = [d.strip() for d in dtypes.split(",") if d.strip()]
    unknown = [d for d in names if d not in _bench.DTYPES]
    if unknown or not names:
        raise click.BadParameter(f"unknown dtype(s) {unknown}; choose from {', '.join(_bench.DTYPES)}",
                                 param_hint="--dtype")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA GPU is visible", param_hint="--device")
    backends = [b for b in ops.available_backends(dev) if b != "reference"]
    click.echo(f"device {dev}; backends {', '.join(backends) or 'none compiled'} (see `swarmkern info`)",
               err=True)
    rows = []
    for name in names:
        rows += _bench.pso_rows(particles, D, name, dev, backends, rounds, compiled=compiled)
        if not no_combine:
            rows += _bench.combine_rows(particles, particles, D, name, dev, backends, rounds)
    click.echo(_bench.markdown(rows))


def register(group: click.Group) -> None:
    group.add_command(bench_cmd)
