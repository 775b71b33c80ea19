"""Text record formats (JSONL and CSV): schema inference and one-call chunk parsers.

Both parse whole chunks of lines with pyarrow's C++ readers. A format infers a schema
from a sample of lines, then builds a parser for a fixed wire schema, so every chunk of a
stream comes out with the same columns and types.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from gpustream.errors import IngestError
from gpustream.ingest.lines import Lines, parse_lines, split_lines
from gpustream.ingest.schema import conform, merge_schema

__all__ = ["CsvFormat", "JsonlFormat", "Parser", "TextFormat", "wire_schema"]

SAMPLE_LINES = 1000


@dataclass
class Parser:
    """Turns chunks of lines into batches of the stream schema."""

    stream: pa.Schema
    parse_wire: Callable[[bytes], pa.Table]
    explain: Callable[[Exception], str]

    def __call__(self, data: bytes) -> pa.Table:
        """Parse and conform one chunk; raises on any bad record in it."""
        if not data.strip():
            return self.stream.empty_table()
        return pa.Table.from_batches([conform(self.parse_wire(data), self.stream)])


def wire_schema(stream: pa.Schema, inferred: pa.Schema) -> pa.Schema:
    """What the parser reads: the stream schema, but int64 for a timestamp column whose
    sampled values were numbers (epoch values in the column's unit).

    Examples
    --------
    >>> s = pa.schema([("ts", pa.timestamp("ms")), ("v", pa.float64())])
    >>> wire_schema(s, pa.schema([("ts", pa.int64()), ("v", pa.int64())])).types
    [DataType(int64), DataType(double)]
    """
    fields = []
    for f in stream:
        i = inferred.get_field_index(f.name)
        numeric = i >= 0 and (pa.types.is_integer(inferred.field(i).type)
                              or pa.types.is_floating(inferred.field(i).type))
        fields.append(pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) and numeric
                      else f)
    return pa.schema(fields)


def _refine(sample: pa.Table) -> pa.Schema:
    """The inferred schema, with timestamps read in milliseconds (text inferred as
    seconds may carry fractions later) and text columns whose every sampled value is an
    ISO 8601 timestamp as ``timestamp[ms]``."""
    fields = []
    for f, column in zip(sample.schema, sample.columns, strict=True):
        if pa.types.is_timestamp(f.type) and f.type.unit == "s":
            f = pa.field(f.name, pa.timestamp("ms", f.type.tz))
        elif pa.types.is_string(f.type) and column.null_count < len(column):
            try:
                pc.cast(column, pa.timestamp("ms"))
                f = pa.field(f.name, pa.timestamp("ms"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        fields.append(f)
    return pa.schema(fields)


@dataclass
class TextFormat:
    """A line-oriented format; subclasses implement inference and parsing."""

    kind: str = "text"
    names: list[str] = field(default_factory=list)

    def infer_raw(self, data: bytes) -> pa.Table:
        """Parse ``data`` with types inferred (raises on a bad record)."""
        raise NotImplementedError

    def parse_with(self, wire: pa.Schema) -> Callable[[bytes], pa.Table]:
        """A parser for chunks with the fixed ``wire`` schema."""
        raise NotImplementedError

    def explain(self, err: Exception) -> str:
        """A dead letter's reason from a parse error."""
        return str(err).strip()

    def infer(self, sample: bytes, where: str) -> pa.Schema:
        """Infer a schema from up to ``SAMPLE_LINES`` lines, skipping bad lines."""
        starts = split_lines(sample, final=True)[: SAMPLE_LINES + 1]
        lines = Lines(sample[: int(starts[-1])], starts, 1, 0)
        if not lines.data.strip():
            return pa.schema([])
        try:
            return _refine(self.infer_raw(lines.data))
        except (pa.ArrowException, ValueError):
            pass
        result = parse_lines(lines, self.infer_raw, where, lambda line, byte: line, keep=False)
        if len(result.rejects) == lines.count:
            first = result.rejects[0].reason
            raise IngestError(f"{where}: cannot infer a schema, no sampled line parses as "
                              f"{self.kind} ({first}); check the format, or give schema=")
        bad = {d.offset for d in result.rejects}
        good = [lines.data[int(starts[i]):int(starts[i + 1])]
                for i in range(lines.count) if i + 1 not in bad]
        lo, hi = 1, len(good)  # lines that parse alone may clash with each other's types:
        while lo < hi:         # infer from the longest prefix that parses together
            mid = (lo + hi + 1) // 2
            try:
                self.infer_raw(b"".join(good[:mid]))
                lo = mid
            except (pa.ArrowException, ValueError):
                hi = mid - 1
        return _refine(self.infer_raw(b"".join(good[:lo])))

    def parser(self, sample: bytes, given: pa.Schema | None, complete: bool,
               where: str) -> Parser:
        """The stream schema (given over inferred) and a parser for it."""
        inferred = self.infer(sample, where) if not (given is not None and complete) else \
            self._sample_types(sample, where)
        stream = merge_schema(inferred, given, complete)
        if not len(stream):
            raise IngestError(f"{where}: no columns: the input is empty and no schema= was "
                              "given; give schema={'column': 'type', ...}")
        return Parser(stream, self.parse_with(wire_schema(stream, inferred)), self.explain)

    def _sample_types(self, sample: bytes, where: str) -> pa.Schema:
        # only to tell epoch numbers from timestamp text; a sample that does not parse is fine
        try:
            return self.infer(sample, where)
        except IngestError:
            return pa.schema([])


def _json_block_size(data: bytes) -> int:
    longest = int(np.diff(split_lines(data, final=True)).max(initial=0))
    return max(1 << 22, 2 * longest + 1)


@dataclass
class JsonlFormat(TextFormat):
    """Newline-delimited JSON objects; fields not in the schema are ignored.

    Examples
    --------
    >>> fmt = JsonlFormat()
    >>> p = fmt.parser(b'{"ts": 5, "v": 1.5}\\n', pa.schema([("ts", pa.timestamp("ms"))]),
    ...                False, "demo")
    >>> p.stream
    ts: timestamp[ms]
    v: double
    >>> p(b'{"ts": 7, "v": 2, "extra": "x"}\\n').to_pydict()["v"]
    [2.0]
    """

    kind: str = "JSONL"

    def infer_raw(self, data: bytes) -> pa.Table:
        """Parse with types inferred by pyarrow."""
        return pjson.read_json(io.BytesIO(data),
                               read_options=pjson.ReadOptions(block_size=_json_block_size(data)))

    def parse_with(self, wire: pa.Schema) -> Callable[[bytes], pa.Table]:
        """A parser for the fixed ``wire`` schema."""
        opts = pjson.ParseOptions(explicit_schema=wire, unexpected_field_behavior="ignore")

        def parse(data: bytes) -> pa.Table:
            return pjson.read_json(
                io.BytesIO(data), parse_options=opts,
                read_options=pjson.ReadOptions(block_size=_json_block_size(data)))
        return parse


_CSV_COLUMN = re.compile(r"CSV column #(\d+)")


@dataclass
class CsvFormat(TextFormat):
    """Comma-separated values (any one-character delimiter), one record per line.

    ``names`` are the column names, from the header line or given. Values with embedded
    newlines are not supported (each line is one record).

    Examples
    --------
    >>> fmt = CsvFormat(names=["ts", "v"])
    >>> p = fmt.parser(b"5,1.5\\n", None, False, "demo")
    >>> p.stream.types
    [DataType(int64), DataType(double)]
    >>> fmt.explain(ValueError("In CSV column #1: CSV conversion error to double: invalid value 'x'"))
    "In CSV column #1 ('v'): CSV conversion error to double: invalid value 'x'"
    """

    kind: str = "CSV"
    delimiter: str = ","

    def _read(self, data: bytes, types: pa.Schema | None) -> pa.Table:
        convert = None if types is None else pcsv.ConvertOptions(
            column_types=types, include_columns=types.names)
        return pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=self.names),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
            convert_options=convert)

    def infer_raw(self, data: bytes) -> pa.Table:
        """Parse with types inferred by pyarrow."""
        return self._read(data, None)

    def parse_with(self, wire: pa.Schema) -> Callable[[bytes], pa.Table]:
        """A parser for the fixed ``wire`` schema."""
        known = pa.schema([f for f in wire if f.name in self.names])
        return lambda data: self._read(data, known)

    def explain(self, err: Exception) -> str:
        """The reason, naming the column as well as its number."""
        def name(m: re.Match[str]) -> str:
            i = int(m.group(1))
            return f"{m.group(0)} ({self.names[i]!r})" if i < len(self.names) else m.group(0)
        return _CSV_COLUMN.sub(name, str(err).strip())

    @staticmethod
    def header(line: bytes, delimiter: str, where: str) -> list[str]:
        """Column names from a header line.

        Examples
        --------
        >>> CsvFormat.header(b'ts,"price",v\\r\\n', ",", "demo")
        ['ts', 'price', 'v']
        """
        try:
            names: Sequence[str] = pcsv.read_csv(
                io.BytesIO(line), parse_options=pcsv.ParseOptions(delimiter=delimiter)
            ).column_names
        except pa.ArrowException as err:
            raise IngestError(f"{where}: the header line does not parse as CSV ({err}); "
                              "give has_header=False and schema= if there is none") from err
        return [str(n) for n in names]
