"""Redis Streams as a source: ``gs.redis_stream(url, stream, group=..., schema=...)``.

Built on redis-py. With a ``group`` the source reads with ``XREADGROUP`` (first its own
pending entries, left unacknowledged by a run that died, then new ones); without one it
reads with ``XREAD``. A batch is one read: at most ``max_rows`` entries, waiting at most
``max_delay`` (``BLOCK``). Entries become rows either field by field (each field a
column, its text cast to the column's type) or, with ``field=``, from one field holding a
JSON object. Entries that do not fit become dead letters with their id.

The offset is the id of the last entry read. Entries stay pending in the group until
:meth:`RedisStreamSource.commit` ``XACK`` s them, which the runtime calls once the output
that depends on them is durable (after the checkpoint that holds the offset, or after the
batch went through to the sinks without checkpoints); it uses a client of its own, on the
caller's thread. :meth:`RedisStreamSource.open` given an offset (a checkpoint's) resumes
after it: the group is moved there (``XGROUP SETID``), so entries after it are delivered
again whoever held them, and the group's entries up to it still pending (read before the
checkpoint, not yet acknowledged when the run died) are acknowledged. With a group,
:meth:`RedisStreamSource.lag` gives the entries the group has not finished, from
``XINFO GROUPS`` sent with each read.

A share of the source (:meth:`~gpustream.ingest.source.Source.split`, for a partition of
a pipeline) needs a group: share ``i`` reads as consumer ``<consumer>-<i>`` of it, so the
group hands each entry to one share. Resumed from an offset (its checkpoint's), a share
leaves the group's position alone (the other shares read from it): it acknowledges its
own pending entries up to the offset and reads first those after it, then new ones.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import deque
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
        # the ids of batches handed over and not yet committed, oldest first: appended by
        # the reading thread, taken by commit() on the pipeline thread (which XACKs them
        # with a client of its own, kept while a read is open)
        self._lock = threading.Lock()
        self._unacked: deque[tuple[tuple[int, int], list[bytes]]] = deque()
        self._held = 0
        self._reading = 0
        self._acker: Any = None

    def schema(self) -> pa.Schema:
        """The schema given."""
        return self._schema

    def _share(self, index: int, count: int) -> RedisStreamSource:
        """A fresh copy (no client, lock or batches of this one's) that reads as consumer
        ``<consumer>-<index>`` of the group."""
        share = copy.copy(self)  # through __getstate__/__setstate__
        if count > 1:
            if self.group is None:
                raise IngestError(f"{self.name}: a stream is split across partitions by a "
                                  "consumer group; give group= (each partition reads as a "
                                  "consumer of it) or use parallelism=1")
            share.consumer = f"{self.consumer}-{index}"
        return share

    def __getstate__(self) -> dict[str, Any]:
        """The settings, without the lock, the acknowledging client and a read's state."""
        state = dict(self.__dict__)
        for k in ("_lock", "_unacked", "_held", "_reading", "_acker", "_lag"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Settings back, with a lock of its own and no read open."""
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._unacked = deque()
        self._held = 0
        self._reading = 0
        self._acker = None
        self._lag = None

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
            if last is not None and self.shared_as is None:
                # a checkpoint's position: what comes after it is delivered again (to
                # this consumer, whoever held it), what it covers is done with
                r.xgroup_setid(self.stream, self.group, last)
                self._ack_up_to(r, last)
            elif last is not None:
                # a share's checkpoint: its entries up to it are done with; the group's
                # position is the other shares' too, so read first this consumer's
                # pending entries after it
                self._ack_up_to(r, last, self.consumer)
                pending = True
            else:
                pending = True  # first what this consumer was given and did not ack
        with self._lock:
            self._unacked.clear()
            self._held = 0
            self._reading += 1
        try:
            while True:
                reply: Any
                if self.group is not None:
                    # one round trip: the read and the group's standing
                    pipe = r.pipeline(transaction=False)
                    pipe.xreadgroup(self.group, self.consumer,
                                    {self.stream: (last or "0") if pending else ">"},
                                    count=self.max_rows, block=None if pending else self.block_ms)
                    pipe.xinfo_groups(self.stream)
                    reply, groups = pipe.execute()
                else:
                    reply = r.xread({self.stream: last or "0"}, count=self.max_rows,
                                    block=self.block_ms)
                entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
                if self.group is not None:
                    with self._lock:
                        held = self._held  # handed over, pending until committed
                    self._lag = self._group_lag(groups, held + len(entries))
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
                if self.group is not None:  # before the batch is handed over: commit() may
                    with self._lock:        # come as soon as it went through
                        self._unacked.append((_id(last), ids))
                        self._held += len(ids)
                yield SourceBatch(data, last, tuple(result.rejects))
                if end is not None and _id(last) >= end:
                    return
        finally:
            with self._lock:
                self._reading -= 1
            r.close()

    def _ack_up_to(self, r: Any, last: str, consumer: str | None = None) -> None:
        """Acknowledge the group's pending entries up to and including ``last`` (those
        ``consumer`` holds, where given)."""
        assert self.group is not None
        start = "-"
        while True:
            held = r.xpending_range(self.stream, self.group, min=start, max=last, count=10_000,
                                    consumername=consumer)
            if not held:
                return
            r.xack(self.stream, self.group, *[h["message_id"] for h in held])
            if len(held) < 10_000:
                return
            start = "(" + held[-1]["message_id"].decode()

    def commit(self, offset: Any) -> None:
        """``XACK`` the entries of every batch handed over up to ``offset`` (an entry id,
        as a batch carried it): the group has finished with them. Nothing without a group.
        Called by the runtime once the output that depends on them is durable.

        Examples
        --------
        >>> redis_stream("redis://127.0.0.1:6379/0", "clicks",
        ...              schema={"ts": "timestamp[ms]"}).commit("1-0")  # no group: no XACK
        """
        if self.group is None or offset is None:
            return
        import redis

        upto = _id(str(offset))
        with self._lock:
            ids: list[bytes] = []
            while self._unacked and self._unacked[0][0] <= upto:
                ids += self._unacked.popleft()[1]
            self._held -= len(ids)
            if not ids:
                return
            if self._acker is None:
                self._acker = redis.Redis.from_url(self.url)
            acker = self._acker
            try:
                for i in range(0, len(ids), 10_000):
                    acker.xack(self.stream, self.group, *ids[i:i + 10_000])
            finally:
                if not self._reading:  # the read is over (a bounded read's final commit)
                    self._acker = None
                    acker.close()

    def lag(self) -> dict[str, int] | None:
        """Entries of the stream its group has not finished, ``{stream: n}``: those not yet
        delivered to the group plus those delivered but not acknowledged (held by another
        consumer or left by a reader that died), less those this reader has handed over
        and not yet committed (they are in the pipeline, not behind). As of the last
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
        """The group's lag from an ``XINFO GROUPS`` reply, less ``in_hand`` entries."""
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
    """Read a Redis stream with redis-py (``XREADGROUP``, and ``XACK`` once the output is
    durable, with a group).

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
        name in it (default ``gpustream-<pid>``; give a stable name so that a restart
        without a checkpoint reads again what a run that died left pending). Entries are
        acknowledged once the output that depends on them is durable. None: plain
        ``XREAD`` from the start.
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
