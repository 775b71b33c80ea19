"""The live view: a rich panel of a run's metrics, or a log line per interval.

On a terminal the panel refreshes a few times a second (rich's ``Live``); when standard
output is not a terminal (a container's log, CI) a plain line is printed every
``interval_s`` seconds instead, and once more at the end.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
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
        """The panel: one row per metric."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for label, value in self.metrics.rows():
            table.add_row(label, value)
        return Panel(table, title=f"[b]{self.metrics.pipeline}[/b] on {self.metrics.backend}",
                     expand=False)

    def _log(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.console.print(self.metrics.line(), highlight=False, soft_wrap=True)

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
            self.console.print(self.metrics.line(), highlight=False, soft_wrap=True)
