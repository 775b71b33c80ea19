"""The source contract: bounded or unbounded streams of Arrow record batches with offsets."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gpustream.errors import IngestError
from gpustream.ingest.deadletter import DeadLetter, Locate

__all__ = ["Source", "SourceBatch", "check_share"]

#: the sources :meth:`Source.split` can split, for its error
SPLITTABLE = "files, Parquet, Kafka, Redis with group=, from_arrow"


def check_share(index: int, count: int, where: str) -> None:
    """Raise ``ValueError`` unless ``0 <= index < count`` (ints, ``count >= 1``).

    Examples
    --------
    >>> check_share(1, 2, "read_csv(a.csv)")
    >>> check_share(2, 2, "read_csv(a.csv)")
    Traceback (most recent call last):
    ...
    ValueError: read_csv(a.csv).split: index must be in 0..1 (0-based, under count=2), got 2
    """
    for what, v in (("index", index), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{where}.split: {what} must be an int, got {v!r}")
    if count < 1:
        raise ValueError(f"{where}.split: count must be >= 1 (the number of partitions), "
                         f"got {count}")
    if not 0 <= index < count:
        raise ValueError(f"{where}.split: index must be in 0..{count - 1} (0-based, under "
                         f"count={count}), got {index}")


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
    #: ``(index, count)`` for a share made by :meth:`split`; None for a whole source.
    shared_as: tuple[int, int] | None = None

    @abc.abstractmethod
    def schema(self) -> pa.Schema:
        """The Arrow schema of the batches this source yields."""

    @abc.abstractmethod
    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield batches, starting after ``offset`` (None: from the beginning)."""

    def describe(self) -> str:
        """One line for ``explain()``."""
        return self.name

    def split(self, index: int, count: int) -> Source:
        """Share ``index`` (0-based) of ``count`` of this source: a new source that reads
        only its share, for one of ``count`` partitions of a pipeline.

        The shares of ``0..count-1`` are disjoint and together hold every record of the
        unsplit source; each keeps the unsplit source's record order within its share;
        ``schema()`` is the same, and offsets have the unsplit source's form (a
        partition's checkpoints are the single-process format). ``name`` and
        ``describe()`` end in ``[share index/count]``. The share is a fresh, picklable
        instance that shares no locks, clients or threads with this one. ``count == 1``
        gives an equivalent source (this one, for a source that cannot be split).

        Raises ``ValueError`` for an index outside ``0..count-1``, and
        :class:`~gpustream.errors.IngestError` for a source that cannot be split (a
        socket, stdin, a generator): subclasses that can implement :meth:`_share`.

        Examples
        --------
        >>> import gpustream as gs
        >>> src = gs.from_arrow({"x": [1, 2, 3, 4, 5]})
        >>> [b.data["x"].to_pylist() for b in src.split(1, 2).open()]
        [[3, 4, 5]]
        >>> src.split(1, 2).describe()
        'from_arrow(5 rows, batch_rows=65536) [share 1/2]'
        >>> gs.stdin(schema={"ts": "timestamp[ms]"}).split(0, 2)
        Traceback (most recent call last):
        ...
        gpustream.errors.IngestError: stdin cannot be split across partitions; use a splittable source (files, Parquet, Kafka, Redis with group=, from_arrow) or parallelism=1
        """
        check_share(index, count, self.name)
        if self.shared_as is not None and count > 1:
            raise ValueError(f"{self.name}.split: this is already share "
                             f"{self.shared_as[0]}/{self.shared_as[1]}; split the whole source")
        share = self._share(index, count)
        if count > 1:
            share.shared_as = (index, count)
            share.name = f"{self.name} [share {index}/{count}]"
        return share

    def _share(self, index: int, count: int) -> Source:
        """:meth:`split` after its checks (which then set the share's ``shared_as`` and
        ``name``): here ``self`` for ``count == 1``, else the error. Splittable sources
        override it to return a fresh instance."""
        if count == 1:
            return self
        raise IngestError(f"{self.name} cannot be split across partitions; use a splittable "
                          f"source ({SPLITTABLE}) or parallelism=1")

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
