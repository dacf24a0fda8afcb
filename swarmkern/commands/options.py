"""Options shared by the commands that read a config file (search, sweep, compare)."""
from __future__ import annotations

from pathlib import Path

import click


def config_file_options(set_example: str, *, config_required: bool = True):
    """CONFIG (the YAML file), --set KEY=VALUE (repeatable) and -o/--output DIR, in that order."""
    def decorate(fn):
        fn = click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), default=None,
                          help="Output directory (output.dir).")(fn)
        fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help=f"Override a config field, e.g. --set {set_example} (repeatable; value parsed as "
                               "YAML).")(fn)
        return click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=config_required)(fn)
    return decorate


def overwrite_option(what: str):
    return click.option("--overwrite", is_flag=True, default=None,
                        help=f"Replace a previous {what} in the output directory.")
