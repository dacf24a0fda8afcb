"""What every reader of a user-written file shares (run and compare configs, utility and merge-method
specs, dataset lines): the one-line message of a pydantic ValidationError, and the resolution of
relative paths against the directory of the file that names them.

Torch-free and cheap to import: data.py and the registries use it as well as the shell (config.py,
compare.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

__all__ = ["first_error", "resolve_path", "resolve_path_fields"]

_VALUE_ERROR = "Value error, "


def first_error(err: ValidationError, field_prefix: str = "", *, friendly: bool = False,
                show_input: bool = False) -> str:
    """The first error of `err` as one line, "<field>: <problem>".

    field_prefix: prepended to pydantic's location ("utility" -> "utility.dev"); an error without a
    location is just "<problem>". A ValueError raised by a validator loses pydantic's "Value error, "
    prefix; when its text already starts with the field's name (a nested registry named it) it is
    returned as it is. friendly: "unknown field" / "missing required field" instead of pydantic's
    wording. show_input: append " (got <value>)" for a scalar input that failed a type or value check.
    """
    first = err.errors()[0]
    field = ".".join(str(p) for p in (field_prefix, *first["loc"]) if str(p))
    kind = first["type"]
    msg = first["msg"].removeprefix(_VALUE_ERROR)
    if kind.startswith("value_error") and field and (msg.startswith(field + ".") or msg.startswith(field + ":")):
        return msg
    if friendly and kind == "extra_forbidden":
        msg = "unknown field"
    elif friendly and kind == "missing":
        msg = "missing required field"
    elif show_input and not isinstance(first.get("input"), (dict, list)):
        msg += f" (got {first.get('input')!r})"
    return f"{field}: {msg}" if field else msg


def resolve_path(value: Any, base: str | Path) -> Any:
    """A path string made absolute against `base` (after ~ expansion); anything else (None, "",
    numbers, mappings) unchanged."""
    if not isinstance(value, str) or not value:
        return value
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else str(Path(base) / value)


def resolve_path_fields(mapping: dict[str, Any], fields: Iterable[str], base: str | Path) -> dict[str, Any]:
    """A copy of `mapping` with resolve_path applied to the given fields (lists of paths item by item)."""
    out = dict(mapping)
    for key in fields:
        if key not in out:
            continue
        value = out[key]
        out[key] = [resolve_path(v, base) for v in value] if isinstance(value, list) else resolve_path(value, base)
    return out
