"""Window assigners (DESIGN.md section 3): all aligned to epoch + offset, half-open.

Each assigner owns its geometry: :meth:`WindowAssigner.geometry` gives its size, slide,
offset and gap in the unit of the event-time column (:func:`to_event_units`), which the
plan checks and the planner hands to the operators. :class:`ProcessingTime` wraps a
tumbling or sliding window to assign rows by the wall clock instead of their event time.

A window spans at most :data:`MAX_SPAN_MS` (2**59 ms, about 18 million years): event
times within 2**60 of int64's limits are dead letters
(:data:`gpustream.ingest.deadletter.EVENT_TIME_MAX`), so the end of every window an
event falls in is an int64, and the end-of-input watermark (int64's maximum) fires it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from gpustream.durations import Duration, format_millis, to_millis
from gpustream.errors import PlanError

__all__ = ["MAX_SPAN_MS", "PROCESSING_TIME_TYPE", "ProcessingTime", "Session", "Sliding",
           "Tumbling", "WindowAssigner", "WindowGeometry", "to_event_units"]

#: the largest window size (plus offset) or session gap, in milliseconds
MAX_SPAN_MS = 1 << 59


def _check_span(what: str, span_ms: int) -> None:
    """Raise when a window reaches further than :data:`MAX_SPAN_MS`.

    Examples
    --------
    >>> _check_span("Tumbling size", 2**62)
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: Tumbling size: 4611686018427387904 ms is longer than 576460752303423488 ms (2**59, about 18 million years), where window ends overflow int64; give a shorter window
    """
    if span_ms > MAX_SPAN_MS:
        raise PlanError(f"{what}: {span_ms} ms is longer than {MAX_SPAN_MS} ms (2**59, about "
                        "18 million years), where window ends overflow int64; give a shorter "
                        "window")


_UNIT_PER_MS = {"s": (1, 1000), "ms": (1, 1), "us": (1000, 1), "ns": (1_000_000, 1)}


def to_event_units(ms: int, ts_type: pa.DataType, what: str) -> int:
    """A duration in milliseconds in the unit of the event-time column.

    Examples
    --------
    >>> import pyarrow as pa
    >>> to_event_units(1500, pa.timestamp("us"), "size"), to_event_units(2000, pa.timestamp("s"), "size")
    (1500000, 2)
    >>> to_event_units(2500, pa.timestamp("s"), "window size")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: window size: 2500 ms is not a whole number of s, the unit of the event-time column
    """
    unit = ts_type.unit if pa.types.is_timestamp(ts_type) else "ms"
    mul, div = _UNIT_PER_MS[unit]
    if (ms * mul) % div:
        raise PlanError(f"{what}: {ms} ms is not a whole number of {unit}, the unit of the "
                        "event-time column")
    return ms * mul // div


@dataclass(frozen=True)
class WindowGeometry:
    """A window's shape in event-time units: ``size`` and ``slide`` (equal for tumbling
    windows), ``offset`` in ``[0, slide)`` and, for sessions, ``gap`` (the others 0)."""

    size: int
    slide: int
    offset: int
    gap: int


#: the type of a processing-time window's ``window_start`` and ``window_end``: the wall
#: clock in milliseconds since the epoch
PROCESSING_TIME_TYPE = pa.timestamp("ms")


class WindowAssigner:
    """Base of the window assigners."""

    #: True where rows are assigned by the wall clock at which they reach the window
    #: (:class:`ProcessingTime`), not by their event time
    processing_time: ClassVar[bool] = False

    def describe(self) -> str:
        """How ``explain()`` shows it."""
        raise NotImplementedError

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        """Size, slide, offset (in ``[0, slide)``) and gap in the unit of an event-time
        column of type ``ts_type``; raises :class:`PlanError` (prefixed with ``where``)
        where one is not a whole number of that unit."""
        raise NotImplementedError


def _sliding_geometry(size_ms: int, slide_ms: int, offset_ms: int, ts_type: pa.DataType,
                      where: str) -> WindowGeometry:
    """The geometry of windows of ``size_ms`` every ``slide_ms`` aligned to ``offset_ms``."""
    size = to_event_units(size_ms, ts_type, f"{where} window size")
    slide = to_event_units(slide_ms, ts_type, f"{where} window slide")
    offset = to_event_units(offset_ms, ts_type, f"{where} window offset")
    return WindowGeometry(size, slide, offset % slide, 0)


@dataclass(frozen=True, init=False)
class Tumbling(WindowAssigner):
    """Fixed, non-overlapping windows ``[k*size + offset, (k+1)*size + offset)``.

    Examples
    --------
    >>> Tumbling("10s")
    Tumbling(size_ms=10000, offset_ms=0)
    >>> Tumbling("1s", offset="1s")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: Tumbling: |offset| (1000 ms) must be smaller than size (1000 ms); use an offset in (-size, size)
    """

    size_ms: int
    offset_ms: int

    def __init__(self, size: Duration, offset: Duration = 0) -> None:
        size_ms = to_millis(size, what="Tumbling size")
        offset_ms = to_millis(offset, what="Tumbling offset")
        if size_ms <= 0:
            raise PlanError(f"Tumbling: size must be > 0, got {size_ms} ms; e.g. Tumbling('10s')")
        if abs(offset_ms) >= size_ms:
            raise PlanError(f"Tumbling: |offset| ({abs(offset_ms)} ms) must be smaller than size "
                            f"({size_ms} ms); use an offset in (-size, size)")
        _check_span("Tumbling size + |offset|", size_ms + abs(offset_ms))
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "offset_ms", offset_ms)

    def describe(self) -> str:
        off = f", offset={self.offset_ms}ms" if self.offset_ms else ""
        return f"tumbling({self.size_ms}ms{off})"

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        """Size = slide, the offset taken modulo the size.

        Examples
        --------
        >>> import pyarrow as pa
        >>> Tumbling("10s", offset="-3s").geometry(pa.timestamp("s"), "here")
        WindowGeometry(size=10, slide=10, offset=7, gap=0)
        """
        return _sliding_geometry(self.size_ms, self.size_ms, self.offset_ms, ts_type, where)


@dataclass(frozen=True, init=False)
class Sliding(WindowAssigner):
    """Overlapping windows of ``size`` every ``slide``; each event is in ``size/slide`` of them.

    Examples
    --------
    >>> Sliding("10s", "2s")
    Sliding(size_ms=10000, slide_ms=2000, offset_ms=0)
    >>> Sliding("10s", "3s")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: Sliding: size (10000 ms) must be a multiple of slide (3000 ms); e.g. Sliding('9s', '3s')
    """

    size_ms: int
    slide_ms: int
    offset_ms: int

    def __init__(self, size: Duration, slide: Duration, offset: Duration = 0) -> None:
        size_ms = to_millis(size, what="Sliding size")
        slide_ms = to_millis(slide, what="Sliding slide")
        offset_ms = to_millis(offset, what="Sliding offset")
        if size_ms <= 0 or slide_ms <= 0:
            raise PlanError(f"Sliding: size and slide must be > 0, got size={size_ms} ms, "
                            f"slide={slide_ms} ms")
        if size_ms % slide_ms:
            fix = (size_ms // slide_ms) * slide_ms or slide_ms
            raise PlanError(f"Sliding: size ({size_ms} ms) must be a multiple of slide "
                            f"({slide_ms} ms); e.g. Sliding('{format_millis(fix)}', "
                            f"'{format_millis(slide_ms)}')")
        if abs(offset_ms) >= size_ms:
            raise PlanError(f"Sliding: |offset| ({abs(offset_ms)} ms) must be smaller than size "
                            f"({size_ms} ms)")
        _check_span("Sliding size + |offset|", size_ms + abs(offset_ms))
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "slide_ms", slide_ms)
        object.__setattr__(self, "offset_ms", offset_ms)

    def describe(self) -> str:
        off = f", offset={self.offset_ms}ms" if self.offset_ms else ""
        return f"sliding({self.size_ms}ms every {self.slide_ms}ms{off})"

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        """Size and slide, the offset taken modulo the slide.

        Examples
        --------
        >>> import pyarrow as pa
        >>> Sliding("9s", "3s", offset="-1s").geometry(pa.int64(), "here")
        WindowGeometry(size=9000, slide=3000, offset=2000, gap=0)
        >>> Sliding("9s", "1500ms").geometry(pa.timestamp("s"), "step 2 (window 'w')")
        Traceback (most recent call last):
        ...
        gpustream.errors.PlanError: step 2 (window 'w') window slide: 1500 ms is not a whole number of s, the unit of the event-time column
        """
        return _sliding_geometry(self.size_ms, self.slide_ms, self.offset_ms, ts_type, where)


@dataclass(frozen=True, init=False)
class Session(WindowAssigner):
    """Per-key sessions: events closer than ``gap`` merge; a session ends at last event + gap.

    Examples
    --------
    >>> Session("30s")
    Session(gap_ms=30000)
    """

    gap_ms: int

    def __init__(self, gap: Duration) -> None:
        gap_ms = to_millis(gap, what="Session gap")
        if gap_ms <= 0:
            raise PlanError(f"Session: gap must be > 0, got {gap_ms} ms; e.g. Session('30s')")
        _check_span("Session gap", gap_ms)
        object.__setattr__(self, "gap_ms", gap_ms)

    def describe(self) -> str:
        return f"session(gap={self.gap_ms}ms)"

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        """The gap; size, slide and offset 0.

        Examples
        --------
        >>> import pyarrow as pa
        >>> Session("30s").geometry(pa.timestamp("us"), "here")
        WindowGeometry(size=0, slide=0, offset=0, gap=30000000)
        """
        return WindowGeometry(0, 0, 0, to_event_units(self.gap_ms, ts_type,
                                                      f"{where} session gap"))


@dataclass(frozen=True)
class ProcessingTime(WindowAssigner):
    """Processing-time windows (Flink's ``TumblingProcessingTimeWindows`` and
    ``SlidingProcessingTimeWindows``): a tumbling or sliding ``window`` over the wall
    clock at which rows reach the window step, not over their event time.

    Every row of a batch gets the clock (milliseconds since the epoch) read when the batch
    reaches the window; a window fires when the clock passes its end (checked as each
    batch arrives) and every open window fires when the input ends. No row is ever late,
    and the stream needs no event time. ``window_start`` and ``window_end`` are
    ``timestamp[ms]``. Results depend on when rows arrive, so they are not deterministic:
    replaying the same input (or restarting from a checkpoint) can put rows in other
    windows. Build one with :meth:`tumbling` or :meth:`sliding`.

    Examples
    --------
    >>> ProcessingTime.tumbling("10s")
    ProcessingTime(window=Tumbling(size_ms=10000, offset_ms=0))
    >>> ProcessingTime.sliding("1m", "10s").describe()
    'processing-time sliding(60000ms every 10000ms)'
    >>> ProcessingTime(Session("30s"))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: ProcessingTime: windows by processing time are tumbling or sliding, got Session(gap_ms=30000); use gs.ProcessingTime.tumbling(size) or gs.ProcessingTime.sliding(size, slide)
    """

    window: Tumbling | Sliding

    processing_time: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.window, (Tumbling, Sliding)):
            raise PlanError(f"ProcessingTime: windows by processing time are tumbling or "
                            f"sliding, got {self.window!r}; use gs.ProcessingTime.tumbling"
                            "(size) or gs.ProcessingTime.sliding(size, slide)")

    @classmethod
    def tumbling(cls, size: Duration, offset: Duration = 0) -> ProcessingTime:
        """Tumbling windows of ``size`` of the wall clock (as :class:`Tumbling`).

        Examples
        --------
        >>> ProcessingTime.tumbling("1m").describe()
        'processing-time tumbling(60000ms)'
        """
        return cls(Tumbling(size, offset))

    @classmethod
    def sliding(cls, size: Duration, slide: Duration, offset: Duration = 0) -> ProcessingTime:
        """Windows of ``size`` of the wall clock every ``slide`` (as :class:`Sliding`).

        Examples
        --------
        >>> ProcessingTime.sliding("10s", "5s").window
        Sliding(size_ms=10000, slide_ms=5000, offset_ms=0)
        """
        return cls(Sliding(size, slide, offset))

    def describe(self) -> str:
        return f"processing-time {self.window.describe()}"

    def geometry(self, ts_type: pa.DataType, where: str) -> WindowGeometry:
        """The wrapped window's geometry (over the clock, in milliseconds).

        Examples
        --------
        >>> ProcessingTime.tumbling("10s").geometry(PROCESSING_TIME_TYPE, "here")
        WindowGeometry(size=10000, slide=10000, offset=0, gap=0)
        """
        return self.window.geometry(ts_type, where)
