"""Sinks: where a stream's rows go.

``base``: the :class:`Sink` contract and the small sinks (callback, collect, console,
dead letters); ``files``: Parquet, CSV and JSON Lines with exactly-once commits;
``partitioned``: Hive-style folders by column values; ``brokers``: Kafka and Redis streams.

Examples
--------
>>> from gpustream.sinks import CollectSink, Sink
>>> issubclass(CollectSink, Sink)
True
"""

from gpustream.sinks.base import (
    DEAD_LETTER_SCHEMA,
    CallbackSink,
    CollectSink,
    ConsoleSink,
    DeadLetterSink,
    Sink,
    to_callback,
    to_console,
    write_batch,
)
from gpustream.sinks.brokers import KafkaSink, RedisStreamSink, to_kafka, to_redis_stream
from gpustream.sinks.files import (
    CsvSink,
    FileSink,
    JsonlSink,
    ParquetSink,
    to_csv,
    to_jsonl,
    to_parquet,
)
from gpustream.sinks.partitioned import NULL_PARTITION, PartitionedSink, partition_folder

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "NULL_PARTITION",
    "CallbackSink",
    "CollectSink",
    "ConsoleSink",
    "CsvSink",
    "DeadLetterSink",
    "FileSink",
    "JsonlSink",
    "KafkaSink",
    "ParquetSink",
    "PartitionedSink",
    "RedisStreamSink",
    "Sink",
    "partition_folder",
    "to_callback",
    "to_console",
    "to_csv",
    "to_jsonl",
    "to_kafka",
    "to_parquet",
    "to_redis_stream",
    "write_batch",
]
