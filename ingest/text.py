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
from gpustream.ingest.deadletter import raw_text
from gpustream.ingest.lines import Lines, first_content, parse_lines, split_lines
from gpustream.ingest.schema import conform, merge_schema

__all__ = ["CsvFormat", "JsonlFormat", "Parser", "TextFormat", "wire_schema"]

SAMPLE_LINES = 1000

#: the timestamps a text record may hold, in microseconds: Python's years 1 to 9999;
#: beyond them a number is almost surely in another unit (epoch microseconds read as ms)
_YEARS_US = (-62135596800000000, 253402300799999999)
_US_PER_YEAR = 31_556_952_000_000
_US = {"s": 10**6, "ms": 10**3, "us": 1}


def _check_values(batch: pa.RecordBatch) -> None:
    """Raise ``ValueError`` naming the column when a value of ``batch`` is invalid UTF-8
    text or a timestamp outside the years 1-9999."""
    for f, column in zip(batch.schema, batch.columns, strict=True):
        t = f.type
        if pa.types.is_timestamp(t) and t.unit in _US and column.null_count < len(column):
            bounds = pc.min_max(column.view(pa.int64())).as_py()
            lo, hi = (b // _US[t.unit] for b in _YEARS_US)
            for v in (bounds["min"], bounds["max"]):
                if not lo <= v <= hi:
                    year = 1970 + v * _US[t.unit] / _US_PER_YEAR
                    raise ValueError(
                        f"column {f.name!r}: timestamp {v} {t.unit} since 1970 is in year "
                        f"{year:.0f}, outside the years 1-9999; is it in another unit? (give "
                        f"schema_overrides={{{f.name!r}: 'timestamp[us]'}}, say)")
        elif not (pa.types.is_primitive(t) or pa.types.is_null(t)):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid as err:
                raise ValueError(f"column {f.name!r}: {err} (invalid UTF-8 text)") from err


@dataclass
class Parser:
    """Turns chunks of lines into batches of the stream schema.

    Every value is checked: text must be valid UTF-8 and a timestamp within the years
    1-9999; a record that is not raises (and becomes a dead letter). ``blank``: the bytes
    of the lines the format skips (see :func:`~gpustream.ingest.lines.parse_lines`).
    """

    stream: pa.Schema
    parse_wire: Callable[[bytes], pa.Table]
    explain: Callable[[Exception], str]
    blank: bytes = b"\r\n"

    def __call__(self, data: bytes) -> pa.Table:
        """Parse and conform one chunk; raises on any bad record in it."""
        if not data.strip():
            return self.stream.empty_table()
        batch = conform(self.parse_wire(data), self.stream)
        _check_values(batch)
        return pa.Table.from_batches([batch])


def wire_schema(stream: pa.Schema, inferred: pa.Schema) -> pa.Schema:
    """What the parser reads: the stream schema, but int64 for a timestamp column whose
    sampled values were numbers (epoch values in the column's unit), and microseconds
    for one of seconds or milliseconds written as text (finer text is then truncated to
    the column's unit, as Flink and Polars do, instead of failing).

    Examples
    --------
    >>> s = pa.schema([("ts", pa.timestamp("ms")), ("v", pa.float64())])
    >>> wire_schema(s, pa.schema([("ts", pa.int64()), ("v", pa.int64())])).types
    [DataType(int64), DataType(double)]
    >>> wire_schema(s, pa.schema([("ts", pa.string())])).types
    [TimestampType(timestamp[us]), DataType(double)]
    """
    fields = []
    for f in stream:
        i = inferred.get_field_index(f.name)
        numeric = i >= 0 and (pa.types.is_integer(inferred.field(i).type)
                              or pa.types.is_floating(inferred.field(i).type))
        if pa.types.is_timestamp(f.type) and numeric:
            f = pa.field(f.name, pa.int64())
        elif pa.types.is_timestamp(f.type) and f.type.unit in ("s", "ms"):
            f = pa.field(f.name, pa.timestamp("us", f.type.tz))
        fields.append(f)
    return pa.schema(fields)


_INT = r"^\s*[+-]?\d+\s*$"
_FLOAT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?(inf|infinity)\s*$"
_NULLS = pa.array(pcsv.ConvertOptions().null_values)


def _numeric_text(column: pa.ChunkedArray | pa.Array) -> pa.DataType | None:
    """int64 or float64 (when some numbers are not integers) when nearly all of a text
    column's values are numbers: at most one in a hundred, or one, are not (and fewer
    than the numbers), so that a stray value does not make a column of numbers text.
    None otherwise.

    Examples
    --------
    >>> _numeric_text(pa.array(["1", "2", "yesterday", "", "4"]))
    DataType(int64)
    >>> _numeric_text(pa.array(["1", "2.5", "3"])), _numeric_text(pa.array(["1", "a", "b"]))
    (DataType(double), None)
    """
    values = pc.drop_null(column)
    values = pc.filter(values, pc.invert(pc.is_in(values, value_set=_NULLS)))
    n = len(values)
    if not n:
        return None
    ints, numbers = (pc.sum(pc.match_substring_regex(values, regex, ignore_case=True)).as_py()
                     or 0 for regex in (_INT, _FLOAT))
    if n - numbers > max(1, n // 100) or numbers <= n - numbers:
        return None
    return pa.int64() if ints == numbers else pa.float64()


def _refine(sample: pa.Table, text_numbers: bool = False) -> pa.Schema:
    """The inferred schema, with timestamps read in milliseconds (text inferred as
    seconds may carry fractions later) and text columns whose every sampled value is an
    ISO 8601 timestamp as ``timestamp[ms]``. With ``text_numbers`` (CSV, where every
    value is text), a text column of numbers but for a stray value or two is a number
    column (:func:`_numeric_text`): the strays become dead letters."""
    fields = []
    for f, column in zip(sample.schema, sample.columns, strict=True):
        if pa.types.is_timestamp(f.type) and f.type.unit == "s":
            f = pa.field(f.name, pa.timestamp("ms", f.type.tz))
        elif pa.types.is_string(f.type) and column.null_count < len(column):
            try:
                pc.cast(column, pa.timestamp("us"))
                f = pa.field(f.name, pa.timestamp("ms"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numeric = _numeric_text(column) if text_numbers else None
                if numeric is not None:
                    f = pa.field(f.name, numeric)
        fields.append(f)
    return pa.schema(fields)


@dataclass
class TextFormat:
    """A line-oriented format; subclasses implement inference and parsing."""

    kind: str = "text"
    names: list[str] = field(default_factory=list)
    #: the bytes of a line the reader skips as empty
    blank: bytes = b"\r\n"
    #: every value is text, numbers too (CSV): a stray value must not make a column text
    text_numbers: bool = False

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
            return _refine(self.infer_raw(lines.data), self.text_numbers)
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
        return _refine(self.infer_good(good), self.text_numbers)

    def infer_good(self, good: list[bytes]) -> pa.Table:
        """The sample from lines that each parse, but may clash with each other's types:
        the longest prefix that parses together."""
        lo, hi = 1, len(good)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                self.infer_raw(b"".join(good[:mid]))
                lo = mid
            except (pa.ArrowException, ValueError):
                hi = mid - 1
        return self.infer_raw(b"".join(good[:lo]))

    def parser(self, sample: bytes, given: pa.Schema | None, complete: bool,
               where: str) -> Parser:
        """The stream schema (given over inferred) and a parser for it."""
        inferred = self.infer(sample, where) if not (given is not None and complete) else \
            self._sample_types(sample, where)
        stream = merge_schema(inferred, given, complete)
        if not len(stream):
            raise IngestError(f"{where}: no columns: the input is empty and no schema= was "
                              "given; give schema={'column': 'type', ...}")
        return Parser(stream, self.parse_with(wire_schema(stream, inferred)), self.explain,
                      self.blank)

    def _sample_types(self, sample: bytes, where: str) -> pa.Schema:
        # only to tell epoch numbers from timestamp text; a sample that does not parse is fine
        try:
            return self.infer(sample, where)
        except IngestError:
            return pa.schema([])


_JSON_SPACE = b" \t\r\n\xef\xbb\xbf"  # and the bytes of a UTF-8 byte order mark
NEWLINE, OPEN = 10, ord("{")


#: JSON nested deeper than this is a bad record (pyarrow's types that deep crash)
MAX_JSON_DEPTH = 64
_OPENERS = np.zeros(256, np.int8)
_OPENERS[[ord("{"), ord("[")]] = 1
_OPENERS[[ord("}"), ord("]")]] = -1


def _string_aware_depth(line: bytes) -> int:
    """The deepest nesting of ``line``, brackets inside strings not counted (called only
    for the rare line whose brackets alone go deeper than ``MAX_JSON_DEPTH``)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 92:  # backslash
                escaped = True
            elif ch == 34:  # quote
                in_string = False
        elif ch == 34:
            in_string = True
        elif ch in (123, 91):
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (125, 93):
            depth -= 1
    return deepest


def _not_too_deep(data: bytes) -> None:
    r"""Raise ``ValueError`` when a line of ``data`` nests deeper than ``MAX_JSON_DEPTH``.

    Examples
    --------
    >>> _not_too_deep(b'{"a": [[1]], "s": "[[[["}\n')
    >>> _not_too_deep(b'{"a": ' + b"[" * 100 + b"]" * 100 + b'}\n')
    Traceback (most recent call last):
    ...
    ValueError: JSON nested 101 levels deep; at most 64 are read
    """
    a = np.frombuffer(data, dtype=np.uint8)
    where = np.flatnonzero(_OPENERS[a])
    if len(where) <= MAX_JSON_DEPTH:
        return
    level = np.cumsum(_OPENERS[a[where]], dtype=np.int64)
    if int(level.max()) - min(int(level.min()), 0) <= MAX_JSON_DEPTH:
        return  # no stretch of the chunk goes that deep
    starts = split_lines(data, final=True)
    for i in range(len(starts) - 1):  # rare: find the line, strings not counted
        lo, hi = int(starts[i]), int(starts[i + 1])
        inside = where[(where >= lo) & (where < hi)]
        if len(inside) > MAX_JSON_DEPTH:
            deepest = _string_aware_depth(data[lo:hi])
            if deepest > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested {deepest} levels deep; at most "
                                 f"{MAX_JSON_DEPTH} are read")


def _objects_only(data: bytes) -> None:
    r"""Raise ``ValueError`` when a line of ``data`` holds something other than a JSON
    object (``null``, a number, an array ...): pyarrow would read ``null`` as a row of
    nulls, and crashes on a chunk of ``null`` lines only.

    Examples
    --------
    >>> _objects_only(b'{"a": 1}\n\n  {"a": 2}\n')
    >>> _objects_only(b'{"a": 1}\nnull\n')
    Traceback (most recent call last):
    ...
    ValueError: not a JSON object: 'null'; every line must hold one JSON object ({...})
    """
    _not_too_deep(data)
    a = np.frombuffer(data, dtype=np.uint8)
    after = np.flatnonzero(a[:-1] == NEWLINE) + 1
    if len(a) and a[0] == OPEN and bool((a[after] == OPEN).all()):
        return  # every line starts with "{": the common case
    starts = split_lines(data, final=True)
    first = first_content(data, starts, _JSON_SPACE)
    has = first < starts[1:]
    odd = has & (a[np.minimum(first, max(len(a) - 1, 0))] != OPEN) if len(a) else has
    if odd.any():
        i = int(np.argmax(odd))
        text = raw_text(data[int(starts[i]):int(starts[i + 1])]).strip()
        raise ValueError(f"not a JSON object: {text[:60]!r}; every line must hold one JSON "
                         "object ({...})")


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
    blank: bytes = _JSON_SPACE

    def infer_raw(self, data: bytes) -> pa.Table:
        """Parse with types inferred by pyarrow."""
        _objects_only(data)
        return pjson.read_json(io.BytesIO(data),
                               read_options=pjson.ReadOptions(block_size=_json_block_size(data)))

    def parse_with(self, wire: pa.Schema) -> Callable[[bytes], pa.Table]:
        """A parser for the fixed ``wire`` schema."""
        opts = pjson.ParseOptions(explicit_schema=wire, unexpected_field_behavior="ignore")

        def parse(data: bytes) -> pa.Table:
            _objects_only(data)
            return pjson.read_json(
                io.BytesIO(data), parse_options=opts,
                read_options=pjson.ReadOptions(block_size=_json_block_size(data)))
        return parse

    def infer_good(self, good: list[bytes]) -> pa.Table:
        r"""The sample from lines whose types clash: each field's type is the one most
        lines give it (integers count for floats where both occur), and the lines that
        fit those types are the sample; so one odd line, even the first, never decides.

        Examples
        --------
        >>> lines = [b'{"ts": "yesterday"}\n'] + [b'{"ts": %d}\n' % i for i in range(3)]
        >>> JsonlFormat().infer_good(lines)["ts"].to_pylist()
        [0, 1, 2]
        """
        votes: dict[str, dict[pa.DataType, int]] = {}
        for line in good:
            try:
                schema = self.infer_raw(line).schema
            except (pa.ArrowException, ValueError):
                continue
            for f in schema:
                if not pa.types.is_null(f.type):
                    kinds = votes.setdefault(f.name, {})
                    kinds[f.type] = kinds.get(f.type, 0) + 1
                else:
                    votes.setdefault(f.name, {})
        fields = []
        for name, kinds in votes.items():
            if pa.int64() in kinds and pa.float64() in kinds:
                kinds[pa.float64()] += kinds.pop(pa.int64())
            best = max(kinds.items(), key=lambda kv: kv[1])[0] if kinds else pa.null()
            fields.append(pa.field(name, best))
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in good)
        lines = Lines(data, split_lines(data, final=True), 1, 0)
        fitting = parse_lines(lines, self.parse_with(pa.schema(fields)), "", lambda a, b: a)
        if fitting.table is None:
            return super().infer_good(good)
        return fitting.table


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
    text_numbers: bool = True

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
        except (pa.ArrowException, UnicodeDecodeError) as err:
            raise IngestError(f"{where}: the header line does not parse as CSV ({err}); "
                              "give has_header=False and schema= if there is none") from err
        return [str(n) for n in names]
