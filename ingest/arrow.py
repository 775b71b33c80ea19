"""In-memory Arrow data and DataFrames as a bounded source: ``gs.from_arrow(df, batch_rows=...)``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from gpustream.ingest.source import Source, SourceBatch

__all__ = ["ArrowSource", "as_arrow_table", "from_arrow"]

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

    def _share(self, index: int, count: int) -> ArrowSource:
        """Rows ``[index*n//count, (index+1)*n//count)``, a zero-copy slice; its offset
        counts the rows yielded from the share."""
        n = self.table.num_rows
        lo, hi = index * n // count, (index + 1) * n // count
        return ArrowSource(self.table.slice(lo, hi - lo), self.batch_rows)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the table as an Arrow IPC stream: a slice's pickle would carry
        its parent's whole buffers (a share shipped to a worker, all the rows)."""
        state = dict(self.__dict__)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as w:
            w.write_table(self.table)
        state["table"] = sink.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Read the table back from its IPC stream."""
        state["table"] = pa.ipc.open_stream(state["table"]).read_all()
        self.__dict__.update(state)


def as_arrow_table(data: Any, where: str = "from_arrow") -> pa.Table:
    """``data`` as a ``pyarrow.Table``, without copying where the producer allows.

    Accepts a ``pyarrow.Table``, ``RecordBatch`` or ``RecordBatchReader``, a mapping of
    column name -> values, and any object that exports Arrow data through the Arrow
    PyCapsule interface (``__arrow_c_stream__`` or ``__arrow_c_array__``): pandas and
    Polars DataFrames, DuckDB relations, cudf DataFrames (copied to the host), nanoarrow
    and others. Polars shares its buffers with Arrow; pandas converts as
    ``pyarrow.Table.from_pandas`` does (a named or non-default index becomes a column).

    Examples
    --------
    >>> import pandas as pd
    >>> as_arrow_table(pd.DataFrame({"x": [1, 2], "s": pd.Categorical(["a", "b"])})).schema
    x: int64
    s: dictionary<values=...string, indices=int8, ordered=0>
    >>> as_arrow_table([1, 2])
    Traceback (most recent call last):
    ...
    TypeError: from_arrow takes a pyarrow.Table or RecordBatch, a dict of columns, or a DataFrame (pandas, Polars, cudf, a DuckDB relation: anything with __arrow_c_stream__), got list
    """
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.RecordBatchReader):
        table = data.read_all()
    elif isinstance(data, Mapping):
        table = pa.table(dict(data))
    elif hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__"):
        table = pa.table(data)
    elif type(data).__module__.startswith("cudf") and hasattr(data, "to_arrow"):
        table = data.to_arrow()  # a cudf DataFrame of a release without the interface
    else:
        raise TypeError(
            f"{where} takes a pyarrow.Table or RecordBatch, a dict of columns, or a "
            "DataFrame (pandas, Polars, cudf, a DuckDB relation: anything with "
            f"__arrow_c_stream__), got {type(data).__name__}")
    if table.schema.metadata:  # pandas' and Polars' notes on the conversion
        table = table.replace_schema_metadata(None)
    return table


def from_arrow(data: Any, batch_rows: int = DEFAULT_BATCH_ROWS) -> ArrowSource:
    """A bounded source over in-memory Arrow data or a DataFrame.

    Parameters
    ----------
    data
        A ``pyarrow.Table``, ``RecordBatch`` or ``RecordBatchReader``, a mapping of
        column name -> values that ``pyarrow.table`` accepts, or any DataFrame with the
        Arrow PyCapsule interface (pandas, Polars, cudf, a DuckDB relation; see
        :func:`as_arrow_table`). It is read once, when the source is made.
        Dictionary-encoded (categorical) columns are read as their values.
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
    >>> import polars as pl
    >>> from_arrow(pl.DataFrame({"x": [1.5, 2.5]})).schema()
    x: double
    """
    return ArrowSource(as_arrow_table(data), batch_rows)
