"""The `swarmkern` command line: a click group; each subcommand lives in swarmkern/commands/<name>.py
and exposes `register(group)`, so adding a command touches one file."""
from __future__ import annotations

import importlib
import importlib.util

import click

_COMMAND_MODULES = ("search", "sweep", "compare", "export", "demo", "bench", "info")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swarmkern")
def main() -> None:
    """swarmkern: adapt pools of LLM experts with Model Swarms (fused kernels, batched evaluation)."""
    import sys

    from swarmkern.provenance import set_command

    set_command(sys.argv[1:])  # summary.json records the command (swarmkern/provenance.py)


for _name in _COMMAND_MODULES:
    _module = f"swarmkern.commands.{_name}"
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module).register(main)
