"""Ingest: sources, parsing, micro-batching and staging (``gpustream.ingest``).

Ingest turns the outside world into :class:`gpustream.batch.Batch` es with an event-time
column and reports offsets for checkpoints; it knows nothing about windows or joins.
"""

from gpustream.ingest.arrow import ArrowSource, from_arrow
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.files import ParquetSource, read_parquet
from gpustream.ingest.source import Source, SourceBatch

__all__ = ["ArrowSource", "ParquetSource", "Source", "SourceBatch", "StringDictionary",
           "from_arrow", "read_parquet"]
