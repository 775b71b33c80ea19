"""The Python API users write: ``gs.Pipeline`` and its streams.

It builds :mod:`gpustream.plan` nodes and hands them to :mod:`gpustream.runtime`.

Examples
--------
>>> from gpustream.api import Pipeline
>>> Pipeline("p", engine="cpu").name
'p'
"""

from gpustream.api.pipeline import (
    AggStream,
    JoinStream,
    KeyedStream,
    OverWindow,
    Pipeline,
    Stream,
    WindowedStream,
    join_on,
)

__all__ = [
    "AggStream",
    "JoinStream",
    "KeyedStream",
    "OverWindow",
    "Pipeline",
    "Stream",
    "WindowedStream",
    "join_on",
]
