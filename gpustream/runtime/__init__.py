"""The runtime: runs a physical plan, sources -> operators -> sinks, batch at a time.

``runner``: :func:`execute` and its run statistics; ``checkpoint``: snapshots of
operator state and source offsets, and the store that keeps them; ``stopping``: the
graceful stop on SIGINT/SIGTERM.

Examples
--------
>>> from gpustream.runtime import Checkpointing, RunStats, execute
>>> callable(execute) and Checkpointing.__name__
'Checkpointing'
"""

from gpustream.runtime.checkpoint import (
    Checkpoint,
    Checkpointing,
    CheckpointStore,
    Fingerprint,
    fsync_dir,
)
from gpustream.runtime.runner import RunStats, StateLimitExceeded, execute, plan_fingerprint
from gpustream.runtime.stopping import GracefulStop

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "Checkpointing",
    "Fingerprint",
    "GracefulStop",
    "RunStats",
    "StateLimitExceeded",
    "execute",
    "fsync_dir",
    "plan_fingerprint",
]
