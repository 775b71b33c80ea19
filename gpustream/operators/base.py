"""The physical operator contract (DESIGN.md section 5)."""

from __future__ import annotations

import time
from typing import Any

from gpustream.batch import Batch
from gpustream.watermark import NO_WATERMARK

__all__ = ["Operator", "TwoInputOperator"]


class Operator:
    """A physical operator: batches in, batches out; stateful ones snapshot plain arrays.

    Stateless operators only override :meth:`process`.

    Examples
    --------
    >>> import pyarrow as pa
    >>> op = Operator()
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1]}))
    >>> op.process(b) == [b], op.on_watermark(10), op.finish(), op.snapshot(), op.state_bytes()
    (True, [], [], {}, 0)
    """

    def process(self, batch: Batch) -> list[Batch]:
        """Consume one batch; return the batches it produces now."""
        return [batch]

    def on_watermark(self, watermark: int) -> list[Batch]:
        """The input watermark advanced to ``watermark``; return what fires."""
        return []

    def finish(self) -> list[Batch]:
        """The input ended (after a final +infinity watermark); flush what is left."""
        return []

    def side_outputs(self) -> dict[str, list[Batch]]:
        """Batches produced on side outputs (e.g. ``late``) since the last call."""
        return {}

    def snapshot(self) -> dict[str, Any]:
        """State as plain arrays, for checkpoints (empty for stateless operators)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load state written by :meth:`snapshot`."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state {sorted(state)}")

    def state_bytes(self) -> int:
        """Bytes of the arrays holding this operator's state, on the host or the device
        (0 for stateless operators). Stateful operators sum their stores'
        ``state_bytes()`` (:mod:`gpustream.state`), at their capacity."""
        return 0


WATERMARK_END = 2**63 - 1  # a bounded source that ends advances its watermark to +infinity


class TwoInputOperator(Operator):
    """An operator with two inputs (joins): its watermark is the smaller of its inputs'.

    ``idleness_s[port]`` (from ``Watermark.with_idleness``): an input that has sent
    nothing for that long stops holding the watermark back, until it sends again.

    Examples
    --------
    >>> op = TwoInputOperator()
    >>> op.input_watermark(0, 100)    # the right input has no watermark yet
    ([], None)
    >>> op.input_watermark(1, 40)
    ([], 40)
    >>> op.input_ended(1)              # the right input ended: the left one decides now
    ([], 100, False)
    """

    def __init__(self, idleness_s: tuple[float | None, float | None] = (None, None)) -> None:
        self.wm = [NO_WATERMARK, NO_WATERMARK]
        self.ended = [False, False]
        self.current = NO_WATERMARK
        self.idleness_s = idleness_s
        self.last_seen = [time.monotonic(), time.monotonic()]

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        """Consume one batch of input ``port`` (0 left, 1 right)."""
        raise NotImplementedError

    def process(self, batch: Batch) -> list[Batch]:
        return self.process_port(0, batch)

    def seen(self, port: int) -> None:
        """Input ``port`` sent something now (it is not idle)."""
        self.last_seen[port] = time.monotonic()

    def _combined(self) -> int:
        now = time.monotonic()
        active = [w for p, w in enumerate(self.wm)
                  if self.idleness_s[p] is None or self.ended[p]
                  or now - self.last_seen[p] < self.idleness_s[p]]  # type: ignore[operator]
        return min(active) if active else min(self.wm)

    def input_watermark(self, port: int, watermark: int) -> tuple[list[Batch], int | None]:
        """Input ``port``'s watermark moved: what fires, and the new combined watermark
        (None when it did not advance)."""
        self.seen(port)
        self.wm[port] = max(self.wm[port], watermark)
        combined = self._combined()
        if combined <= self.current or combined == NO_WATERMARK:
            return [], None
        self.current = combined
        return self.on_watermark(combined), combined

    def input_ended(self, port: int) -> tuple[list[Batch], int | None, bool]:
        """Input ``port`` ended: what fires, the new combined watermark, and whether both
        inputs have ended."""
        self.ended[port] = True
        out, combined = self.input_watermark(port, WATERMARK_END)
        return out, combined, all(self.ended)
