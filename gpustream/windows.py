"""Window assigners (DESIGN.md section 3): all aligned to epoch + offset, half-open.

A window spans at most :data:`MAX_SPAN_MS` (2**59 ms, about 18 million years): event
times within 2**60 of int64's limits are dead letters
(:data:`gpustream.ingest.deadletter.EVENT_TIME_MAX`), so the end of every window an
event falls in is an int64, and the end-of-input watermark (int64's maximum) fires it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustream.durations import Duration, format_millis, to_millis
from gpustream.errors import PlanError

__all__ = ["MAX_SPAN_MS", "Session", "Sliding", "Tumbling", "WindowAssigner"]

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


class WindowAssigner:
    """Base of the window assigners."""

    def describe(self) -> str:
        """How ``explain()`` shows it."""
        raise NotImplementedError


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
