"""Where a utility's `dev` / `test` examples come from, made into the one format the utilities read:
JSONL rows with the fields of their schema (swarmkern/data.py).

A source is either a string, a local file (.jsonl, .json, .csv, .parquet), or a mapping:

    dev: {dataset: cais/mmlu, config: abstract_algebra, split: validation,
          fields: {question: question, choices: choices, answer: answer}}
    dev: {path: data/quiz.csv, fields: {choices: [A, B, C, D], answer: correct}, answer_format: letter}

`dataset` is a Hugging Face dataset (`org/name[@revision]`; the local Hub cache is used first, then
`datasets` downloads it with its own progress bars) or a local directory (one written by
`Dataset.save_to_disk`, or a folder of data files). `fields` maps each field the utility reads (question,
choices, answer, prompt, id) to a column; a dotted name reaches into nested columns (`choices.text`) and
a list of names makes a list of columns (MMLU-style CSV choices). An answer may be a choice's index or
its text (or, with answer_format: letter, its letter).

`materialize(source, where)` returns the path of a JSONL file with those rows: a plain .jsonl path as it
is; anything else is converted once into swarmkern's cache ($SWARMKERN_CACHE or ~/.cache/swarmkern,
under data/, named by a digest of the source, so the same source always gives the same file). Example
ids and `select` splits are then the same for every source: the row's `id` field, else its 1-based row
number.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmkern.atomic import atomic_write_text
from swarmkern.configfile import first_error
from swarmkern.data import DataError

__all__ = ["DataSource", "parse_source", "materialize", "read_rows", "FILE_SUFFIXES"]

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TARGET_FIELDS = ("question", "choices", "answer", "prompt", "id")


class DataSource(BaseModel):
    """One split of examples: a local file (`path`) or a dataset (`dataset`, with `config` and `split`),
    and how its columns become the utility's fields."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str | None = Field(None, description="a local .jsonl, .json (a list of objects), .csv or .parquet file")
    dataset: str | None = Field(None, description="a Hub dataset id org/name[@revision], or a local dataset directory")
    config: str | None = Field(None, description="the dataset's configuration (subset) name")
    split: str | None = Field(None, description="the dataset's split (train, validation, test, ...)")
    fields: dict[str, str | list[str]] = Field(default_factory=dict, description=(
        "utility field -> column: question, choices, answer, prompt, id; a dotted column reaches into nested "
        "values, a list of columns makes a list (choices)"))
    answer_format: Literal["auto", "index", "text", "letter"] = Field("auto", description=(
        "multiple choice answers: auto (an integer is an index, a string one of the choices' texts), index, "
        "text, or letter (A = the first choice)"))

    @model_validator(mode="after")
    def _one_source(self) -> "DataSource":
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of path (a local file) or dataset (a Hub or local dataset)")
        if self.dataset is not None and self.split is None:
            raise ValueError("split: required with dataset (e.g. validation)")
        if self.path is not None and (self.config or self.split):
            raise ValueError("config / split: only with dataset")
        for key in self.fields:
            if key not in TARGET_FIELDS:
                raise ValueError(f"fields.{key}: unknown field; known: {', '.join(TARGET_FIELDS)}")
        return self

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        parts = [self.dataset] + [f"{k} {v}" for k, v in (("config", self.config), ("split", self.split)) if v]
        return ", ".join(parts)


def parse_source(value: Any, where: str) -> DataSource:
    """A `dev`/`test` value (a path string or a mapping) -> DataSource; DataError naming `where` otherwise."""
    if isinstance(value, DataSource):
        return value
    if isinstance(value, (str, os.PathLike)):
        return DataSource(path=os.fspath(value))
    try:
        return DataSource.model_validate(value)
    except ValidationError as err:
        raise DataError(f"{where}: {first_error(err, friendly=True)}") from None


def cache_dir() -> Path:
    env = os.environ.get("SWARMKERN_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "swarmkern") / "data"


# -- reading -------------------------------------------------------------------------------------------
def _read_file(path: Path, where: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{where}: {path}: dataset file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{no}: invalid JSON ({err.msg} at column {err.colno})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict):  # {"data": [...]}: the one list-valued key
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow's errors have no common base class
            raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    raise DataError(f"{where}: {path}: unknown file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _datasets_error(src: DataSource, where: str, err: BaseException, hub_cache: Path) -> DataError:
    from swarmkern.hub import hub_offline, parse_hub_id

    ref = parse_hub_id(src.dataset or "")
    what = (f"{where}: dataset {ref.repo_id if ref else src.dataset} (config {src.config or 'default'}, split "
            f"{src.split}, revision {(ref.revision if ref else None) or 'main'})")
    if hub_offline():
        return DataError(f"{what} is not in the Hugging Face cache {hub_cache} and HF_HUB_OFFLINE is set "
                         "(load it once online, or give a local file)")
    text = str(err).strip().splitlines()
    return DataError(f"{what}: cannot load ({type(err).__name__}: {text[0] if text else ''})")


def _read_dataset(src: DataSource, where: str) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, commit of the Hub snapshot or None for a local dataset)."""
    import datasets

    from swarmkern.hub import cached_snapshot, hub_cache_dir, parse_hub_id, record_resolved

    local = Path(src.dataset).expanduser()
    if local.exists():
        if (local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if src.split not in loaded:
                    raise DataError(f"{where}: {local} has no split {src.split!r}; it has {', '.join(loaded)}")
                loaded = loaded[src.split]
            return loaded.to_list(), None
        return _load(str(local), src, where).to_list(), None
    ref = parse_hub_id(src.dataset)
    if ref is None:
        raise DataError(f"{where}: dataset {src.dataset!r} is neither a local directory nor a Hub id (org/name)")
    cache = hub_cache_dir()
    snapshot = cached_snapshot(ref, "dataset")
    if snapshot is not None:  # the Hub cache holds this revision: read its files (works offline)
        try:
            rows = _load(str(snapshot), src, where).to_list()
            record_resolved(ref, "dataset", snapshot.name, where, "cache")
            return rows, snapshot.name
        except DataError:
            raise
        except Exception:  # e.g. the cache holds other configurations only: let datasets fetch this one
            pass
    try:
        ds = datasets.load_dataset(ref.repo_id, src.config, split=src.split, revision=ref.revision)
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        raise _datasets_error(src, where, err, cache) from None
    snapshot = cached_snapshot(ref, "dataset")  # where datasets' download put the repository's files
    commit = snapshot.name if snapshot is not None else None
    if commit:
        record_resolved(ref, "dataset", commit, where, "download")
    return ds.to_list(), commit


def _load(path: str, src: DataSource, where: str):
    """A split of the dataset in a local directory (data files, or a Hub snapshot with its README)."""
    import datasets

    try:
        return datasets.load_dataset(path, src.config, split=src.split)
    except ValueError as err:  # an unknown split or config
        raise DataError(f"{where}: {src.describe()}: {str(err).splitlines()[0]}") from None


def read_rows(source: Any, where: str) -> list[dict[str, Any]]:
    """The raw rows of a source, before the field mapping."""
    src = parse_source(source, where)
    if src.path is not None:
        return _read_file(Path(src.path).expanduser(), where)
    return _read_dataset(src, where)[0]


# -- mapping ---------------------------------------------------------------------------------------------
def _get(row: dict[str, Any], column: str, label: str) -> Any:
    value: Any = row
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise DataError(f"{label}: no column {column!r} (columns: {', '.join(map(str, row))})")
    return value


def _choices(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)  # a CSV cell holding a JSON list
        except json.JSONDecodeError:
            return value
    return value


def _answer(value: Any, choices: Any, how: str, label: str) -> Any:
    if not isinstance(choices, list):
        return value  # not multiple choice: the answer text as it is (exact match)
    texts = [str(c) for c in choices]
    if how == "auto":
        if isinstance(value, bool):
            raise DataError(f"{label}: answer {value!r} is neither an index nor a choice's text")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value in texts:
            return texts.index(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise DataError(f"{label}: answer {value!r} is neither an index nor one of the choices {texts} "
                        "(answer_format: letter reads A, B, ...)")
    if how == "index":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise DataError(f"{label}: answer {value!r} is not an index") from None
    if how == "text":
        if str(value) not in texts:
            raise DataError(f"{label}: answer {value!r} is not one of the choices {texts}")
        return texts.index(str(value))
    letter = str(value).strip().upper()
    if len(letter) != 1 or letter not in string.ascii_uppercase:
        raise DataError(f"{label}: answer {value!r} is not a choice letter")
    return string.ascii_uppercase.index(letter)


def map_row(row: Any, src: DataSource, label: str) -> dict[str, Any]:
    """One source row -> the utility's fields. Without a mapping every column is kept (as JSONL rows keep
    them); with one, the mapped fields and the columns already named like a field (question, ..., id)."""
    if not isinstance(row, dict):
        raise DataError(f"{label}: expected an object with named columns, got {type(row).__name__}")
    out = dict(row) if not src.fields else {k: row[k] for k in TARGET_FIELDS if k in row}
    for target, column in src.fields.items():
        out[target] = ([_get(row, c, label) for c in column] if isinstance(column, list)
                       else _get(row, column, label))
    if "choices" in out:
        out["choices"] = _choices(out["choices"])
    if "answer" in out:
        out["answer"] = _answer(out["answer"], out.get("choices"), src.answer_format, label)
    return out


def _digest(src: DataSource, stamp: Any) -> str:
    blob = json.dumps([src.model_dump(mode="json"), stamp], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def materialize(source: Any, where: str) -> Path:
    """The JSONL file holding `source`'s examples (see the module docstring); DataError (one line, naming
    `where` and the source) when it cannot be read."""
    src = parse_source(source, where)
    if src.path is not None:
        path = Path(src.path).expanduser()
        if path.suffix.lower() == ".jsonl" and not src.fields and src.answer_format == "auto":
            return path
        if not path.is_file():
            raise DataError(f"{path}: dataset file not found")
        stat = path.stat()
        rows, stamp = _read_file(path, where), [str(path.absolute()), stat.st_size, stat.st_mtime_ns]
        name = path.name
    else:
        rows, commit = _read_dataset(src, where)
        stamp, name = commit or _rows_digest(rows), src.describe()
    mapped = [map_row(r, src, f"{name}: row {i}") for i, r in enumerate(rows, 1)]
    if not mapped:
        raise DataError(f"{where}: {src.describe()}: no examples (empty split)")
    out = cache_dir() / f"{_digest(src, stamp)}.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in mapped)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return out


def _rows_digest(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
