"""Kafka topics as a source: ``gs.kafka(topic, bootstrap=..., group=..., schema=...)``.

Built on confluent-kafka (librdkafka). The consumer is *assigned* every partition of the
topic (no group rebalance wait), starting from the offsets given to :meth:`open` (a
checkpoint's), else the group's committed offsets, else the earliest. A batch is what one
``consume(max_rows, timeout=max_delay)`` call returns: at most ``max_rows`` messages,
closed after ``max_delay``. Message values are parsed per ``format``: ``json`` (one
object per message, parsed as a block by pyarrow), ``arrow`` (each message an Arrow IPC
stream) or ``avro`` (schemaless Avro records, decoded with fastavro). Values that do not
parse become dead letters with their partition and offset.

A share of the source (:meth:`~gpustream.ingest.source.Source.split`, for a partition of
a pipeline) reads the partitions whose position in the sorted partition list
``% count == index``; its offsets, lag and commits cover those alone.

The offset is ``{partition: next offset}`` for every partition. The group's offsets are
committed only by :meth:`KafkaSource.commit`, which the runtime calls once the output that
depends on them is durable: after the checkpoint that holds them (checkpointed runs), or
after the batch went through to the sinks (runs without checkpoints). A restart without
a checkpoint so reads again at most what had not gone through (at-least-once); a
checkpoint's offsets win over the group's (exactly-once state). The commits go through a
consumer of their own on the caller's thread: confluent-kafka's consumer blocks a
``commit`` from another thread while its ``consume`` waits. :meth:`KafkaSource.lag` gives
each partition's consumer lag (high watermark - next offset) as of the last read.
"""

from __future__ import annotations

import copy
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from gpustream.durations import Duration
from gpustream.errors import IngestError
from gpustream.ingest.batching import batch_bounds
from gpustream.ingest.deadletter import BadRecordGuard, DeadLetter, raw_text
from gpustream.ingest.lines import ParseResult, isolate
from gpustream.ingest.schema import SchemaLike, as_schema, conform
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.text import JsonlFormat, Parser

__all__ = ["KafkaSource", "avro_schema", "kafka"]

log = logging.getLogger("gpustream")
FORMATS = ("json", "arrow", "avro")


def avro_schema(schema: pa.Schema, name: str = "Event") -> dict[str, Any]:
    """The Avro record schema that matches an Arrow schema (every field nullable).

    Examples
    --------
    >>> avro_schema(pa.schema([("ts", pa.timestamp("ms")), ("v", pa.float64())]))["fields"]
    [{'name': 'ts', 'type': ['null', {'type': 'long', 'logicalType': 'timestamp-millis'}]}, {'name': 'v', 'type': ['null', 'double']}]
    """
    def avro_type(t: pa.DataType) -> Any:
        if pa.types.is_timestamp(t):
            logical = {"ms": "timestamp-millis", "us": "timestamp-micros"}.get(t.unit)
            return {"type": "long", "logicalType": logical} if logical else "long"
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_integer(t):
            return "int" if t.bit_width <= 32 and pa.types.is_signed_integer(t) else "long"
        if pa.types.is_float32(t):
            return "float"
        if pa.types.is_floating(t):
            return "double"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        raise IngestError(f"kafka: no Avro type for Arrow type {t}; give avro_schema=")
    return {"type": "record", "name": name,
            "fields": [{"name": f.name, "type": ["null", avro_type(f.type)]} for f in schema]}


class KafkaSource(Source):
    """See the module docstring and :func:`kafka`."""

    def __init__(self, topic: str, bootstrap: str, group: str | None, schema: SchemaLike,
                 format: str, max_rows: int, max_delay: Duration | None,
                 bounded: bool, config: dict[str, Any] | None,
                 avro: dict[str, Any] | None, max_bad_fraction: float = 0.5) -> None:
        if format not in FORMATS:
            raise IngestError(f"kafka: format={format!r} is not one of {', '.join(FORMATS)}")
        if schema is None:
            raise IngestError("kafka: give schema= (e.g. {'ts': 'timestamp[ms]', 'v': "
                              "'float64'}): a topic is not sampled before the run")
        self.topic, self.bootstrap, self.group = topic, bootstrap, group
        self._schema = as_schema(schema, "kafka")
        self.format = format
        self.max_rows, delay = batch_bounds(max_rows, max_delay, "kafka")
        self.max_delay_s = min(delay, 1.0)
        self.bounded = bounded
        self.config = dict(config or {})
        self.name = f"kafka({topic}@{bootstrap}, {format})"
        self.max_bad_fraction = max_bad_fraction
        BadRecordGuard(max_bad_fraction, "kafka", format)  # checks the argument now
        self.parser: Parser | None = None
        self._avro: Any = None
        self._lag: dict[str, int] | None = None
        # commit() runs on the pipeline thread with a consumer of its own, kept while a
        # read is open (``_reading``, set by the reading thread) and closed after it
        self._lock = threading.Lock()
        self._reading = 0
        self._committer: Any = None
        if format == "avro":
            import fastavro

            self._avro = fastavro.parse_schema(avro or avro_schema(self._schema))

    def schema(self) -> pa.Schema:
        """The schema given."""
        return self._schema

    def _share(self, index: int, count: int) -> KafkaSource:
        """A fresh copy (no consumer, lock or lag of this one's); :meth:`split` records
        ``(index, count)`` and the read takes those partitions when it lists them."""
        return copy.copy(self)  # through __getstate__/__setstate__

    def __getstate__(self) -> dict[str, Any]:
        """The settings, without the lock, the committing consumer and the lag of a read."""
        state = dict(self.__dict__)
        for k in ("_lock", "_committer", "_reading", "_lag"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Settings back, with a lock of its own and no read open."""
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._reading = 0
        self._committer = None
        self._lag = None

    def lag(self) -> dict[str, int] | None:
        """Records each partition (``"topic/partition"``) is behind: its high watermark
        as of the last fetch minus the next offset to read; None before the first read.

        Recorded by the reading thread after each ``consume``; this only reads that.

        Examples
        --------
        >>> print(kafka("bids", "127.0.0.1:9092", schema={"ts": "timestamp[ms]"}).lag())
        None
        """
        return self._lag

    def commit(self, offset: Any) -> None:
        """Commit ``offset`` (``{partition: next offset}``, as a batch carried it) for the
        group, synchronously: a restart without a checkpoint starts there. Nothing without
        a group. Called by the runtime once the output that depends on it is durable; a
        commit the broker refuses is logged (the next run reads that stretch again).

        Examples
        --------
        >>> kafka("bids", "127.0.0.1:9092", schema={"ts": "timestamp[ms]"}).commit({"0": 5})
        """
        if self.group is None or not offset:
            return
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(self.topic, int(p), int(o)) for p, o in offset.items()]
        with self._lock:
            if self._committer is None:
                self._committer = self._consumer()
            committer = self._committer
            try:
                done = committer.commit(offsets=tps, asynchronous=False) or []
                failed = [f"{tp.partition}: {tp.error}" for tp in done if tp.error is not None]
                if failed:
                    log.warning("kafka %s: group %r: commit refused for partitions %s; a "
                                "restart without a checkpoint reads them again", self.topic,
                                self.group, ", ".join(failed))
            except KafkaException as err:
                log.warning("kafka %s: group %r: commit failed (%s); a restart without a "
                            "checkpoint reads that stretch again", self.topic, self.group, err)
            finally:
                if not self._reading:  # the read is over (a bounded read's final commit)
                    self._committer = None
                    committer.close()

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        conf = {"bootstrap.servers": self.bootstrap,
                "group.id": self.group or "gpustream",
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000, "enable.partition.eof": True, **self.config}
        return Consumer(conf)

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches from ``offset`` (``{partition: next offset}``) onwards."""
        guard = BadRecordGuard(self.max_bad_fraction, "kafka", self.format)
        for sb in self._batches(offset):
            yield sb
            guard.count(f"topic {self.topic!r}", sb.data.num_rows, len(sb.rejects))

    def _batches(self, offset: Any) -> Iterator[SourceBatch]:
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        self._lag = None
        consumer = self._consumer()
        with self._lock:
            self._reading += 1
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            info = meta.topics.get(self.topic)
            if info is None or info.error is not None or not info.partitions:
                raise IngestError(f"kafka: topic {self.topic!r} is not on {self.bootstrap} "
                                  f"({info.error if info else 'no metadata'}); create it first")
            parts = sorted(info.partitions)
            if self.shared_as is not None:
                index, count = self.shared_as
                parts = parts[index::count]
                if not parts:
                    log.warning("kafka %s: %s has no partition to read: the topic has %d, "
                                "fewer than the %d shares", self.topic, self.name,
                                len(info.partitions), count)
            given = {int(k): int(v) for k, v in (offset or {}).items()}
            committed = {} if given or self.group is None else {
                tp.partition: tp.offset for tp in consumer.committed(
                    [TopicPartition(self.topic, p) for p in parts], timeout=10) if tp.offset >= 0}
            start = {p: given.get(p, committed.get(p, OFFSET_BEGINNING)) for p in parts}
            consumer.assign([TopicPartition(self.topic, p, start[p]) for p in parts])
            listed: dict[int, int] = {}
            if self.bounded:
                for p in parts:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(self.topic, p), timeout=10, cached=False)
                    listed[p] = high
            ends = _Ends(self.topic, parts, listed)
            position = {p: max(start[p], 0) if start[p] >= 0 else 0 for p in parts}
            while True:
                if self.bounded and ends.done(position):
                    return
                msgs = consumer.consume(self.max_rows, timeout=self.max_delay_s)
                if self.bounded:
                    ends.observe(consumer)
                good = []
                for m in msgs:
                    err = m.error()
                    part = m.partition()
                    if err is None:
                        if not self.bounded or m.offset() < ends.end(part):
                            good.append(m)
                            position[part] = m.offset() + 1
                        else:  # past the end: all before it has been seen
                            position[part] = max(position[part], ends.end(part))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        # read up to the high watermark: offsets held by no record the
                        # consumer sees (transaction markers, compacted away) are passed too
                        eof = min(m.offset(), ends.end(part)) if self.bounded else m.offset()
                        position[part] = max(position[part], eof)
                    else:
                        if err.fatal():
                            raise IngestError(f"kafka: {err.str()}")
                        log.warning("kafka %s: %s", self.topic, err.str())
                self._lag = ends.lag(consumer, position)
                if not good:
                    continue
                result = self._fast_json(good) if self.format == "json" else None
                if result is None:
                    result = self._parse(good)
                table = result.table if result.table is not None else self._schema.empty_table()
                rbs = table.combine_chunks().to_batches()
                data = rbs[0] if rbs else pa.RecordBatch.from_pylist([], schema=self._schema)
                yield SourceBatch(data, {str(p): position[p] for p in parts},
                                  tuple(result.rejects))
        finally:
            consumer.close()
            with self._lock:
                self._reading -= 1

    def _fast_json(self, msgs: list[Any]) -> ParseResult | None:
        """One parse of every value joined, when no value is empty or spans lines and
        every line parses; None sends the batch the careful way."""
        values = [m.value() for m in msgs]
        if None in values:
            return None
        data = b"\n".join(values)
        if data.count(b"\n") != len(values) - 1:
            return None
        if self.parser is None:
            return None
        try:
            table = self.parser(data + b"\n")
        except (pa.ArrowException, ValueError):
            return None
        return ParseResult(table, []) if table.num_rows == len(values) else None

    def _parse(self, msgs: list[Any]) -> ParseResult:
        empty = [m for m in msgs if not (m.value() or b"").strip()]
        if empty:  # a message with no value (a tombstone) is no event: say so, keep going
            msgs = [m for m in msgs if (m.value() or b"").strip()]
        values = [m.value() for m in msgs]

        def letter(m: Any, reason: str) -> DeadLetter:
            return DeadLetter(raw_text(m.value() or b""), self.name,
                              {"partition": m.partition(), "offset": m.offset()}, reason)

        def reject(i: int, err: Exception) -> DeadLetter:
            return letter(msgs[i], str(err).strip())

        result = self._parse_values(values, reject)
        result.rejects[:0] = [letter(m, "empty message") for m in empty]
        result.rejects.sort(key=lambda d: (d.offset["partition"], d.offset["offset"]))
        return result

    def _parse_values(self, values: list[bytes], reject: Any) -> ParseResult:
        if self.format == "json":
            # JSON allows no raw newline inside a value: a message's newlines are spacing
            lines = [v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values]
            if self.parser is None and lines:
                self.parser = JsonlFormat().parser(b"\n".join(lines[:1000]), self._schema, True,
                                                   self.name)
            parser = self.parser
            assert parser is not None or not lines
            return isolate(len(lines), lambda lo, hi: parser(  # type: ignore[misc]
                b"\n".join(lines[lo:hi]) + b"\n"), reject)
        if self.format == "arrow":
            return isolate(len(values), lambda lo, hi: pa.Table.from_batches(
                [conform(pa.ipc.open_stream(v).read_all(), self._schema) for v in values[lo:hi]],
                schema=self._schema), reject)
        import fastavro

        def avro(lo: int, hi: int) -> pa.Table:
            try:
                rows = [fastavro.schemaless_reader(io.BytesIO(v), self._avro, None)
                        for v in values[lo:hi]]
            except Exception as err:
                raise ValueError(f"not an Avro record of the schema ({type(err).__name__}: "
                                 f"{err})") from err
            return pa.Table.from_pylist(rows, schema=self._schema)
        return isolate(len(values), avro, reject)


class _Ends:
    """Where a bounded read of each partition ends, and how far behind the reader is.

    A bounded read ends at the larger of two high watermarks: the one ListOffsets gives at
    the start (exact on Apache Kafka; some brokers, such as Tansu, give the last record
    batch's base offset + 1 there) and the one the partition's first fetch response
    carries (librdkafka keeps it; it counts every record of the batches fetched).
    """

    def __init__(self, topic: str, parts: list[int], listed: dict[int, int]) -> None:
        self.topic, self.parts, self.listed = topic, parts, listed
        self.fetched: dict[int, int] = {}

    def _marks(self, consumer: Any, p: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        marks = consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
        return (int(marks[0]), int(marks[1])) if marks else (-1, -1)

    def observe(self, consumer: Any) -> None:
        """Note each partition's high watermark from its first fetch response."""
        for p in self.parts:
            if p not in self.fetched:
                high = self._marks(consumer, p)[1]
                if high >= 0:
                    self.fetched[p] = high

    def end(self, p: int) -> int:
        """The offset partition ``p`` ends before (unbounded until it has been fetched)."""
        if p not in self.fetched:
            return 2**63 - 1
        return max(self.listed.get(p, 0), self.fetched[p])

    def done(self, position: dict[int, int]) -> bool:
        """True when every partition has been read up to its end."""
        return all(p in self.fetched and position[p] >= self.end(p) for p in self.parts)

    def lag(self, consumer: Any, position: dict[int, int]) -> dict[str, int]:
        """``{"topic/partition": high watermark - next offset}`` where it is known."""
        out = {}
        for p in self.parts:
            low, high = self._marks(consumer, p)
            if high >= 0:
                out[f"{self.topic}/{p}"] = max(0, high - max(position[p], low))
        return out


def kafka(topic: str, bootstrap: str, schema: SchemaLike, group: str | None = None,
          format: str = "json", max_rows: int = 65_536,
          max_delay: Duration | None = "50ms", bounded: bool = False,
          config: dict[str, Any] | None = None,
          avro_schema: dict[str, Any] | None = None,
          max_bad_fraction: float = 0.5) -> KafkaSource:
    """Read a Kafka topic (every partition) with confluent-kafka.

    Parameters
    ----------
    topic
        The topic.
    bootstrap
        ``host:port[,host:port]`` of the brokers.
    schema
        Every column and its type; ``json`` timestamps as ISO 8601 text or epoch numbers.
    group
        The consumer group: where a run starts when no checkpoint says, and where
        offsets are committed once the output that depends on them is durable (after
        each checkpoint; without checkpoints, after each batch went through to the
        sinks). None: start at the earliest, commit nothing.
    format
        ``"json"``, ``"arrow"`` (Arrow IPC stream per message) or ``"avro"`` (schemaless
        records; ``avro_schema`` defaults to one derived from ``schema``).
    max_rows, max_delay
        A batch closes at ``max_rows`` messages or ``max_delay`` (at most 1 s).
    bounded
        End at the partitions' end offsets as of the start (a batch job over a topic):
        the larger of the broker's listed end and the high watermark its first fetch
        response for the partition reports, so every record there was is read whatever
        the producer's batching.
    config
        More librdkafka settings (security, fetch sizes …).
    max_bad_fraction
        Stop with an error when more than this fraction of the messages (after 100) do
        not parse: the topic holds another format. Below it, they are dead letters.

    Examples
    --------
    >>> src = kafka("bids", "127.0.0.1:9092", schema={"ts": "timestamp[ms]", "price": "float64"},
    ...             group="hot-items")
    >>> src.describe(), src.bounded
    ('kafka(bids@127.0.0.1:9092, json)', False)
    """
    return KafkaSource(topic, bootstrap, group, schema, format, max_rows, max_delay, bounded,
                       config, avro_schema, max_bad_fraction)
