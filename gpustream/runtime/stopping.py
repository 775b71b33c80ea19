"""Graceful stops: Ctrl-C (SIGINT) and SIGTERM end a run at a batch boundary.

While a run's loop is active, the first SIGINT or SIGTERM only sets a flag: the runtime
finishes the batch in hand, stops the sources, takes a final checkpoint (when it
checkpoints), commits the sinks and returns its statistics with the signal recorded. A
second signal does not wait: it raises ``KeyboardInterrupt`` at once (the sinks are
closed, nothing uncommitted is committed).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulStop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """A context manager that turns the first SIGINT/SIGTERM into a stop request.

    Off the main thread (where Python cannot install signal handlers) it installs nothing
    and only ``request()`` sets the flag.

    Examples
    --------
    >>> import os, signal
    >>> before = signal.getsignal(signal.SIGTERM)
    >>> with GracefulStop() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.event.wait(5)
    True
    >>> stop.signal_name
    'SIGTERM'
    >>> signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    True
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        #: the signal that asked for the stop (None: none yet, or ``request()``)
        self.signum: int | None = None
        self._before: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        """``"SIGINT"`` or ``"SIGTERM"`` once one arrived."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def request(self) -> None:
        """Ask for a stop at the next batch boundary (as the first signal does)."""
        self.event.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._before[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)
        self._before.clear()
