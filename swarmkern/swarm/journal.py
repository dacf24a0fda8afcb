"""The iteration journal: what a search received from its utility, one small record per iteration.

The search is a pure function of its seed, its experts and the utility values it was given, so
re-running the kernel steps and the bookkeeping of iteration t needs only that iteration's record:
the gathered utilities, which of them were non-finite, which evaluated locations were non-finite,
the skipped evaluations and restarts (checked, they follow from the seed), the step length, the size
history.jsonl had after the iteration, and the run's wall seconds. Resume = the latest snapshot of
the buffers + replay of the records after it (checkpoint.py, search.py).

File `<output_dir>/checkpoint/journal.log`, written by rank 0 only (all ranks hold the same
bookkeeping), one line per record:

    <crc32 of the JSON, 8 hex digits> <JSON>\\n

appended and fsync'ed (fdatasync) before the iteration counts as done. A record killed half-way
(no newline, or a checksum that does not match) ends the journal: it and anything after it are
ignored, and `Journal(directory, keep_bytes=...)` cuts them off before the next record is written. Floats are written
with repr (exact round trip); -inf as -Infinity.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

JOURNAL = "journal.log"


@dataclass
class Record:
    """One iteration (0 = the initial evaluation) as the search received it."""
    iteration: int
    utilities: list[float]          # [P] gathered scores (non-finite -> -inf; skipped keep their last)
    nonfinite: list[int]            # particles whose evaluated score was non-finite
    bad_rows: list[int]             # particles whose evaluated location was itself non-finite
    skipped: list[int]
    restarts: list[int]
    step: float                     # the step length used by this iteration's update
    history_bytes: int              # size of history.jsonl after this iteration's line
    wall_seconds: float

    def encode(self) -> bytes:
        body = json.dumps(asdict(self), separators=(",", ":")).encode()
        return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode(line: bytes) -> Record | None:
    """A record from one complete line (without its newline), or None when it is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return Record(**json.loads(body))
    except (ValueError, TypeError):
        return None


def read(directory: Path) -> tuple[list[Record], int]:
    """(the valid records in order, the byte size they span); stops at the first torn or damaged line."""
    records, ends = read_with_ends(directory)
    return records, (ends[-1] if ends else 0)


def read_with_ends(directory: Path) -> tuple[list[Record], list[int]]:
    """The valid records in order and, for each, the byte offset just after its line."""
    path = Path(directory) / JOURNAL
    if not path.is_file():
        return [], []
    data = path.read_bytes()
    records, ends, end = [], [], 0
    while True:
        nl = data.find(b"\n", end)
        if nl < 0:
            break
        rec = decode(data[end:nl])
        if rec is None or (records and rec.iteration != records[-1].iteration + 1):
            break
        records.append(rec)
        end = nl + 1
        ends.append(end)
    return records, ends


class Journal:
    """Appends records to `<directory>/journal.log` with one fdatasync each."""

    def __init__(self, directory: Path, *, keep_bytes: int):
        """Open for appending after the first `keep_bytes` bytes (the valid records: anything after
        them is a torn record of a killed run, or records of iterations that will be redone)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / JOURNAL
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._file.truncate(keep_bytes)
        self._file.seek(keep_bytes)
        os.fsync(self._file.fileno())

    def append(self, record: Record) -> None:
        self._file.write(record.encode())
        self._file.flush()
        os.fdatasync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
