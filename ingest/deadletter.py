"""Dead letters: records a source could not turn into rows, kept with where and why.

A bad record never stops a pipeline and is never lost (DESIGN.md section 6): sources
attach :class:`DeadLetter` s to the batch they were found in, the runtime counts them and
writes them to the pipeline's dead-letter sink (:class:`DeadLetterFile`, JSONL, by
default).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import IngestError

__all__ = ["BadRecordGuard", "DeadLetter", "DeadLetterFile", "raw_text", "split_missing"]


@dataclass(frozen=True)
class DeadLetter:
    """One bad record: its raw text, the source, its offset there, and the reason.

    Examples
    --------
    >>> d = DeadLetter('{"v": oops}', "read_jsonl(a.jsonl)", {"file": "a.jsonl", "line": 3},
    ...                "JSON parse error: Invalid value")
    >>> d.to_json()["offset"]
    {'file': 'a.jsonl', 'line': 3}
    """

    raw: str
    source: str
    offset: Any
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def raw_text(data: bytes) -> str:
    r"""A record's bytes as text for a dead letter: UTF-8, undecodable bytes as ``\xNN``.

    Examples
    --------
    >>> raw_text(b"ok\xff\r\n")
    'ok\\xff'
    """
    return data.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")


def split_missing(batch: pa.RecordBatch, column: str, source: str,
                  offset: Any) -> tuple[pa.RecordBatch, tuple[DeadLetter, ...]]:
    """Rows whose ``column`` is null become dead letters (the row as JSON, its index in
    the batch ending at ``offset``); the rest stay.

    Examples
    --------
    >>> rb = pa.record_batch({"ts": [1, None, 3], "v": ["a", "b", "c"]})
    >>> kept, dead = split_missing(rb, "ts", "demo", 3)
    >>> kept.num_rows, dead[0].raw, dead[0].offset, dead[0].reason
    (2, '{"ts": null, "v": "b"}', {'batch_end': 3, 'row': 1}, "missing event time 'ts'")
    """
    values = batch.column(column)
    if not values.null_count:
        return batch, ()
    missing = pc.is_null(values)
    rows = pc.indices_nonzero(missing).to_pylist()
    dead = tuple(DeadLetter(json.dumps(r, default=str), source,
                            {"batch_end": offset, "row": i}, f"missing event time {column!r}")
                 for i, r in zip(rows, batch.filter(missing).to_pylist(), strict=True))
    return batch.filter(pc.invert(missing)), dead


class BadRecordGuard:
    """Stops a source whose records are mostly bad: a file or stream of another format.

    Bad records below ``max_bad_fraction`` of those seen go to the dead letters; above
    it, once ``judge_after`` records were seen (or at the end of a file, from 10), the
    run stops with an :class:`~gpustream.errors.IngestError` naming the input.

    Examples
    --------
    >>> guard = BadRecordGuard(0.5, "read_csv", "CSV")
    >>> guard.count("a.csv", good=80, bad=20)
    >>> guard.count("b.bin", good=3, bad=97)
    Traceback (most recent call last):
    ...
    gpustream.errors.IngestError: read_csv: b.bin: 97 of 100 records do not parse as CSV with the stream's schema, over max_bad_fraction=0.5; is it CSV? (the bad ones are in the dead-letter file) Give the right reader or format, or raise max_bad_fraction
    """

    def __init__(self, max_bad_fraction: float, where: str, kind: str,
                 judge_after: int = 100) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise IngestError(f"{where}: max_bad_fraction must be within [0, 1], got "
                              f"{max_bad_fraction!r}")
        self.max_bad_fraction = max_bad_fraction
        self.where, self.kind, self.judge_after = where, kind, judge_after
        self.counts: dict[str, list[int]] = {}

    def count(self, name: str, good: int, bad: int, at_end: bool = False) -> None:
        """Add ``good`` and ``bad`` records of input ``name``; raise when over the limit."""
        c = self.counts.setdefault(name, [0, 0])
        c[0] += good
        c[1] += bad
        total = c[0] + c[1]
        if total < (min(10, self.judge_after) if at_end else self.judge_after):
            return
        if c[1] > self.max_bad_fraction * total:
            raise IngestError(
                f"{self.where}: {name}: {c[1]} of {total} records do not parse as {self.kind} "
                f"with the stream's schema, over max_bad_fraction={self.max_bad_fraction}; is it"
                f" {self.kind}? (the bad ones are in the dead-letter file) Give the right "
                "reader or format, or raise max_bad_fraction")


class DeadLetterFile:
    """Appends dead letters to a JSONL file, one object per line, created on first use.

    Each line holds ``raw``, ``source``, ``offset``, ``reason`` and ``time`` (UTC, ISO
    8601, when it was written).

    Examples
    --------
    >>> import tempfile, os, json
    >>> path = os.path.join(tempfile.mkdtemp(), "dead", "letters.jsonl")
    >>> f = DeadLetterFile(path)
    >>> os.path.exists(path)     # nothing written yet, nothing created
    False
    >>> f.write([DeadLetter("x,y", "read_csv(a.csv)", {"line": 2}, "Expected 3 columns, got 2")])
    >>> f.close()
    >>> with open(path) as fh:
    ...     json.loads(fh.read())["reason"]
    'Expected 3 columns, got 2'
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def write(self, letters: list[DeadLetter] | tuple[DeadLetter, ...]) -> None:
        """Append ``letters`` and flush, so that none is lost if the process dies next."""
        if not letters:
            return
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            for d in letters:
                self._file.write(json.dumps({**d.to_json(), "time": now}, default=str) + "\n")
            self._file.flush()
            self.count += len(letters)

    def close(self) -> None:
        """Close the file (if anything was written)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def describe(self) -> str:
        """One line for ``explain()``."""
        return f"dead letters -> {self.path}"
