"""The physical operator contract (DESIGN.md section 5).

Every physical operator is an :class:`Operator`, and the runtime drives each one through
these methods only (never by its class, never by probing for attributes):

- ``inputs``: how many input streams it reads (ports ``0 .. inputs - 1``);
- :meth:`~Operator.process_port` ``(port, batch)``: one batch of input ``port`` in, the
  batches it produces now out (one-input operators override :meth:`~Operator.process`);
- :meth:`~Operator.input_watermark` ``(port, watermark)`` and
  :meth:`~Operator.input_ended` ``(port)``: an input's watermark moved or the input
  ended; what fires (:meth:`~Operator.on_watermark`) and the watermark passed on;
- :meth:`~Operator.output_watermark`: the watermark the operator computes for its output
  itself (a source's, a recomputing ``map_batches``', a join's or union's combined one);
- :meth:`~Operator.finish`, :meth:`~Operator.side_outputs`;
- :meth:`~Operator.counters` (late events, dropped memberships, events without a time),
  :attr:`~Operator.state_rows`, :meth:`~Operator.state_bytes`;
- :meth:`~Operator.snapshot` / :meth:`~Operator.restore`, with
  :meth:`~Operator.owned_dictionaries` and :meth:`~Operator.restore_dictionaries` for the
  string dictionaries a checkpoint carries.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpustream.batch import Batch
from gpustream.watermark import NO_WATERMARK

if TYPE_CHECKING:
    from gpustream.ingest.dictionary import StringDictionary

__all__ = ["WATERMARK_END", "Operator", "OperatorCounters", "TwoInputOperator"]

WATERMARK_END = 2**63 - 1  # a bounded source that ends advances its watermark to +infinity


@dataclass(frozen=True)
class OperatorCounters:
    """What an operator counted: the run's statistics and the metrics sum them.

    Examples
    --------
    >>> OperatorCounters(1, 2, 0) + OperatorCounters(late_events=3)
    OperatorCounters(late_events=4, dropped_memberships=2, no_time_events=0)
    """

    #: events too late for everything they belong to (sent to ``.late``)
    late_events: int = 0
    #: (event, window) memberships not applied because the window's state was gone
    dropped_memberships: int = 0
    #: events without an event time (counted as bad records, never emitted)
    no_time_events: int = 0

    def __add__(self, other: OperatorCounters) -> OperatorCounters:
        return OperatorCounters(self.late_events + other.late_events,
                                self.dropped_memberships + other.dropped_memberships,
                                self.no_time_events + other.no_time_events)


class Operator:
    """A physical operator: batches in, batches out; stateful ones snapshot plain arrays.

    The defaults are those of a stateless one-input operator that passes its input's
    watermark on: such an operator only overrides :meth:`process`. Operators that count
    late events or rows without a time increment the counter attributes below (read
    through :meth:`counters`); stateful ones override :meth:`snapshot`,
    :meth:`restore`, :meth:`state_bytes` (and :meth:`state_rows` when their state is
    rows of a table).

    Examples
    --------
    >>> import pyarrow as pa
    >>> op = Operator()
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1]}))
    >>> op.process_port(0, b) == [b], op.on_watermark(10), op.finish(), op.snapshot()
    (True, [], [], {})
    >>> op.input_watermark(0, 10), op.input_ended(0) == ([], WATERMARK_END, True)
    (([], 10), True)
    >>> op.output_watermark() is None   # its output's watermark is its input's
    True
    >>> op.counters(), op.state_rows, op.state_bytes(), op.owned_dictionaries()
    (OperatorCounters(late_events=0, dropped_memberships=0, no_time_events=0), None, 0, {})
    """

    #: how many input streams the operator reads (ports 0 .. inputs - 1)
    inputs: int = 1
    #: events too late for everything they belong to (sent to ``.late``)
    late_events: int = 0
    #: (event, window) memberships not applied because the window's state was gone at
    #: the event's arrival (those of late events, and of events late for some windows)
    dropped_memberships: int = 0
    #: rows without an event time (counted as bad records, never emitted)
    no_time_events: int = 0

    # -- data -----------------------------------------------------------------------------
    def process(self, batch: Batch) -> list[Batch]:
        """Consume one batch (of input 0); return the batches it produces now."""
        return [batch]

    def process_port(self, port: int, batch: Batch) -> list[Batch]:
        """Consume one batch of input ``port``; return the batches it produces now.
        The runtime calls this; one-input operators override :meth:`process`."""
        if port >= self.inputs:
            raise ValueError(f"{type(self).__name__} has {self.inputs} input(s), "
                             f"got a batch on port {port}")
        return self.process(batch)

    def side_outputs(self) -> dict[str, list[Batch]]:
        """Batches produced on side outputs (e.g. ``late``) since the last call."""
        return {}

    # -- time -----------------------------------------------------------------------------
    def on_watermark(self, watermark: int) -> list[Batch]:
        """The operator's (combined) input watermark advanced to ``watermark``; return
        what fires."""
        return []

    def output_watermark(self) -> int | None:
        """The watermark of this operator's output when the operator computes it itself
        (``NO_WATERMARK`` before it has one); None when its input's passes through."""
        return None

    def input_watermark(self, port: int, watermark: int) -> tuple[list[Batch], int | None]:
        """Input ``port``'s watermark moved: what fires, and the watermark to pass on
        downstream (None: none to pass on now).

        One input: the operator's watermark is its input's; what it passes on is its
        :meth:`output_watermark` when it computes one, else the input's."""
        out = self.on_watermark(watermark)
        own = self.output_watermark()
        if own is None:
            return out, watermark
        return out, (None if own == NO_WATERMARK else own)

    def input_ended(self, port: int) -> tuple[list[Batch], int | None, bool]:
        """Input ``port`` ended (a +infinity watermark): what fires, the watermark to
        pass on, and whether every input has ended (then the runtime calls
        :meth:`finish` and ends the operators downstream)."""
        out, passed = self.input_watermark(port, WATERMARK_END)
        return out, passed, True

    def finish(self) -> list[Batch]:
        """Every input ended (after a final +infinity watermark); flush what is left."""
        return []

    # -- what it holds and counted ----------------------------------------------------------
    def counters(self) -> OperatorCounters:
        """What this operator counted so far (zeros for operators that count nothing)."""
        return OperatorCounters(self.late_events, self.dropped_memberships,
                                self.no_time_events)

    @property
    def state_rows(self) -> int | None:
        """Rows (keys, windows) holding state, for the open-windows gauge and the
        state-limit error; None when the state is not rows of a table."""
        return None

    def state_bytes(self) -> int:
        """Bytes of the arrays holding this operator's state, on the host or the device
        (0 for stateless operators). Stateful operators sum their stores'
        ``state_bytes()`` (:mod:`gpustream.state`), at their capacity."""
        return 0

    # -- checkpoints ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """State as plain arrays, for checkpoints (empty for stateless operators)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load state written by :meth:`snapshot`."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state {sorted(state)}")

    def owned_dictionaries(self) -> dict[str, StringDictionary]:
        """The string dictionaries of the output columns this operator encodes itself
        (a projection's computed strings, a union's, a ``map_batches``'), by column;
        they replace the input's downstream. Empty: its output's are its input's."""
        return {}

    def restore_dictionaries(self, dictionaries: Mapping[str, StringDictionary]) -> None:
        """After :meth:`restore`: the dictionaries of the string columns this operator
        reads, by column name, to decode string keys of the restored state (nothing to
        do for operators whose state holds no string codes)."""


class TwoInputOperator(Operator):
    """An operator with two or more inputs (joins, unions): its watermark is the smallest
    of its inputs'.

    ``idleness_s[port]`` (from ``Watermark.with_idleness``): an input that has sent
    nothing for that long stops holding the watermark back, until it sends again.

    Examples
    --------
    >>> op = TwoInputOperator()
    >>> op.inputs
    2
    >>> op.input_watermark(0, 100)    # the right input has no watermark yet
    ([], None)
    >>> op.input_watermark(1, 40)
    ([], 40)
    >>> op.input_ended(1)              # the right input ended: the left one decides now
    ([], 100, False)
    >>> op.output_watermark()
    100
    """

    inputs = 2

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

    def output_watermark(self) -> int:
        """The combined watermark passed on last (``NO_WATERMARK`` before one)."""
        return self.current

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
        """Input ``port`` ended: what fires, the new combined watermark, and whether all
        inputs have ended."""
        self.ended[port] = True
        out, combined = self.input_watermark(port, WATERMARK_END)
        return out, combined, all(self.ended)
