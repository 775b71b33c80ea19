"""OVER-window kernels (host): frame bounds, and aggregates over each row's frame.

Rows come sorted by (key, event time, arrival); ``group`` holds the index of the first
row of each row's key. A row's frame is the half-open range ``[lo, hi)`` of that order:

- RANGE ``t`` PRECEDING: the rows of its key with event time in ``[ts - t, ts]``, ties
  (rows of the same event time) all included, as SQL;
- ROWS ``n`` PRECEDING: the row and the ``n`` rows before it (ties in arrival order).

Within a key both bounds never decrease, so count and sum are differences of prefix
sums, and min/max one pass with a monotonic deque. Each is one sequential njit loop:
the OVER operator runs on the host (:mod:`gpustream.operators.over` says why).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gpustream.kernels.cache import CACHE

__all__ = ["frame_bounds", "frame_count", "frame_extreme", "frame_sum", "merge_order",
           "running_sum"]


@numba.njit(nogil=True, cache=CACHE)
def _range_bounds(ts, group, span, lo, hi):  # type: ignore[no-untyped-def]
    n = ts.shape[0]
    a = 0
    b = 0
    for i in range(n):
        g = group[i]
        if a < g:
            a = g
        while ts[a] < ts[i] - span:
            a += 1
        if b <= i:
            b = i + 1
        while b < n and group[b] == g and ts[b] == ts[i]:
            b += 1
        lo[i] = a
        hi[i] = b


@numba.njit(nogil=True, cache=CACHE)
def _rows_bounds(group, preceding, lo, hi):  # type: ignore[no-untyped-def]
    for i in range(group.shape[0]):
        lo[i] = max(group[i], i - preceding)
        hi[i] = i + 1


def frame_bounds(ts: Any, group: Any, range_span: int | None, rows: int | None
                 ) -> tuple[Any, Any]:
    """Each sorted row's frame ``[lo, hi)``: RANGE ``range_span`` or ROWS ``rows``.

    Examples
    --------
    >>> ts = np.array([1, 2, 2, 9, 5, 6], dtype=np.int64)
    >>> group = np.array([0, 0, 0, 0, 4, 4], dtype=np.int64)
    >>> lo, hi = frame_bounds(ts, group, 1, None)
    >>> lo.tolist(), hi.tolist()
    ([0, 0, 0, 3, 4, 4], [1, 3, 3, 4, 5, 6])
    >>> lo, hi = frame_bounds(ts, group, None, 1)
    >>> lo.tolist(), hi.tolist()
    ([0, 0, 1, 2, 4, 4], [1, 2, 3, 4, 5, 6])
    """
    n = ts.shape[0]
    lo = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    if range_span is not None:
        _range_bounds(ts, group, np.int64(range_span), lo, hi)
    else:
        assert rows is not None
        _rows_bounds(group, np.int64(rows), lo, hi)
    return lo, hi


@numba.njit(nogil=True, cache=CACHE)
def _prefix(values, valid, group, out):  # type: ignore[no-untyped-def]
    """``out[i + 1]``: the sum of the valid values of row i's key up to row i, restarted
    at each key's first row (integers: wrapping as int64 does)."""
    out[0] = 0
    for i in range(values.shape[0]):
        v = values[i] if valid[i] else 0
        out[i + 1] = v if group[i] == i else out[i] + v


@numba.njit(nogil=True, cache=CACHE)
def _prefix2(values, valid, group, hi, lo):  # type: ignore[no-untyped-def]
    """:func:`_prefix` for floats, each prefix a double-double ``hi + lo`` (TwoSum):
    kept exactly where the values' bits fit in 106, so a frame's sum does not depend on
    where the kept rows begin (how the stream was batched)."""
    hi[0] = 0.0
    lo[0] = 0.0
    for i in range(values.shape[0]):
        v = values[i] if valid[i] else 0.0
        a = 0.0 if group[i] == i else hi[i]
        c = 0.0 if group[i] == i else lo[i]
        s = a + v
        bb = s - a
        err = (a - (s - bb)) + (v - bb)
        hi[i + 1] = s
        lo[i + 1] = c + err


@numba.njit(nogil=True, cache=CACHE)
def _frame_diff(prefix, group, lo, hi, rows, out):  # type: ignore[no-untyped-def]
    for j in range(rows.shape[0]):
        i = rows[j]
        below = 0 if lo[i] == group[i] else prefix[lo[i]]
        out[j] = prefix[hi[i]] - below


@numba.njit(nogil=True, cache=CACHE)
def _frame_diff2(p_hi, p_lo, group, lo, hi, rows, out):  # type: ignore[no-untyped-def]
    for j in range(rows.shape[0]):
        i = rows[j]
        first = lo[i] == group[i]
        a = p_hi[hi[i]]
        b = 0.0 if first else -p_hi[lo[i]]
        s = a + b
        bb = s - a
        err = (a - (s - bb)) + (b - bb)
        out[j] = s + (err + (p_lo[hi[i]] - (0.0 if first else p_lo[lo[i]])))


def frame_sum(values: Any, valid: Any, group: Any, lo: Any, hi: Any, rows: Any,
              dtype: Any) -> Any:
    """The sum of the valid values in the frame of each of ``rows`` (``dtype``: int64,
    exact, or float64, from double-double prefix sums restarted at each key).

    Examples
    --------
    >>> v = np.array([1.0, 2.0, 4.0, 8.0]); ok = np.array([True, False, True, True])
    >>> g = np.array([0, 0, 0, 3]); lo = np.array([0, 0, 1, 3]); hi = np.array([1, 2, 3, 4])
    >>> frame_sum(v, ok, g, lo, hi, np.arange(4), np.float64).tolist()
    [1.0, 1.0, 4.0, 8.0]
    >>> frame_sum(np.array([1e16, 1.0, -1e16]), np.ones(3, bool), np.zeros(3, np.int64),
    ...           np.zeros(3, np.int64), np.array([1, 2, 3]), np.arange(3), np.float64).tolist()
    [1e+16, 1e+16, 1.0]
    """
    out = np.empty(rows.shape[0], dtype=dtype)
    n = values.shape[0]
    if np.dtype(dtype).kind == "f":
        p_hi = np.empty(n + 1, dtype=np.float64)
        p_lo = np.empty(n + 1, dtype=np.float64)
        _prefix2(values.astype(np.float64, copy=False), valid, group, p_hi, p_lo)
        _frame_diff2(p_hi, p_lo, group, lo, hi, rows, out)
        return out
    prefix = np.empty(n + 1, dtype=dtype)
    _prefix(values.astype(dtype, copy=False), valid, group, prefix)
    _frame_diff(prefix, group, lo, hi, rows, out)
    return out


@numba.njit(nogil=True, cache=CACHE)
def _seeded2(values, valid, group, s_hi, s_lo, hi, lo):  # type: ignore[no-untyped-def]
    """:func:`_prefix2` starting each key at the double-double ``s_hi + s_lo`` of its
    first row (``hi[i]``/``lo[i]``: the sum up to row ``i``, inclusive)."""
    for i in range(values.shape[0]):
        v = values[i] if valid[i] else 0.0
        first = group[i] == i
        a = s_hi[i] if first else hi[i - 1]
        c = s_lo[i] if first else lo[i - 1]
        s = a + v
        bb = s - a
        err = (a - (s - bb)) + (v - bb)
        hi[i] = s
        lo[i] = c + err


@numba.njit(nogil=True, cache=CACHE)
def _seeded(values, valid, group, start, out):  # type: ignore[no-untyped-def]
    for i in range(values.shape[0]):
        v = values[i] if valid[i] else 0
        out[i] = (start[i] if group[i] == i else out[i - 1]) + v


def running_sum(values: Any, valid: Any, group: Any, rows: Any, s_hi: Any, s_lo: Any,
                dtype: Any) -> tuple[Any, Any, Any]:
    """Each of ``rows``' sum of its key's valid values up to it (an unbounded frame), a
    key starting from ``s_hi + s_lo`` (given at its first row: the sum of its rows
    before these): the sum (``dtype``), and its exact parts ``hi``, ``lo`` (floats: a
    double-double, so the sum does not depend on where the rows before were cut; ints:
    ``lo`` is 0) to start from next time.

    Examples
    --------
    >>> v = np.array([0.1, 0.2, 1e16, -1e16]); g = np.array([0, 0, 2, 2])
    >>> s, hi, lo = running_sum(v, np.ones(4, bool), g, np.arange(4), np.array([1.0, 0, 0, 0]),
    ...                         np.zeros(4), np.float64)
    >>> s.tolist()[:2], float(s[3])
    ([1.1, 1.3], 0.0)
    >>> running_sum(np.array([3, 4]), np.ones(2, bool), np.zeros(2, np.int64), np.arange(2),
    ...             np.array([10, 0]), np.zeros(2), np.int64)[0].tolist()
    [13, 17]
    """
    n = values.shape[0]
    if np.dtype(dtype).kind == "f":
        hi = np.empty(n, dtype=np.float64)
        lo = np.empty(n, dtype=np.float64)
        _seeded2(values.astype(np.float64, copy=False), valid, group,
                 s_hi.astype(np.float64, copy=False), s_lo.astype(np.float64, copy=False),
                 hi, lo)
        h, low = hi[rows], lo[rows]
        return h + low, h, low
    out = np.empty(n, dtype=np.int64)
    _seeded(values.astype(np.int64, copy=False), valid, group,
            s_hi.astype(np.int64, copy=False), out)
    total = out[rows]
    return total.astype(dtype, copy=False), total, np.zeros(rows.shape[0])


def frame_count(valid: Any, group: Any, lo: Any, hi: Any, rows: Any) -> Any:
    """The number of valid values in the frame of each of ``rows``.

    Examples
    --------
    >>> ok = np.array([True, False, True])
    >>> frame_count(ok, np.zeros(3, np.int64), np.zeros(3, np.int64), np.arange(1, 4),
    ...             np.arange(3)).tolist()
    [1, 1, 2]
    """
    return frame_sum(valid.view(np.uint8), valid, group, lo, hi, rows, np.int64)


@numba.njit(nogil=True, cache=CACHE)
def _extreme(values, valid, group, lo, hi, want, is_max, out, found):  # type: ignore[no-untyped-def]
    """Sliding min/max with a monotonic deque of row indices (values best first)."""
    n = values.shape[0]
    dq = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    pushed = 0  # rows [group start, pushed) went through the deque
    cur = -1
    for i in range(n):
        if group[i] != cur:
            cur = group[i]
            head = 0
            tail = 0
            pushed = cur
        while pushed < hi[i]:
            if valid[pushed]:
                v = values[pushed]
                while tail > head and ((values[dq[tail - 1]] <= v) if is_max
                                       else (values[dq[tail - 1]] >= v)):
                    tail -= 1
                dq[tail] = pushed
                tail += 1
            pushed += 1
        while tail > head and dq[head] < lo[i]:
            head += 1
        if want[i]:
            if tail > head:
                out[i] = values[dq[head]]
                found[i] = True
            else:
                found[i] = False


def frame_extreme(values: Any, valid: Any, group: Any, lo: Any, hi: Any, want: Any,
                  is_max: bool) -> tuple[Any, Any]:
    """The min (or max) of the valid values in each row's frame, for the rows ``want``
    marks (other rows' outputs unspecified), and where one exists.

    Examples
    --------
    >>> v = np.array([3, 1, 2, 5]); ok = np.array([True, True, False, True])
    >>> g = np.zeros(4, np.int64); lo = np.array([0, 0, 1, 2]); hi = np.arange(1, 5)
    >>> out, found = frame_extreme(v, ok, g, lo, hi, np.ones(4, bool), True)
    >>> out.tolist(), found.tolist()
    ([3, 3, 1, 5], [True, True, True, True])
    """
    n = values.shape[0]
    out = np.zeros(n, dtype=values.dtype)
    found = np.zeros(n, dtype=np.bool_)
    _extreme(values, valid, group, lo, hi, want, is_max, out, found)
    return out, found


@numba.njit(nogil=True, cache=CACHE)
def _after(words, ts, i, j):  # type: ignore[no-untyped-def]
    """Row ``j`` sorts after row ``i`` or ties with it (by key words, then time)."""
    for w in range(words.shape[0]):
        if words[w, j] != words[w, i]:
            return words[w, j] > words[w, i]
    return ts[j] >= ts[i]


@numba.njit(nogil=True, cache=CACHE)
def _merge(words, ts, n_sorted, new_order, out):  # type: ignore[no-untyped-def]
    a = 0
    b = 0
    n_new = new_order.shape[0]
    for k in range(out.shape[0]):
        if b >= n_new or (a < n_sorted and _after(words, ts, a, new_order[b])):
            out[k] = a
            a += 1
        else:
            out[k] = new_order[b]
            b += 1


def merge_order(words: Any, ts: Any, n_sorted: int) -> Any:
    """The order that sorts rows by (key ``words``, time, arrival), where the first
    ``n_sorted`` rows are sorted so already and the rest came after them, in arrival
    order: one stable sort of the rest, then one merge.

    Examples
    --------
    >>> words = np.array([[1, 1, 2, 1, 2]], dtype=np.uint64)
    >>> merge_order(words, np.array([3, 5, 1, 5, 0]), 3).tolist()
    [0, 1, 3, 4, 2]
    """
    n = ts.shape[0]
    rest = np.arange(n_sorted, n, dtype=np.int64)
    new_order = rest[np.lexsort((ts[rest], *words[::-1, n_sorted:]))]
    out = np.empty(n, dtype=np.int64)
    _merge(words, ts, n_sorted, new_order, out)
    return out
