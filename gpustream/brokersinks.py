"""Broker sinks: ``gs.to_kafka`` (confluent-kafka) and ``gs.to_redis_stream`` (redis-py).

Rows go out as JSON objects (one message or entry per row; timestamps as epoch values
in their unit) or, for Kafka with ``format="arrow"``, as one Arrow IPC stream message
per batch. Both flush at the end of the run.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpustream.sinks import Sink

__all__ = ["KafkaSink", "RedisStreamSink", "to_kafka", "to_redis_stream"]


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as their int64 epoch values (what the sources read back)."""
    cols = [pc.cast(c, pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


class KafkaSink(Sink):
    """Produces to a Kafka topic; see :func:`to_kafka`."""

    def __init__(self, topic: str, bootstrap: str, format: str, key: str | None,
                 config: dict[str, Any] | None) -> None:
        if format not in ("json", "arrow"):
            raise ValueError(f"to_kafka: format={format!r} is not one of 'json', 'arrow'")
        self.topic, self.bootstrap, self.format, self.key = topic, bootstrap, format, key
        self.config = dict(config or {})
        self.name = f"kafka {topic}@{bootstrap} ({format})"
        self.producer: Any = None

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        if self.key is not None and self.key not in schema.names:
            raise ValueError(f"to_kafka: key column {self.key!r} is not in the stream; its "
                             f"columns are: {', '.join(schema.names)}")
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                                  **self.config})

    def write(self, batch: pa.RecordBatch) -> None:
        if self.format == "arrow":
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, batch.schema) as w:
                w.write_batch(batch)
            self.producer.produce(self.topic, sink.getvalue())
        else:
            rows = _plain(batch).to_pylist()
            for row in rows:
                key = None if self.key is None else str(row[self.key]).encode()
                while True:
                    try:
                        self.producer.produce(self.topic, json.dumps(row).encode(), key=key)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        self.producer.poll(0.1)
        self.producer.poll(0)

    def close(self) -> None:
        if self.producer is not None:
            left = self.producer.flush(30)
            if left:
                raise RuntimeError(f"to_kafka: {left} messages were not delivered to "
                                   f"{self.bootstrap} within 30 s")


class RedisStreamSink(Sink):
    """Appends rows to a Redis stream with ``XADD``; see :func:`to_redis_stream`."""

    def __init__(self, url: str, stream: str, maxlen: int | None) -> None:
        self.url, self.stream, self.maxlen = url, stream, maxlen
        self.name = f"redis stream {stream}"
        self.client: Any = None

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        import redis

        self.client = redis.Redis.from_url(self.url)

    def write(self, batch: pa.RecordBatch) -> None:
        pipe = self.client.pipeline(transaction=False)
        for row in _plain(batch).to_pylist():
            fields = {k: str(v) for k, v in row.items() if v is not None}  # absent: null
            pipe.xadd(self.stream, fields or {"_": ""}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def to_kafka(topic: str, bootstrap: str, format: str = "json",
             key: str | None = None, config: dict[str, Any] | None = None) -> KafkaSink:
    """Produce a stream's rows to a Kafka topic.

    Parameters
    ----------
    topic, bootstrap
        Where to (``host:port`` of the brokers).
    format
        ``"json"`` (a message per row) or ``"arrow"`` (an Arrow IPC message per batch).
    key
        A column whose value keys each message (same key, same partition).
    config
        More librdkafka producer settings.

    Examples
    --------
    >>> to_kafka("alerts", "127.0.0.1:9092", key="card").describe()
    'kafka alerts@127.0.0.1:9092 (json)'
    """
    return KafkaSink(topic, bootstrap, format, key, config)


def to_redis_stream(url: str, stream: str, maxlen: int | None = None) -> RedisStreamSink:
    """Append a stream's rows to a Redis stream (a field per column, values as text; a
    null is an absent field, which ``gs.redis_stream`` reads back as null).

    ``maxlen`` caps the stream's length (approximately, ``XADD MAXLEN ~``).

    Examples
    --------
    >>> to_redis_stream("redis://127.0.0.1:6379/0", "alerts").describe()
    'redis stream alerts'
    """
    return RedisStreamSink(url, stream, maxlen)
