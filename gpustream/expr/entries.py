"""Results per dictionary entry: what makes a function of a string cost one pass over the
dictionary, not one per row.

A string column is int32 codes into a :class:`~gpustream.ingest.dictionary.StringDictionary`
(DESIGN.md section 2), so a function of a string is computed once per dictionary entry,
with ``pyarrow.compute``, and the batch only gathers the per-entry result by code (on the
device too: the per-entry result moves there once, and again only for entries the
dictionary gained since). A function that gives strings gives a dictionary-coded column:
codes into a derived dictionary that grows, append-only, in the order of its input
dictionary, so its codes are a pure function of that dictionary (stable across batches
and rebuilt the same after a checkpoint restores the input's dictionary).

Concatenating two string columns cannot use one dictionary: it is computed on the
distinct (code, code) pairs of each batch, found with ``xp.unique``, so a batch costs one
string join per distinct pair, never per row. Its dictionary grows in the order pairs
first appear. The string functions (:mod:`gpustream.expr.strings`), ``strftime``
(:mod:`gpustream.expr.time`) and ``CASE`` / ``is_in`` (:mod:`gpustream.expr.when`) use
these tables.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.batch import physical_dtype
from gpustream.expr.column import Column
from gpustream.ingest.dictionary import StringDictionary

if TYPE_CHECKING:
    from gpustream.expr.nodes import Expr

__all__ = ["LOCK", "EntryTable", "arrow_ints", "concat_columns", "encode_distinct", "gather",
           "node_state", "per_entry", "to_host"]

_LARGE = pa.large_string()


def arrow_ints(values: np.ndarray) -> pa.Array:
    """An int64 Arrow array over numpy values (``pa.array`` of numpy would load pandas).

    >>> arrow_ints(np.array([3, 1], dtype=np.int32)).to_pylist()
    [3, 1]
    """
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def to_host(values: Any) -> np.ndarray:
    """A numpy copy of a device array (the array itself when already on the host).

    >>> to_host(np.arange(2)).tolist()
    [0, 1]
    """
    return values if isinstance(values, np.ndarray) else values.get()


class EntryTable:
    """A function's result for every entry of one dictionary, grown as it grows.

    ``values[code]`` is the result for entry ``code`` (for string results: a code into
    ``out``), ``valid[code]`` whether it is non-null (None: all are).

    >>> t = EntryTable(pc.utf8_length, pa.int32())
    >>> t.grow(pa.array(["ab", "c"], pa.large_string()))
    >>> t.values.tolist(), t.valid is None
    ([2, 1], True)
    """

    def __init__(self, fn: Callable[[pa.Array], pa.Array], result: pa.DataType | None,
                 out: StringDictionary | None = None) -> None:
        self.fn = fn
        self.result = result
        if result is None and out is None:
            out = StringDictionary()
        self.out = out
        dtype = np.dtype(np.int32) if result is None else physical_dtype(result)
        self.values = np.zeros(0, dtype=dtype)
        self.valid: np.ndarray | None = None
        self._device: tuple[int, Any, Any] | None = None

    def grow(self, strings: pa.Array) -> None:
        n = len(self.values)
        if len(strings) <= n:
            return
        got = self.fn(strings.slice(n))
        if self.result is None:
            assert self.out is not None
            values, valid = self.out.encode(got)
        else:
            valid = got.is_valid().to_numpy(zero_copy_only=False) if got.null_count else None
            if got.null_count:
                got = pc.coalesce(got, pa.scalar(False if pa.types.is_boolean(got.type) else 0,
                                                 got.type))
            values = got.to_numpy(zero_copy_only=False).astype(self.values.dtype, copy=False)
        if valid is not None or self.valid is not None:
            old = self.valid if self.valid is not None else np.ones(n, dtype=bool)
            new = valid if valid is not None else np.ones(len(values), dtype=bool)
            self.valid = np.concatenate([old, new])
        self.values = np.concatenate([self.values, values])

    def on(self, xp: ModuleType) -> tuple[Any, Any]:
        """``values`` and ``valid`` on ``xp``'s device: only new entries are copied."""
        if xp is np:
            return self.values, self.valid
        n = len(self.values)
        have, dv, dvalid = self._device or (0, xp.zeros(0, dtype=self.values.dtype), None)
        if have < n:  # only the entries the dictionary gained move to the device
            dv = xp.concatenate([dv, xp.asarray(self.values[have:])])
            if self.valid is not None:
                dvalid = xp.asarray(self.valid) if dvalid is None else \
                    xp.concatenate([dvalid, xp.asarray(self.valid[have:])])
            self._device = (n, dv, dvalid)
        return dv, dvalid


LOCK = threading.RLock()
#: dictionary -> function key -> its per-entry table (gone with the dictionary)
_TABLES: weakref.WeakKeyDictionary[StringDictionary, dict[Any, EntryTable]] = \
    weakref.WeakKeyDictionary()
#: id of an expression node -> (a weak reference to it, its state): derived dictionaries
#: of concatenations, CASE and strftime (by id: an ``Expr``'s ``==`` builds an expression)
_NODES: dict[int, tuple[weakref.ref[Expr], Any]] = {}


def _forget(node_id: int) -> Callable[[weakref.ref[Expr]], None]:
    def forget(ref: weakref.ref[Expr]) -> None:
        with LOCK:
            if node_id in _NODES and _NODES[node_id][0] is ref:
                del _NODES[node_id]
    return forget


def node_state(node: Expr, make: Callable[[], Any]) -> Any:
    """The state an expression node keeps across batches, made on first use.

    >>> from gpustream.expr import col
    >>> e = col("a")
    >>> node_state(e, StringDictionary) is node_state(e, StringDictionary)
    True
    """
    with LOCK:
        held = _NODES.get(id(node))
        if held is None or held[0]() is not node:
            held = _NODES[id(node)] = (weakref.ref(node, _forget(id(node))), make())
        return held[1]


def gather(table: EntryTable, strings: pa.Array, c: Column, xp: ModuleType) -> Column:
    """``table`` grown to ``strings`` (a snapshot of ``c``'s dictionary), gathered by
    ``c``'s codes: the result for each row, null where ``c`` or the result is null.

    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["ab", None, "c", "ab"]))
    >>> out = gather(EntryTable(pc.utf8_length, pa.int32()), d.values, Column(codes, valid, d), np)
    >>> out.values[out.valid].tolist(), out.valid.tolist()
    ([2, 1, 2], [True, False, True, True])
    """
    with LOCK:
        table.grow(strings)
        values, valid = table.on(xp)
    n = len(c.values)
    if not len(values):  # an empty dictionary: every row is null
        return Column(xp.zeros(n, dtype=values.dtype), xp.zeros(n, dtype=np.bool_),
                      table.out if table.result is None else None)
    codes = c.values if c.valid is None else xp.where(c.valid, c.values, 0)
    out_valid = c.valid
    if valid is not None:
        out_valid = valid[codes] if out_valid is None else xp.logical_and(out_valid, valid[codes])
    return Column(values[codes], out_valid, table.out if table.result is None else None)


def per_entry(c: Column, key: Any, fn: Callable[[pa.Array], pa.Array],
              result: pa.DataType | None, xp: ModuleType) -> Column:
    """``fn`` of each entry of ``c``'s dictionary (cached under ``key``), by code.

    ``result`` is the Arrow type of a number or bool result; ``None`` for a string result,
    which comes back as codes into a derived dictionary.

    >>> from gpustream.expr import Column
    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["Ab", None, "ab", "Ab"]))
    >>> out = per_entry(Column(codes, valid, d), "lower", pc.utf8_lower, None, np)
    >>> out.dictionary.decode(out.values, out.valid).to_pylist()
    ['ab', None, 'ab', 'ab']
    """
    d = c.dictionary
    assert d is not None
    strings = d.values  # one snapshot: every code of the batch is below its length
    with LOCK:
        tables = _TABLES.setdefault(d, {})
        table = tables.get(key)
        if table is None:
            table = tables[key] = EntryTable(fn, result)
    return gather(table, strings, c, xp)


def encode_distinct(keys: Any, valid: Any | None, xp: ModuleType,
                    strings_of: Callable[[np.ndarray], pa.Array],
                    out: StringDictionary) -> Column:
    """A string column from per-row integer ``keys``: ``strings_of`` of each distinct
    valid key (in order of first appearance), encoded into ``out``, gathered back.

    >>> out = StringDictionary()
    >>> col = encode_distinct(np.array([5, 3, 5]), None, np,
    ...                       lambda k: pc.cast(pa.array(k), pa.string()), out)
    >>> col.values.tolist(), out.values.to_pylist()
    ([0, 1, 0], ['5', '3'])
    """
    n = len(keys)
    null_key = keys.dtype.type(np.iinfo(keys.dtype).min)
    if valid is not None:  # null rows share one key, never turned into a string
        keys = xp.where(valid, keys, null_key)
    uniq, first, inverse = xp.unique(keys, return_index=True, return_inverse=True)
    uniq_h, first_h = to_host(uniq), to_host(first)
    real = np.ones(len(uniq_h), dtype=bool)
    if valid is not None and len(uniq_h) and uniq_h[0] == null_key:
        real[0] = bool(valid[int(first_h[0])])  # a valid row holding that very value
    codes = np.zeros(len(uniq_h), dtype=np.int32)
    order = np.argsort(first_h[real], kind="stable")
    if len(order):
        got, got_valid = out.encode(strings_of(uniq_h[real][order]))
        assert got_valid is None, "strings of valid keys are never null"
        placed = np.zeros(len(order), dtype=np.int32)
        placed[order] = got
        codes[real] = placed
    rows = xp.asarray(codes)[inverse.reshape(-1)] if n else xp.zeros(0, dtype=np.int32)
    return Column(rows, valid, out)


def _literal_of(c: Column) -> str | None:
    return c.values if c.dictionary is None and isinstance(c.values, str) else None


def _joined(text: str, separator: str, at_left: bool) -> Callable[[pa.Array], pa.Array]:
    """Each string joined with ``text`` (before it when ``at_left``) by ``separator``."""
    t, sep = pa.scalar(text, _LARGE), pa.scalar(separator, _LARGE)
    if at_left:
        return lambda a: pc.binary_join_element_wise(t, a, sep)
    return lambda a: pc.binary_join_element_wise(a, t, sep)


def concat_columns(node: Expr, parts: list[Column], separator: str, xp: ModuleType) -> Column:
    """String columns and literals (evaluated) joined by ``separator``, left to right.

    >>> from gpustream.expr import col, Column
    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["a", "b", None]))
    >>> a = Column(codes, valid, d)
    >>> out = concat_columns(col("x"), [a, Column("-", None), a], "", np)
    >>> out.dictionary.decode(out.values, out.valid).to_pylist()
    ['a-a', 'b-b', None]
    """
    acc = parts[0]
    for i, part in enumerate(parts[1:]):
        left, right = _literal_of(acc), _literal_of(part)
        if left is not None and right is not None:
            acc = Column(left + separator + right, None)
        elif right is not None:
            acc = per_entry(acc, ("concat_right", right, separator),
                            _joined(right, separator, at_left=False), None, xp)
        elif left is not None:
            acc = per_entry(part, ("concat_left", left, separator),
                            _joined(left, separator, at_left=True), None, xp)
        else:
            acc = _concat_pairs(node_state(node, dict), i, acc, part, separator, xp)
    return acc


def _concat_pairs(state: dict[int, StringDictionary], step: int, left: Column,
                  right: Column, separator: str, xp: ModuleType) -> Column:
    """Two string columns joined, computed once per distinct (code, code) pair."""
    assert left.dictionary is not None and right.dictionary is not None
    with LOCK:
        out = state.setdefault(step, StringDictionary())
    lstrings, rstrings = left.dictionary.values, right.dictionary.values
    width = max(len(rstrings), 1)
    keys = left.values.astype(np.int64) * width + right.values
    valid = left.valid if right.valid is None else (
        right.valid if left.valid is None else xp.logical_and(left.valid, right.valid))
    sep = pa.scalar(separator, _LARGE)

    def strings_of(pairs: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(lstrings.take(arrow_ints(pairs // width)),
                                           rstrings.take(arrow_ints(pairs % width)), sep)

    return encode_distinct(keys, valid, xp, strings_of, out)

