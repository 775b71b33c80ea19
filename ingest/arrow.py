"""In-memory Arrow data as a bounded source: ``gs.from_arrow(table, batch_rows=...)``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from gpustream.ingest.source import Source, SourceBatch

__all__ = ["ArrowSource", "from_arrow"]

DEFAULT_BATCH_ROWS = 65_536


class ArrowSource(Source):
    """A bounded source over an Arrow table, cut into zero-copy slices of ``batch_rows``.

    The offset is the number of rows already yielded.
    """

    def __init__(self, table: pa.Table, batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"from_arrow: batch_rows must be a positive int, got {batch_rows!r}")
        self.table = table
        self.batch_rows = batch_rows
        self.name = f"from_arrow({table.num_rows} rows, batch_rows={batch_rows})"

    def schema(self) -> pa.Schema:
        """The table's schema."""
        return self.table.schema

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield slices of ``batch_rows`` rows, starting at row ``offset``."""
        start = int(offset or 0)
        n = self.table.num_rows
        while start < n:
            stop = min(start + self.batch_rows, n)
            chunks = self.table.slice(start, stop - start).to_batches()
            if len(chunks) > 1:  # the slice spans chunks of the table: one batch of them
                chunks = pa.Table.from_batches(chunks).combine_chunks().to_batches()
            yield SourceBatch(chunks[0], stop)
            start = stop


def from_arrow(
    data: pa.Table | pa.RecordBatch | Mapping[str, Any],
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ArrowSource:
    """A bounded source over in-memory Arrow data.

    Parameters
    ----------
    data
        A ``pyarrow.Table``, a ``pyarrow.RecordBatch``, or a mapping of column name ->
        values that ``pyarrow.table`` accepts.
    batch_rows
        Rows per micro-batch (the last one may be shorter).

    Examples
    --------
    >>> import pyarrow as pa
    >>> src = from_arrow(pa.table({"x": [1, 2, 3, 4, 5]}), batch_rows=2)
    >>> [b.data.num_rows for b in src.open()]
    [2, 2, 1]
    >>> [b.offset for b in src.open()]
    [2, 4, 5]
    """
    if isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        table = data
    elif isinstance(data, Mapping):
        table = pa.table(dict(data))
    else:
        raise TypeError(
            f"from_arrow takes a pyarrow.Table, a pyarrow.RecordBatch or a dict of columns, "
            f"got {type(data).__name__}; for pandas use pyarrow.Table.from_pandas(df)"
        )
    return ArrowSource(table, batch_rows)
