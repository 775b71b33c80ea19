"""Rows of keyed aggregation state: what the window stores and the session operator share.

A keyed state is a table of slots (one per key, or per (key, window)) and one
:class:`~gpustream.state.aggstate.AggState` per output aggregate over it. These
functions build the key words of a batch's events, initialise and fold slots, read
slots' final values, and snapshot/restore the states' extra arrays, the same way for
every operator that keeps such a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.batch import Batch, physical_dtype
from gpustream.expr import Col
from gpustream.kernels.hashing import widen_keys
from gpustream.state.aggstate import AggState, UpdateContext

__all__ = [
    "ComputedStrings",
    "finalized",
    "init_new",
    "key_columns",
    "key_words",
    "output_dictionaries",
    "restore_aggs",
    "snapshot_aggs",
    "string_sources",
    "update_states",
]


def key_words(keys: Sequence[str], batch: Batch, rows: Any, extra: Any | None, xp: Any) -> Any:
    """``uint64[K, len(rows)]``: the ``keys`` columns of ``batch`` at ``rows``, one word
    per key column, a word of their null bits (bit ``c``: column ``c`` is null; a null's
    value word is 0), then ``extra`` (e.g. window starts) if given.

    Examples
    --------
    >>> import pyarrow as pa
    >>> b = Batch.from_arrow(pa.record_batch({"k": [7, None, 7]}))
    >>> key_words(("k",), b, np.array([0, 1, 2]), None, np).tolist()
    [[7, 0, 7], [0, 1, 0]]
    """
    identity = rows.shape[0] == batch.num_rows  # one row per event, in order
    cols = []
    nulls = None
    for c, name in enumerate(keys):
        values = batch[name]
        valid = batch.validity(name)
        if valid is not None:
            values = xp.where(valid, values, xp.zeros((), dtype=values.dtype))
            bits = (~valid).astype(np.int64) << c
            nulls = bits if nulls is None else nulls | bits
        cols.append(values if identity else values[rows])
    if nulls is None:
        cols.append(xp.zeros(rows.shape[0], dtype=np.int64))
    else:
        cols.append(nulls if identity else nulls[rows])
    if extra is not None:
        cols.append(extra)
    return widen_keys(cols, xp)


def init_new(states: Sequence[AggState], slots: Any, is_new: Any, rows: Any,
             inputs: dict[int, Any], xp: Any) -> None:
    """Initialise the slots ``is_new`` marks (their columns hold fill values: never used
    before) from the rows that created them.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.state.aggstate import make_state
    >>> from gpustream.backend import select_backend
    >>> from gpustream.state.table import SlotTable
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> st = make_state("n", count(), None, pa.int64(), t)
    >>> init_new([st], np.array([0]), np.array([True]), np.array([0]), {0: None}, np)
    """
    idx = xp.nonzero(is_new)[0]
    if idx.shape[0] == 0:
        return
    new_slots = slots[idx]
    for i, st in enumerate(states):
        col = inputs[i]
        if col is not None:
            st.init(new_slots, rows[idx], col.values, col.valid)
        else:
            st.init(new_slots, rows[idx], xp.zeros(1), None)


def update_states(states: Sequence[AggState], slots: Any, rows: Any, inputs: dict[int, Any],
                  ctx: UpdateContext, xp: Any) -> None:
    """Fold row ``rows[a]`` into slot ``slots[a]`` (skipped where -1) for every state.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.state.aggstate import make_state
    >>> from gpustream.backend import select_backend
    >>> from gpustream.state.table import SlotTable
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> _ = t.upsert(np.zeros((1, 2), dtype=np.uint64), np.arange(2))
    >>> st = make_state("n", count(), None, pa.int64(), t)
    >>> ctx = UpdateContext(np.zeros(2, dtype=np.int64), np.arange(2))
    >>> update_states([st], np.array([0, -1]), np.arange(2), {0: None}, ctx, np)
    >>> int(st.finalize(np.array([0]))[0][0])
    1
    """
    for i, st in enumerate(states):
        col = inputs[i]
        if col is None:
            st.update(slots, rows, xp.zeros(1, dtype=np.int64), None, ctx)
        else:
            st.update(slots, rows, col.values, col.valid, ctx)


def finalized(states: Sequence[Any], slots: Any) -> list[tuple[Any, Any | None]]:
    """Each state's output values and validity at ``slots``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.state.aggstate import make_state
    >>> from gpustream.backend import select_backend
    >>> from gpustream.state.table import SlotTable
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> st = make_state("n", count(), None, pa.int64(), t)
    >>> [v.tolist() for v, _ in finalized([st], np.empty(0, dtype=np.int64))]
    [[]]
    """
    return [st.finalize(slots) for st in states]


def snapshot_aggs(states: Sequence[AggState], live: Any, to_host: Any) -> dict[str, Any]:
    """The states' arrays beyond their table columns (``agg.<name>.<field>``) for the
    ``live`` slots, on the host.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.state.aggstate import make_state
    >>> from gpustream.backend import select_backend
    >>> from gpustream.state.table import SlotTable
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> st = make_state("n", count(), None, pa.int64(), t)
    >>> snapshot_aggs([st], np.empty(0, dtype=np.int64), np.asarray)   # all in the table
    {}
    """
    state: dict[str, Any] = {}
    for st in states:
        for k, v in st.snapshot_extra(live, to_host).items():
            state[f"agg.{st.name}.{k}"] = v
    return state


def restore_aggs(states: Sequence[AggState], state: dict[str, Any], slots: Any,
                 to_device: Any) -> None:
    """Put back what :func:`snapshot_aggs` took, the rows now at ``slots``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.state.aggstate import make_state
    >>> from gpustream.backend import select_backend
    >>> from gpustream.state.table import SlotTable
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> st = make_state("n", count(), None, pa.int64(), t)
    >>> restore_aggs([st], {}, np.empty(0, dtype=np.int64), np.asarray)
    """
    for st in states:
        prefix = f"agg.{st.name}."
        extra = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        st.restore_extra(extra, slots, to_device)


def key_columns(keys: Sequence[str], schema: pa.Schema, words: Any, xp: Any
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The key columns (values in ``schema``'s types, validity) of rows whose key words
    are ``words`` (as :func:`key_words` makes them: one per key, then the null bits).

    Examples
    --------
    >>> w = np.array([[7, 0], [0, 1]], dtype=np.uint64)
    >>> cols, valid = key_columns(("k",), pa.schema({"k": pa.int32()}), w, np)
    >>> cols["k"].tolist(), valid["k"].tolist()
    ([7, 0], [True, False])
    """
    k = len(keys)
    columns: dict[str, Any] = {}
    validity: dict[str, Any] = {}
    nulls = words[k].view(np.int64)
    any_null = bool(nulls.any()) if k else False
    for c, name in enumerate(keys):
        dtype = physical_dtype(schema.field(name).type)
        columns[name] = words[c].view(np.int64).astype(dtype, copy=False)
        validity[name] = ((nulls >> c) & 1) == 0 if any_null else None
    return columns, validity


def string_sources(keys: Sequence[str], aggs: Sequence[Any]) -> dict[str, str]:
    """Output column -> the input column whose string dictionary decodes it: the keys,
    and aggregates of a column as it is (first, last, min, max, max_by of a string).

    Examples
    --------
    >>> from gpustream.expr import col, count
    >>> from gpustream.operators.window import AggSpec
    >>> string_sources(("k",), [AggSpec("f", col("s").first(), pa.string(), pa.string()),
    ...                         AggSpec("n", count(), None, pa.int64())])
    {'k': 'k', 'f': 's'}
    """
    out = {k: k for k in keys}
    for a in aggs:
        if isinstance(a.agg.value_input, Col):
            out[a.name] = a.agg.value_input.name
    return out


class ComputedStrings:
    """Aggregates of computed string expressions (``max_by(upper(s), ...)``,
    ``count_distinct(concat(a, b))``): their input's codes re-coded into dictionaries the
    operator owns and checkpoints (:class:`~gpustream.operators.recode.Recoder`), as an
    expression's own dictionary grows in arrival order, which a restart would not
    repeat: states and output then keep their meaning across a restore.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import col
    >>> from gpustream.operators.window import AggSpec
    >>> up = AggSpec("u", col("s").str.to_uppercase().first(), pa.string(), pa.string())
    >>> strings = ComputedStrings([up], select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"s": ["b", "a", "b"]}))
    >>> strings.inputs(b)[0].values.tolist(), strings.dictionaries["u"].values.to_pylist()
    ([0, 1, 0], ['B', 'A'])
    """

    def __init__(self, aggs: Sequence[Any], backend: Any) -> None:
        from gpustream.operators.recode import Recoder

        self.aggs = list(aggs)
        self.xp = backend.xp
        self.recoder = Recoder([a.name for a in self.aggs if _computed_string(a)], backend)

    @property
    def dictionaries(self) -> dict[str, Any]:
        """The owned dictionary of each such aggregate (its output column's too)."""
        return self.recoder.dictionaries

    def inputs(self, batch: Batch) -> dict[int, Any]:
        """Each aggregation's input on ``batch`` (:func:`~gpustream.expr.agg_input`),
        computed strings as codes into the owned dictionaries."""
        from gpustream.expr import Column, agg_input

        def recoder(name: str) -> Any:
            def recode(c: Column) -> Column:
                owned = self.recoder.dictionaries[name]
                return Column(self.recoder.recode(name, c.dictionary, c.values), c.valid, owned)
            return recode

        return {i: agg_input(a.agg, batch, self.xp,
                             recoder(a.name) if a.name in self.recoder.dictionaries else None)
                for i, a in enumerate(self.aggs)}

    def snapshot(self) -> dict[str, Any]:
        """The owned dictionaries, as checkpoint arrays."""
        return self.recoder.snapshot("aggstrings.")

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`snapshot` saved."""
        self.recoder.restore(state, "aggstrings.")


def _computed_string(a: Any) -> bool:
    """Whether an aggregation's input is a string computed by an expression."""
    return (a.agg.value_input is not None and not isinstance(a.agg.value_input, Col)
            and a.in_type is not None
            and (pa.types.is_string(a.in_type) or pa.types.is_large_string(a.in_type)))


def output_dictionaries(keys: Sequence[str], aggs: Sequence[Any],
                        dictionaries: Mapping[str, Any],
                        owned: Mapping[str, Any]) -> dict[str, Any]:
    """The string dictionaries of a keyed aggregation's output columns: the input's for
    keys and aggregates of a column (:func:`string_sources`), and the operator's own for
    string aggregates of computed expressions (:class:`ComputedStrings`).

    Examples
    --------
    >>> from gpustream.expr import col
    >>> from gpustream.ingest.dictionary import StringDictionary
    >>> from gpustream.operators.window import AggSpec
    >>> f = AggSpec("f", col("s").first(), pa.string(), pa.string())
    >>> d = StringDictionary(pa.array(["a"]))
    >>> output_dictionaries(("k",), [f], {"s": d, "k": d}, {}) == {"k": d, "f": d}
    True
    """
    out = {o: dictionaries[src] for o, src in string_sources(keys, aggs).items()
           if src in dictionaries}
    for a in aggs:
        if a.name in owned and a.out_type is not None and (
                pa.types.is_string(a.out_type) or pa.types.is_large_string(a.out_type)):
            out[a.name] = owned[a.name]
    return out
