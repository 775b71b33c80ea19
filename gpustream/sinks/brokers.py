"""Broker sinks: ``gs.to_kafka`` (confluent-kafka) and ``gs.to_redis_stream`` (redis-py).

Rows go out as JSON objects (one message or entry per row; timestamps as epoch values
in their unit) or, for Kafka with ``format="arrow"``, as one Arrow IPC stream message
per batch.

Without checkpoints both are at-least-once: a batch is on the broker when ``write``
returns (the Kafka producer is idempotent and flushed per batch), so the runtime commits
the source offsets after it, and a run that dies writes again what it had not committed.

With checkpoints (the sink two-phase commit of :class:`gpustream.sinks.Sink`):

- Kafka: a transaction per checkpoint, ``transactional.id`` ``gpustream-<key>`` from the
  sink's stable key. ``restore`` fences a run that died and aborts its open transaction
  (rows after its last checkpoint); ``prepare`` commits the transaction before the
  checkpoint is written and begins the next. Consumers that read committed data
  (``isolation.level=read_committed``, librdkafka's default) so see every row once,
  except for one window: a crash after ``prepare`` committed and before the checkpoint
  reached the disk writes that checkpoint's rows again (at-least-once). Committing only
  after the checkpoint would instead lose them in the mirror window: librdkafka cannot
  resume a dead producer's transaction. A broker without transactions (``InitProducerId``
  unsupported) falls back to the idempotent producer, at-least-once, with a warning.
- Redis: rows are appended to a hidden staging stream (``{<stream>}:gpustream-staging:<key>``,
  in the stream's Redis Cluster hash slot);
  ``prepare`` records its last entry id, and ``commit`` (once the checkpoint is on disk)
  moves the entries up to it into the stream, a chunk at a time, each chunk added and
  deleted from staging in one Lua script (atomic). ``restore`` finishes the move its
  checkpoint recorded and drops what a dead run staged after it, so every row reaches the
  stream once, as far as Redis keeps what it acknowledged (its persistence settings).
  Rows become visible at checkpoints.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpustream.sinks.base import Sink

__all__ = ["KafkaSink", "RedisStreamSink", "to_kafka", "to_redis_stream"]

log = logging.getLogger("gpustream")
#: seconds the Kafka sink waits for the broker (flush, transactions)
_KAFKA_TIMEOUT_S = 30.0
def _staging_key(stream: str, key: str) -> str:
    """The staging stream of ``stream``, in the same Redis Cluster hash slot (a key's slot
    comes from its first ``{...}`` tag, else from the whole name), so that one script can
    move entries between them.

    Examples
    --------
    >>> _staging_key("alerts", "p/sink0")
    '{alerts}:gpustream-staging:p/sink0'
    >>> _staging_key("user{42}:alerts", "p/sink0")  # its own tag already decides its slot
    'user{42}:alerts:gpustream-staging:p/sink0'
    """
    lo = stream.find("{")
    if lo >= 0 and stream.find("}", lo + 1) > lo + 1:
        return f"{stream}:gpustream-staging:{key}"
    return f"{{{stream}}}:gpustream-staging:{key}"


#: entries moved from a Redis staging stream per (atomic) script call
_MOVE_CHUNK = 2_000
# Moves up to ARGV[2] entries with ids <= ARGV[1] from staging KEYS[1] to KEYS[2] (MAXLEN
# ~ ARGV[3] when not empty), deleting them from staging in the same atomic step.
_MOVE_LUA = """
local moved = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', tonumber(ARGV[2]))
local ids = {}
for i, e in ipairs(moved) do
  if ARGV[3] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(e[2]))
  else
    redis.call('XADD', KEYS[2], '*', unpack(e[2]))
  end
  ids[i] = e[1]
end
if #ids > 0 then
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return #ids
"""


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as their int64 epoch values (what the sources read back)."""
    cols = [pc.cast(c, pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


class KafkaSink(Sink):
    """Produces to a Kafka topic; see :func:`to_kafka` and the module docstring."""

    #: its ``prepare`` commits a transaction: the runtime prepares it after the others,
    #: so that a failing sink cannot leave its rows visible without a checkpoint
    commits_in_prepare = True

    def __init__(self, topic: str, bootstrap: str, format: str, key: str | None,
                 config: dict[str, Any] | None, upsert: bool = False) -> None:
        if format not in ("json", "arrow"):
            raise ValueError(f"to_kafka: format={format!r} is not one of 'json', 'arrow'")
        if upsert and (key is None or format != "json"):
            raise ValueError("to_kafka: upsert=True needs key= (the column each message is "
                             "keyed by: the result row it replaces) and format='json'")
        self.topic, self.bootstrap, self.format, self.key = topic, bootstrap, format, key
        self.upsert = upsert
        self.config = dict(config or {})
        self.name = f"kafka {topic}@{bootstrap} ({'upsert' if upsert else format})"
        self.producer: Any = None
        #: the transactional id while writing in transactions (checkpointed runs)
        self.transactional_id: str | None = None
        self._in_txn = 0  # messages produced into the open transaction
        self._failed: list[str] = []  # delivery errors, raised at the next flush

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        if self.key is not None and self.key not in schema.names:
            raise ValueError(f"to_kafka: key column {self.key!r} is not in the stream; its "
                             f"columns are: {', '.join(schema.names)}")

    def _new_producer(self, extra: dict[str, Any]) -> Any:
        from confluent_kafka import Producer

        def delivered(err: Any, msg: Any) -> None:  # only called for errors
            if err is not None and len(self._failed) < 5:
                self._failed.append(err.str())

        conf = {"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                "enable.idempotence": True, "delivery.report.only.error": True,
                "on_delivery": delivered, **self.config, **extra}
        if "transactional.id" not in extra:  # a producer outside transactions
            conf.pop("transactional.id", None)
        return Producer(conf)

    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        """Start writing in transactions as ``gpustream-<key>`` (or the ``transactional.id``
        of ``config``): this fences a run that died with the same id and aborts its open
        transaction, the rows it wrote after checkpoint ``seq``. Checkpoint ``seq``'s own
        rows were committed by :meth:`prepare` before it was written: nothing to finish."""
        from confluent_kafka import KafkaError, KafkaException

        tid = str(self.config.get("transactional.id") or f"gpustream-{key}")
        producer = self._new_producer({"transactional.id": tid})
        try:
            producer.init_transactions(_KAFKA_TIMEOUT_S)
        except KafkaException as err:
            e = err.args[0]
            if e.code() in (KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE):
                log.warning("to_kafka %s: the broker has no transactions (%s): writing with "
                            "the idempotent producer, at-least-once (rows after the last "
                            "checkpoint are written again after a crash)", self.topic, e.str())
                self.producer = self._new_producer({})
                return
            raise RuntimeError(
                f"to_kafka: cannot start transactions on {self.bootstrap} as {tid!r} "
                f"({e.str()}); the principal needs Write on that transactional id (or give "
                f"config={{'transactional.id': ...}})") from err
        producer.begin_transaction()
        self.producer, self.transactional_id, self._in_txn = producer, tid, 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self.producer is None:  # a run without checkpoints: the idempotent producer
            self.producer = self._new_producer({})
        if self.format == "arrow":
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, batch.schema) as w:
                w.write_batch(batch)
            self._produce(sink.getvalue(), None)
            self._in_txn += 1
        else:
            rows = _plain(batch).to_pylist()
            for row in rows:
                key = None if self.key is None else str(row[self.key]).encode()
                if self.upsert:  # a changelog: the key's latest row, or a tombstone
                    op = row.pop("op", "+I")
                    if op == "-U":  # its +U replaces the row
                        continue
                    if op == "-D":
                        self._produce(None, key)
                        continue
                self._produce(json.dumps(row).encode(), key)
            self._in_txn += len(rows)
        if self.transactional_id is None:  # at-least-once: on the broker before the
            self._flush()                  # runtime commits the source offsets
        else:
            self.producer.poll(0)

    def _produce(self, value: bytes | None, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key=key)
                return
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.1)

    def _flush(self) -> None:
        left = self.producer.flush(_KAFKA_TIMEOUT_S)
        if left:
            raise RuntimeError(f"to_kafka: {left} messages were not delivered to "
                               f"{self.bootstrap} within {_KAFKA_TIMEOUT_S:.0f} s")
        if self._failed:
            raise RuntimeError(f"to_kafka: messages to topic {self.topic!r} failed: "
                               f"{'; '.join(self._failed)}")

    def prepare(self, seq: int) -> dict[str, Any]:
        """Commit the open transaction (every row written since the last checkpoint) and
        begin the next; see the module docstring for why before the checkpoint."""
        from confluent_kafka import KafkaError, KafkaException

        if self.transactional_id is None:
            if self.producer is not None:
                self._flush()
            return {}
        try:
            self.producer.commit_transaction(_KAFKA_TIMEOUT_S)
        except KafkaException as err:
            e = err.args[0]
            self._in_txn = 0  # aborted here, by the broker, or by the run that fenced this one
            if e.txn_requires_abort() and e.code() != KafkaError.PRODUCER_FENCED:
                try:
                    self.producer.abort_transaction(_KAFKA_TIMEOUT_S)
                except KafkaException as again:
                    log.warning("to_kafka %s: aborting failed too: %s", self.topic, again)
            raise RuntimeError(
                f"to_kafka: the transaction of checkpoint {seq} on topic {self.topic!r} did "
                f"not commit ({e.name()}: {e.str()}); its rows are not visible and a restart "
                "writes them again. PRODUCER_FENCED: another run uses transactional id "
                f"{self.transactional_id!r}; a timeout: checkpoints came further apart than "
                "transaction.timeout.ms (60 s unless config= raises it)") from err
        self.producer.begin_transaction()
        self._in_txn = 0
        return {"transactional_id": self.transactional_id}

    def commit(self, seq: int) -> None:
        """Nothing: :meth:`prepare` committed checkpoint ``seq``'s transaction."""

    def close(self) -> None:
        if self.producer is None:
            return
        if self.transactional_id is None:
            self._flush()
            return
        if self._in_txn:  # rows after the last checkpoint: a restart from it writes them
            from confluent_kafka import KafkaException

            try:
                self.producer.abort_transaction(_KAFKA_TIMEOUT_S)
            except KafkaException as err:  # the broker aborts it at its timeout anyway
                log.warning("to_kafka %s: aborting the open transaction failed: %s",
                            self.topic, err)


class RedisStreamSink(Sink):
    """Appends rows to a Redis stream with ``XADD``; see :func:`to_redis_stream` and the
    module docstring."""

    def __init__(self, url: str, stream: str, maxlen: int | None) -> None:
        self.url, self.stream, self.maxlen = url, stream, maxlen
        self.name = f"redis stream {stream}"
        self.client: Any = None
        #: the staging stream while writing under checkpoints
        self.staging: str | None = None
        self._last_staged: str | None = None
        self._prepared: dict[int, str | None] = {}
        self._move: Any = None

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        import redis

        self.client = redis.Redis.from_url(self.url)

    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        """Write to the staging stream of ``key`` from now on; move what checkpoint ``seq``
        recorded into the stream (if its commit did not happen) and drop what a run that
        died staged after it."""
        self.staging = _staging_key(self.stream, key)
        self._move = self.client.register_script(_MOVE_LUA)
        upto = (state or {}).get("upto")
        if upto is not None:
            self._move_up_to(str(upto))
        self.client.delete(self.staging)
        self._last_staged = None

    def write(self, batch: pa.RecordBatch) -> None:
        pipe = self.client.pipeline(transaction=False)
        for row in _plain(batch).to_pylist():
            fields = {k: str(v) for k, v in row.items() if v is not None}  # absent: null
            if self.staging is None:
                pipe.xadd(self.stream, fields or {"_": ""}, maxlen=self.maxlen, approximate=True)
            else:
                pipe.xadd(self.staging, fields or {"_": ""})
        ids = pipe.execute()
        if self.staging is not None and ids:
            last = ids[-1]
            self._last_staged = last.decode() if isinstance(last, bytes) else str(last)

    def prepare(self, seq: int) -> dict[str, Any]:
        """Record the last staged entry: checkpoint ``seq`` covers the entries up to it."""
        self._prepared[seq] = self._last_staged
        return {"upto": self._last_staged}

    def commit(self, seq: int) -> None:
        """Move the entries checkpoint ``seq`` covers from staging into the stream."""
        upto = self._prepared.get(seq)
        for s in [s for s in self._prepared if s <= seq]:
            del self._prepared[s]
        if upto is not None:
            self._move_up_to(upto)

    def _move_up_to(self, upto: str) -> None:
        maxlen = "" if self.maxlen is None else str(self.maxlen)
        while self._move(keys=[self.staging, self.stream],
                         args=[upto, _MOVE_CHUNK, maxlen]) == _MOVE_CHUNK:
            pass

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def to_kafka(topic: str, bootstrap: str, format: str = "json",
             key: str | None = None, config: dict[str, Any] | None = None,
             upsert: bool = False) -> KafkaSink:
    """Produce a stream's rows to a Kafka topic.

    Without checkpoints, at-least-once (an idempotent producer, flushed per batch). With
    checkpoints, a transaction per checkpoint: exactly-once for ``read_committed``
    consumers but for a crash between a transaction's commit and its checkpoint reaching
    the disk (that checkpoint's rows then come twice); see :mod:`gpustream.sinks.brokers`.

    Parameters
    ----------
    topic, bootstrap
        Where to (``host:port`` of the brokers).
    format
        ``"json"`` (a message per row) or ``"arrow"`` (an Arrow IPC message per batch).
    key
        A column whose value keys each message (same key, same partition).
    config
        More librdkafka producer settings (``transactional.id`` replaces the one derived
        from the pipeline; ``transaction.timeout.ms`` must exceed the checkpoint interval).
    upsert
        Write a changelog (:mod:`gpustream.changelog`) as upserts, as Flink's
        ``upsert-kafka``: ``+I``/``+U`` rows as the ``key``'s value (without ``op``),
        ``-D`` as a tombstone (the key with a null value), ``-U`` not at all (its ``+U``
        replaces it). A compacted topic then holds the result table. Needs ``key`` (the
        column that identifies a result row, e.g. a running aggregation's key) and JSON.

    Examples
    --------
    >>> to_kafka("alerts", "127.0.0.1:9092", key="card").describe()
    'kafka alerts@127.0.0.1:9092 (json)'
    >>> to_kafka("spend", "127.0.0.1:9092", key="bidder", upsert=True).describe()
    'kafka spend@127.0.0.1:9092 (upsert)'
    """
    return KafkaSink(topic, bootstrap, format, key, config, upsert)


def to_redis_stream(url: str, stream: str, maxlen: int | None = None) -> RedisStreamSink:
    """Append a stream's rows to a Redis stream (a field per column, values as text; a
    null is an absent field, which ``gs.redis_stream`` reads back as null).

    ``maxlen`` caps the stream's length (approximately, ``XADD MAXLEN ~``). Without
    checkpoints, at-least-once; with checkpoints, rows are staged and moved into the
    stream when each checkpoint is on disk: exactly-once, visible at checkpoints (see
    :mod:`gpustream.sinks.brokers`).

    Examples
    --------
    >>> to_redis_stream("redis://127.0.0.1:6379/0", "alerts").describe()
    'redis stream alerts'
    """
    return RedisStreamSink(url, stream, maxlen)
