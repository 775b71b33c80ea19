"""The live view: a rich panel of a run's metrics, or a log line per interval.

On a terminal the panel refreshes a few times a second (rich's ``Live``); when standard
output is not a terminal (a container's log, CI) a plain line is printed every
``interval_s`` seconds instead, and once more at the end. A partitioned run's partitions
(:meth:`gpustream.metrics.Metrics.set_partitions`) show under the totals: a table on a
terminal, a ``partitions`` part of the log line otherwise.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table

from gpustream.metrics import Metrics

__all__ = ["LiveView"]


class LiveView:
    """Shows ``metrics`` while a pipeline runs; use as a context manager around the run.

    Examples
    --------
    >>> import io
    >>> m = Metrics("doc", "cpu")
    >>> m.batch(100, 0.002, 1_700_000_000_000)
    >>> out = Console(file=io.StringIO(), width=100, force_terminal=True)
    >>> with LiveView(m, out) as view:
    ...     pass
    >>> "events in" in out.file.getvalue() and "batch latency" in out.file.getvalue()
    True
    """

    def __init__(self, metrics: Metrics, console: Console | None = None,
                 interval_s: float = 5.0) -> None:
        self.metrics = metrics
        self.console = console or Console()
        self.interval_s = interval_s
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def render(self) -> Panel:
        """The panel: one row per metric, then a partitioned run's table of partitions.

        Examples
        --------
        >>> import io
        >>> m = Metrics("doc", "cpu")
        >>> m.set_partitions([{"events_in": 700, "events_out": 9}, {"events_in": 300}])
        >>> out = Console(file=io.StringIO(), width=100)
        >>> out.print(LiveView(m, out).render())
        >>> [ln.split()[1:4] for ln in out.file.getvalue().splitlines() if "│ 0 " in ln]
        [['0', '700', '9']]
        """
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for label, value in self.metrics.rows():
            table.add_row(label, value)
        body: RenderableType = table
        rows = self.metrics.partition_rows()
        if rows:
            parts = Table("partition", "events in", "rows out", "watermark", "state",
                          box=None, padding=(0, 2), pad_edge=False, header_style="bold")
            for col in parts.columns[1:3] + parts.columns[4:]:
                col.justify = "right"
            for row in rows:
                parts.add_row(*row)
            body = Group(table, "", parts)
        return Panel(body, title=f"[b]{self.metrics.pipeline}[/b] on {self.metrics.backend}",
                     expand=False)

    def line(self) -> str:
        """The log line: the metrics' line and, for a partitioned run, each partition's
        events in, rows out and watermark.

        Examples
        --------
        >>> m = Metrics("doc", "cpu")
        >>> m.set_partitions([{"events_in": 700, "events_out": 9}, {"events_in": 300}])
        >>> for part in LiveView(m).line().split("; partitions ")[1].split(" | "):
        ...     print(part)
        0: 700 in, 9 out, watermark -, state 0.0 KiB
        1: 300 in, 0 out, watermark -, state 0.0 KiB
        """
        rows = self.metrics.partition_rows()
        text = self.metrics.line()
        if rows:
            text += "; partitions " + " | ".join(
                f"{i}: {n_in} in, {n_out} out, watermark {wm}, state {state}"
                for i, n_in, n_out, wm, state in rows)
        return text

    def _log(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console,
                              refresh_per_second=4, transient=False)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log, daemon=True,
                                            name="gpustream-live")
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
        else:
            if self._thread is not None:
                self._thread.join(timeout=1)
            self.console.print(self.line(), highlight=False, soft_wrap=True)
