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

from gpustream.aggs import Agg
from gpustream.batch import physical_dtype
from gpustream.kernels import aggregate as K
from gpustream.state.table import SlotTable, StateTable

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
        self.on_device = table.on_device
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
        K.update_count(self.col("n"), slots, rows, use, self.on_device)

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
                     values.astype(self.dtype, copy=False), valid, self.on_device)

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
                        self.on_device)

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
                         self.on_device)

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


def _value_bits(values: Any, xp: Any) -> Any:
    """64-bit patterns of values for distinct counting (floats: -0.0 counts as 0.0)."""
    if values.dtype.kind == "f":
        return (values.astype(np.float64) + 0.0).view(np.uint64)
    return values.astype(np.int64).view(np.uint64)


class DistinctState(AggState):
    """``count_distinct``: a set of (group id, value) pairs in its own hash table."""

    def setup(self) -> None:
        self.add("gid", np.int64, -1)
        self.add("n", np.int64, 0)
        self.pairs = SlotTable(2, self.xp, self.on_device)
        self.next_gid = 0

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        n = int(slots.shape[0])
        self.col("gid")[slots] = self.xp.arange(self.next_gid, self.next_gid + n, dtype=np.int64)
        self.next_gid += n

    def _compact_pairs(self, extra: int) -> None:
        """Before the pair table grows, drop the pairs of freed groups."""
        p = self.pairs
        if p.used + extra <= p.capacity * 0.5:
            return
        live_pairs = p.live_slots()
        live_gids = self.col("gid")[self.table.held_slots()]
        gids = p.t_keys[0, live_pairs].view(np.int64)
        p.free(live_pairs[~self.xp.isin(gids, live_gids)])

    def _insert(self, gids: Any, bits: Any) -> Any:
        xp = self.xp
        self._compact_pairs(int(gids.shape[0]))
        keys = xp.ascontiguousarray(xp.stack([gids.view(np.uint64), bits]))
        _, is_new = self.pairs.upsert(keys, xp.arange(gids.shape[0], dtype=np.int64))
        return is_new.astype(bool)

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        xp = self.xp
        idx = self._folded(slots, rows, valid)
        if idx.shape[0] == 0:
            return
        s = slots[idx]
        is_new = self._insert(self.col("gid")[s], _value_bits(values, xp)[rows[idx]])
        new_slots = xp.where(is_new, s, -1)
        K.update_count(self.col("n"), new_slots, xp.arange(s.shape[0], dtype=np.int64), None,
                       self.on_device)

    def merge(self, dst: Any, src: Any) -> None:
        xp = self.xp
        p = self.pairs
        live_pairs = p.live_slots()
        gids = p.t_keys[0, live_pairs].view(np.int64)
        src_gids, dst_gids = self.col("gid")[src], self.col("gid")[dst]
        hit = xp.isin(gids, src_gids)
        pair_slots = live_pairs[hit]
        if pair_slots.shape[0] == 0:
            return
        order = xp.argsort(src_gids)
        pos = xp.searchsorted(src_gids[order], gids[hit])
        target_gid = dst_gids[order][pos]
        target_slot = dst[order][pos]
        is_new = self._insert(target_gid, p.t_keys[1, pair_slots])
        K.update_count(self.col("n"), xp.where(is_new, target_slot, -1),
                       xp.arange(target_slot.shape[0], dtype=np.int64), None, self.on_device)

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        return self.col("n")[slots], None

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        snap = self.pairs.snapshot(to_host)
        return {"pairs.keys": snap["keys"], "pairs.hashes": snap["hashes"],
                "next_gid": np.array([self.next_gid], dtype=np.int64)}

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        self.pairs.restore({"keys": state["pairs.keys"], "hashes": state["pairs.hashes"]},
                           to_device)
        self.next_gid = int(state["next_gid"][0])


class HllState(AggState):
    """``approx_count_distinct``: HyperLogLog registers in a pool of rows, one per group."""

    def setup(self) -> None:
        self.p = self.agg.precision
        self.m = 1 << self.p
        self.add("row", np.int64, -1)
        self.regs = self.xp.zeros((64, self.m), dtype=np.int32)
        self.next_row = 0

    def _compact(self, extra: int) -> None:
        xp = self.xp
        if self.next_row + extra <= self.regs.shape[0]:
            return
        live = self.table.held_slots()
        rows = self.col("row")[live]
        has = rows >= 0
        live, rows = live[has], rows[has]
        size = max(64, 2 * (int(live.shape[0]) + extra))
        fresh = xp.zeros((size, self.m), dtype=np.int32)
        fresh[: live.shape[0]] = self.regs[rows]
        self.col("row")[live] = xp.arange(live.shape[0], dtype=np.int64)
        self.regs = fresh
        self.next_row = int(live.shape[0])

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        n = int(slots.shape[0])
        self._compact(n)
        new_rows = self.xp.arange(self.next_row, self.next_row + n, dtype=np.int64)
        self.regs[new_rows] = 0
        self.col("row")[slots] = new_rows
        self.next_row += n

    def update(self, slots: Any, rows: Any, values: Any, valid: Any, ctx: UpdateContext) -> None:
        K.hll_update(self.regs, self.col("row"), slots, rows, _value_bits(values, self.xp),
                     valid, self.p, self.on_device)

    def merge(self, dst: Any, src: Any) -> None:
        r = self.col("row")
        self.regs[r[dst]] = self.xp.maximum(self.regs[r[dst]], self.regs[r[src]])

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        xp = self.xp
        regs = self.regs[self.col("row")[slots]]
        m = float(self.m)
        alpha = 0.7213 / (1.0 + 1.079 / m)
        raw = alpha * m * m / xp.sum(xp.exp2(-regs.astype(np.float64)), axis=1)
        zeros = xp.sum(regs == 0, axis=1)
        small = m * xp.log(m / xp.where(zeros > 0, zeros, 1).astype(np.float64))
        est = xp.where((raw <= 2.5 * m) & (zeros > 0), small, raw)
        return xp.rint(est).astype(np.int64), None

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        rows = self.col("row")[live]
        return {"regs": to_host(self.regs[rows])}

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        regs = to_device(state["regs"])
        n = int(regs.shape[0])
        self.regs = self.xp.zeros((max(64, 2 * n), self.m), dtype=np.int32)
        self.regs[:n] = regs
        self.col("row")[slots] = self.xp.arange(n, dtype=np.int64)
        self.next_row = n


_STATES: dict[str, type[AggState]] = {
    "count": CountState, "count_valid": CountState, "sum": SumState, "min": MinMaxState,
    "max": MinMaxState, "mean": MomentsState, "var": MomentsState, "std": MomentsState,
    "first": FirstLastState, "last": FirstLastState, "count_distinct": DistinctState,
    "approx_count_distinct": HllState,
}


def make_state(name: str, agg: Agg, in_type: pa.DataType | None, out_type: pa.DataType,
               table: StateTable) -> AggState:
    """The state object for ``agg``, with its columns registered in ``table``.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.aggs import count
    >>> t = SlotTable(1, np, on_device=False)
    >>> type(make_state("n", count(), None, pa.int64(), t)).__name__, sorted(t.columns)
    ('CountState', ['n.n'])
    """
    return _STATES[agg.kind](name, agg, in_type, out_type, table)
