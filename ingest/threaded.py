"""Sources on their own threads, feeding one bounded queue (DESIGN.md section 5).

Each source's iterator runs on a daemon thread and puts its batches on a queue shared by
all sources of a run. The queue is bounded, so a slow pipeline blocks the source threads
(backpressure) and memory stays bounded: at most ``capacity`` batches wait, plus one
being read per source. pyarrow's readers and socket/broker I/O release the GIL, so
reading and parsing overlap the pipeline's work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Arrival", "SourceThreads"]

T = TypeVar("T")
_POLL_S = 0.05


@dataclass(frozen=True)
class Arrival(Generic[T]):
    """An item from source ``index``; ``done`` when that source ended (``item`` None)."""

    index: int
    item: T | None
    done: bool = False


@dataclass(frozen=True)
class _Failed:
    index: int
    error: BaseException


class SourceThreads(Generic[T]):
    """Runs iterators on threads into one bounded queue; iterate to receive their items.

    A source's error is raised in the consumer, with the source's traceback. ``close()``
    (or leaving a ``with`` block) stops the threads. Setting ``stop`` (an event another
    thread or a signal handler owns) ends the iteration at the next item, even while no
    source has anything to give. With ``idle_ticks``, a quiet spell yields
    ``Arrival(-1, None)`` every 50 ms, so that the consumer can do timed work (a
    checkpoint that is due) while it waits.

    Examples
    --------
    >>> with SourceThreads([iter([1, 2]), iter("ab")], capacity=2) as threads:
    ...     got = sorted((a.index, a.item) for a in threads if not a.done)
    >>> got
    [(0, 1), (0, 2), (1, 'a'), (1, 'b')]
    """

    def __init__(self, iterators: list[Iterator[T]], capacity: int = 4,
                 names: list[str] | None = None, stop: threading.Event | None = None,
                 idle_ticks: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        #: set by someone else (a signal handler): iteration ends at the next item boundary
        self.stop_request = stop if stop is not None else threading.Event()
        #: while no source has anything, yield ``Arrival(-1, None)`` every poll interval
        self.idle_ticks = idle_ticks
        self._queue: queue.Queue[Arrival[T] | _Failed] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._live = len(iterators)
        self._threads = [
            threading.Thread(target=self._run, args=(i, it), daemon=True,
                             name=f"gpustream-source-{names[i] if names else i}")
            for i, it in enumerate(iterators)]
        for t in self._threads:
            t.start()

    def _put(self, item: Arrival[T] | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, index: int, it: Iterator[T]) -> None:
        try:
            for item in it:
                if not self._put(Arrival(index, item)):
                    break
            else:
                self._put(Arrival(index, None, done=True))
        except BaseException as err:
            self._put(_Failed(index, err))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Arrival[T]]:
        while self._live and not self.stop_request.is_set():
            try:
                got = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self.idle_ticks:
                    yield Arrival(-1, None)
                continue
            if isinstance(got, _Failed):
                self.close()
                raise got.error
            if got.done:
                self._live -= 1
            yield got

    def close(self) -> None:
        """Stop every source thread (they finish the item in hand, then exit)."""
        self._stop.set()
        while True:  # unblock producers waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2 * _POLL_S)

    def __enter__(self) -> SourceThreads[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
