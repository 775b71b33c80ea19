"""Line streams: ``gs.socket(host, port)`` (newline-delimited JSON over TCP) and stdin.

Bytes arrive in whatever pieces the OS hands over; complete lines are cut with numpy and
collected into micro-batches that close at ``max_rows`` lines or ``max_delay`` after their
first line, then parsed in one pyarrow call (bad lines become dead letters). The stream
ends when the peer closes it. A socket cannot replay: the offset (bytes read so far) is
reported for the record, and a restart reads what the server sends from then on.
"""

from __future__ import annotations

import os
import select
import socket as _socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import pyarrow as pa

from gpustream.durations import Duration
from gpustream.errors import IngestError
from gpustream.ingest.batching import LineBatcher, batch_bounds
from gpustream.ingest.deadletter import BadRecordGuard
from gpustream.ingest.lines import Lines, parse_lines, split_lines
from gpustream.ingest.schema import SchemaLike, as_schema
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.text import CsvFormat, JsonlFormat, Parser, TextFormat

__all__ = ["LineStreamSource", "socket", "stdin"]

#: Read(timeout in s) -> bytes; b"" at the end of the stream, None when nothing came.
Reader = Callable[[float], bytes | None]
_IDLE_S = 0.5
_RECV_BYTES = 1 << 20


def text_format(fmt: str, schema: pa.Schema, where: str) -> TextFormat:
    """The parser family for ``format=`` (``jsonl`` or ``csv`` with no header)."""
    if fmt == "jsonl":
        return JsonlFormat()
    if fmt == "csv":
        return CsvFormat(names=list(schema.names))
    raise IngestError(f"{where}: format={fmt!r} is not one of 'jsonl', 'csv'")


class LineStreamSource(Source):
    """Records a line each, from a byte stream that ``connect()`` opens."""

    bounded = False

    def __init__(self, name: str, where: str, schema: SchemaLike, fmt: str, max_rows: int,
                 max_delay: Duration | None, max_bad_fraction: float = 0.5) -> None:
        if schema is None:
            raise IngestError(f"{where}: give schema= (e.g. {{'ts': 'timestamp[ms]', 'v': "
                              "'float64'}): a live stream cannot be sampled before it runs")
        self.name = name
        self.where = where
        self._schema = as_schema(schema, where)
        self.fmt = text_format(fmt, self._schema, where)
        self.max_rows, self.max_delay_s = batch_bounds(max_rows, max_delay, where)
        self.max_bad_fraction = max_bad_fraction
        BadRecordGuard(max_bad_fraction, where, self.fmt.kind)  # checks the argument now
        self.parser: Parser | None = None

    def schema(self) -> pa.Schema:
        """The schema given."""
        return self._schema

    def connect(self) -> tuple[Reader, Callable[[], None]]:
        """Open the stream: a reader and a closer."""
        raise NotImplementedError

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches until the peer closes the stream."""
        guard = BadRecordGuard(self.max_bad_fraction, self.where, self.fmt.kind)
        for sb in self._batches(offset):
            yield sb
            guard.count(self.name, sb.data.num_rows, len(sb.rejects))

    def _batches(self, offset: Any) -> Iterator[SourceBatch]:
        read, close = self.connect()
        batcher = LineBatcher(self.max_rows, self.max_delay_s)
        buf, base, line = b"", int(offset or 0), 1
        try:
            while True:
                chunk = read(batcher.wait_s(time.monotonic(), _IDLE_S))
                ended = chunk == b""
                if chunk:
                    buf += chunk
                starts = split_lines(buf, final=ended)
                while len(starts) > 1:  # hand whole lines to the batcher, batch by batch
                    take = starts[: batcher.room + 1]
                    used = int(take[-1])
                    batcher.add(Lines(buf[:used], take, line, base), time.monotonic())
                    buf, base, line = buf[used:], base + used, line + len(take) - 1
                    starts = starts[len(take) - 1:] - used
                    if batcher.due(time.monotonic()):
                        yield self._emit(batcher.take(), base)
                if batcher.due(time.monotonic()) or (ended and batcher.rows):
                    yield self._emit(batcher.take(), base)
                if ended:
                    return
        finally:
            close()

    def _emit(self, lines: Lines | None, end: int) -> SourceBatch:
        assert lines is not None
        if self.parser is None:  # the first lines tell epoch numbers from timestamp text
            self.parser = self.fmt.parser(lines.data, self._schema, True, self.where)
        result = parse_lines(lines, self.parser, self.name,
                             lambda line, byte: {"line": line, "byte": byte}, self.parser.explain,
                             blank=self.parser.blank)
        table = result.table if result.table is not None else self._schema.empty_table()
        rbs = table.combine_chunks().to_batches()
        data = rbs[0] if rbs else pa.RecordBatch.from_pylist([], schema=self._schema)
        return SourceBatch(data, end, tuple(result.rejects), result.locate)


class SocketSource(LineStreamSource):
    """Connects to ``host:port`` as a client and reads lines until the server closes."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        super().__init__(f"socket({host}:{port})", "socket", **kw)
        self.host, self.port = host, port

    def connect(self) -> tuple[Reader, Callable[[], None]]:
        """A TCP connection; reads wait at most the given timeout."""
        try:
            sock = _socket.create_connection((self.host, self.port), timeout=10)
        except OSError as err:
            raise IngestError(f"socket: cannot connect to {self.host}:{self.port} ({err}); is "
                              "a server listening there (e.g. `nc -lk PORT`)?") from err

        def read(timeout: float) -> bytes | None:
            sock.settimeout(max(timeout, 1e-3))
            try:
                return sock.recv(_RECV_BYTES)
            except TimeoutError:
                return None
        return read, sock.close


class StdinSource(LineStreamSource):
    """Reads lines from standard input (or any binary file object) until it ends."""

    def __init__(self, stream: IO[bytes] | None = None, **kw: Any) -> None:
        super().__init__("stdin", "stdin", **kw)
        self.stream = stream

    def connect(self) -> tuple[Reader, Callable[[], None]]:
        """Reads from the file descriptor, waiting at most the given timeout."""
        stream = self.stream if self.stream is not None else sys.stdin.buffer
        fd = stream.fileno()

        def read(timeout: float) -> bytes | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, _RECV_BYTES) if ready else None
        return read, lambda: None


def socket(host: str, port: int, schema: SchemaLike, format: str = "jsonl",
           max_rows: int = 65_536, max_delay: Duration | None = "50ms",
           max_bad_fraction: float = 0.5) -> SocketSource:
    """Newline-delimited JSON (or CSV) over TCP: connects to ``host:port`` and reads.

    Parameters
    ----------
    host, port
        The server to connect to (as Flink's ``socketTextStream``; ``nc -lk 9999``).
    schema
        Every column and its type; timestamps as ISO 8601 text or epoch numbers.
    format
        ``"jsonl"`` or ``"csv"`` (no header; columns in the schema's order).
    max_rows, max_delay
        A batch closes at ``max_rows`` lines or ``max_delay`` after its first line.
    max_bad_fraction
        Stop with an error when more than this fraction of the records (after 100) are
        bad: the peer speaks another format. Below it, bad lines are dead letters.

    Examples
    --------
    >>> import socket as s, threading
    >>> server = s.create_server(("127.0.0.1", 0))
    >>> def serve():
    ...     conn, _ = server.accept()
    ...     conn.sendall(b'{"ts": 1, "v": 2.5}\\n{"ts": 2, "v": oops}\\n')
    ...     conn.close()
    >>> threading.Thread(target=serve).start()
    >>> src = socket("127.0.0.1", server.getsockname()[1], schema={"ts": "int64", "v": "float64"})
    >>> [(b.data.num_rows, len(b.rejects)) for b in src.open()]
    [(1, 1)]
    >>> server.close()
    """
    return SocketSource(host, port, schema=schema, fmt=format, max_rows=max_rows,
                        max_delay=max_delay, max_bad_fraction=max_bad_fraction)


def stdin(schema: SchemaLike, format: str = "jsonl", max_rows: int = 65_536,
          max_delay: Duration | None = "50ms", stream: IO[bytes] | None = None,
          max_bad_fraction: float = 0.5) -> StdinSource:
    """Lines from standard input (``-`` in the CLI) until it ends; parameters as
    :func:`socket`. ``stream`` reads another binary file object instead (tests, pipes).

    Examples
    --------
    >>> import os
    >>> r, w = os.pipe()
    >>> _ = os.write(w, b"1,a\\n2,b\\n"); os.close(w)
    >>> with os.fdopen(r, "rb") as pipe:
    ...     src = stdin({"n": "int64", "s": "string"}, format="csv", stream=pipe)
    ...     [b.data.to_pydict() for b in src.open()]
    [{'n': [1, 2], 's': ['a', 'b']}]
    """
    return StdinSource(stream, schema=schema, fmt=format, max_rows=max_rows, max_delay=max_delay,
                       max_bad_fraction=max_bad_fraction)
