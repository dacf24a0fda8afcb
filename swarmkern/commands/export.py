"""`swarmkern export RUN_DIR --merged OUT / --adapter OUT`: a run's best, ready to serve or upload."""
from __future__ import annotations

import re
from pathlib import Path

import click

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"5GB" / "500MB" / "2GiB" / "1048576" -> bytes (powers of 1000 for kB..TB, of 1024 with an i)."""
    m = _SIZE.match(text)
    if m is None:
        raise click.BadParameter(f"{text!r}: expected a size such as 5GB, 500MB or 2GiB")
    number, unit, suffix = float(m[1]), m[2].upper(), (m[3] or "")
    base = 1024 if suffix.lower() == "ib" else 1000
    return int(number * base ** " KMGT".index(unit or " "))


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--merged", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the base model with the run's best merged in (a transformers directory; no PEFT needed).")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the run's best PEFT adapter, its config naming the real base model.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Stored dtype of the merged weights (auto: the base model's).")
@click.option("--base-model", default=None,
              help="Base model (Hub id org/name[@revision] or directory) when the run does not name it.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard written.")
@click.option("--no-verify", is_flag=True, default=False,
              help="Skip the check that the merged model's logits equal the unmerged model's.")
@click.option("--name", default=None, help="Title of the model card (default: 'Model Swarms expert').")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing output directory.")
@click.option("--no-progress", is_flag=True, default=False, help="Hide the progress bar.")
def export_cmd(run_dir, merged, adapter, dtype, base_model, max_shard_size, no_verify, name, overwrite, no_progress):
    """Export the best of the run in RUN_DIR (a search, sweep or compare output directory), each with a
    README.md model card: --merged OUT (checked against the unmerged model's logits as it is written)
    and/or --adapter OUT."""
    from swarmkern.data import DataError
    from swarmkern.export import ExportError, export_run
    from swarmkern.hub import HubError

    try:
        result = export_run(run_dir, merged=merged, adapter=adapter, dtype=dtype, base_model=base_model,
                            max_shard_bytes=parse_size(max_shard_size), verify=not no_verify, overwrite=overwrite,
                            name=name, progress=not no_progress)
    except (ExportError, HubError, DataError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err).splitlines()[0] if str(err) else type(err).__name__)
    if "adapter" in result:
        click.echo(f"adapter: {result['adapter']} (adapter_config.json, adapter_model.safetensors, README.md)")
    if "merged" in result:
        check = result.get("check")
        note = (f"; logits checked on {check['prompts']} prompts: max difference {check['max_abs_diff']:.3g} "
                f"(tolerance {check['tolerance']:g} relative, {check['dtype']})") if check else "; not checked"
        click.echo(f"merged model: {result['merged']}{note}")


def register(group: click.Group) -> None:
    group.add_command(export_cmd)
