"""The `swarmkern` command line: a click group; each subcommand lives in swarmkern/commands/<name>.py
and exposes `register(group)`, so adding a command touches one file."""
from __future__ import annotations

import importlib
import importlib.util

import click

_COMMAND_MODULES = ("search", "sweep", "compare", "export", "demo", "bench", "info")


class _RecordingGroup(click.Group):
    """The group, remembering the arguments it was called with (summary.json records the command,
    swarmkern/provenance.py): the arguments given to `main(args)` (e.g. click's CliRunner), else sys.argv."""

    def main(self, args=None, *rest, **kwargs):
        import sys

        from swarmkern.provenance import set_command

        set_command(list(args) if args is not None else sys.argv[1:])
        return super().main(args, *rest, **kwargs)


@click.group(cls=_RecordingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swarmkern")
def main() -> None:
    """swarmkern: adapt pools of LLM experts with Model Swarms (fused kernels, batched evaluation)."""


for _name in _COMMAND_MODULES:
    _module = f"swarmkern.commands.{_name}"
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module).register(main)
