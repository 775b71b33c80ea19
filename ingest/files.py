"""File sources. This first one streams Parquet; CSV, JSONL, Arrow IPC and follow mode
arrive with issue 4 on the same pattern.

Files are read in order (sorted names), a row group batch at a time through
``pyarrow.parquet.ParquetFile.iter_batches``, never whole. The offset after a batch is
``[file index, rows read from that file]``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gpustream.ingest.arrow import DEFAULT_BATCH_ROWS
from gpustream.ingest.source import Source, SourceBatch

__all__ = ["ParquetSource", "expand_paths", "read_parquet"]


def expand_paths(path: str | os.PathLike[str], suffix: str) -> list[Path]:
    """A file, a glob, or a directory (its ``*suffix`` files), as a sorted list of files.

    Examples
    --------
    >>> expand_paths("/definitely/not/here.parquet", ".parquet")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no file matches '/definitely/not/here.parquet'; give a file, a glob such as 'data/*.parquet', or a directory
    """
    text = os.fspath(path)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith(suffix) and f.is_file())
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise FileNotFoundError(f"no file matches {text!r}; give a file, a glob such as "
                                f"'data/*{suffix}', or a directory")
    return files


class ParquetSource(Source):
    """A bounded source over Parquet files, streamed in batches of ``batch_rows``."""

    def __init__(self, path: str | os.PathLike[str], batch_rows: int = DEFAULT_BATCH_ROWS,
                 columns: list[str] | None = None) -> None:
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"read_parquet: batch_rows must be a positive int, got {batch_rows!r}")
        self.files = expand_paths(path, ".parquet")
        self.batch_rows = batch_rows
        self.columns = columns
        self.name = f"read_parquet({os.fspath(path)!s}, {len(self.files)} file(s))"
        self._schema = pq.read_schema(self.files[0])
        if columns is not None:
            missing = [c for c in columns if c not in self._schema.names]
            if missing:
                raise ValueError(f"read_parquet: column(s) {', '.join(missing)} are not in "
                                 f"{self.files[0]}; its columns are: "
                                 f"{', '.join(self._schema.names)}")
            self._schema = pa.schema([self._schema.field(c) for c in columns])

    def schema(self) -> pa.Schema:
        """The schema of the first file (the others must match it)."""
        return self._schema

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches from ``offset`` (``[file index, rows already read]``) onwards."""
        start_file, skip = (0, 0) if offset is None else (int(offset[0]), int(offset[1]))
        for i in range(start_file, len(self.files)):
            f = pq.ParquetFile(self.files[i])
            if f.schema_arrow.remove_metadata() != pq.read_schema(self.files[0]).remove_metadata():
                raise ValueError(f"read_parquet: {self.files[i]} has schema {f.schema_arrow}, "
                                 f"which differs from {self.files[0]}'s")
            done = 0
            for rb in f.iter_batches(batch_size=self.batch_rows, columns=self.columns):
                end = done + rb.num_rows
                if i == start_file and end <= skip:
                    done = end
                    continue
                if i == start_file and done < skip:
                    rb = rb.slice(skip - done)
                done = end
                if rb.num_rows:
                    yield SourceBatch(rb, [i, done])
            skip = 0


def read_parquet(path: str | os.PathLike[str], batch_rows: int = DEFAULT_BATCH_ROWS,
                 columns: list[str] | None = None) -> ParquetSource:
    """Stream Parquet files (a file, a glob, or a directory) as a bounded source.

    Examples
    --------
    >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"x": list(range(5))}), os.path.join(d, "a.parquet"))
    >>> src = read_parquet(d, batch_rows=2)
    >>> [(b.data.num_rows, b.offset) for b in src.open()]
    [(2, [0, 2]), (2, [0, 4]), (1, [0, 5])]
    >>> [b.data["x"].to_pylist() for b in src.open([0, 3])]
    [[3], [4]]
    """
    return ParquetSource(path, batch_rows, columns)
