"""Processing-time windows (:class:`gpustream.windows.ProcessingTime`): the ordinary
tumbling/sliding window operator over the wall clock instead of an event-time column.

As Flink's processing-time windows: every row of a batch is stamped with the clock
(:func:`clock`, milliseconds since the epoch) read once when the batch reaches the
window, and gets that time as its per-row watermark too, so it is never late (a window
holding time ``t`` ends after ``t``). Before the batch is folded, the windows whose end
the clock has reached fire. The runtime's end-of-input watermark fires everything still
open; event-time watermarks from upstream are ignored. The stamps are one ``full`` array
per batch on the operator's backend, so the CPU's fused loop and the GPU's pane kernel
run unchanged.

The clock never goes back: a reading earlier than the last one (the wall clock stepped
back, or a checkpoint from a machine whose clock ran ahead) counts as the last one.
A checkpoint holds the open windows and the last reading. After a restart the restored
windows fire by the wall clock as it is then (at the first batch, or at the end of the
input), and replayed rows get the clock of their new arrival: as in Flink, a restarted
run need not put rows in the windows an uninterrupted one would have.

Tests make the clock deterministic by replacing :func:`clock` in this module
(``monkeypatch.setattr(gpustream.operators.proctime, "clock", fake)``), or give an
operator its own (``clock=``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.operators.base import WATERMARK_END
from gpustream.operators.window import I64_MIN, WindowAggOp, WindowSpec

__all__ = ["ProcessingTimeWindowOp", "clock"]


def clock() -> int:
    """The wall clock in milliseconds since the epoch (what processing-time windows read).

    Examples
    --------
    >>> clock() > 1_600_000_000_000   # after September 2020
    True
    """
    return time.time_ns() // 1_000_000


class ProcessingTimeWindowOp(WindowAggOp):
    """Tumbling or sliding windows over the clock at which each batch arrives.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),),
    ...                   pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                              "window_end": pa.int64(), "n": pa.int64()}), False)
    >>> readings = iter([3, 7, 12])
    >>> op = ProcessingTimeWindowOp(spec, select_backend("cpu"), clock=lambda: next(readings))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 2, 1]}))
    >>> op.process(b), op.process(b)     # clock 3, then 7: both in [0, 10)
    ([], [])
    >>> op.process(b)[0].to_arrow().to_pydict()   # clock 12: [0, 10) has ended
    {'k': [1, 2], 'window_start': [0, 0], 'window_end': [10, 10], 'n': [4, 2]}
    >>> op.on_watermark(10**6), len(op.on_watermark(2**63 - 1))   # only the end fires
    ([], 1)
    """

    def __init__(self, spec: WindowSpec, backend: Backend,
                 clock: Callable[[], int] | None = None) -> None:
        super().__init__(spec, backend)
        #: the clock to read (None: this module's :func:`clock`, looked up at each read)
        self.clock = clock
        #: the last clock reading (the time of the rows of the last batch)
        self.now = I64_MIN

    def _tick(self) -> int:
        """Read the clock (never going back)."""
        self.now = max(self.now, int(self.clock() if self.clock is not None else clock()))
        return self.now

    def process(self, batch: Batch) -> list[Batch]:
        now = self._tick()
        out = super().on_watermark(now)  # what the clock has passed, before the new rows
        return out + super().process(batch)

    def _times(self, batch: Batch) -> tuple[Any, Any | None, Any]:
        """Every row's time and watermark: the clock read for this batch."""
        stamps = self.xp.full(batch.num_rows, self.now, dtype=np.int64)
        return stamps, None, stamps

    def on_watermark(self, watermark: int) -> list[Batch]:
        """The end of the input (``WATERMARK_END``) fires every window; an upstream
        event-time watermark means nothing here."""
        return super().on_watermark(watermark) if watermark >= WATERMARK_END else []

    def snapshot(self) -> dict[str, Any]:
        """The window's state and the last clock reading."""
        state = super().snapshot()
        state["clock"] = np.array([self.now], dtype=np.int64)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.now = max(self.now, int(state["clock"][0]))
