"""Output rows of fused windows: order the popped rows, finalize every aggregate, in numba.

The fused CPU path (:mod:`gpustream.kernels.fused_window`) pops the state rows of the
windows that fire from each shard as packed ``int64[n, W]`` rows plus their key words
(``uint64[n, K + 2]``: key columns, null bits, window start). Each shard sorts its own
rows by (window end, window start, keys) on its own thread (:func:`run_order`); the
shards' sorted runs are then merged by one generated loop per query shape
(:func:`emit_kernel`), which writes the output columns as it goes: the key words, window
ends and each aggregate's value and validity, computed exactly as the aggregation
states' numpy ``finalize`` computes them. Per firing this is a handful of calls instead of tens
of numpy calls per aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numba
import numpy as np

__all__ = ["EmitAgg", "emit_kernel", "run_order"]


def run_order(keys: Any, ends: Any, n_keys: int) -> Any:
    """The order of popped rows by (window end, window start, key words), as
    :meth:`~gpustream.operators.window.WindowAggOp._emit_rows` orders output (every word
    compared unsigned; a null key and the key 0 in either order).

    Examples
    --------
    >>> import numpy as np
    >>> keys = np.array([[7, 0, 10], [3, 0, 10], [5, 0, 0]], dtype=np.uint64)
    >>> run_order(keys, np.array([20, 20, 10]), 1).tolist()
    [2, 1, 0]
    """
    n = keys.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    starts = keys[:, n_keys + 1]
    one_window = bool((starts == starts[0]).all() and (ends == ends[0]).all())
    if one_window and n_keys == 1:
        return np.argsort(keys[:, 0])
    sort_by = [keys[:, c] for c in range(n_keys - 1, -1, -1)]
    if not one_window:
        sort_by += [starts, ends.view(np.uint64)]
    if not sort_by:
        return np.arange(n, dtype=np.int64)
    return np.lexsort(np.stack(sort_by))


@dataclass(frozen=True)
class EmitAgg:
    """How one aggregate is finalized from a packed row.

    ``kind`` is ``count`` (also ``count(col)``), ``sum``, ``min``, ``max``, ``mean``,
    ``var`` or ``std``; ``fields`` are the row positions it reads, in the order the kind
    uses them: ``(n,)``, ``(acc, nn)``, ``(acc, nn)``, ``(acc, nn)``, then
    ``(nn, s1, s2, pivot)`` for the moments; ``floats`` says which of them hold float64
    bit patterns.
    """

    kind: str
    fields: tuple[int, ...]
    floats: tuple[bool, ...]


def _lines(j: int, agg: EmitAgg) -> list[str]:
    val = [f"{'rf' if fl else 'ri'}[s, {f}]" for f, fl in zip(agg.fields, agg.floats,
                                                              strict=True)]
    kind = agg.kind
    if kind == "count":
        return [f"O{j}[i] = {val[0]}"]
    if kind in ("sum", "min", "max"):
        return [f"O{j}[i] = {val[0]}", f"M{j}[i] = {val[1]} > 0"]
    if kind not in ("mean", "var", "std"):
        raise ValueError(f"no fused output for aggregation {kind!r}")
    lines = [f"n{j} = np.float64({val[0]})", f"safe{j} = n{j} if n{j} > 0 else 1.0"]
    if kind == "mean":
        return [*lines, f"O{j}[i] = {val[3]} + {val[1]} / safe{j}", f"M{j}[i] = n{j} > 0"]
    lines += [f"x{j} = {val[2]} - {val[1]} * {val[1]} / safe{j}",
              f"if not (x{j} >= 0.0 or x{j} != x{j}):",  # np.maximum(x, 0.0)
              f"    x{j} = 0.0",
              f"x{j} = x{j} / (n{j} - 1.0 if n{j} > 1 else 1.0)"]
    if kind == "std":
        lines.append(f"x{j} = np.sqrt(x{j})")
    return [*lines, f"O{j}[i] = x{j}", f"M{j}[i] = n{j} > 1"]


@numba.njit(nogil=True, cache=False)
def _run_before(ka, ra, a, kb, rb, b, n_keys, end_field):  # type: ignore[no-untyped-def]
    """Whether row ``a`` of one run comes before row ``b`` of another: by window end,
    window start, then key words, all unsigned (the order of :func:`run_order`)."""
    x, y = np.uint64(ra[a, end_field]), np.uint64(rb[b, end_field])
    if x != y:
        return x < y
    if ka[a, n_keys + 1] != kb[b, n_keys + 1]:
        return ka[a, n_keys + 1] < kb[b, n_keys + 1]
    for c in range(n_keys):
        if ka[a, c] != kb[b, c]:
            return ka[a, c] < kb[b, c]
    return False


@lru_cache(maxsize=64)
def emit_kernel(aggs: tuple[EmitAgg, ...], end_field: int) -> Any:
    """The compiled output loop for ``aggs``, window ends at row position ``end_field``.

    Arguments: the runs of popped rows as tuples (one entry per shard) of their rows
    ``int64[n, W]``, the same rows' ``float64`` views, their key words ``uint64[n, K]``
    and their orders (:func:`run_order`);
    the number of key columns; then outputs: key words ``uint64[K, m]``, window ends
    ``int64[m]``, and per aggregate its values and (for all but ``count``) validity. The
    runs are merged in the same pass (equal rows keep the order of their runs).

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.zeros((2, 4), np.int64)
    >>> rows[:, 0] = [3, 1]                                # count
    >>> rows.view(np.float64)[:, 1] = [6.0, 0.0]          # sum's accumulator
    >>> rows[:, 2] = [3, 0]                                # its non-null count
    >>> rows[:, 3] = [20, 20]                              # window end
    >>> k = emit_kernel((EmitAgg("count", (0,), (False,)),
    ...                  EmitAgg("sum", (1, 2), (True, False))), 3)
    >>> keys = np.array([[9, 0, 10], [8, 0, 10]], np.uint64)
    >>> words, ends = np.empty((3, 2), np.uint64), np.empty(2, np.int64)
    >>> n, total, ok = np.empty(2, np.int64), np.empty(2), np.empty(2, np.bool_)
    >>> k((rows,), (rows.view(np.float64),), (keys,), (np.array([1, 0]),), 1, words, ends,
    ...   n, total, ok)
    >>> words[0].tolist(), ends.tolist(), n.tolist(), total.tolist(), ok.tolist()
    ([8, 9], [20, 20], [1, 3], [0.0, 6.0], [False, True])
    """
    outs = []
    for j, agg in enumerate(aggs):
        outs.append(f"O{j}" if agg.kind == "count" else f"O{j}, M{j}")
    src = [f"def emit(rows_t, rowsf_t, keys_t, order_t, n_keys, words, ends, "
           f"{', '.join(outs)}):",
           "    runs = len(order_t)",
           "    head = np.zeros(runs, dtype=np.int64)",
           "    for i in range(words.shape[1]):",
           "        best = -1",
           "        for r in range(runs):",
           "            if head[r] < order_t[r].shape[0] and (best < 0 or _run_before(",
           "                    keys_t[r], rows_t[r], order_t[r][head[r]], keys_t[best],",
           f"                    rows_t[best], order_t[best][head[best]], n_keys, {end_field})):",
           "                best = r",
           "        s = order_t[best][head[best]]",
           "        head[best] += 1",
           "        ri = rows_t[best]",
           "        rf = rowsf_t[best]",
           "        keys = keys_t[best]",
           "        for c in range(keys.shape[1]):",
           "            words[c, i] = keys[s, c]",
           f"        ends[i] = ri[s, {end_field}]"]
    for j, agg in enumerate(aggs):
        src += ["        " + line for line in _lines(j, agg)]
    ns: dict[str, Any] = {"np": np, "_run_before": _run_before}
    exec(compile("\n".join(src) + "\n", "<gpustream fused emit>", "exec"), ns)
    return numba.njit(nogil=True, cache=False)(ns["emit"])
