"""Redis Streams as a source: ``gs.redis_stream(url, stream, group=..., schema=...)``.

Built on redis-py. With a ``group`` the source reads with ``XREADGROUP`` (first its own
pending entries, left unacknowledged by a run that died, then new ones) and ``XACK`` s a
batch's entries once the batch is handed over; without one it reads with ``XREAD``. A
batch is one read: at most ``max_rows`` entries, waiting at most ``max_delay``
(``BLOCK``). Entries become rows either field by field (each field a column, its text
cast to the column's type) or, with ``field=``, from one field holding a JSON object.
Entries that do not fit become dead letters with their id.

The offset is the id of the last entry read; :meth:`RedisStreamSource.open` given one
resumes after it (moving the group there with ``XGROUP SETID``). With a group,
:meth:`RedisStreamSource.lag` gives the entries the group has not finished, from
``XINFO GROUPS`` sent with each read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpustream.durations import Duration
from gpustream.errors import IngestError
from gpustream.ingest.batching import batch_bounds
from gpustream.ingest.deadletter import BadRecordGuard, DeadLetter
from gpustream.ingest.lines import ParseResult, isolate
from gpustream.ingest.schema import SchemaLike, as_schema
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.text import JsonlFormat, Parser

__all__ = ["RedisStreamSource", "redis_stream", "text_to"]


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = (value.decode() if isinstance(value, bytes) else value).partition("-")
    return int(ms), int(seq or 0)


def text_to(values: pa.Array, t: pa.DataType) -> pa.Array:
    """Text values cast to ``t``; timestamps from ISO 8601 text or epoch numbers in
    ``t``'s unit. Raises ``pyarrow.ArrowInvalid`` for a value that does not fit.

    Examples
    --------
    >>> text_to(pa.array(["1500", None]), pa.timestamp("ms")).cast(pa.int64()).to_pylist()
    [1500, None]
    >>> text_to(pa.array(["2.5"]), pa.float64()).to_pylist()
    [2.5]
    """
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values.cast(t)
    if pa.types.is_timestamp(t):
        try:
            return pc.cast(values, pa.int64()).view(t)
        except pa.ArrowInvalid:
            return pc.cast(values, t)
    return pc.cast(values, t)


class RedisStreamSource(Source):
    """See the module docstring and :func:`redis_stream`."""

    def __init__(self, url: str, stream: str, group: str | None, consumer: str | None,
                 schema: SchemaLike, field: str | None, max_rows: int,
                 max_delay: Duration | None, bounded: bool, max_bad_fraction: float = 0.5) -> None:
        if schema is None:
            raise IngestError("redis_stream: give schema= (e.g. {'ts': 'timestamp[ms]', "
                              "'v': 'float64'}): a stream is not sampled before the run")
        self.url, self.stream, self.group = url, stream, group
        self.consumer = consumer or f"gpustream-{os.getpid()}"
        self._schema = as_schema(schema, "redis_stream")
        self.field = field
        self.max_rows, delay = batch_bounds(max_rows, max_delay, "redis_stream")
        self.block_ms = max(1, int(min(delay, 1.0) * 1000))
        self.bounded = bounded
        self.name = f"redis_stream({stream}{', group ' + group if group else ''})"
        self.parser: Parser | None = None
        self._lag: dict[str, int] | None = None
        self.max_bad_fraction = max_bad_fraction
        BadRecordGuard(max_bad_fraction, "redis_stream", "entries")  # checks the argument

    def schema(self) -> pa.Schema:
        """The schema given."""
        return self._schema

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches after ``offset`` (an entry id), or where the group stands."""
        guard = BadRecordGuard(self.max_bad_fraction, "redis_stream",
                               "JSON" if self.field else "entries of the schema")
        for sb in self._batches(offset):
            yield sb
            guard.count(f"stream {self.stream!r}", sb.data.num_rows, len(sb.rejects))

    def _batches(self, offset: Any) -> Iterator[SourceBatch]:
        import redis

        self._lag = None
        r = redis.Redis.from_url(self.url)
        try:
            r.ping()
        except redis.RedisError as err:
            raise IngestError(f"redis_stream: cannot reach {self.url} ({err}); is redis-server "
                              "running there?") from err
        end: tuple[int, int] | None = None
        if self.bounded:
            info = r.xinfo_stream(self.stream) if r.exists(self.stream) else None
            if info is None or not info["length"]:
                return
            end = _id(info["last-generated-id"])
        last = None if offset is None else str(offset)
        pending = False
        if self.group is not None:
            try:
                r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
            if last is not None:
                r.xgroup_setid(self.stream, self.group, last)
            else:
                pending = True  # first what this consumer was given and did not ack
        to_ack: list[bytes] = []
        try:
            while True:
                reply: Any
                if self.group is not None:
                    # one round trip: the last batch's XACK, the read, the group's standing
                    pipe = r.pipeline(transaction=False)
                    if to_ack:
                        pipe.xack(self.stream, self.group, *to_ack)
                    pipe.xreadgroup(self.group, self.consumer,
                                    {self.stream: "0" if pending else ">"},
                                    count=self.max_rows, block=None if pending else self.block_ms)
                    pipe.xinfo_groups(self.stream)
                    *_, reply, groups = pipe.execute()
                else:
                    reply = r.xread({self.stream: last or "0"}, count=self.max_rows,
                                    block=self.block_ms)
                to_ack = []
                entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
                if self.group is not None:
                    self._lag = self._group_lag(groups, len(entries))
                if pending and not entries:
                    pending = False
                    continue
                if not entries:
                    if end is not None:  # all there was at the start has been delivered
                        return
                    continue
                ids = [e[0] for e in entries]
                last = ids[-1].decode()
                result = self._parse(entries)
                table = result.table if result.table is not None else self._schema.empty_table()
                rbs = table.combine_chunks().to_batches()
                data = rbs[0] if rbs else pa.RecordBatch.from_pylist([], schema=self._schema)
                yield SourceBatch(data, last, tuple(result.rejects))
                to_ack = ids
                if end is not None and _id(last) >= end:
                    return
        finally:
            if to_ack and self.group is not None:
                r.xack(self.stream, self.group, *to_ack)
            r.close()

    def lag(self) -> dict[str, int] | None:
        """Entries of the stream its group has not finished, ``{stream: n}``: those not yet
        delivered to the group plus those delivered but not acknowledged (held by another
        consumer or left by a reader that died), less the batch in hand. As of the last
        read; None without a group, before the first read or where the server cannot
        tell (Redis before 7, or a group moved to an arbitrary id until it catches up).

        Examples
        --------
        >>> print(redis_stream("redis://127.0.0.1:6379/0", "clicks", group="counts",
        ...                    schema={"ts": "timestamp[ms]"}).lag())
        None
        """
        return self._lag

    def _group_lag(self, groups: list[dict[str, Any]], in_hand: int) -> dict[str, int] | None:
        assert self.group is not None
        name = self.group.encode()
        for g in groups:
            if g.get("name") in (name, self.group):
                undelivered, held = g.get("lag"), g.get("pending")
                if undelivered is None or held is None:
                    return None
                return {self.stream: max(0, int(undelivered) + int(held) - in_hand)}
        return None

    def _parse(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> ParseResult:
        def reject(i: int, err: Exception) -> DeadLetter:
            eid, fields = entries[i]
            raw = json.dumps({k.decode(errors="backslashreplace"): v.decode(errors="backslashreplace")
                              for k, v in fields.items()})
            return DeadLetter(raw, self.name, {"id": eid.decode()}, str(err).strip())

        if self.field is not None:
            key = self.field.encode()
            missing = [i for i, (_, f) in enumerate(entries) if not (f.get(key) or b"").strip()]
            if missing:  # blank lines would vanish in a JSON block: take them out first
                absent = [reject(i, ValueError(f"no field {self.field!r}")) for i in missing]
                gone = set(missing)
                result = self._parse([e for i, e in enumerate(entries) if i not in gone])
                result.rejects[:0] = absent
                result.rejects.sort(key=lambda d: _id(d.offset["id"]))  # in stream order
                return result
            lines = [f[key].replace(b"\n", b" ") for _, f in entries]
            if self.parser is None:
                self.parser = JsonlFormat().parser(b"\n".join(lines[:1000]), self._schema, True,
                                                   self.name)
            parser = self.parser
            return isolate(len(lines),
                           lambda lo, hi: parser(b"\n".join(lines[lo:hi]) + b"\n"), reject)

        keys = [f.name.encode() for f in self._schema]

        def parse_fields(lo: int, hi: int) -> pa.Table:
            part = entries[lo:hi]
            cols = [text_to(pa.array([f.get(k) for _, f in part], pa.binary()).cast(pa.string()),
                            t.type) for k, t in zip(keys, self._schema, strict=True)]
            return pa.Table.from_arrays(cols, schema=self._schema)
        return isolate(len(entries), parse_fields, reject)


def redis_stream(url: str, stream: str, schema: SchemaLike, group: str | None = None,
                 consumer: str | None = None, field: str | None = None,
                 max_rows: int = 65_536, max_delay: Duration | None = "50ms",
                 bounded: bool = False, max_bad_fraction: float = 0.5) -> RedisStreamSource:
    """Read a Redis stream with redis-py (``XREADGROUP`` + ``XACK`` with a group).

    Parameters
    ----------
    url
        ``redis://host:port/db``.
    stream
        The stream's key.
    schema
        Every column and its type.
    group, consumer
        A consumer group (created at the stream's start if missing) and this reader's
        name in it (default ``gpustream-<pid>``). None: plain ``XREAD`` from the start.
    field
        Read each entry's JSON object from this field instead of field-per-column.
    max_rows, max_delay
        A batch is at most ``max_rows`` entries, waiting at most ``max_delay`` (<= 1 s).
    bounded
        End at the stream's last entry as of the start.
    max_bad_fraction
        Stop with an error when more than this fraction of the entries (after 100) do
        not fit the schema. Below it, they are dead letters.

    Examples
    --------
    >>> src = redis_stream("redis://127.0.0.1:6379/0", "clicks", group="counts",
    ...                    schema={"ts": "timestamp[ms]", "page": "string"})
    >>> src.describe()
    'redis_stream(clicks, group counts)'
    """
    return RedisStreamSource(url, stream, group, consumer, schema, field, max_rows, max_delay,
                             bounded, max_bad_fraction)
