"""Columnar file sources: ``gs.read_parquet`` and ``gs.read_arrow_ipc``.

Files (a file, a glob, or a directory) are read in name order, a batch at a time through
pyarrow's readers, never whole. Every file is conformed to the first file's schema
(timestamps of another unit are converted to its unit). The offset after a batch is
``[file name, rows read from that file]``; files that sort before it are done. With
``follow=True`` the source never ends and polls for new files, which must appear whole
(write them under another name, then rename them into place) and sort after those read.
The text formats are in :mod:`gpustream.ingest.textfiles`. ``split(index, count)`` gives
the share of one partition of a pipeline (:class:`FileShare`): whole files, or Parquet
row groups where there are fewer files than shares; its offsets have the same form.

A file that cannot be read (corrupt, truncated, of another format) stops the run with an
error naming it, or with ``on_bad_file="skip"`` is logged, counted in the source's
``skipped_files`` and passed over, and the next file is read.
"""

from __future__ import annotations

import copy
import glob
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from gpustream.durations import Duration, to_millis
from gpustream.errors import IngestError
from gpustream.ingest.arrow import DEFAULT_BATCH_ROWS
from gpustream.ingest.schema import conform
from gpustream.ingest.source import Source, SourceBatch

__all__ = ["ArrowIpcSource", "BadFiles", "FileShare", "ParquetSource", "expand_paths",
           "read_arrow_ipc", "read_parquet"]

log = logging.getLogger("gpustream.ingest")

#: what reading a bad file raises: pyarrow's errors (``ArrowInvalid``, ``OSError`` for a
#: Parquet footer that does not deserialize), undecodable text, a vanished file, and
#: :class:`~gpustream.errors.IngestError` (a ``ValueError``) for one that does not fit
BAD_FILE_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError, ValueError)


class BadFiles:
    """What a file source does with a file it cannot read (``on_bad_file=``).

    ``"fail"``: stop with an :class:`~gpustream.errors.IngestError` naming the file.
    ``"skip"``: log a warning naming it, add it to ``skipped`` (once) and go on.

    Examples
    --------
    >>> bad = BadFiles("skip", "read_parquet")
    >>> bad.handle("data/b.parquet", OSError("Couldn't deserialize thrift"))
    >>> bad.skipped
    ['data/b.parquet']
    >>> BadFiles("fail", "read_parquet").handle("b.parquet", OSError("bad footer"))
    Traceback (most recent call last):
    ...
    gpustream.errors.IngestError: read_parquet: cannot read b.parquet (OSError: bad footer); replace or remove the file, or give on_bad_file='skip' to skip such files
    >>> BadFiles("ignore", "read_csv")
    Traceback (most recent call last):
    ...
    gpustream.errors.IngestError: read_csv: on_bad_file must be 'fail' or 'skip', got 'ignore'
    """

    def __init__(self, on_bad_file: str, where: str) -> None:
        if on_bad_file not in ("fail", "skip"):
            raise IngestError(f"{where}: on_bad_file must be 'fail' or 'skip', got "
                              f"{on_bad_file!r}")
        self.on_bad_file = on_bad_file
        self.where = where
        #: the files skipped so far, in the order met
        self.skipped: list[str] = []

    def copy(self) -> BadFiles:
        """The same policy and files skipped so far, in a list of its own (for a share)."""
        fresh = BadFiles(self.on_bad_file, self.where)
        fresh.skipped = list(self.skipped)
        return fresh

    def handle(self, path: str | os.PathLike[str], err: Exception) -> None:
        """Raise (``"fail"``) or record and log (``"skip"``) that ``path`` is bad."""
        name = os.fspath(path)
        if self.on_bad_file == "fail":
            if isinstance(err, IngestError) and (name in str(err) or Path(name).name in str(err)):
                raise err
            raise IngestError(f"{self.where}: cannot read {name} ({type(err).__name__}: "
                              f"{str(err).strip()}); replace or remove the file, or give "
                              "on_bad_file='skip' to skip such files") from err
        if name not in self.skipped:
            self.skipped.append(name)
            log.warning("%s: skipping %s, it cannot be read (%s: %s)", self.where, name,
                        type(err).__name__, str(err).strip())


def expand_paths(path: str | os.PathLike[str], suffix: str | tuple[str, ...],
                 allow_empty: bool = False) -> list[Path]:
    """A file, a glob, or a directory (its ``*suffix`` files), as a sorted list of files.

    ``allow_empty``: no match is not an error (a followed directory may still be empty).

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
    if not files and not allow_empty:
        first = suffix if isinstance(suffix, str) else suffix[0]
        raise FileNotFoundError(f"no file matches {text!r}; give a file, a glob such as "
                                f"'data/*{first}', or a directory")
    return files


class FileShare:
    """The files (and Parquet row groups) that share ``index`` of ``count`` of a file
    source reads (see :meth:`~gpustream.ingest.source.Source.split`).

    A bounded source's share is fixed when it is split, from the sorted listing then: the
    files whose position ``% count == index``, or, for Parquet with fewer files than
    shares, the row groups (numbered across the files in order) whose number
    ``% count == index``. A followed source's share is the files whose name's CRC-32
    ``% count == index``, so that new files never move old ones to another share.

    Examples
    --------
    >>> from pathlib import Path
    >>> files = [Path(f"d/{c}.csv") for c in "abcde"]
    >>> [f.name for f in FileShare.of(files, 1, 2, follow=False).files(files)]
    ['b.csv', 'd.csv']
    >>> FileShare.of([Path("d/a.parquet")], 1, 2, False, lambda f: 5).groups(Path("d/a.parquet"))
    [1, 3]
    """

    def __init__(self, index: int, count: int,
                 picked: dict[str, list[int] | None] | None) -> None:
        self.index, self.count = index, count
        #: bounded: file -> its row groups to read (None: all of it); None: by name hash
        self.picked = picked

    @classmethod
    def of(cls, files: list[Path], index: int, count: int, follow: bool,
           row_groups: Callable[[Path], int | None] | None = None) -> FileShare:
        """Share ``index`` of ``count`` of ``files`` (the sorted listing); ``row_groups``
        gives a file's number of row groups (None: unknown) where they may be split."""
        if follow:
            return cls(index, count, None)
        if row_groups is None or len(files) >= count:
            return cls(index, count, {str(f): None for i, f in enumerate(files)
                                      if i % count == index})
        picked: dict[str, list[int] | None] = {}
        unit = 0
        for f in files:
            n = row_groups(f)
            if n is None:  # unreadable now: a unit of its own, read (or failed) whole
                if unit % count == index:
                    picked[str(f)] = None
                unit += 1
                continue
            mine = [g for g in range(n) if (unit + g) % count == index]
            if mine:
                picked[str(f)] = mine
            unit += n
        return cls(index, count, picked)

    def files(self, listing: list[Path]) -> list[Path]:
        """The files of ``listing`` (sorted) in this share, in order."""
        if self.picked is None:
            return [f for f in listing
                    if zlib.crc32(f.name.encode()) % self.count == self.index]
        return [f for f in listing if str(f) in self.picked]

    def groups(self, path: Path) -> list[int] | None:
        """The row groups of ``path`` in this share; None: the whole file."""
        return None if self.picked is None else self.picked.get(str(path))


class _ColumnarFiles(Source):
    """Files read batch by batch and conformed to the first file's schema."""

    where = "read"
    suffix: tuple[str, ...] = ()
    #: for a share made by :meth:`split`, its files (and row groups)
    file_share: FileShare | None = None

    def __init__(self, path: str | os.PathLike[str], batch_rows: int,
                 columns: list[str] | None, follow: bool, poll_interval: Duration,
                 on_bad_file: str = "fail") -> None:
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"{self.where}: batch_rows must be a positive int, got {batch_rows!r}")
        self.bad_files = BadFiles(on_bad_file, self.where)
        self.path = os.fspath(path)
        self.batch_rows = batch_rows
        self.follow = follow
        self.bounded = not follow
        self.poll_s = to_millis(poll_interval, what=f"{self.where}: poll_interval") / 1e3
        files = expand_paths(path, self.suffix)
        self.name = (f"{self.where}({self.path!s}, {len(files)} file(s)"
                     f"{', follow' if follow else ''})")
        full = None
        for first in files:  # the schema: the first file's that can be read
            try:
                full = self.file_schema(first)
                break
            except BAD_FILE_ERRORS as err:
                self.bad_files.handle(first, err)
        if full is None:
            raise IngestError(f"{self.where}: none of the {len(files)} file(s) of {self.path} "
                              "can be read (see the warnings); give readable files")
        if columns is not None:
            missing = [c for c in columns if c not in full.names]
            if missing:
                raise ValueError(f"{self.where}: column(s) {', '.join(missing)} are not in "
                                 f"{first}; its columns are: {', '.join(full.names)}")
            full = pa.schema([full.field(c) for c in columns])
        #: the first file's schema; the others are conformed to it up to the encoding of
        #: their strings (a dictionary is read as one, never decoded first, and plans see
        #: every string column as a string)
        self._schema = full.remove_metadata()
        self.columns = columns

    def file_schema(self, path: Path) -> pa.Schema:
        """A file's schema, read from its footer or header."""
        raise NotImplementedError

    def batches(self, path: Path) -> Iterator[pa.RecordBatch]:
        """A file's record batches (at most ``batch_rows`` rows each)."""
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        """The first file's schema (the others are conformed to it)."""
        return self._schema

    @property
    def skipped_files(self) -> list[str]:
        """The files passed over as unreadable (``on_bad_file="skip"``), in order."""
        return self.bad_files.skipped

    def _share(self, index: int, count: int) -> _ColumnarFiles:
        """A copy that reads its :class:`FileShare` of the files."""
        share = copy.copy(self)
        share.bad_files = self.bad_files.copy()
        if count > 1:
            files = expand_paths(self.path, self.suffix, allow_empty=True)
            share.file_share = FileShare.of(files, index, count, self.follow, self.row_groups)
        return share

    def row_groups(self, path: Path) -> int | None:
        """A file's number of row groups, where a share may take some of them; None:
        the file is split across shares only whole."""
        return None

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches after ``offset`` (``[file name, rows read from it]``)."""
        last, skip = ("", 0) if offset is None else (str(offset[0]), int(offset[1]))
        while True:
            files = expand_paths(self.path, self.suffix, allow_empty=self.follow)
            if self.file_share is not None:
                files = self.file_share.files(files)
            for path in files:
                if str(path) < last:
                    continue
                done = skip if str(path) == last else 0
                if str(path) not in self.bad_files.skipped:
                    try:
                        yield from self._file(path, done)
                    except BAD_FILE_ERRORS as err:
                        self.bad_files.handle(path, err)
                last, skip = str(path), -1  # -1: this file is wholly read
            if not self.follow:
                return
            time.sleep(self.poll_s)

    def batches_at(self, path: Path, skip: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """This source's batches of ``path``, each with the file's row number it starts
        at; those wholly before row ``skip`` may be left out."""
        seen = 0
        for rb in self.batches(path):
            yield seen, rb
            seen += rb.num_rows

    def _file(self, path: Path, skip: int) -> Iterator[SourceBatch]:
        if skip < 0:
            return
        for start, rb in self.batches_at(path, skip):
            seen = start + rb.num_rows
            if seen <= skip:
                continue
            if start < skip:
                rb = rb.slice(skip - start)
            missing = [n for n in self._schema.names if n not in rb.schema.names]
            if missing:
                raise IngestError(f"{self.where}: {path} lacks column(s) {', '.join(missing)} "
                                  f"of the first file's schema ({', '.join(self._schema.names)})"
                                  "; give files of one layout, or columns= that all have")
            try:
                data = conform(rb, self._schema, keep_encoding=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise IngestError(f"{self.where}: {path} does not fit the first file's schema "
                                  f"({err}); its schema is {rb.schema}, the stream's is "
                                  f"{self._schema}") from err
            if data.num_rows:
                yield SourceBatch(data, [str(path), seen])


class ParquetSource(_ColumnarFiles):
    """Parquet files, streamed in batches of ``batch_rows`` through ``iter_batches``."""

    where = "read_parquet"
    suffix = (".parquet",)

    def file_schema(self, path: Path) -> pa.Schema:
        """The schema in the file's footer."""
        return pq.read_schema(path)

    def batches(self, path: Path) -> Iterator[pa.RecordBatch]:
        """Row groups, cut into batches of ``batch_rows``."""
        with pq.ParquetFile(path) as f:
            yield from f.iter_batches(batch_size=self.batch_rows, columns=self.columns)

    def row_groups(self, path: Path) -> int | None:
        """The number of row groups in the file's footer (None where it cannot be read)."""
        try:
            return int(pq.read_metadata(path).num_row_groups)
        except BAD_FILE_ERRORS:
            return None

    def batches_at(self, path: Path, skip: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """The batches of the file's row groups in this source's share (all of them for
        a whole file), each with its row number in the file; groups before ``skip`` are
        not read."""
        groups = None if self.file_share is None else self.file_share.groups(path)
        if groups is None:
            yield from super().batches_at(path, skip)
            return
        with pq.ParquetFile(path) as f:
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
            for g in groups:
                seen = sum(sizes[:g])
                if seen + sizes[g] <= skip:
                    continue
                for rb in f.iter_batches(batch_size=self.batch_rows, row_groups=[g],
                                         columns=self.columns):
                    yield seen, rb
                    seen += rb.num_rows


class ArrowIpcSource(_ColumnarFiles):
    """Arrow IPC files (the random-access file format or the stream format)."""

    where = "read_arrow_ipc"
    suffix = (".arrow", ".arrows", ".feather", ".ipc")

    def file_schema(self, path: Path) -> pa.Schema:
        """The schema in the file's header."""
        with pa.memory_map(str(path)) as m:
            try:
                return ipc.open_file(m).schema
            except pa.ArrowInvalid:
                m.seek(0)
                return ipc.open_stream(m).schema

    def batches(self, path: Path) -> Iterator[pa.RecordBatch]:
        """The file's record batches (memory-mapped), cut to ``batch_rows``."""
        with pa.memory_map(str(path)) as m:
            try:
                reader: Any = ipc.open_file(m)
                stored = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                m.seek(0)
                stored = iter(ipc.open_stream(m))
            for rb in stored:
                if self.columns is not None:
                    rb = rb.select(self.columns)
                for start in range(0, rb.num_rows, self.batch_rows):
                    yield rb.slice(start, self.batch_rows)


def read_parquet(path: str | os.PathLike[str], batch_rows: int = DEFAULT_BATCH_ROWS,
                 columns: list[str] | None = None, follow: bool = False,
                 poll_interval: Duration = "1s", on_bad_file: str = "fail") -> ParquetSource:
    """Stream Parquet files (a file, a glob, or a directory) as a source.

    Parameters
    ----------
    path
        A file, a glob (``"data/*.parquet"``) or a directory (its ``.parquet`` files).
    batch_rows
        Rows per batch at most.
    columns
        Read only these columns.
    follow
        Never end: keep polling for new files (written elsewhere, then renamed in).
    on_bad_file
        ``"fail"`` (default): a file that cannot be read (corrupt, truncated, not
        Parquet, or not of the first file's schema) stops the run with an error naming
        it. ``"skip"``: log a warning naming it, count it in ``skipped_files``, and go on
        with the next file (rows it yielded before the fault stay).

    Examples
    --------
    >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"x": list(range(5))}), os.path.join(d, "a.parquet"))
    >>> src = read_parquet(d, batch_rows=2)
    >>> [(b.data.num_rows, b.offset[1]) for b in src.open()]
    [(2, 2), (2, 4), (1, 5)]
    >>> [b.data["x"].to_pylist() for b in src.open([os.path.join(d, "a.parquet"), 3])]
    [[3], [4]]
    """
    return ParquetSource(path, batch_rows, columns, follow, poll_interval, on_bad_file)


def read_arrow_ipc(path: str | os.PathLike[str], batch_rows: int = DEFAULT_BATCH_ROWS,
                   columns: list[str] | None = None, follow: bool = False,
                   poll_interval: Duration = "1s", on_bad_file: str = "fail") -> ArrowIpcSource:
    """Stream Arrow IPC files (``.arrow``/``.feather`` file format or ``.arrows`` stream
    format; a file, a glob, or a directory), memory-mapped. Parameters as
    :func:`read_parquet`.

    Examples
    --------
    >>> import pyarrow as pa, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.arrow")
    >>> with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, pa.schema([("x", pa.int64())])) as w:
    ...     w.write_table(pa.table({"x": [1, 2, 3]}))
    >>> [b.data["x"].to_pylist() for b in read_arrow_ipc(path, batch_rows=2).open()]
    [[1, 2], [3]]
    """
    return ArrowIpcSource(path, batch_rows, columns, follow, poll_interval, on_bad_file)
