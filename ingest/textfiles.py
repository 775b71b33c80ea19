"""JSONL and CSV file sources: ``gs.read_jsonl`` and ``gs.read_csv``, with follow mode.

Files (a file, a glob or a directory) are read in name order, ``max_rows`` lines at a
time, never whole; each chunk is parsed in one pyarrow call, and lines that do not parse
or fit the schema become dead letters (:mod:`gpustream.ingest.lines`). With
``follow=True`` the source never ends: like ``tail -F`` it keeps polling for lines
appended to the files and for new files (which must sort after those already read, as
timestamped part files do), closing a batch at ``max_rows`` lines or ``max_delay``.

The offset is ``{file: [byte offset, next line number]}`` for every file read so far.
``split(index, count)`` gives the share of one partition of a pipeline: whole files (see
:class:`~gpustream.ingest.files.FileShare`), with offsets of the same form.
A file that cannot be read (undecodable header, another layout, mostly bad records)
stops the run with an error naming it, or with ``on_bad_file="skip"`` is logged, counted
in ``skipped_files`` and passed over (see :class:`~gpustream.ingest.files.BadFiles`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from gpustream.durations import Duration, to_millis
from gpustream.errors import IngestError
from gpustream.ingest.batching import LineBatcher, batch_bounds
from gpustream.ingest.deadletter import BadRecordGuard
from gpustream.ingest.files import BAD_FILE_ERRORS, BadFiles, FileShare, expand_paths
from gpustream.ingest.lines import Lines, parse_lines, read_lines
from gpustream.ingest.schema import SchemaLike, as_schema
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.text import CsvFormat, JsonlFormat, Parser, TextFormat

__all__ = ["TextFileSource", "read_csv", "read_jsonl"]

SAMPLE_BYTES = 1 << 20
BLOCK_BYTES = 1 << 20


class TextFileSource(Source):
    """Line-oriented files as a source (see the module docstring)."""

    #: for a share made by :meth:`split`, its files
    file_share: FileShare | None = None

    def __init__(self, path: str | os.PathLike[str], fmt: TextFormat, suffix: tuple[str, ...],
                 where: str, schema: SchemaLike | None, schema_overrides: SchemaLike | None,
                 has_header: bool, max_rows: int, max_delay: Duration | None, follow: bool,
                 poll_interval: Duration, max_bad_fraction: float,
                 on_bad_file: str = "fail") -> None:
        if schema is not None and schema_overrides is not None:
            raise IngestError(f"{where}: give schema= (every column) or schema_overrides= "
                              "(some columns' types), not both")
        self.where = where
        self.path = os.fspath(path)
        self.suffix = suffix
        self.fmt = fmt
        self.has_header = has_header
        self.max_rows, self.max_delay_s = batch_bounds(max_rows, max_delay, where)
        self.follow = follow
        self.poll_s = to_millis(poll_interval, what=f"{where}: poll_interval") / 1e3
        self.max_bad_fraction = max_bad_fraction
        BadRecordGuard(max_bad_fraction, where, fmt.kind)  # checks the argument now
        self.bad_files = BadFiles(on_bad_file, where)
        self.bounded = not follow
        files = expand_paths(path, suffix, allow_empty=follow)
        self.name = (f"{where}({self.path}, {len(files)} file(s)"
                     f"{', follow' if follow else ''})")
        given = None if schema is None and schema_overrides is None else as_schema(
            schema if schema is not None else schema_overrides, where)
        parser: Parser | None = None
        if isinstance(fmt, CsvFormat) and not has_header:
            self._given_names(given, schema is not None, files)
        unparsed: IngestError | None = None
        for path in files:  # the sample: the first readable file with records that parse
            names = list(fmt.names)
            try:
                sample = self._head(path)
            except BAD_FILE_ERRORS as err:
                fmt.names = names  # not from a bad file's header
                self.bad_files.handle(path, err)
                continue
            if sample.strip():
                try:
                    parser = self._parser(sample, given, schema is not None, files)
                    break
                except IngestError as err:  # no sampled line parses: its lines will be
                    unparsed = unparsed or err  # dead letters; sample the next file
        if parser is None and unparsed is not None:
            raise unparsed
        self.parser: Parser = parser or self._parser(b"", given, schema is not None, files)
        if isinstance(fmt, CsvFormat):
            missing = [n for n in self.parser.stream.names if n not in fmt.names]
            if missing and schema is not None:
                raise IngestError(f"{where}: schema column(s) {', '.join(missing)} are not in "
                                  f"the header of {files[0]}; its columns are: "
                                  f"{', '.join(fmt.names)}")

    def _head(self, path: Path) -> bytes:
        """Check a file's header (the first one's gives the column names) and return the
        first ``SAMPLE_BYTES`` after it."""
        with open(path, "rb") as f:
            if isinstance(self.fmt, CsvFormat) and self.has_header:
                names = self.fmt.header(f.readline(), self.fmt.delimiter,
                                        f"{self.where}: {path}")
                if not self.fmt.names:
                    self.fmt.names = names
                elif names != self.fmt.names:
                    raise IngestError(f"{self.where}: {path} has columns {names}, but the "
                                      f"first file has {self.fmt.names}; give files of one "
                                      "layout")
            return f.read(SAMPLE_BYTES)

    def _given_names(self, given: pa.Schema | None, complete: bool, files: list[Path]) -> None:
        """CSV column names from ``schema=`` where no header gives them."""
        if given is None or not complete:
            raise IngestError(f"{self.where}: "
                              f"{'no file yet' if not files else 'has_header=False'}"
                              ": the column names are unknown; give schema= with every "
                              "column in file order")
        self.fmt.names = list(given.names)

    def _parser(self, sample: bytes, given: pa.Schema | None, complete: bool,
                files: list[Path]) -> Parser:
        if isinstance(self.fmt, CsvFormat) and not self.fmt.names:
            self._given_names(given, complete, files)
        return self.fmt.parser(sample, given, complete, f"{self.where}({self.path})")

    @property
    def skipped_files(self) -> list[str]:
        """The files passed over as unreadable (``on_bad_file="skip"``), in order."""
        return self.bad_files.skipped

    def schema(self) -> pa.Schema:
        """The stream schema (given, or inferred from the first file's first lines)."""
        return self.parser.stream

    def _share(self, index: int, count: int) -> TextFileSource:
        """A copy that reads its :class:`~gpustream.ingest.files.FileShare` of the files
        (whole files: a share's offset is the unsplit form)."""
        share = copy.copy(self)
        share.bad_files = self.bad_files.copy()
        share.fmt = copy.copy(self.fmt)
        if count > 1:
            files = expand_paths(self.path, self.suffix, allow_empty=True)
            share.file_share = FileShare.of(files, index, count, self.follow)
        return share

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches from ``offset`` (``{file: [byte, next line]}``) onwards."""
        guard = BadRecordGuard(self.max_bad_fraction, self.where, self.fmt.kind)
        state: dict[str, tuple[int, int]] = {
            str(k): (int(v[0]), int(v[1])) for k, v in (offset or {}).items()}
        batcher = LineBatcher(self.max_rows, self.max_delay_s if self.follow else 0.0)
        current: str | None = None  # the file the open batch's lines come from
        while True:
            files = expand_paths(self.path, self.suffix, allow_empty=self.follow)
            if self.file_share is not None:
                files = self.file_share.files(files)
            for path in (str(p) for p in files):
                if current is not None and current != path and batcher.rows:
                    yield from self._deliver(current, batcher, state, guard)
                if path in self.bad_files.skipped:
                    continue
                try:
                    for lines in self._read(path, state, batcher):
                        current = path
                        batcher.add(lines, time.monotonic())
                        if batcher.due(time.monotonic()):
                            yield from self._deliver(path, batcher, state, guard)
                            if path in self.bad_files.skipped:
                                break
                    if not self.follow and path not in self.bad_files.skipped:
                        guard.count(Path(path).name, 0, 0, at_end=True)
                except BAD_FILE_ERRORS as err:
                    batcher.take()  # the rest of a file passed over
                    self.bad_files.handle(path, err)
            if not self.follow:
                return
            if current is not None and batcher.due(time.monotonic()):
                yield from self._deliver(current, batcher, state, guard)
            time.sleep(batcher.wait_s(time.monotonic(), self.poll_s))

    def _deliver(self, path: str, batcher: LineBatcher, state: dict[str, tuple[int, int]],
                 guard: BadRecordGuard) -> Iterator[SourceBatch]:
        """The open batch, parsed; its dead letters are delivered before the guard may
        find the file bad (then it stops the run, or the file is passed over)."""
        sb = self._emit(batcher.take(), path, state)
        yield sb
        try:
            guard.count(Path(path).name, sb.data.num_rows, len(sb.rejects))
        except IngestError as err:
            self.bad_files.handle(path, err)

    def _read(self, path: str, state: dict[str, tuple[int, int]],
              batcher: LineBatcher) -> Iterator[Lines]:
        byte, line = state.get(path, (0, 1))
        try:
            if os.path.getsize(path) <= byte:
                return
            f: IO[bytes] = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            if self.follow:  # rotated away between listing and opening
                return
            raise
        with f:
            f.seek(byte)
            if byte == 0 and isinstance(self.fmt, CsvFormat) and self.has_header:
                head = f.readline()
                if not head.endswith(b"\n") and self.follow:
                    return  # the header is still being written
                names = self.fmt.header(head, self.fmt.delimiter, f"{self.where}: {path}")
                if names != self.fmt.names:
                    raise IngestError(f"{self.where}: {path} has columns {names}, but the "
                                      f"first file has {self.fmt.names}; give files of one "
                                      "layout, or on_bad_file='skip'")
                byte, line = len(head), 2
                state[path] = (byte, line)
            while True:
                lines = read_lines(f, max(1, batcher.room), BLOCK_BYTES, not self.follow,
                                   line, byte)
                if lines is None:
                    return
                byte, line = lines.end, line + lines.count
                state[path] = (byte, line)
                yield lines

    def _emit(self, lines: Lines | None, path: str,
              state: dict[str, tuple[int, int]]) -> SourceBatch:
        assert lines is not None
        result = parse_lines(lines, self.parser, self.name,
                             lambda line, byte: {"file": path, "line": line, "byte": byte},
                             self.parser.explain, blank=self.parser.blank)
        table = result.table if result.table is not None else self.parser.stream.empty_table()
        batch = table.combine_chunks().to_batches()
        data = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=self.parser.stream)
        return SourceBatch(data, {k: list(v) for k, v in state.items()}, tuple(result.rejects),
                           result.locate)


def read_jsonl(path: str | os.PathLike[str], schema: SchemaLike | None = None,
               schema_overrides: SchemaLike | None = None, max_rows: int = 65_536,
               max_delay: Duration | None = "50ms", follow: bool = False,
               poll_interval: Duration = "100ms", max_bad_fraction: float = 0.5,
               on_bad_file: str = "fail") -> TextFileSource:
    """Stream newline-delimited JSON files (a file, a glob, or a directory of ``*.jsonl``).

    Parameters
    ----------
    path
        A file, a glob (``"logs/*.jsonl"``) or a directory (its ``.jsonl``/``.ndjson`` files).
    schema
        Every column and its type (``pyarrow.Schema`` or ``{"ts": "timestamp[ms]", ...}``);
        fields not in it are ignored. Default: inferred from the first 1,000 lines.
    schema_overrides
        Types for some columns, the others inferred. A timestamp column may hold ISO 8601
        text or epoch numbers in its unit.
    max_rows, max_delay
        A batch closes at ``max_rows`` lines, or (following) ``max_delay`` after its first.
    follow
        Never end: keep reading appended lines and new files, like ``tail -F``.
    max_bad_fraction
        Stop with an error when more than this fraction of a file's records are bad (a
        file in another format); below it, bad records go to the dead-letter sink.
    on_bad_file
        ``"fail"`` (default): a file that cannot be read (an undecodable header, another
        layout, over ``max_bad_fraction``) stops the run with an error naming it.
        ``"skip"``: log a warning naming it, count it in ``skipped_files`` and go on with
        the next file (its records read before the fault stay, as rows or dead letters).

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "a.jsonl"), "w") as f:
    ...     _ = f.write('{"ts": 1, "v": 2.5}\\n{"ts": oops}\\n{"ts": 3, "v": 1}\\n')
    >>> src = read_jsonl(d, schema_overrides={"ts": "timestamp[ms]"})
    >>> [(b.data.num_rows, b.rejects[0].offset["line"]) for b in src.open()]
    [(2, 2)]
    >>> src.schema().types
    [TimestampType(timestamp[ms]), DataType(double)]
    """
    return TextFileSource(path, JsonlFormat(), (".jsonl", ".ndjson"), "read_jsonl", schema,
                          schema_overrides, False, max_rows, max_delay, follow, poll_interval,
                          max_bad_fraction, on_bad_file)


def read_csv(path: str | os.PathLike[str], schema: SchemaLike | None = None,
             schema_overrides: SchemaLike | None = None, has_header: bool = True,
             delimiter: str = ",", max_rows: int = 65_536, max_delay: Duration | None = "50ms",
             follow: bool = False, poll_interval: Duration = "100ms",
             max_bad_fraction: float = 0.5, on_bad_file: str = "fail") -> TextFileSource:
    """Stream CSV files (a file, a glob, or a directory of ``*.csv``), one record a line.

    Parameters are those of :func:`read_jsonl`, and ``has_header`` (each file starts with
    the same header line; without one, ``schema=`` names the columns in file order) and
    ``delimiter``. With ``schema=``, only its columns are kept.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "a.csv"), "w") as f:
    ...     _ = f.write("ts,k,v\\n1,a,2.5\\n2,b\\n3,a,x\\n4,c,1\\n")
    >>> src = read_csv(d, schema_overrides={"v": "float64"}, max_rows=2)
    >>> [(b.data.num_rows, [r.reason for r in b.rejects]) for b in src.open()]
    [(1, ['CSV parse error: Expected 3 columns, got 2: 2,b']), (1, ["In CSV column #2 ('v'): CSV conversion error to double: invalid value 'x'"])]
    """
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise IngestError(f"read_csv: delimiter must be one character, got {delimiter!r}")
    return TextFileSource(path, CsvFormat(delimiter=delimiter), (".csv",), "read_csv", schema,
                          schema_overrides, has_header, max_rows, max_delay, follow,
                          poll_interval, max_bad_fraction, on_bad_file)
