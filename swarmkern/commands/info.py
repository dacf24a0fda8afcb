"""`swarmkern info`: versions, devices, and which kernel backend is used for what, and why."""
from __future__ import annotations

import platform

import click


@click.command("info")
def info_cmd() -> None:
    """Show versions, devices, what compute dtype `auto` picks, and the kernel backends (with reasons)."""
    import torch

    from swarmkern import ops

    try:
        from importlib.metadata import version

        sk_version = version("swarmkern")
    except Exception:
        sk_version = "unknown (not installed)"
    click.echo(f"swarmkern {sk_version}; python {platform.python_version()}; torch {torch.__version__} "
               f"(CUDA {torch.version.cuda or 'none'}); {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        click.echo(f"GPUs: {names}")
    else:
        click.echo("GPUs: none visible")
    from swarmkern.evaluate.precision import resolve_compute_dtype

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        choice = resolve_compute_dtype("auto", device)
        click.echo(f"compute dtype auto on {device}: {choice.name} ({choice.reason})")
    click.echo("kernel backends:")
    click.echo(ops.backend_summary())


def register(group: click.Group) -> None:
    group.add_command(info_cmd)
