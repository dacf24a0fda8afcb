"""What a run records about how it was made, beside its results in summary.json: the command line that
started it (when it came from the `swarmkern` CLI), the swarmkern version, and every Hugging Face Hub id
it resolved with the commit it resolved to (swarmkern/hub.py), so a run can be redone exactly and an
exported model card can say where it came from."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from swarmkern.atomic import atomic_write_json

__all__ = ["set_command", "command", "record_run"]

_COMMAND: list[str] | None = None


def set_command(argv: Sequence[str]) -> None:
    """Remember the CLI's arguments (called by `swarmkern`'s entry point; argv without the program)."""
    global _COMMAND
    _COMMAND = ["swarmkern", *argv]


def command() -> str | None:
    return shlex.join(_COMMAND) if _COMMAND else None


def record_run(output_dir: str | Path, summary: dict[str, Any] | None) -> None:
    """Add `hub_ids`, `command` and `swarmkern_version` to a run's summary.json (and to `summary`, the
    in-memory copy) when there is something to add. Written atomically."""
    from swarmkern import __version__
    from swarmkern.hub import resolved_ids

    path = Path(output_dir) / "summary.json"
    if summary is None or not path.is_file():
        return
    extra: dict[str, Any] = {"swarmkern_version": __version__}
    if resolved_ids():
        extra["hub_ids"] = resolved_ids()
    if command():
        extra["command"] = command()
    summary.update(extra)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    atomic_write_json(path, {**saved, **extra}, indent=2)
