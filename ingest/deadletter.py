"""Dead letters: records a source could not turn into rows, kept with where and why.

A bad record never stops a pipeline and is never lost (DESIGN.md section 6): sources
attach :class:`DeadLetter` s to the batch they were found in, the runtime counts them and
writes them to the pipeline's dead-letter sink (:class:`DeadLetterFile`, JSONL, by
default).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import IngestError
from gpustream.jsontext import json_line, json_rows

__all__ = ["EVENT_TIME_MAX", "EVENT_TIME_MIN", "BadRecordGuard", "DeadLetter", "DeadLetterFile",
           "Locate", "raw_text", "split_missing"]

#: The event times a pipeline takes, in the column's unit: int64's range less 2**60 at
#: each end, kept free so that window ends, watermarks and the end-of-input watermark
#: (int64's maximum) never overflow. Milliseconds: about +-255 million years around 1970;
#: nanoseconds: the years 1714 to 2225. Rows outside become dead letters.
EVENT_TIME_MAX = (1 << 63) - 1 - (1 << 60)
EVENT_TIME_MIN = -EVENT_TIME_MAX

#: Where rows of a batch came from: ``locate(rows)`` gives, for each row index of the
#: batch's data, its dead-letter offset (e.g. ``{"file", "line", "byte"}``) and raw text;
#: None when it cannot tell.
Locate: TypeAlias = Callable[[np.ndarray], "list[tuple[Any, str]] | None"]


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


def split_missing(batch: pa.RecordBatch, column: str, source: str, offset: Any,
                  locate: Locate | None = None
                  ) -> tuple[pa.RecordBatch, tuple[DeadLetter, ...]]:
    """Rows whose event time ``column`` is null, or outside ``[EVENT_TIME_MIN,
    EVENT_TIME_MAX]``, become dead letters; the rest stay.

    With ``locate`` (a source that knows where each row came from: a file and line) a
    dead letter has the row's own offset and raw text; without, the row as JSON and its
    index in the batch ending at ``offset``.

    Examples
    --------
    >>> rb = pa.record_batch({"ts": [1, None, 3, 2**63 - 1], "v": ["a", "b", "c", "d"]})
    >>> kept, dead = split_missing(rb, "ts", "demo", 3)
    >>> kept.num_rows, dead[0].raw, dead[0].offset, dead[0].reason
    (2, '{"ts": null, "v": "b"}', {'batch_end': 3, 'row': 1}, "missing event time 'ts'")
    >>> dead[1].reason
    "event time 9223372036854775807 of 'ts' is out of range [-8070450532247928831, 8070450532247928831]: near int64's limits window ends and watermarks overflow; is the column in another unit?"
    >>> lines = ["ts,v", "1,a", ",b", "3,c", "9223372036854775807,d"]
    >>> _, dead = split_missing(rb, "ts", "demo", 3,
    ...                         lambda rows: [({"line": int(i) + 2}, lines[i + 1]) for i in rows])
    >>> [(d.offset, d.raw) for d in dead]
    [({'line': 3}, ',b'), ({'line': 5}, '9223372036854775807,d')]
    """
    values = batch.column(column)
    if not len(values):
        return batch, ()
    ints = values.view(pa.int64()) if pa.types.is_timestamp(values.type) else values
    bounds = pc.min_max(ints).as_py()
    low = bounds["min"] is not None and bounds["min"] < EVENT_TIME_MIN
    high = bounds["max"] is not None and bounds["max"] > EVENT_TIME_MAX
    if not values.null_count and not low and not high:
        return batch, ()
    bad = pc.is_null(values)
    if low or high:
        out = pc.or_(pc.less(ints, EVENT_TIME_MIN), pc.greater(ints, EVENT_TIME_MAX))
        bad = pc.or_(bad, pc.fill_null(out, False))
    rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    times = pc.take(ints, pa.array(rows)).to_pylist()
    where = locate(rows) if locate is not None else None
    if where is None:
        raws = [json_line(r) for r in json_rows(batch.take(pa.array(rows)))]
        where = [({"batch_end": offset, "row": int(i)}, raw)
                 for i, raw in zip(rows, raws, strict=True)]
    dead = tuple(
        DeadLetter(raw, source, at, f"missing event time {column!r}" if t is None else
                   f"event time {t} of {column!r} is out of range [{EVENT_TIME_MIN}, "
                   f"{EVENT_TIME_MAX}]: near int64's limits window ends and watermarks "
                   "overflow; is the column in another unit?")
        for (at, raw), t in zip(where, times, strict=True))
    return batch.filter(pc.invert(bad)), dead


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
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                try:  # never through a symlink planted at the path
                    fd = os.open(self.path, flags, 0o644)
                except OSError as err:
                    if not self.path.is_symlink():
                        raise
                    raise IngestError(f"dead letters: {self.path} is a symbolic link; "
                                      "dead letters are not written through one: remove it "
                                      "or give dead_letter= another path") from err
                self._file = open(fd, "a", encoding="utf-8")  # noqa: SIM115
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            for d in letters:
                self._file.write(json_line({**d.to_json(), "time": now}) + "\n")
            self._file.flush()
            self.count += len(letters)

    # checkpointed runs: the file is cut back to what the restored checkpoint covered,
    # so that input read again after a restart does not repeat its dead letters
    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        """Cut the file back to its length at checkpoint ``seq`` (what was appended after
        it comes again, from the input read again). ``state``: :meth:`prepare`'s."""
        if not state or not self.path.exists():
            return
        size = int(state.get("size", 0))
        if self.path.stat().st_size > size:
            with open(self.path, "rb+") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    def prepare(self, seq: int) -> dict[str, Any]:
        """Make what was written durable; its length is what checkpoint ``seq`` covers."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
            return {"size": self.path.stat().st_size if self.path.exists() else 0}

    def commit(self, seq: int) -> None:
        """Nothing to do: dead letters are visible as soon as they are written."""

    @staticmethod
    def default_path(pipeline: str) -> Path:
        """``dead-letters/<pipeline>.jsonl``, the name made a safe file name.

        Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` and
        leading dots go, so no pipeline name can point outside ``dead-letters/`` (``/tmp/x``,
        ``../x``); a name that had to change gets a short hash of itself, so that two
        names never share a file.

        Examples
        --------
        >>> DeadLetterFile.default_path("hot-items").as_posix()
        'dead-letters/hot-items.jsonl'
        >>> DeadLetterFile.default_path("../../etc/x").as_posix()
        'dead-letters/_.._etc_x-56da1a2e.jsonl'
        """
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", pipeline).lstrip(".")[:100] or "pipeline"
        if safe != pipeline:
            safe += "-" + hashlib.sha256(pipeline.encode("utf-8", "backslashreplace")
                                         ).hexdigest()[:8]
        return Path("dead-letters") / f"{safe}.jsonl"

    def close(self) -> None:
        """Close the file (if anything was written)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def describe(self) -> str:
        """One line for ``explain()``."""
        return f"dead letters -> {self.path}"
