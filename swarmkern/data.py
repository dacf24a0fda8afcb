"""JSONL datasets for utilities: one JSON object per line, validated by a pydantic model; every error
names the file and the line (`data/dev.jsonl:7: choices: Field required`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from swarmkern.configfile import first_error

__all__ = ["DataError", "load_jsonl", "MultipleChoiceExample", "PromptAnswerExample", "PromptExample"]

T = TypeVar("T", bound=BaseModel)


class DataError(ValueError):
    """A dataset file is missing, malformed or empty."""


class _Example(BaseModel):
    # Extra keys (ids, metadata) are allowed and kept: datasets from elsewhere carry them.
    model_config = ConfigDict(extra="allow", frozen=True)


class MultipleChoiceExample(_Example):
    """{"question": str, "choices": [str, ...] (at least 2), "answer": int (0-based index into choices)}."""
    question: str
    choices: list[str]
    answer: int

    @model_validator(mode="after")
    def _check(self) -> "MultipleChoiceExample":
        if len(self.choices) < 2:
            raise ValueError(f"choices: need at least 2, got {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer: {self.answer} is not an index into {len(self.choices)} choices")
        return self


class PromptAnswerExample(_Example):
    """{"prompt": str, "answer": str} (exact match of a generated answer)."""
    prompt: str
    answer: str


class PromptExample(_Example):
    """{"prompt": str} (responses are generated and scored by a reward model or a judge)."""
    prompt: str


def load_jsonl(path: str | os.PathLike, schema: type[T], *, limit: int | None = None) -> list[T]:
    """Read and validate a JSONL file. Blank lines are skipped; `limit` keeps the first N examples.

    Raises DataError naming the file (and the line) when the file is missing, a line is not a JSON
    object, a line does not fit `schema`, or the file holds no examples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    examples: list[T] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            try:
                examples.append(schema.model_validate(obj))
            except ValidationError as err:
                raise DataError(f"{path}:{lineno}: {first_error(err)}") from None
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(f"{path}: no examples (empty split)")
    return examples
