"""Changelogs: the output of operators without windows (DESIGN.md section 11).

A running aggregation or a regular join cannot say "this row is final": a later event
changes it. Its output is a changelog, as Flink's RowKind: every row carries an ``op``
column (a string, the last column) saying what it does to the result table:

- ``+I`` insert: a new row;
- ``-U`` update-before: the old version of a row about to change (the row as it was);
- ``+U`` update-after: its new version (follows its ``-U``);
- ``-D`` delete: the row is gone.

Append-only sinks (files, ``collect()``) write the changelog as it is; applying it to a
table keyed by the operator's key (:func:`materialize`, or an upsert sink) gives the
result. Operators compact the changes of one batch: how many ``-U``/``+U`` pairs a key
gets depends on how the stream was cut into batches, the result table does not.

Inside a batch ``op`` is a string column of int32 codes into a fixed dictionary
(:func:`op_dictionary`): code ``i`` stands for ``OPS[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.ingest.dictionary import StringDictionary

__all__ = [
    "DELETE",
    "INSERT",
    "OPS",
    "OP_COLUMN",
    "UPDATE_AFTER",
    "UPDATE_BEFORE",
    "materialize",
    "op_dictionary",
    "op_field",
    "weights",
]

OP_COLUMN = "op"
OPS = ("+I", "-U", "+U", "-D")
INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE = 0, 1, 2, 3


def op_field() -> pa.Field:
    """The ``op`` column of a changelog (a string that is never null).

    Examples
    --------
    >>> op_field()
    pyarrow.Field<op: string not null>
    """
    return pa.field(OP_COLUMN, pa.string(), nullable=False)


def op_dictionary() -> StringDictionary:
    """A dictionary in which code ``i`` stands for ``OPS[i]`` (a fresh one per operator).

    Examples
    --------
    >>> op_dictionary().decode(np.array([0, 3], dtype=np.int32)).to_pylist()
    ['+I', '-D']
    """
    data = "".join(OPS).encode()  # built from buffers: pa.array of a list loads pandas
    offsets = np.cumsum([0, *(len(o) for o in OPS)]).astype(np.int64)
    values = pa.Array.from_buffers(pa.large_string(), len(OPS),
                                   [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return StringDictionary(values)


def materialize(changelog: pa.Table, key: str | Sequence[str] | None = None) -> pa.Table:
    """The table a changelog describes, without ``op``.

    With ``key`` (a running aggregation's keys): the last version of each key's row, in
    the order keys first appeared; keys whose last change is ``-U`` or ``-D`` are absent
    (what an upsert sink keyed on ``key`` holds). Without ``key`` (a join's output, where
    rows are not unique): a multiset, each ``+I``/``+U`` adding one copy of its row and
    each ``-U``/``-D`` removing one, rows in the order their values first appeared.

    Parameters
    ----------
    changelog
        Rows with an ``op`` column (``+I``, ``-U``, ``+U``, ``-D``), in emission order.
    key
        The column(s) that identify a row of the result, or None for a multiset.

    Raises
    ------
    ValueError
        ``changelog`` has no ``op`` column or lacks a key column.

    Examples
    --------
    >>> log = pa.table({"op": ["+I", "+I", "-U", "+U", "-D"], "k": [1, 2, 1, 1, 2],
    ...                 "n": [1, 5, 1, 3, 5]})
    >>> materialize(log, "k").to_pydict()
    {'k': [1], 'n': [3]}
    >>> joined = pa.table({"op": ["+I", "+I", "-D", "+I"], "a": [1, 1, 1, 2],
    ...                    "b": [None, None, None, 7]})
    >>> materialize(joined).to_pydict()
    {'a': [1, 2], 'b': [None, 7]}
    """
    names = changelog.column_names
    if OP_COLUMN not in names:
        raise ValueError(f"materialize: the table has no {OP_COLUMN!r} column; it is not a "
                         "changelog (columns: " + ", ".join(names) + ")")
    values = [c for c in names if c != OP_COLUMN]
    keys = values if key is None else [key] if isinstance(key, str) else list(key)
    missing = [k for k in keys if k not in names]
    if missing:
        raise ValueError(f"materialize: key column(s) {missing} are not in the changelog; "
                         "pass the columns that identify a result row")
    n = changelog.num_rows
    adds = pc.is_in(changelog[OP_COLUMN],
                    value_set=pa.array([OPS[INSERT], OPS[UPDATE_AFTER]]))
    weight = pc.if_else(adds, 1, -1).cast(pa.int64())
    rows = changelog.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    rows = rows.append_column("__weight", weight)
    groups = rows.group_by(keys, use_threads=False).aggregate(
        [("__row", "min"), ("__row", "max"), ("__weight", "sum")])
    groups = groups.sort_by("__row_min")
    if key is None:  # a multiset: each row value as often as its weight says
        copies = np.maximum(groups["__weight_sum"].to_numpy(), 0)
        picks = np.repeat(groups["__row_min"].to_numpy(), copies)
        return changelog.take(pa.array(picks)).drop_columns([OP_COLUMN])
    result = changelog.take(groups["__row_max"].combine_chunks())
    alive = pc.is_in(result[OP_COLUMN], value_set=pa.array([OPS[INSERT], OPS[UPDATE_AFTER]]))
    return result.filter(alive).drop_columns([OP_COLUMN])


def weights(batch: Any, xp: Any) -> Any:
    """+1 for the rows of a changelog that add (``+I``, ``+U``), -1 for those that take
    back (``-U``, ``-D``), whatever the codes of the batch's ``op`` dictionary.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> b = Batch.from_arrow(pa.record_batch({"op": ["+I", "-U", "+U", "-D"]}))
    >>> weights(b, np).tolist()
    [1, -1, 1, -1]
    """
    names = batch.dictionaries[OP_COLUMN].values.to_pylist()
    adds = np.array([n in (OPS[INSERT], OPS[UPDATE_AFTER]) for n in names], dtype=bool)
    table = xp.asarray(np.where(adds, 1, -1).astype(np.int64))
    return table[batch[OP_COLUMN]]
