"""Line-oriented records (JSONL, CSV, socket text): cutting and fault-isolating parsing.

Text is cut into chunks of whole lines with numpy (no per-line Python); a chunk is parsed
by pyarrow in one call. When that call fails, the chunk is halved and each half parsed
again, down to the single lines at fault, which become dead letters: a clean chunk costs
one parse, and a chunk with ``b`` bad lines about ``2 b log2(n / b)`` smaller ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa

from gpustream.ingest.deadletter import DeadLetter, Locate, raw_text

__all__ = ["Lines", "ParseResult", "first_content", "isolate", "parse_lines", "read_lines",
           "split_lines"]

NEWLINE = 10


def split_lines(data: bytes, final: bool) -> np.ndarray:
    r"""Start offsets of the complete lines in ``data``, plus the end of the last one.

    A line is complete when it ends with ``\n``, or (with ``final``) at the end of data.

    Examples
    --------
    >>> split_lines(b"a\nbb\ncc", final=False).tolist()
    [0, 2, 5]
    >>> split_lines(b"a\nbb\ncc", final=True).tolist()
    [0, 2, 5, 7]
    """
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == NEWLINE) + 1
    if final and len(data) and (not len(ends) or ends[-1] != len(data)):
        ends = np.append(ends, len(data))
    return np.concatenate([np.zeros(1, dtype=np.int64), ends.astype(np.int64)])


def first_content(data: bytes, starts: np.ndarray, skip: bytes) -> np.ndarray:
    r"""Per line, the offset of its first byte not in ``skip``; the line's end when it
    has none (a blank line). ``starts`` as :func:`split_lines` gives them.

    Examples
    --------
    >>> data = b'{"a": 1}\n  null\n\r\n'
    >>> first_content(data, split_lines(data, True), b" \t\r\n").tolist()
    [0, 11, 18]
    """
    a = np.frombuffer(data, dtype=np.uint8)
    first = starts[:-1].astype(np.int64)
    ends = starts[1:]
    if not len(a) or not len(first):
        return first
    table = np.zeros(256, dtype=np.bool_)
    table[list(skip)] = True
    lead = table[a[np.minimum(first, len(a) - 1)]] & (first < ends)
    if lead.any():  # lines that start with a byte to skip: find their first other byte
        content = np.flatnonzero(~table[a])
        k = np.searchsorted(content, first[lead])
        pos = np.where(k < len(content), content[np.minimum(k, max(len(content) - 1, 0))],
                       len(a)) if len(content) else np.full(len(k), len(a))
        first[lead] = np.minimum(pos, ends[lead])
    return first


class Lines:
    r"""Whole lines of one file or stream: ``data[starts[i]:starts[i + 1]]`` is line i.

    ``data`` holds exactly ``count`` complete lines (the last may lack its newline at the
    end of a file). ``first_line`` is the 1-based line number of line 0 and ``base`` the
    byte offset of ``data[0]`` in its file or stream. ``starts`` is found only when asked
    for (a chunk that parses cleanly never needs it).

    Examples
    --------
    >>> ls = Lines(b"a\nbb\nc", None, 7, 100, count=3)
    >>> ls.starts.tolist(), ls.end
    ([0, 2, 5, 6], 106)
    """

    def __init__(self, data: bytes, starts: np.ndarray | None, first_line: int, base: int,
                 count: int | None = None) -> None:
        self.data = data
        self._starts = starts
        self.first_line = first_line
        self.base = base
        if count is None:
            assert starts is not None
            count = len(starts) - 1
        self.count = count

    @property
    def starts(self) -> np.ndarray:
        """Start offsets of the lines, plus the end of the last one."""
        if self._starts is None:
            self._starts = split_lines(self.data, final=True)
        return self._starts

    @property
    def end(self) -> int:
        """The byte offset just after the last line."""
        return self.base + len(self.data)


def read_lines(f: IO[bytes], max_rows: int, block_bytes: int, final: bool,
               first_line: int, base: int) -> Lines | None:
    r"""Read up to ``max_rows`` complete lines from ``f`` (positioned at ``base``).

    Reads ``block_bytes`` at a time until enough lines or end of file, counting newlines
    with ``bytes.count``; the cut after the last line taken is looked for in the last
    block only. Bytes after it are given back with a seek. ``final``: the file will not
    grow, so a last line without a newline is complete. None when no complete line is
    there yet.

    Examples
    --------
    >>> import io
    >>> f = io.BytesIO(b"1\n2\n3\n4")
    >>> ls = read_lines(f, 2, 1024, True, 1, 0)
    >>> ls.count, ls.data, ls.end, f.tell()
    (2, b'1\n2\n', 4, 4)
    >>> ls = read_lines(f, 5, 1024, False, 3, 4)   # "4" has no newline: not complete yet
    >>> ls.count, ls.data
    (1, b'3\n')
    >>> ls = read_lines(f, 5, 1024, True, 4, 6)    # now it is the file's last line
    >>> ls.count, ls.data, f.tell()
    (1, b'4', 7)
    """
    blocks: list[bytes] = []
    lines = last_count = 0
    while lines < max_rows:
        block = f.read(block_bytes)
        if not block:
            break
        blocks.append(block)
        last_count = block.count(b"\n")
        lines += last_count
    if not blocks:
        return None
    data = b"".join(blocks)
    if lines > max_rows:  # the cut is in the last block: after its k-th newline
        last = blocks[-1]
        k = max_rows - (lines - last_count)
        nl = np.flatnonzero(np.frombuffer(last, dtype=np.uint8) == NEWLINE)[k - 1]
        used, count = len(data) - len(last) + int(nl) + 1, max_rows
    else:
        used, count = data.rfind(b"\n") + 1, lines
        if final and lines < max_rows and used < len(data):  # at the end of the file
            used, count = len(data), lines + 1
    if used < len(data):
        f.seek(base + used)
    if not count:
        return None
    return Lines(data[:used] if used < len(data) else data, None, first_line, base, count)


@dataclass
class ParseResult:
    """The good rows of a chunk (in line order) and its bad lines as dead letters.

    ``bad``: the indices of the bad records; ``locate``: each good row's offset and raw
    text (see :func:`parse_lines`).
    """

    table: pa.Table | None
    rejects: list[DeadLetter]
    bad: list[int] = field(default_factory=list)
    locate: Locate | None = None


def parse_lines(lines: Lines, parse: Callable[[bytes], pa.Table], source: str,
                where: Callable[[int, int], Any],
                explain: Callable[[Exception], str] = str, keep: bool = True,
                blank: bytes | None = None) -> ParseResult:
    r"""Parse ``lines`` with ``parse``; lines that fail become dead letters.

    ``parse(bytes) -> pyarrow.Table`` must give the same schema for every piece and
    raise ``pyarrow.ArrowException`` (or ``ValueError``) on a bad record. ``where(line
    number, byte offset)`` gives a dead letter's offset; ``explain(error)`` its reason.
    ``keep=False`` finds the bad lines only (``table`` is then None). With ``blank``
    (the bytes a line ``parse`` skips is made of only), the result's ``locate(rows)``
    gives each row's offset and raw text, for dead letters found after parsing.

    Examples
    --------
    >>> import pyarrow as pa
    >>> def parse(b):
    ...     return pa.table({"x": [int(v) for v in b.split()]}, schema=pa.schema([("x", pa.int64())]))
    >>> data = b"1\n2\nx\n\n4\n"
    >>> r = parse_lines(Lines(data, split_lines(data, True), 1, 0), parse, "demo",
    ...                 lambda line, byte: {"line": line}, blank=b"\n")
    >>> r.table["x"].to_pylist(), [(d.raw, d.offset) for d in r.rejects]
    ([1, 2, 4], [('x', {'line': 3})])
    >>> r.locate(np.array([2]))
    [({'line': 5}, '4')]
    """
    def piece(lo: int, hi: int) -> pa.Table:
        if lo == 0 and hi == lines.count:  # the whole chunk: no need to find its lines
            return parse(lines.data)
        starts = lines.starts
        return parse(lines.data[int(starts[lo]):int(starts[hi])])

    def reject(i: int, err: Exception) -> DeadLetter:
        starts = lines.starts
        return DeadLetter(raw_text(lines.data[int(starts[i]):int(starts[i + 1])]), source,
                          where(lines.first_line + i, lines.base + int(starts[i])), explain(err))

    result = isolate(lines.count, piece, reject, keep)
    if blank is not None and result.table is not None:
        rows = result.table.num_rows

        def locate(picked: np.ndarray) -> list[tuple[Any, str]] | None:
            starts = lines.starts
            has = first_content(lines.data, starts, blank) < starts[1:]
            has[result.bad] = False
            line_of_row = np.flatnonzero(has)
            if len(line_of_row) != rows:  # lines and rows do not match up: cannot tell
                return None
            out = []
            for i in line_of_row[picked].tolist():
                lo, hi = int(starts[i]), int(starts[i + 1])
                out.append((where(lines.first_line + i, lines.base + lo),
                            raw_text(lines.data[lo:hi])))
            return out
        result.locate = locate
    return result


def isolate(n: int, parse: Callable[[int, int], pa.Table],
            reject: Callable[[int, Exception], DeadLetter], keep: bool = True) -> ParseResult:
    """Parse records ``[0, n)`` with ``parse(lo, hi)``, halving failing ranges down to the
    single records at fault, which ``reject(i, error)`` turns into dead letters.

    Examples
    --------
    >>> vals = ["1", "x", "3"]
    >>> r = isolate(3, lambda lo, hi: pa.table({"v": [int(v) for v in vals[lo:hi]]}),
    ...             lambda i, err: DeadLetter(vals[i], "demo", i, str(err)))
    >>> r.table["v"].to_pylist(), [d.offset for d in r.rejects]
    ([1, 3], [1])
    """
    good: list[pa.Table] = []
    rejects: list[DeadLetter] = []
    bad: list[int] = []

    def attempt(lo: int, hi: int) -> None:
        try:
            table = parse(lo, hi)
        except (pa.ArrowException, ValueError, TypeError) as err:
            if hi - lo == 1:
                rejects.append(reject(lo, err))
                bad.append(lo)
                return
            mid = (lo + hi) // 2
            attempt(lo, mid)
            attempt(mid, hi)
            return
        if table.num_rows and keep:
            good.append(table)

    if n:
        attempt(0, n)
    if not good:
        return ParseResult(None, rejects, bad)
    table = good[0] if len(good) == 1 else pa.concat_tables(good)
    return ParseResult(table, rejects, bad)
