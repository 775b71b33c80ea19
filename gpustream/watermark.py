"""Watermark strategies (DESIGN.md section 3).

``Watermark.bounded(delay)``: the watermark as of an event is the largest event time of
all events that arrived before it, minus ``delay``; a bounded source that ends advances
it to +infinity. The windowed operators that consume it arrive with issue 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustream.durations import Duration, to_millis

__all__ = ["NO_WATERMARK", "Watermark"]

#: The watermark before any event time was seen (-infinity as int64).
NO_WATERMARK = -(2**63)


@dataclass(frozen=True)
class Watermark:
    """A bounded-out-of-orderness watermark strategy.

    Examples
    --------
    >>> Watermark.bounded("2s")
    Watermark(delay_ms=2000, idleness_ms=None)
    >>> Watermark.bounded("2s").with_idleness("1m").idleness_ms
    60000
    >>> Watermark.bounded(-5)
    Traceback (most recent call last):
    ...
    ValueError: Watermark.bounded: delay must be >= 0, got -5 ms
    """

    delay_ms: int
    idleness_ms: int | None = None

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"Watermark.bounded: delay must be >= 0, got {self.delay_ms} ms")
        if self.idleness_ms is not None and self.idleness_ms <= 0:
            raise ValueError(
                f"Watermark.with_idleness: timeout must be > 0, got {self.idleness_ms} ms"
            )

    @classmethod
    def bounded(cls, delay: Duration) -> Watermark:
        """Events may arrive up to ``delay`` later than the largest event time seen.

        Examples
        --------
        >>> Watermark.bounded("250ms").delay_ms
        250
        """
        return cls(to_millis(delay, what="Watermark.bounded delay"))

    def with_idleness(self, timeout: Duration) -> Watermark:
        """Let this source stop holding back a multi-source watermark after ``timeout`` idle.

        Examples
        --------
        >>> Watermark.bounded("1s").with_idleness("30s")
        Watermark(delay_ms=1000, idleness_ms=30000)
        """
        return Watermark(self.delay_ms, to_millis(timeout, what="Watermark.with_idleness"))
