"""File sinks: ``gs.to_parquet``, ``gs.to_csv``, ``gs.to_jsonl``.

A path that ends with the format's suffix is one file. Any other path is a directory of
rolling part files, ``part-00000.parquet`` …, each closed after ``rows_per_file`` rows
(and at the end of the run). Every file is written under a temporary name and renamed
into place when complete, so a reader (``read_parquet(..., follow=True)``, say) never
sees half a file.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gpustream.sinks import Sink

__all__ = ["FileSink", "to_csv", "to_jsonl", "to_parquet"]


class FileSink(Sink):
    """Writes batches to one file or to rolling part files (see the module docstring)."""

    suffix = ""
    kind = "file"

    def __init__(self, path: str | os.PathLike[str], rows_per_file: int = 1_000_000) -> None:
        if rows_per_file < 1:
            raise ValueError(f"to_{self.kind}: rows_per_file must be >= 1, got {rows_per_file}")
        self.path = Path(path)
        self.single = self.path.suffix == self.suffix
        self.rows_per_file = rows_per_file
        self.part = 0
        self.rows_in_file = 0
        self.files: list[Path] = []
        self._tmp: Path | None = None
        self.name = f"{self.kind} {self.path}{'' if self.single else '/'}"

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        (self.path.parent if self.single else self.path).mkdir(parents=True, exist_ok=True)

    def _target(self) -> Path:
        if self.single:
            return self.path
        while (p := self.path / f"part-{self.part:05d}{self.suffix}").exists():
            self.part += 1  # never overwrite the parts of an earlier run
        return p

    def write(self, batch: pa.RecordBatch) -> None:
        start = 0
        while start < batch.num_rows:
            if self._tmp is None:
                target = self._target()
                self._tmp = target.with_name(target.name + ".tmp")
                self._begin(self._tmp)
            take = batch.num_rows - start if self.single else \
                min(batch.num_rows - start, self.rows_per_file - self.rows_in_file)
            self._write(batch.slice(start, take))
            start += take
            self.rows_in_file += take
            if not self.single and self.rows_in_file >= self.rows_per_file:
                self._roll()

    def _roll(self) -> None:
        assert self._tmp is not None
        self._end()
        final = self._tmp.with_name(self._tmp.name[: -len(".tmp")])
        os.replace(self._tmp, final)
        self.files.append(final)
        self._tmp = None
        self.rows_in_file = 0
        self.part += 1

    def close(self) -> None:
        if self._tmp is not None:
            self._roll()

    # format hooks
    def _begin(self, path: Path) -> None:
        raise NotImplementedError

    def _write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError


class ParquetSink(FileSink):
    """Parquet files (one row group per batch written)."""

    suffix = ".parquet"
    kind = "parquet"

    def _begin(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, self.schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _end(self) -> None:
        self._writer.close()


class CsvSink(FileSink):
    """CSV files with a header line."""

    suffix = ".csv"
    kind = "csv"

    def _begin(self, path: Path) -> None:
        self._writer = pacsv.CSVWriter(str(path), self.schema)

    def _write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _end(self) -> None:
        self._writer.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class JsonlSink(FileSink):
    """Newline-delimited JSON objects; timestamps as ISO 8601 text."""

    suffix = ".jsonl"
    kind = "jsonl"

    def _begin(self, path: Path) -> None:
        self._file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def _write(self, batch: pa.RecordBatch) -> None:
        self._file.write("".join(json.dumps(row, default=_json_default) + "\n"
                                 for row in batch.to_pylist()))
        self._file.flush()

    def _end(self) -> None:
        self._file.close()


def to_parquet(path: str | os.PathLike[str], rows_per_file: int = 1_000_000) -> ParquetSink:
    """Write a stream to Parquet: ``out.parquet`` (one file) or ``out/`` (part files).

    Examples
    --------
    >>> import gpustream as gs, tempfile, os, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": list(range(5))}, batch_rows=2)).sink(
    ...     to_parquet(d, rows_per_file=3))
    >>> _ = p.run()
    >>> sorted(os.listdir(d)), pq.read_table(d)["x"].to_pylist()
    (['part-00000.parquet', 'part-00001.parquet'], [0, 1, 2, 3, 4])
    """
    return ParquetSink(path, rows_per_file)


def to_csv(path: str | os.PathLike[str], rows_per_file: int = 1_000_000) -> CsvSink:
    """Write a stream to CSV: ``out.csv`` (one file) or ``out/`` (part files).

    Examples
    --------
    >>> import gpustream as gs, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.csv")
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", "b"]})).sink(to_csv(path))
    >>> _ = p.run()
    >>> from pathlib import Path
    >>> print(Path(path).read_text().strip())
    "x","s"
    1,"a"
    2,"b"
    """
    return CsvSink(path, rows_per_file)


def to_jsonl(path: str | os.PathLike[str], rows_per_file: int = 1_000_000) -> JsonlSink:
    """Write a stream as JSON lines: ``out.jsonl`` (one file) or ``out/`` (part files).

    Examples
    --------
    >>> import gpustream as gs, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "late.jsonl")
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", None]})).sink(to_jsonl(path))
    >>> _ = p.run()
    >>> from pathlib import Path
    >>> print(Path(path).read_text().strip())
    {"x": 1, "s": "a"}
    {"x": 2, "s": null}
    """
    return JsonlSink(path, rows_per_file)
