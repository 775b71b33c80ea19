"""Durations as the API accepts them: timedelta, int milliseconds, or text like ``"10s"``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["Duration", "format_millis", "to_millis"]

Duration = timedelta | int | str

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_PATTERN = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")


def to_millis(value: Duration, *, what: str = "duration") -> int:
    """Convert a duration to whole milliseconds.

    Parameters
    ----------
    value
        A ``datetime.timedelta``, an ``int`` of milliseconds, or a string such as
        ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"`` (``"-5s"`` for negative bounds).
    what
        Names the argument in error messages.

    Examples
    --------
    >>> to_millis("10s"), to_millis("250ms"), to_millis(1500), to_millis("1.5m")
    (10000, 250, 1500, 90000)
    >>> from datetime import timedelta
    >>> to_millis(timedelta(seconds=2))
    2000
    >>> to_millis("10 parsecs", what="window size")
    Traceback (most recent call last):
    ...
    ValueError: window size: cannot read '10 parsecs' as a duration; write e.g. '250ms', '10s', '5m', '1h', a timedelta, or an int of milliseconds
    """
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a duration, got a bool")
    if isinstance(value, timedelta):
        return _whole_ms(value / timedelta(milliseconds=1), value, what)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _PATTERN.match(value)
        if m is not None:
            return _whole_ms(float(m.group(1)) * _UNITS_MS[m.group(2)], value, what)
        raise ValueError(
            f"{what}: cannot read {value!r} as a duration; write e.g. '250ms', '10s', '5m', "
            "'1h', a timedelta, or an int of milliseconds"
        )
    raise TypeError(
        f"{what}: expected a timedelta, an int of milliseconds or a string like '10s', "
        f"got {type(value).__name__}"
    )


def _whole_ms(ms: float, value: object, what: str) -> int:
    if ms != int(ms):
        raise ValueError(f"{what}: {value!r} is not a whole number of milliseconds")
    return int(ms)


def format_millis(ms: int) -> str:
    """The shortest exact text for a duration, as the API reads it back.

    Examples
    --------
    >>> format_millis(9000), format_millis(250), format_millis(120_000), format_millis(3_600_000)
    ('9s', '250ms', '2m', '1h')
    """
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
