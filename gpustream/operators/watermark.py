"""The source stage of a stream with an event time: per-event watermarks.

The watermark as of an event is the largest event time among all events that arrived
before it, minus the bounded delay (DESIGN.md section 3). This operator computes it for
every row of a batch with one scan kernel and attaches it to the batch, so operators
downstream (after filters too) decide lateness per event; its running maximum gives the
stream's watermark after each batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.kernels.scan import exclusive_prefix_max, watermarks_cpu
from gpustream.operators.base import Operator
from gpustream.watermark import NO_WATERMARK

__all__ = ["WatermarkOp"]


class WatermarkOp(Operator):
    """Attaches per-row watermarks; ``current`` is the watermark after the last batch.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> op = WatermarkOp("ts", 2, select_backend("cpu"))
    >>> out = op.process(Batch.from_arrow(pa.record_batch({"ts": [10, 7, 15]})))[0]
    >>> out.watermarks.tolist()[1:], op.current
    ([8, 8], 13)
    """

    def __init__(self, event_time: str, delay: int, backend: Backend) -> None:
        self.event_time = event_time
        self.delay = delay
        self.backend = backend
        self.running = NO_WATERMARK

    @property
    def current(self) -> int:
        """The stream's watermark now (``NO_WATERMARK`` before the first event time)."""
        return NO_WATERMARK if self.running == NO_WATERMARK else self.running - self.delay

    def output_watermark(self) -> int:
        """The source's watermark: :attr:`current`."""
        return self.current

    def process(self, batch: Batch) -> list[Batch]:
        xp = self.backend.xp
        ts = batch[self.event_time]
        if not self.backend.is_device:  # one pass
            wm, self.running = watermarks_cpu(ts, batch.validity(self.event_time),
                                              self.running, self.delay)
        else:
            prefix, self.running = exclusive_prefix_max(
                ts, batch.validity(self.event_time), self.running, self.backend)
            wm = xp.where(prefix == NO_WATERMARK, NO_WATERMARK, prefix - self.delay)
        return [Batch(batch.columns, batch.schema,
                      {n: batch.validity(n) for n in batch.column_names},
                      batch.dictionaries, wm)]

    def snapshot(self) -> dict[str, Any]:
        return {"running": np.array([self.running], dtype=np.int64)}

    def restore(self, state: dict[str, Any]) -> None:
        self.running = int(state["running"][0])
