"""Sinks: where a stream's rows go. More sinks (files, brokers) arrive with issue 5."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from gpustream.batch import Batch

__all__ = ["CallbackSink", "CollectSink", "ConsoleSink", "DeadLetterSink", "Sink", "to_callback",
           "to_console"]


class Sink:
    """A sink receives host Arrow record batches: ``open(schema)``, ``write`` …, ``close()``."""

    name = "sink"
    #: set by the runtime before ``open`` when the run takes checkpoints (``restore``,
    #: ``prepare`` and ``commit`` will be called)
    checkpointed_run = False
    #: True for a sink whose ``prepare`` commits (a transaction): the runtime prepares it
    #: after the others, so that a failing sink cannot leave its rows visible without a
    #: checkpoint
    commits_in_prepare = False

    def open(self, schema: pa.Schema) -> None:
        """Called once before the first batch, with the stream's schema."""
        self.schema = schema

    def write(self, batch: pa.RecordBatch) -> None:
        """Called for each non-empty output batch, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Called once when the run ends."""

    # Checkpointed runs only (exactly-once output: a two-phase commit per checkpoint).
    # Order: open(schema); restore(state, seq, key); then write ... and, at each
    # checkpoint, prepare(seq) before the checkpoint is written and commit(seq) once it
    # is on disk; close() at the end (after the final checkpoint's commit).

    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        """A checkpointed run starts: ``state`` is what :meth:`prepare` returned for
        checkpoint ``seq``, the one the run resumes from (None and 0: no checkpoint yet).
        Make that checkpoint's output visible if its commit did not happen, and discard
        whatever was written after it (an earlier run that died). ``key`` names this
        sink stably across runs (the pipeline and the sink's position), for ids such as
        a Kafka transactional id. Default: nothing kept, nothing to do."""

    def prepare(self, seq: int) -> dict[str, Any]:
        """Checkpoint ``seq`` is being taken: make every row written so far durable but
        not yet visible, and return plain data (JSON) that lets :meth:`restore` finish or
        discard it. Default: nothing (the sink is at-least-once)."""
        return {}

    def commit(self, seq: int) -> None:
        """Checkpoint ``seq`` is on disk: make the rows it covers visible."""

    def for_partition(self, index: int) -> None:
        """This object is partition ``index``'s own copy of the sink (a partitioned run
        gives each partition one): make what must differ between the copies differ (the
        names of files in progress). Default: nothing.

        Examples
        --------
        >>> Sink().for_partition(1)
        """

    def describe(self) -> str:
        """One line for ``explain()``."""
        return self.name


class CallbackSink(Sink):
    """Calls ``fn(record_batch)`` for every output batch."""

    def __init__(self, fn: Callable[[pa.RecordBatch], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"to_callback needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = f"callback {getattr(fn, '__name__', repr(fn))}"

    def write(self, batch: pa.RecordBatch) -> None:
        self.fn(batch)


class CollectSink(Sink):
    """Keeps every batch in memory; ``table()`` concatenates them."""

    name = "collect"

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def table(self) -> pa.Table:
        """All collected rows as one table (empty with the schema when there were none)."""
        if self.batches:
            return pa.Table.from_batches(self.batches)
        assert self.schema is not None, "table() before open()"
        return self.schema.empty_table()


class ConsoleSink(Sink):
    """Prints each batch as a rich table (at most ``max_rows`` rows of each)."""

    def __init__(self, max_rows: int = 20, console: Any = None) -> None:
        if max_rows < 1:
            raise ValueError(f"to_console: max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.console = console
        self.name = f"console (max_rows={max_rows})"

    def open(self, schema: pa.Schema) -> None:
        super().open(schema)
        if self.console is None:
            from rich.console import Console

            self.console = Console()

    def write(self, batch: pa.RecordBatch) -> None:
        from rich.table import Table

        table = Table(*batch.schema.names, caption=_caption(batch.num_rows, self.max_rows))
        head = batch.slice(0, self.max_rows).to_pylist()
        for row in head:
            table.add_row(*("∅" if v is None else str(v) for v in row.values()))
        self.console.print(table)


def _caption(n: int, max_rows: int) -> str:
    if n <= max_rows:
        return f"{n} rows"
    return f"{max_rows} of {n} rows"


def to_callback(fn: Callable[[pa.RecordBatch], Any]) -> CallbackSink:
    """A sink that calls ``fn`` with each output ``pyarrow.RecordBatch``.

    Examples
    --------
    >>> import gpustream as gs
    >>> got = []
    >>> p = gs.Pipeline("doc")
    >>> s = p.source(gs.from_arrow({"x": [1, 2, 3]}, batch_rows=2))
    >>> _ = s.filter(gs.col("x") != 2).sink(to_callback(lambda rb: got.extend(rb["x"].to_pylist())))
    >>> stats = p.run()
    >>> got
    [1, 3]
    """
    return CallbackSink(fn)


def to_console(max_rows: int = 20, console: Any = None) -> ConsoleSink:
    """A sink that prints each output batch as a rich table.

    Parameters
    ----------
    max_rows
        Rows shown per batch; the caption says how many there were.
    console
        A ``rich.console.Console`` to print to (default: standard output).

    Examples
    --------
    >>> import gpustream as gs
    >>> from rich.console import Console
    >>> p = gs.Pipeline("doc")
    >>> con = Console(width=30, color_system=None)
    >>> _ = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", None]})).sink(to_console(console=con))
    >>> _ = p.run()
    ┏━━━┳━━━┓
    ┃ x ┃ s ┃
    ┡━━━╇━━━┩
    │ 1 │ a │
    │ 2 │ ∅ │
    └───┴───┘
     2 rows
    """
    return ConsoleSink(max_rows, console)


def write_batch(sink: Sink, batch: Batch) -> None:
    """Hand a batch to a sink as host Arrow (skipping empty batches)."""
    if batch.num_rows:
        sink.write(batch.to_arrow())


#: The rows a dead-letter stream carries when it is routed to a sink.
DEAD_LETTER_SCHEMA = pa.schema([("raw", pa.string()), ("source", pa.string()),
                                ("offset", pa.string()), ("reason", pa.string()),
                                ("time", pa.timestamp("ms", tz="UTC"))])


class DeadLetterSink:
    """Routes dead letters to any sink as rows of ``DEAD_LETTER_SCHEMA`` (the offset as
    JSON text); opened on the first bad record.

    Examples
    --------
    >>> from gpustream.ingest.deadletter import DeadLetter
    >>> got = []
    >>> d = DeadLetterSink(to_callback(got.append))
    >>> d.write([DeadLetter("x,y", "read_csv(a.csv)", {"line": 2}, "too few columns")])
    >>> d.close()
    >>> got[0].to_pylist()[0]["offset"], d.describe()
    ('{"line": 2}', 'dead letters -> callback append')
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.opened = False
        self.count = 0
        self.path = sink.describe()

    def write(self, letters: Any) -> None:
        """Write dead letters as one batch."""
        import json
        from datetime import datetime, timezone

        if not letters:
            return
        if not self.opened:
            self.sink.open(DEAD_LETTER_SCHEMA)
            self.opened = True
        now = datetime.now(timezone.utc)
        self.sink.write(pa.RecordBatch.from_pylist(
            [{"raw": d.raw, "source": d.source, "offset": json.dumps(d.offset, default=str),
              "reason": d.reason, "time": now} for d in letters], schema=DEAD_LETTER_SCHEMA))
        self.count += len(letters)

    def close(self) -> None:
        """Close the sink (if anything was written)."""
        if self.opened:
            self.sink.close()

    def describe(self) -> str:
        """One line for ``explain()``."""
        return f"dead letters -> {self.path}"
