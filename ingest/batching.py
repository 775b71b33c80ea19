"""Micro-batching of line records: a batch closes at ``max_rows`` or ``max_delay``.

Whichever comes first: latency stays bounded at low rates (a lone record waits at most
``max_delay``) and batches stay large at high rates.
"""

from __future__ import annotations

from gpustream.durations import Duration, to_millis
from gpustream.ingest.lines import Lines

__all__ = ["LineBatcher", "batch_bounds", "join_lines"]


def batch_bounds(max_rows: int, max_delay: Duration | None, where: str) -> tuple[int, float]:
    """Validated ``(max_rows, max_delay in seconds)``; ``None`` delay means no time bound.

    Examples
    --------
    >>> batch_bounds(1000, "50ms", "read_jsonl")
    (1000, 0.05)
    >>> batch_bounds(0, None, "socket")
    Traceback (most recent call last):
    ...
    ValueError: socket: max_rows must be a positive int, got 0
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"{where}: max_rows must be a positive int, got {max_rows!r}")
    delay = float("inf") if max_delay is None else to_millis(max_delay, what=f"{where}: max_delay") / 1e3
    return max_rows, delay


def join_lines(pieces: list[Lines]) -> Lines:
    r"""Consecutive pieces of one file or stream as one.

    Examples
    --------
    >>> from gpustream.ingest.lines import split_lines
    >>> a = Lines(b"1\n2\n", split_lines(b"1\n2\n", False), 1, 0)
    >>> b = Lines(b"3\n", split_lines(b"3\n", False), 3, 4)
    >>> j = join_lines([a, b])
    >>> j.data, j.starts.tolist(), j.first_line, j.base
    (b'1\n2\n3\n', [0, 2, 4, 6], 1, 0)
    """
    if len(pieces) == 1:
        return pieces[0]
    return Lines(b"".join(p.data for p in pieces), None, pieces[0].first_line, pieces[0].base,
                 count=sum(p.count for p in pieces))


class LineBatcher:
    """Collects line pieces until ``max_rows`` lines or ``max_delay`` since the first.

    Examples
    --------
    >>> from gpustream.ingest.lines import split_lines
    >>> b = LineBatcher(3, 10.0)
    >>> b.add(Lines(b"1\\n2\\n", split_lines(b"1\\n2\\n", False), 1, 0), now=0.0)
    >>> b.room, b.due(now=5.0), b.due(now=10.0)
    (1, False, True)
    >>> b.take().count, b.rows
    (2, 0)
    """

    def __init__(self, max_rows: int, max_delay_s: float) -> None:
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.pending: list[Lines] = []
        self.rows = 0
        self.since = 0.0

    @property
    def room(self) -> int:
        """Lines the open batch can still take."""
        return self.max_rows - self.rows

    def add(self, lines: Lines, now: float) -> None:
        """Add a piece (the first piece of a batch starts its delay clock)."""
        if not self.pending:
            self.since = now
        self.pending.append(lines)
        self.rows += lines.count

    def due(self, now: float) -> bool:
        """True when the open batch must close."""
        return bool(self.rows) and (self.rows >= self.max_rows
                                    or now - self.since >= self.max_delay_s)

    def wait_s(self, now: float, idle: float) -> float:
        """How long to wait for more input: until the delay bound, at most ``idle``."""
        if not self.rows:
            return idle
        return max(0.0, min(idle, self.since + self.max_delay_s - now))

    def take(self) -> Lines | None:
        """Close the open batch (None when it is empty)."""
        if not self.pending:
            return None
        out = join_lines(self.pending)
        self.pending, self.rows = [], 0
        return out
