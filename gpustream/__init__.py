"""gpustream: event-time stream processing on NVIDIA GPUs, with numba CPU twins.

``import gpustream`` touches no GPU and loads neither numba's CUDA target nor cupy.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline("hello", engine="cpu")
>>> p.source(gs.from_arrow({"x": [1, 2, 3]})).filter(gs.col("x") > 1).collect().num_rows
2
"""

from gpustream.api import (
    AggStream,
    KeyedStream,
    OverWindow,
    Pipeline,
    Stream,
    WindowedStream,
)
from gpustream.backend import Backend, select_backend
from gpustream.batch import Batch
from gpustream.changelog import materialize
from gpustream.errors import (
    BackendError,
    GpustreamError,
    IngestError,
    MapBatchesError,
    PlanError,
)
from gpustream.expr import Agg, Expr, col, count, lit, row_number, when
from gpustream.ingest.arrow import from_arrow
from gpustream.ingest.files import read_arrow_ipc, read_parquet
from gpustream.ingest.kafka import kafka
from gpustream.ingest.nexmark import nexmark
from gpustream.ingest.redis import redis_stream
from gpustream.ingest.streams import socket, stdin
from gpustream.ingest.textfiles import read_csv, read_jsonl
from gpustream.plan import TableNode as Table
from gpustream.runtime import RunStats
from gpustream.runtime.checkpoint import Checkpointing
from gpustream.sinks import Sink, to_callback, to_console
from gpustream.sinks.brokers import to_kafka, to_redis_stream
from gpustream.sinks.files import to_csv, to_jsonl, to_parquet
from gpustream.watermark import Watermark
from gpustream.windows import ProcessingTime, Session, Sliding, Tumbling, WindowAssigner

__version__ = "0.1.0"

__all__ = [
    "Agg",
    "AggStream",
    "Backend",
    "BackendError",
    "Batch",
    "Checkpointing",
    "Expr",
    "GpustreamError",
    "IngestError",
    "KeyedStream",
    "MapBatchesError",
    "OverWindow",
    "Pipeline",
    "PlanError",
    "ProcessingTime",
    "RunStats",
    "Session",
    "Sink",
    "Sliding",
    "Stream",
    "Table",
    "Tumbling",
    "Watermark",
    "WindowAssigner",
    "WindowedStream",
    "__version__",
    "col",
    "count",
    "from_arrow",
    "kafka",
    "lit",
    "materialize",
    "nexmark",
    "read_arrow_ipc",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "redis_stream",
    "row_number",
    "select_backend",
    "socket",
    "stdin",
    "to_callback",
    "to_console",
    "to_csv",
    "to_jsonl",
    "to_kafka",
    "to_parquet",
    "to_redis_stream",
    "when",
]
