"""The source contract: bounded or unbounded streams of Arrow record batches with offsets."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gpustream.ingest.deadletter import DeadLetter, Locate

__all__ = ["Source", "SourceBatch"]


@dataclass(frozen=True)
class SourceBatch:
    """One batch from a source and the source's offset just after it.

    ``offset`` is plain data (ints, strings, lists, dicts) that :meth:`Source.open` accepts
    back to resume right after this batch: checkpoints store it. ``rejects`` are the
    records of this stretch of input that could not be read (the runtime writes them to
    the dead-letter sink and counts them); ``data`` may then have no rows. ``locate``,
    from sources that know where each row came from (a file and line), gives rows'
    offsets and raw text for the dead letters found later (a missing event time).
    """

    data: pa.RecordBatch
    offset: Any
    rejects: tuple[DeadLetter, ...] = ()
    locate: Locate | None = None


class Source(abc.ABC):
    """Where events come from. Subclasses live in ``gpustream.ingest``.

    A source knows its schema before it runs (so plans are checked before anything runs),
    yields Arrow record batches in arrival order, and reports offsets.
    """

    #: A short description for ``explain()`` and error messages.
    name: str = "source"
    #: True when the source ends by itself (files, in-memory tables).
    bounded: bool = True

    @abc.abstractmethod
    def schema(self) -> pa.Schema:
        """The Arrow schema of the batches this source yields."""

    @abc.abstractmethod
    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches, starting after ``offset`` (None: from the beginning)."""

    def describe(self) -> str:
        """One line for ``explain()``."""
        return self.name

    def lag(self) -> dict[str, int] | None:
        """Records the source is behind its input, per part (a Kafka partition, a Redis
        group's pending entries), or None where the source cannot tell.

        Called from the pipeline thread while the source's iterator runs on its own
        thread: implementations return numbers recorded by that thread, never block.

        Examples
        --------
        >>> import gpustream as gs
        >>> gs.from_arrow({"x": [1]}).lag() is None  # a table in memory is never behind
        True
        """
        return None

    def commit(self, offset: Any) -> None:
        """Tell the source's broker that input up to ``offset`` is done with (a Kafka
        group's offset commit, Redis ``XACK``), so that a restart without a checkpoint does
        not read it again. Default: nothing to tell.

        Called on the pipeline thread, with an offset this source yielded: after the
        checkpoint that holds ``offset`` is on disk and the sinks committed the output
        that depends on it (checkpointed runs), or, without checkpoints, once the run
        ended or stopped cleanly and its sinks closed. Never called for input the run has
        not finished with.

        Examples
        --------
        >>> import gpustream as gs
        >>> gs.from_arrow({"x": [1]}).commit(1) is None  # a table in memory has no broker
        True
        """
        return None
