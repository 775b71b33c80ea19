"""Keyed aggregation without a window (SQL's ``GROUP BY`` over a stream): a changelog.

Every batch folds its rows into one state row per key (the same
:class:`~gpustream.state.table.SlotTable` and aggregation states as windows, so every
aggregation and both backends work), then emits what changed (:mod:`gpustream.changelog`):
``+I`` for a key seen for the first time, ``-U`` (the row as last emitted) and ``+U`` (its
new values) for a key whose aggregates changed; a key whose values did not change emits
nothing. Rows come out per batch ordered by key, each ``-U`` before its ``+U``. How many
updates a key gets depends on the batching; the table the changelog describes
(:func:`~gpustream.changelog.materialize` by the keys) does not.

``retention`` bounds the state by event time: a key's state is dropped, without emitting
anything, once the watermark reaches its last event time + retention (a later row for the
key starts it anew with ``+I``, like Flink's state TTL, but by the watermark so that a
rerun does the same); a row whose event time + retention is at or below its watermark
when it arrives is late (``.late``): its key's state may be gone already. Rows without an
event time then cannot be judged and are counted (``no_time_events``) and dropped.
Without retention nothing is late and state grows with the number of keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.changelog import (
    DELETE,
    INSERT,
    UPDATE_AFTER,
    UPDATE_BEFORE,
    op_dictionary,
    weights,
)
from gpustream.expr import col
from gpustream.operators.base import Operator
from gpustream.operators.window import AggSpec
from gpustream.state.aggstate import AggState, UpdateContext, make_state
from gpustream.state.keyed import (
    ComputedStrings,
    finalized,
    init_new,
    key_columns,
    key_words,
    output_dictionaries,
    restore_aggs,
    snapshot_aggs,
    update_states,
)
from gpustream.state.table import SlotTable

__all__ = ["RunningAggOp", "RunningSpec"]

I64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class RunningSpec:
    """A running aggregation, in event-time units."""

    name: str
    keys: tuple[str, ...]
    aggs: tuple[AggSpec, ...]
    schema: pa.Schema  #: keys, aggregates, ``op``
    #: the stream's event time, if it has one: retention, and the order of first/last
    event_time: str | None = None
    retention: int | None = None
    #: added to the event-time column (-1 where it is an upstream window's ``window_end``)
    time_shift: int = 0
    #: the input is a changelog (an ``op`` column): its ``-U``/``-D`` rows take back what
    #: their ``+I``/``+U`` rows added (count, sum, mean only), and a key whose rows are
    #: all taken back is deleted (``-D``)
    retracting: bool = False


class RunningAggOp(Operator):
    """Each key's aggregates over all its rows so far, as a changelog (module docstring).

    Examples
    --------
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> schema = pa.schema({"k": pa.int64(), "n": pa.int64(), "op": pa.string()})
    >>> spec = RunningSpec("a", ("k",), (AggSpec("n", count(), None, pa.int64()),), schema)
    >>> op = RunningAggOp(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 2, 1]}))
    >>> op.process(b)[0].to_arrow().to_pydict()
    {'k': [1, 2], 'n': [2, 1], 'op': ['+I', '+I']}
    >>> op.process(Batch.from_arrow(pa.record_batch({"k": [2]})))[0].to_arrow().to_pydict()
    {'k': [2, 2], 'n': [1, 2], 'op': ['-U', '+U']}
    """

    def __init__(self, spec: RunningSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.table = SlotTable(len(spec.keys) + 1, backend.xp, backend)
        self.table.add_column("__shown", np.int8, 0)  # 1 once the key's row was emitted
        self.states: list[Any] = (
            [_Retracting(a, i, self.table) for i, a in enumerate(spec.aggs)]
            if spec.retracting else
            [make_state(a.name, a.agg, a.in_type, a.out_type, self.table) for a in spec.aggs])
        #: with a changelog input: each key's rows added minus rows taken back
        self.weight: AggState | None = None
        if spec.retracting:
            self.weight = make_state("__rows", col("op").sum(), pa.int64(), pa.int64(),
                                     self.table)
        #: each key's last event time (for the retention), a max over its rows
        self.last: AggState | None = None
        if spec.retention is not None:
            assert spec.event_time is not None
            self.last = make_state("__last", col(spec.event_time).max(), pa.int64(),
                                   pa.int64(), self.table)
        self.op_dictionary = op_dictionary()
        self.dictionaries: dict[str, Any] = {}
        #: aggregates of computed strings: their codes in dictionaries this step owns
        self.strings = ComputedStrings(spec.aggs, backend)
        self.seq = 0
        self.forwarded = I64_MIN  #: the last watermark passed on: the rows' watermark
        self.late_out: list[Batch] = []
        self.late_events = 0
        self.no_time_events = 0

    @property
    def state_rows(self) -> int:
        """Keys holding state."""
        return int(self.table.live_count)

    def restore_dictionaries(self, dictionaries: Any) -> None:
        """The input's dictionaries after a restore: they decode the restored keys."""
        self.dictionaries.update(dictionaries)

    def owned_dictionaries(self) -> dict[str, Any]:
        """The dictionaries of string aggregates of computed expressions."""
        return self.strings.dictionaries

    def state_bytes(self) -> int:
        return self.table.state_bytes() + sum(st.state_bytes() for st in self._all_states())

    def _all_states(self) -> list[Any]:
        return [*self.states, *(s for s in (self.last, self.weight) if s is not None)]

    # -- input ----------------------------------------------------------------------------
    def process(self, batch: Batch) -> list[Batch]:
        n = batch.num_rows
        if n == 0:
            return []
        xp = self.xp
        spec = self.spec
        self.dictionaries.update(batch.dictionaries)
        rows = xp.arange(n, dtype=np.int64)
        todo = rows
        ts = None
        if spec.retention is not None:
            ts, todo = self._on_time(batch)
        elif spec.event_time is not None:  # first/last/max_by ties: by event time
            ts = batch[spec.event_time].astype(np.int64, copy=False) + spec.time_shift
        inputs = self.strings.inputs(batch)
        keys = key_words(spec.keys, batch, rows, None, xp)
        if self.last is not None:
            self.table.ensure_room(2 * int(todo.shape[0]))  # no rebuild between upserts
        slots, is_new = self.table.upsert(keys, todo)
        if self.last is not None and todo.shape[0]:
            slots, is_new = self._restarts(keys, ts, batch.watermarks, todo, slots, is_new)
        init_new(self.states, slots, is_new, rows, inputs, xp)
        touched = slots[todo]
        touched = xp.unique(touched[touched >= 0])
        shown = self.table.columns["__shown"]
        seen = touched[shown[touched] == 1]
        fresh = touched[shown[touched] == 0]
        before = finalized(self.states, seen)
        ctx = UpdateContext(ts if ts is not None else xp.zeros(n, dtype=np.int64),
                            xp.arange(self.seq, self.seq + n, dtype=np.int64))
        self.seq += n
        gone = None
        if self.weight is not None:
            w = weights(batch, xp)
            for st, col_ in zip(self.states, inputs.values(), strict=True):
                st.fold(slots, rows, col_, w, ctx)
            self.weight.update(slots, rows, w, None, ctx)
            alive = self.weight.finalize(touched)[0] > 0  # rows added minus taken back
            was = shown[touched] == 1
            kept, lost = alive[was], ~alive[was]
            gone = seen[lost]  # shown before, every row taken back: deleted
            deleted = [(v[lost], None if ok is None else ok[lost]) for v, ok in before]
            seen = seen[kept]
            before = [(v[kept], None if ok is None else ok[kept]) for v, ok in before]
            dead = touched[~alive]
            fresh = fresh[alive[~was]]
        else:
            update_states(self.states, slots, rows, inputs, ctx, xp)
        if self.last is not None:
            self.last.update(slots, rows, ts, None, ctx)
        after = finalized(self.states, seen)
        changed = _differs(before, after, seen.shape[0], xp)
        shown[fresh] = 1
        old = [(v[changed], None if ok is None else ok[changed]) for v, ok in before]
        out = self._changes(seen[changed], old, fresh,
                            None if gone is None else (gone, deleted))
        if gone is not None:
            self._free(dead)
        return [out] if out.num_rows else []

    def _free(self, slots: Any) -> None:
        for st in self._all_states():
            st.free(slots)
        self.table.free(slots)

    def _on_time(self, batch: Batch) -> tuple[Any, Any]:
        """Event times (shifted) and the rows to fold: those with a time that is not late;
        the late ones go to ``.late``, those without time are counted."""
        xp = self.xp
        spec = self.spec
        assert spec.retention is not None and spec.event_time is not None
        wm = batch.watermarks
        assert wm is not None, "a running aggregation with retention needs watermarks"
        ts = batch[spec.event_time].astype(np.int64, copy=False)
        if spec.time_shift:
            ts = ts + spec.time_shift
        valid = batch.validity(spec.event_time)
        floor = xp.where(wm > I64_MIN + spec.retention, wm - spec.retention, I64_MIN)
        late = ts <= floor
        if valid is not None:
            late &= valid
            self.no_time_events += int((~valid).sum())
        n_late = int(late.sum())
        if n_late:
            self.late_out.append(batch.filter(late))
            self.late_events += n_late
        keep = ~late if valid is None else ~late & valid
        return ts, xp.nonzero(keep)[0]

    def _restarts(self, keys: Any, ts: Any, wm: Any, todo: Any, slots: Any,
                  is_new: Any) -> tuple[Any, Any]:
        """Start keys anew where the retention says so, row by row as the rows arrived:
        a row restarts its key when the watermark as of the row reached the key's latest
        event time so far (its state and its earlier rows) + retention. Only a key's rows
        from its last restart on are kept: the state of the earlier ones would be dropped
        by it. Returns the rows' slots (-1: not folded) and which rows created their slot."""
        xp = self.xp
        assert self.last is not None and self.spec.retention is not None
        s = slots[todo]
        order = xp.argsort(s, kind="stable")
        seg = s[order]
        t = ts[todo][order]
        first = xp.ones(seg.shape[0], dtype=bool)
        first[1:] = seg[1:] != seg[:-1]
        seen = _segment_scan(t, first, xp)  # the key's latest time up to each row
        before = xp.full(seg.shape[0], I64_MIN, dtype=np.int64)
        before[1:] = xp.where(first[1:], I64_MIN, seen[:-1])
        latest = xp.maximum(before, self.last.col("acc")[seg])
        w = wm[todo][order]
        retention = self.spec.retention
        floor = xp.where(w > I64_MIN + retention, w - retention, I64_MIN)
        restart = (latest <= floor) & (latest > I64_MIN)  # (no time yet: nothing to drop)
        if not bool(restart.any()):
            return slots, is_new
        # rows before their key's last restart are dropped (a reversed scan: any later)
        later = _segment_scan(restart[::-1].astype(np.int64), _first_of_reversed(first),
                              xp)[::-1]
        drop = xp.zeros(seg.shape[0], dtype=bool)
        drop[:-1] = (later[1:] > 0) & ~first[1:]
        gone = xp.unique(seg[restart])
        self._free(gone)
        sorted_rows = todo[order]
        slots = slots.copy()
        slots[sorted_rows[drop]] = -1
        redo = sorted_rows[~drop & xp.isin(seg, gone)]
        again, fresh = self.table.upsert(keys, redo)
        slots[redo] = again[redo]
        is_new = is_new.copy()
        is_new[sorted_rows[xp.isin(seg, gone)]] = 0
        is_new[redo] = fresh[redo]
        return slots, is_new

    # -- output ---------------------------------------------------------------------------
    def _changes(self, updated: Any, old: list[tuple[Any, Any | None]], fresh: Any,
                 deleted: tuple[Any, list[tuple[Any, Any | None]]] | None = None) -> Batch:
        """``-U`` (``old`` values) and ``+U`` rows of the ``updated`` slots, ``+I`` rows
        of the ``fresh`` ones and ``-D`` rows of the ``deleted`` slots (with their last
        values), ordered by key, each ``-U`` before its ``+U``."""
        xp = self.xp
        spec = self.spec
        k = len(spec.keys)
        nu, nf = int(updated.shape[0]), int(fresh.shape[0])
        gone, last = deleted if deleted is not None else (updated[:0], [(v[:0], None)
                                                                        for v, _ in old])
        nd = int(gone.shape[0])
        slots = xp.concatenate([updated, updated, fresh, gone])
        new = finalized(self.states, xp.concatenate([updated, fresh]))
        values = []
        for (ov, ook), (nv, nok), (dv, dok) in zip(old, new, last, strict=True):
            v = xp.concatenate([ov, nv, dv.astype(nv.dtype, copy=False)])
            parts = [(ook, nu), (nok, nu + nf), (dok, nd)]
            ok = None if all(o is None for o, _ in parts) else xp.concatenate([
                xp.ones(m, dtype=bool) if o is None else o for o, m in parts])
            values.append((v, ok))
        op = xp.concatenate([xp.full(nu, UPDATE_BEFORE, dtype=np.int32),
                             xp.full(nu, UPDATE_AFTER, dtype=np.int32),
                             xp.full(nf, INSERT, dtype=np.int32),
                             xp.full(nd, DELETE, dtype=np.int32)])
        words = self.table.arrays[2][slots].T  # each row's key words, then null bits
        phase = ((op != UPDATE_BEFORE) & (op != DELETE)).astype(np.uint64)
        order = xp.lexsort(xp.stack([phase, *[words[c] for c in range(k, -1, -1)]]))
        words, op = words[:, order], op[order]
        columns, validity = key_columns(spec.keys, spec.schema, words, xp)
        for a, (v, ok) in zip(spec.aggs, values, strict=True):
            columns[a.name] = v[order]
            validity[a.name] = None if ok is None else ok[order]
        columns["op"] = op
        validity["op"] = None
        dictionaries: dict[str, Any] = {"op": self.op_dictionary}
        dictionaries.update(output_dictionaries(spec.keys, spec.aggs, self.dictionaries,
                                                self.strings.dictionaries))
        watermarks = xp.full(int(op.shape[0]), self.forwarded, dtype=np.int64)
        return Batch(columns, spec.schema, validity, dictionaries, watermarks)

    def on_watermark(self, watermark: int) -> list[Batch]:
        self.forwarded = max(self.forwarded, watermark)
        retention = self.spec.retention
        if (self.last is not None and retention is not None and self.table.live_count
                and watermark > I64_MIN + retention):
            live = self.table.live_slots()
            last = self.last.finalize(live)[0]
            gone = live[last <= watermark - retention]
            if gone.shape[0]:
                self._free(gone)
        return []

    def side_outputs(self) -> dict[str, list[Batch]]:
        out, self.late_out = self.late_out, []
        return {"late": out} if out else {}

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The key table with every key's states, ``seq`` and the watermark passed on."""
        to_host = self.backend.to_host
        state: dict[str, Any] = {f"table.{k}": v for k, v in self.table.snapshot(to_host).items()}
        state.update(snapshot_aggs(self._all_states(), self.table.live_slots(), to_host))
        state["seq"] = np.array([self.seq], dtype=np.int64)
        state["forwarded"] = np.array([self.forwarded], dtype=np.int64)
        state.update(self.strings.snapshot())
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.strings.restore(state)
        table = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        slots = self.table.restore(table, self.backend.to_device)
        restore_aggs(self._all_states(), state, slots, self.backend.to_device)
        self.seq = int(state["seq"][0])
        self.forwarded = int(state["forwarded"][0])


def _differs(before: list[tuple[Any, Any | None]], after: list[tuple[Any, Any | None]],
             n: int, xp: Any) -> Any:
    """Which of ``n`` rows have a value or a validity that changed.

    Examples
    --------
    >>> _differs([(np.array([1, 2]), None)], [(np.array([1, 3]), None)], 2, np).tolist()
    [False, True]
    >>> _differs([(np.array([np.nan]), None)], [(np.array([np.nan]), None)], 1, np).tolist()
    [False]
    """
    out = xp.zeros(n, dtype=bool)
    for (ov, ook), (nv, nok) in zip(before, after, strict=True):
        oo = xp.ones(n, dtype=bool) if ook is None else ook
        no = xp.ones(n, dtype=bool) if nok is None else nok
        other = ov != nv
        if ov.dtype.kind == "f":  # NaN stays NaN: no change
            other &= ~(xp.isnan(ov) & xp.isnan(nv))
        out |= (oo != no) | (oo & other)
    return out


def _first_of_reversed(first: Any) -> Any:
    """Where segments start in the reversed order of rows whose segments start at
    ``first``.

    Examples
    --------
    >>> _first_of_reversed(np.array([True, False, True, False, False])).tolist()
    [True, False, False, True, False]
    """
    last = first.copy()
    last[:-1] = first[1:]
    last[-1] = True
    return last[::-1]


def _segment_scan(values: Any, first: Any, xp: Any) -> Any:
    """Inclusive running max of ``values`` within segments starting where ``first``
    (log-step doubling: vectorized on numpy and cupy alike).

    Examples
    --------
    >>> _segment_scan(np.array([3, 1, 5, 2, 0]), np.array([True, False, False, True, False]),
    ...               np).tolist()
    [3, 3, 5, 2, 2]
    """
    out = values.copy()
    seg = xp.cumsum(first)
    shift = 1
    n = int(out.shape[0])
    while shift < n:
        same = seg[shift:] == seg[:-shift]
        out[shift:] = xp.where(same, xp.maximum(out[shift:], out[:-shift]), out[shift:])
        shift *= 2
    return out


class _Retracting:
    """count, count of values, sum or mean over a changelog: sums of the rows' values
    times their weights (+1 adds, -1 takes back), in the key table's columns."""

    def __init__(self, a: AggSpec, i: int, table: SlotTable) -> None:
        self.name = a.name
        self.kind = a.agg.kind
        self.out = physical_dtype(a.out_type)
        summed = pa.int64() if self.kind in ("count", "count_valid") else (
            pa.float64() if self.kind == "mean" else a.in_type)
        self.total = make_state(f"__r{i}", col("op").sum(), summed, summed, table)
        self.values = (make_state(f"__v{i}", col("op").sum(), pa.int64(), pa.int64(), table)
                       if self.kind in ("sum", "mean") else None)

    def init(self, slots: Any, rows: Any, values: Any, valid: Any) -> None:
        """(New slots hold zero sums.)"""

    def fold(self, slots: Any, rows: Any, column: Any, w: Any, ctx: UpdateContext) -> None:
        """Fold ``rows`` (weights ``w``) into ``slots``."""
        if self.kind == "count":
            self.total.update(slots, rows, w, None, ctx)
            return
        valid = column.valid
        present = w if valid is None else w * valid
        if self.kind == "count_valid":
            self.total.update(slots, rows, present, None, ctx)
            return
        assert self.values is not None
        acc = np.float64 if self.kind == "mean" else self.total.col("acc").dtype
        self.total.update(slots, rows, column.values.astype(acc, copy=False) * w, valid, ctx)
        self.values.update(slots, rows, present, None, ctx)

    def finalize(self, slots: Any) -> tuple[Any, Any | None]:
        total = self.total.col("acc")[slots]
        if self.values is None:
            return total.astype(self.out, copy=False), None
        n = self.values.col("acc")[slots]
        if self.kind == "mean":
            total = total / (n + (n == 0))
        return total.astype(self.out, copy=False), n > 0

    def free(self, slots: Any) -> None:
        """(The sums live in the table's columns.)"""

    def state_bytes(self) -> int:
        return 0

    def snapshot_extra(self, live: Any, to_host: Any) -> dict[str, np.ndarray]:
        return {}

    def restore_extra(self, state: dict[str, np.ndarray], slots: Any, to_device: Any) -> None:
        """(Nothing outside the table.)"""
