"""The physical operator contract (DESIGN.md section 5)."""

from __future__ import annotations

from typing import Any

from gpustream.batch import Batch

__all__ = ["Operator"]


class Operator:
    """A physical operator: batches in, batches out; stateful ones snapshot plain arrays.

    Stateless operators only override :meth:`process`.

    Examples
    --------
    >>> import pyarrow as pa
    >>> op = Operator()
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1]}))
    >>> op.process(b) == [b], op.on_watermark(10), op.finish(), op.snapshot()
    (True, [], [], {})
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
