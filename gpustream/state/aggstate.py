"""Mergeable partial aggregation states kept per slot of a :class:`SlotTable`.

Each state implements the contract of DESIGN.md section 3: ``init`` (new slots),
``update`` (fold in (event, window) assignments), ``merge`` (fold slot ``src`` into slot
``dst``, used by session merging and by tests), and ``finalize`` (output values and
validity). The arithmetic runs in the kernels of :mod:`gpustream.kernels.aggregate`;
the orchestration here is vectorized with the backend's ``xp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import physical_dtype
from gpustream.expr import Agg
from gpustream.kernels import aggregate as K
from gpustream.state.table import (
    MAX_LOAD,
    MIN_CAPACITY,
    SlotTable,
    StateTable,
    array_bytes,
    backend_of,
)

__all__ = ["AggState", "UpdateContext", "make_state"]

I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


@dataclass
class UpdateContext:
    """Per-row data of the batch being folded in: event times and arrival numbers."""

    ts: Any
    seq: Any


class AggState:
    """Base class: a named aggregation whose per-slot state lives in ``table``."""

    def __init__(self, name: str, agg: Agg, in_type: pa.DataType | None,
                 out_type: pa.DataType, table: StateTable) -> None:
        self.name = name
        self.agg = agg
        self.in_type = in_type
        self.out_type = out_type
        self.table = table
        self.xp = table.xp
        self.backend = backend_of(table)
        self.prefix = f"{name}."
        self.setup()

    # columns of this state inside the table
    def col(self, field: str) -> Any:
        return self.table.columns[self.prefix + field]

    def add(self, field: str, dtype: Any, fill: Any) -> None:
        self.table.add_column(self.prefix + field, dtype, fill)

    def setup(self) -> None:
        """Register this state's per-slot columns."""

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        """Extra initialisation of new ``slots`` created by ``rows`` (fills are already set)."""

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        """Fold assignments (slot -1: skip) with row values into the state."""
        raise NotImplementedError

    def _folded(self, slots: Any, rows: Any, valid: Any) -> Any:
        """Indices of the assignments that fold a value: a slot, and a non-null value."""
        sel = slots >= 0
        if valid is not None:
            sel &= valid[rows]
        return self.xp.nonzero(sel)[0]

    def merge(self, dst: Any, src: Any) -> None:
        """Fold the state of slots ``src`` into slots ``dst`` (pairwise; ``dst`` unique)."""
        raise NotImplementedError

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        """Output values (physical dtype of ``out_type``) and validity for ``slots``."""
        raise NotImplementedError

    def free(self, slots: Any) -> None:
        """The slots were freed (states with storage outside the table release it)."""

    def state_bytes(self) -> int:
        """Bytes of the arrays this state keeps outside the table (its columns are the
        table's: :meth:`SlotTable.state_bytes` counts them)."""
        return 0

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        """State kept outside the table, for the table's live slots in order."""
        return {}

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        """Load :meth:`snapshot_extra`; ``slots[i]`` is the new slot of live slot ``i``."""


def _acc_dtype(t: pa.DataType | None) -> Any:
    return np.float64 if t is not None and pa.types.is_floating(t) else np.int64


class CountState(AggState):
    """``count()`` (rows) and ``col.count()`` (non-null values)."""

    def setup(self) -> None:
        self.add("n", np.int64, 0)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        use = valid if self.agg.kind == "count_valid" else None
        K.update_count(self.col("n"), slots, rows, use, self.backend)

    def merge(self, dst: Any, src: Any) -> None:
        self.col("n")[dst] += self.col("n")[src]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        return self.col("n")[slots], None


class SumState(AggState):
    """``sum``: int64 or float64 accumulator and a non-null count (all-null: null)."""

    def setup(self) -> None:
        self.dtype = _acc_dtype(self.in_type)
        self.add("acc", self.dtype, 0)
        self.add("nn", np.int64, 0)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        K.update_sum(self.col("acc"), self.col("nn"), slots, rows,
                     values.astype(self.dtype, copy=False), valid, self.backend)

    def merge(self, dst: Any, src: Any) -> None:
        self.col("acc")[dst] += self.col("acc")[src]
        self.col("nn")[dst] += self.col("nn")[src]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        return self.col("acc")[slots], self.col("nn")[slots] > 0


class MinMaxState(AggState):
    """``min`` / ``max`` of numbers or timestamps (all-null: null)."""

    def setup(self) -> None:
        self.dtype = _acc_dtype(self.in_type)
        self.is_max = self.agg.kind == "max"
        if self.dtype is np.float64:
            fill: Any = -np.inf if self.is_max else np.inf
        else:
            fill = I64_MIN if self.is_max else I64_MAX
        self.add("acc", self.dtype, fill)
        self.add("nn", np.int64, 0)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        K.update_minmax(self.col("acc"), self.col("nn"), slots, rows,
                        values.astype(self.dtype, copy=False), valid, self.is_max,
                        self.backend)

    def merge(self, dst: Any, src: Any) -> None:
        pick = self.xp.maximum if self.is_max else self.xp.minimum
        acc = self.col("acc")
        acc[dst] = pick(acc[dst], acc[src])
        self.col("nn")[dst] += self.col("nn")[src]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        out = self.col("acc")[slots].astype(physical_dtype(self.out_type))
        return out, self.col("nn")[slots] > 0


class MomentsState(AggState):
    """``mean`` / ``var`` / ``std`` from count, shifted sum and shifted sum of squares."""

    def setup(self) -> None:
        self.add("nn", np.int64, 0)
        self.add("s1", np.float64, 0.0)
        self.add("s2", np.float64, 0.0)
        self.add("pivot", np.float64, 0.0)

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        xp = self.xp
        v = values[rows].astype(np.float64)
        ok = xp.isfinite(v)
        if valid is not None:
            ok &= valid[rows]
        self.col("pivot")[slots] = xp.where(ok, v, 0.0)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        K.update_moments(self.col("nn"), self.col("s1"), self.col("s2"), self.col("pivot"),
                         slots, rows, values.astype(np.float64, copy=False), valid,
                         self.backend)

    def merge(self, dst: Any, src: Any) -> None:
        nn, s1, s2, piv = self.col("nn"), self.col("s1"), self.col("s2"), self.col("pivot")
        d = piv[src] - piv[dst]
        n_src, a_src = nn[src].astype(np.float64), s1[src]
        s2[dst] += s2[src] + 2.0 * d * a_src + n_src * d * d
        s1[dst] += a_src + n_src * d
        nn[dst] += nn[src]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        xp = self.xp
        n = self.col("nn")[slots].astype(np.float64)
        s1, s2 = self.col("s1")[slots], self.col("s2")[slots]
        safe_n = xp.where(n > 0, n, 1.0)
        if self.agg.kind == "mean":
            return self.col("pivot")[slots] + s1 / safe_n, n > 0
        var = xp.maximum(s2 - s1 * s1 / safe_n, 0.0) / xp.where(n > 1, n - 1.0, 1.0)
        if self.agg.kind == "std":
            var = xp.sqrt(var)
        return var, n > 1


class FirstLastState(AggState):
    """``first`` / ``last`` by event time, ties broken by arrival (non-null values only).

    Per batch the best candidate of every slot is found by one sort of the batch's
    assignments on (slot, event time, arrival); it replaces the stored value when it is
    earlier (first) or later (last). The same vectorized code runs on every backend.
    """

    def setup(self) -> None:
        self.is_last = self.agg.kind == "last"
        self.dtype = physical_dtype(self.out_type)
        worst = I64_MIN if self.is_last else I64_MAX
        self.add("ts", np.int64, worst)
        self.add("seq", np.int64, worst)
        self.add("value", self.dtype, 0)

    def _better(self, t: Any, q: Any, bt: Any, bq: Any) -> Any:
        if self.is_last:
            return (t > bt) | ((t == bt) & (q > bq))
        return (t < bt) | ((t == bt) & (q < bq))

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        xp = self.xp
        idx = self._folded(slots, rows, valid)
        if idx.shape[0] == 0:
            return
        s, r = slots[idx], rows[idx]
        t, q = ctx.ts[r], ctx.seq[r]
        order = xp.lexsort(xp.stack([-q, -t, s]) if self.is_last else xp.stack([q, t, s]))
        s, r, t, q = s[order], r[order], t[order], q[order]
        head = xp.ones(s.shape[0], dtype=bool)
        head[1:] = s[1:] != s[:-1]
        s, r, t, q = s[head], r[head], t[head], q[head]
        bt, bq = self.col("ts"), self.col("seq")
        win = self._better(t, q, bt[s], bq[s])
        s, r = s[win], r[win]
        bt[s], bq[s] = t[win], q[win]
        self.col("value")[s] = values[r].astype(self.dtype, copy=False)

    def merge(self, dst: Any, src: Any) -> None:
        bt, bq, val = self.col("ts"), self.col("seq"), self.col("value")
        win = self._better(bt[src], bq[src], bt[dst], bq[dst])
        d, s = dst[win], src[win]
        bt[d], bq[d], val[d] = bt[s], bq[s], val[s]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        worst = I64_MIN if self.is_last else I64_MAX
        return self.col("value")[slots], self.col("seq")[slots] != worst


class ArgBestState(AggState):
    """``max_by`` / ``min_by``: the value on the row of the best rank (an order key of
    the ``by`` column, negated bitwise for ``min_by`` so that larger always wins), ties
    to the first row in arrival order (the smallest ``seq``).

    Per slot: ``rank`` (best so far; I64_MIN), ``seq`` (arrival number of its row;
    I64_MAX: no row yet) and ``value`` (the row's value as 64 bits, see
    :func:`~gpustream.expr.evaluate.value_bits`), folded by :func:`~gpustream.kernels.aggregate.update_argbest`
    (three kernel passes; atomics on the GPU). ``values`` is a
    :class:`~gpustream.expr.evaluate.ByInput`.
    """

    def setup(self) -> None:
        self.add("rank", np.int64, I64_MIN)
        self.add("seq", np.int64, I64_MAX)
        self.add("value", np.int64, 0)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        xp = self.xp
        K.update_argbest(self.col("rank"), self.col("seq"), self.col("value"),
                         xp.ascontiguousarray(slots, dtype=np.int64),
                         xp.ascontiguousarray(rows, dtype=np.int64),
                         xp.ascontiguousarray(values.rank), xp.ascontiguousarray(ctx.seq,
                                                                                 dtype=np.int64),
                         xp.ascontiguousarray(values.bits), valid, self.backend)

    def merge(self, dst: Any, src: Any) -> None:
        rank, seq, val = self.col("rank"), self.col("seq"), self.col("value")
        win = (rank[src] > rank[dst]) | ((rank[src] == rank[dst]) & (seq[src] < seq[dst]))
        d, s = dst[win], src[win]
        rank[d], seq[d], val[d] = rank[s], seq[s], val[s]

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        dtype = physical_dtype(self.out_type)
        bits = self.col("value")[slots]
        out = bits.view(np.float64) if np.dtype(dtype).kind == "f" else bits
        return out.astype(dtype), self.col("seq")[slots] != I64_MAX


def _value_bits(values: Any, xp: Any) -> Any:
    """64-bit patterns of values for distinct counting (floats: -0.0 counts as 0.0)."""
    if values.dtype.kind == "f":
        return (values.astype(np.float64) + 0.0).view(np.uint64)
    return values.astype(np.int64).view(np.uint64)


class _PairSet:
    """Exact sets of distinct values of many groups: (group id, value bits) pairs in one
    hash table (:class:`SlotTable`), for ``count_distinct`` and sparse HyperLogLog.

    Group ids are handed out once (:meth:`new_gids`), so a group's pairs stay its own
    however its slot or record moves. Pairs of groups no longer held are dropped when the
    table is about to grow (:meth:`insert`).
    """

    def __init__(self, backend: Backend) -> None:
        self.xp = backend.xp
        self.table = SlotTable(2, backend.xp, backend)
        self.next_gid = 0

    def new_gids(self, n: int) -> Any:
        """``n`` fresh group ids."""
        out = self.xp.arange(self.next_gid, self.next_gid + n, dtype=np.int64)
        self.next_gid += n
        return out

    def gids(self, pairs: Any) -> Any:
        """The group id of each pair (slots of the table)."""
        return self.table.t_keys[0, pairs].view(np.int64)

    def values(self, pairs: Any) -> Any:
        """The value bits of each pair."""
        return self.xp.ascontiguousarray(self.table.t_keys[1, pairs])

    def insert(self, gids: Any, bits: Any, held_gids: Any) -> Any:
        """Add the pairs ``(gids[i], bits[i])``; returns which were not there (bool).
        ``held_gids()``: ids of the groups still held, asked for only before the table
        would grow (the others' pairs are freed then)."""
        xp = self.xp
        t = self.table
        if t.used + int(gids.shape[0]) > t.capacity * MAX_LOAD:
            live = t.live_slots()
            t.free(live[~xp.isin(self.gids(live), held_gids())])
        keys = xp.ascontiguousarray(xp.stack([gids.view(np.uint64), bits]))
        _, is_new = t.upsert(keys, xp.arange(gids.shape[0], dtype=np.int64))
        return is_new.astype(bool)

    def free(self, pairs: Any) -> None:
        """Free ``pairs`` (slots); a table left mostly empty is rebuilt smaller (a batch of
        many values for groups that then turn dense must not leave it large)."""
        t = self.table
        t.free(pairs)
        if t.capacity > MIN_CAPACITY and 16 * t.live_count < t.capacity:
            t.rebuild(4 * t.live_count)

    def of_groups(self, gids: Any) -> tuple[Any, Any]:
        """The pairs of the groups ``gids`` (distinct ids): their slots, and for each the
        position of its group in ``gids``. Scans the table."""
        xp = self.xp
        live = self.table.live_slots()
        have = self.gids(live)
        hit = xp.isin(have, gids)
        live, have = live[hit], have[hit]
        order = xp.argsort(gids)
        return live, order[xp.searchsorted(gids[order], have)]

    def snapshot(self, pairs: Any, to_host: Any) -> dict[str, np.ndarray]:
        """``pairs`` (slots) and the next group id, as host arrays."""
        return {"pairs.keys": to_host(self.table.t_keys[:, pairs]),
                "pairs.hashes": to_host(self.table.arrays[0][pairs]),
                "next_gid": np.array([self.next_gid], dtype=np.int64)}

    def restore(self, state: dict[str, np.ndarray], to_device: Any) -> None:
        """Load a :meth:`snapshot` (taken on any backend)."""
        self.table.restore({"keys": state["pairs.keys"], "hashes": state["pairs.hashes"]},
                           to_device)
        self.next_gid = int(state["next_gid"][0])

    def state_bytes(self) -> int:
        """Bytes of the pairs' table."""
        return self.table.state_bytes()


class DistinctState(AggState):
    """``count_distinct``: each group's distinct values as pairs in a :class:`_PairSet`.

    Its memory grows with the distinct values of the groups held (about 60-120 bytes per
    (group, value) pair): a group that never closes (a session kept open by a steady
    stream of events) grows without bound.
    """

    def setup(self) -> None:
        self.add("gid", np.int64, -1)
        self.add("n", np.int64, 0)
        self.pairs = _PairSet(self.backend)

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        self.col("gid")[slots] = self.pairs.new_gids(int(slots.shape[0]))

    def _held_gids(self) -> Any:
        return self.col("gid")[self.table.held_slots()]

    def _add(self, slots: Any, bits: Any) -> None:
        """Add values to the sets of the groups of ``slots``, counting the new ones."""
        xp = self.xp
        is_new = self.pairs.insert(self.col("gid")[slots], bits, self._held_gids)
        K.update_count(self.col("n"), xp.where(is_new, slots, -1),
                       xp.arange(slots.shape[0], dtype=np.int64), None, self.backend)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        idx = self._folded(slots, rows, valid)
        if idx.shape[0]:
            self._add(slots[idx], _value_bits(values, self.xp)[rows[idx]])

    def merge(self, dst: Any, src: Any) -> None:
        pairs, pos = self.pairs.of_groups(self.col("gid")[src])
        if pairs.shape[0]:
            self._add(dst[pos], self.pairs.values(pairs))

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        return self.col("n")[slots], None

    def state_bytes(self) -> int:
        return self.pairs.state_bytes()

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        return self.pairs.snapshot(self.pairs.table.live_slots(), to_host)

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        self.pairs.restore(state, to_device)


def _sigma(x: Any, xp: Any) -> Any:
    """``x + sum_k x**(2**k) * 2**(k-1)`` (k >= 1), infinite at 1 (Ertl 2017)."""
    z, y, power = x.copy(), 1.0, x.copy()
    for _ in range(64):  # x < 1: x**(2**k) vanishes long before (x <= 1 - 2**-16)
        power = power * power
        z += power * y
        y *= 2.0
    return xp.where(x >= 1.0, xp.inf, z)


def _tau(x: Any, xp: Any) -> Any:
    """``(1 - x - sum_k (1 - x**(2**-k))**2 * 2**-k) / 3`` (k >= 1), 0 at 0 and 1."""
    z, y, root = 1.0 - x, 1.0, x.copy()
    for _ in range(64):
        root = xp.sqrt(root)
        y *= 0.5
        z -= (1.0 - root) ** 2 * y
    return xp.where((x <= 0.0) | (x >= 1.0), 0.0, z / 3.0)


def hll_estimate(regs: Any, p: int, xp: Any) -> Any:
    """Distinct values estimated from rows of HyperLogLog registers (``uint8[n, 2**p]``;
    a register holds the largest rank seen, 1 to 65 - p, or 0), rounded to integers.

    Ertl's improved estimator ("New cardinality estimation algorithms for HyperLogLog
    sketches", 2017): from the histogram of register values, with no empirical bias
    tables; unbiased over the whole range (the classic estimator errs by a few percent
    where it switches from linear counting, around 2.5 * 2**p), relative standard error
    about 1.04 / sqrt(2**p).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> from gpustream.kernels.aggregate import hll_update
    >>> regs = np.zeros((2, 1 << 12), np.uint8)
    >>> n = 100_000
    >>> hll_update(regs, np.ones(n, np.int64), np.arange(n), np.arange(n, dtype=np.uint64),
    ...            None, 12, select_backend("cpu"))
    >>> est = hll_estimate(regs, 12, np)
    >>> int(est[0]), abs(int(est[1]) - n) / n < 3 * 1.04 / 64
    (0, True)
    """
    n, m, q = int(regs.shape[0]), 1 << p, 64 - p
    cells = regs.astype(np.int64) + (q + 2) * xp.arange(n, dtype=np.int64)[:, None]
    counts = xp.bincount(cells.ravel(), minlength=n * (q + 2)).reshape(n, q + 2)
    c = counts.astype(np.float64)
    z = m * _tau(1.0 - c[:, q + 1] / m, xp)
    for k in range(q, 0, -1):
        z = 0.5 * (z + c[:, k])
    z = z + m * _sigma(c[:, 0] / m, xp)
    est = m * m / (2.0 * np.log(2.0)) / z
    return xp.rint(est).astype(np.int64)


def sparse_limit(m: int) -> int:
    """How many distinct values a HyperLogLog group of ``m`` registers counts exactly
    before it takes registers: about where its pairs (60-120 bytes each) would outgrow
    the ``m`` one-byte registers.

    Examples
    --------
    >>> sparse_limit(1 << 12), sparse_limit(1 << 16), sparse_limit(16)
    (64, 1024, 16)
    """
    return max(16, m // 64)


class HllState(AggState):
    """``approx_count_distinct``: HyperLogLog with a sparse start, as in HyperLogLog++.

    A group starts *sparse*: its distinct values are kept exactly (pairs of a
    :class:`_PairSet`) and its count is exact. Past :func:`sparse_limit` values it turns
    *dense*: ``2**p`` one-byte registers in a pool of rows, raised by its pairs (then
    freed) and by every later value. Whether a group is dense, and its registers, depend
    only on its set of values, so ``merge(a, b)`` equals ``update(a + b)`` and batching
    never changes a result.

    The table holds each group's record (``row``) in this state's pools: its group id,
    its exact count while sparse, and its register row (-1 while sparse). Records and
    register rows are compacted to the held groups when a pool is full.
    """

    def setup(self) -> None:
        self.p = self.agg.precision
        self.m = 1 << self.p
        self.limit = sparse_limit(self.m)
        self.add("row", np.int64, -1)
        self.pairs = _PairSet(self.backend)
        self._new_pools(0, 0)

    def _new_pools(self, records: int, dense: int) -> None:
        """Empty pools with room for ``records`` records and ``dense`` register rows."""
        xp = self.xp
        n = max(64, 2 * records)
        self.rec_gid = xp.zeros(n, dtype=np.int64)
        self.rec_n = xp.zeros(n, dtype=np.int64)  # distinct values while sparse
        self.rec_dense = xp.full(n, -1, dtype=np.int64)  # register row, -1 while sparse
        self.regs = xp.zeros((max(16, 2 * dense), self.m), dtype=np.uint8)
        self.next_rec = self.next_dense = 0

    def _held(self) -> tuple[Any, Any]:
        """The held slots that have a record, and their records."""
        slots = self.table.held_slots()
        recs = self.col("row")[slots]
        has = recs >= 0
        return slots[has], recs[has]

    def _held_gids(self) -> Any:
        """Group ids of the held sparse groups (whose pairs must be kept)."""
        _, recs = self._held()
        return self.rec_gid[recs[self.rec_dense[recs] < 0]]

    def _reserve_records(self, n: int) -> None:
        """Room for ``n`` more records (compacting the pool to the held groups' first)."""
        xp = self.xp
        if self.next_rec + n <= self.rec_gid.shape[0]:
            return
        slots, recs = self._held()
        k = int(recs.shape[0])
        size = max(64, 2 * (k + n))
        for name in ("rec_gid", "rec_n", "rec_dense"):
            old = getattr(self, name)
            fresh = xp.full(size, -1 if name == "rec_dense" else 0, dtype=np.int64)
            fresh[:k] = old[recs]
            setattr(self, name, fresh)
        self.col("row")[slots] = xp.arange(k, dtype=np.int64)
        self.next_rec = k

    def _reserve_dense(self, n: int) -> None:
        """Room for ``n`` more register rows (compacting to the held dense groups' first)."""
        xp = self.xp
        if self.next_dense + n <= self.regs.shape[0]:
            return
        _, recs = self._held()
        recs = recs[self.rec_dense[recs] >= 0]
        k = int(recs.shape[0])
        fresh = xp.zeros((max(16, 2 * (k + n)), self.m), dtype=np.uint8)
        fresh[:k] = self.regs[self.rec_dense[recs]]
        self.rec_dense[recs] = xp.arange(k, dtype=np.int64)
        self.regs = fresh
        self.next_dense = k

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        n = int(slots.shape[0])
        self._reserve_records(n)
        recs = self.xp.arange(self.next_rec, self.next_rec + n, dtype=np.int64)
        self.rec_gid[recs] = self.pairs.new_gids(n)
        self.rec_n[recs] = 0
        self.rec_dense[recs] = -1
        self.col("row")[slots] = recs
        self.next_rec += n

    def _records(self, slots: Any) -> Any:
        """The record of each slot (-1 for slot -1), given to slots without one first."""
        xp = self.xp
        recs = xp.where(slots >= 0, self.col("row")[slots], -1)
        missing = (slots >= 0) & (recs < 0)
        if bool(missing.any()):
            self.init(xp.unique(slots[missing]), None, None, None)
            recs = xp.where(slots >= 0, self.col("row")[slots], -1)
        return recs

    def _densify(self, recs: Any) -> None:
        """Turn the sparse groups ``recs`` (distinct records) dense: fresh registers raised
        by their pairs, which are freed."""
        xp = self.xp
        n = int(recs.shape[0])
        self._reserve_dense(n)
        rows = xp.arange(self.next_dense, self.next_dense + n, dtype=np.int64)
        self.next_dense += n
        self.regs[rows] = 0
        self.rec_dense[recs] = rows
        pairs, pos = self.pairs.of_groups(self.rec_gid[recs])
        K.hll_update(self.regs, rows[pos], xp.arange(pairs.shape[0], dtype=np.int64),
                     self.pairs.values(pairs), None, self.p, self.backend)
        self.pairs.free(pairs)

    def _add(self, recs: Any, bits: Any) -> None:
        """Add values to sparse groups (records ``recs``); those past the limit turn dense."""
        xp = self.xp
        is_new = self.pairs.insert(self.rec_gid[recs], bits, self._held_gids)
        K.update_count(self.rec_n, xp.where(is_new, recs, -1),
                       xp.arange(recs.shape[0], dtype=np.int64), None, self.backend)
        grown = xp.unique(recs[is_new])
        over = grown[self.rec_n[grown] > self.limit]
        if over.shape[0]:
            self._densify(over)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        xp = self.xp
        bits = _value_bits(values, xp)
        recs = self._records(slots)
        dense = xp.where(recs >= 0, self.rec_dense[recs], -1)
        K.hll_update(self.regs, dense, rows, bits, valid, self.p, self.backend)
        sparse = (recs >= 0) & (dense < 0)
        if valid is not None:
            sparse &= valid[rows]
        idx = xp.nonzero(sparse)[0]
        if idx.shape[0]:
            self._add(recs[idx], bits[rows[idx]])

    def merge(self, dst: Any, src: Any) -> None:
        xp = self.xp
        recs = self._records(xp.concatenate([dst, src]))  # one call: records may move
        to, of = recs[: dst.shape[0]], recs[dst.shape[0]:]
        # a dense source makes its target dense first
        up = (self.rec_dense[of] >= 0) & (self.rec_dense[to] < 0)
        if bool(up.any()):
            self._densify(to[up])
        d_to, d_of = self.rec_dense[to], self.rec_dense[of]
        both = d_of >= 0
        if bool(both.any()):
            a, b = d_to[both], d_of[both]
            self.regs[a] = xp.maximum(self.regs[a], self.regs[b])
        sparse = d_of < 0
        if not bool(sparse.any()):
            return
        pairs, pos = self.pairs.of_groups(self.rec_gid[of[sparse]])
        if pairs.shape[0] == 0:
            return
        bits = self.pairs.values(pairs)
        target = to[sparse][pos]
        reg_rows = self.rec_dense[target]
        K.hll_update(self.regs, reg_rows, xp.arange(bits.shape[0], dtype=np.int64), bits, None,
                     self.p, self.backend)
        keep = reg_rows < 0
        if bool(keep.any()):
            self._add(target[keep], bits[keep])

    def _estimate(self, regs: Any) -> Any:
        """The cardinality estimate of each row of registers: :func:`hll_estimate`."""
        return hll_estimate(regs, self.p, self.xp)

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        xp = self.xp
        recs = self._records(slots)
        reg_rows = self.rec_dense[recs]
        out = self.rec_n[recs]
        dense = xp.nonzero(reg_rows >= 0)[0]
        if dense.shape[0]:
            out[dense] = self._estimate(self.regs[reg_rows[dense]])
        return out, None

    def state_bytes(self) -> int:
        return (array_bytes(self.rec_gid, self.rec_n, self.rec_dense, self.regs)
                + self.pairs.state_bytes())

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        recs = self.col("row")[live]
        reg_rows = self.rec_dense[recs]
        dense = reg_rows >= 0
        pairs, _ = self.pairs.of_groups(self.rec_gid[recs[~dense]])
        return {"gid": to_host(self.rec_gid[recs]), "n": to_host(self.rec_n[recs]),
                "dense": to_host(dense.astype(np.int8)),
                "regs": to_host(self.regs[reg_rows[dense]]),
                **self.pairs.snapshot(pairs, to_host)}

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        xp = self.xp
        n = int(slots.shape[0])
        if "pairs.keys" not in state:
            # a snapshot from before sparse groups: int32 registers for every group
            state = {"gid": np.arange(n, dtype=np.int64), "n": np.zeros(n, dtype=np.int64),
                     "dense": np.ones(n, dtype=np.int8), "regs": state["regs"],
                     "pairs.keys": np.zeros((2, 0), dtype=np.uint64),
                     "pairs.hashes": np.zeros(0, dtype=np.uint64),
                     "next_gid": np.array([n], dtype=np.int64)}
        dense = xp.nonzero(to_device(state["dense"]) != 0)[0]
        k = int(dense.shape[0])
        self._new_pools(n, k)
        self.rec_gid[:n] = to_device(state["gid"])
        self.rec_n[:n] = to_device(state["n"])
        self.rec_dense[dense] = xp.arange(k, dtype=np.int64)
        self.regs[:k] = to_device(np.asarray(state["regs"]).astype(np.uint8))
        self.next_rec, self.next_dense = n, k
        self.col("row")[slots] = xp.arange(n, dtype=np.int64)
        self.pairs.restore(state, to_device)


_STATES: dict[str, type[AggState]] = {
    "count": CountState, "count_valid": CountState, "sum": SumState, "min": MinMaxState,
    "max": MinMaxState, "mean": MomentsState, "var": MomentsState, "std": MomentsState,
    "first": FirstLastState, "last": FirstLastState, "count_distinct": DistinctState,
    "approx_count_distinct": HllState, "max_by": ArgBestState, "min_by": ArgBestState,
}


def make_state(name: str, agg: Agg, in_type: pa.DataType | None, out_type: pa.DataType,
               table: StateTable) -> AggState:
    """The state object for ``agg``, with its columns registered in ``table``.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> type(make_state("n", count(), None, pa.int64(), t)).__name__, sorted(t.columns)
    ('CountState', ['n.n'])
    """
    return _STATES[agg.kind](name, agg, in_type, out_type, table)
