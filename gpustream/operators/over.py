"""Per-key OVER windows: aggregates over each row's frame, emitted on every row.

As Flink's ``agg(x) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL t PRECEDING
AND CURRENT ROW)`` (or ``ROWS BETWEEN n PRECEDING AND CURRENT ROW``): every input row
comes out once, with the aggregates of its key's rows in its frame added:

- RANGE ``t``: the key's rows with event time in ``[ts - t, ts]``; rows of the same
  event time are all in each other's frames (SQL's peers);
- ROWS ``n``: the row and the ``n`` rows of its key before it, in event-time order, rows
  of the same event time in arrival order.

**Event time.** Rows are ordered by event time per key, whatever order they arrive in:
a row waits until the watermark passes its event time (``ts < watermark``), when no
on-time row can enter its frame any more, and is then emitted; the output comes in
(event time, arrival) order. A row older than the watermark as of its arrival (DESIGN.md
section 3) is late: it goes to ``.late`` unchanged and is counted (``late_events``).
So the result never depends on how the stream is cut into batches.

**State.** Per key, the rows not emitted yet and what their frames (and later rows')
still need: RANGE keeps the emitted rows within ``t`` of the watermark, ROWS the last
``n`` emitted rows of each key. ``state_bytes()`` reports it; ``snapshot``/``restore``
write it as plain arrays for checkpoints.

**Work.** Per batch: late rows split off and the rest appended (vectorized). When the
watermark moves past a pending row: the rows that came since the last time sorted by
(key, event time, arrival) and merged into the kept rows (kept in that order), frame
bounds, count/sum/mean as differences of per-key prefix sums and min/max with a
monotonic deque (:mod:`gpustream.kernels.over`, njit loops). Apart from the sort of the
new rows, each step is linear in the rows kept for the keys that emit: a key's whole
frame history is scanned again each time it emits (a ROWS frame of n rows costs about n
per key a batch), where Flink keeps running accumulators; the output is the same.
The operator runs on the host on every backend: on a
device backend each batch is copied to the host and each output batch back
(``Backend.to_host`` / ``Batch.to_device``); a GPU twin of these sequential per-key
scans is future work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend, select_backend
from gpustream.batch import Batch, physical_dtype
from gpustream.expr import Agg, evaluate
from gpustream.ingest.dictionary import StringDictionary
from gpustream.kernels.over import (
    frame_bounds,
    frame_count,
    frame_extreme,
    frame_sum,
    merge_order,
    running_sum,
)
from gpustream.operators.base import WATERMARK_END, Operator
from gpustream.state.keyed import key_words
from gpustream.state.table import SlotTable
from gpustream.watermark import NO_WATERMARK

__all__ = ["UNBOUNDED_ROWS", "OverAgg", "OverOp", "OverSpec"]


@dataclass(frozen=True)
class OverAgg:
    """One output aggregate of an OVER window: name, aggregation, output type."""

    name: str
    agg: Agg
    out_type: pa.DataType


@dataclass(frozen=True)
class OverSpec:
    """What the physical OVER operator needs, in event-time units.

    ``range_span`` (RANGE) or ``rows`` (ROWS) is set, the other None; ``input_schema``
    is the rows' schema, ``schema`` the output's (input columns, then the aggregates);
    ``time_shift`` is added to the event-time column (-1 where it is a window's
    ``window_end``)."""

    name: str
    keys: tuple[str, ...]
    event_time: str
    range_span: int | None
    rows: int | None
    aggs: tuple[OverAgg, ...]
    input_schema: pa.Schema
    schema: pa.Schema
    time_shift: int = 0
    #: ROWS UNBOUNDED PRECEDING (``rows`` is then :data:`UNBOUNDED_ROWS`): emitted rows
    #: are not kept, each key's aggregates so far are (``carry``)
    unbounded: bool = False


#: the ``rows`` of an unbounded frame: more than any key's rows
UNBOUNDED_ROWS = 2**62


def _agg_col(i: int) -> str:
    return f"__over_in{i}"


class OverOp(Operator):
    """The OVER window operator (module docstring); host arrays on every backend.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.expr import col
    >>> rows = pa.schema({"k": pa.int64(), "ts": pa.int64(), "v": pa.int64()})
    >>> out = pa.schema(list(rows) + [pa.field("n", pa.int64()), pa.field("s", pa.int64())])
    >>> spec = OverSpec("o", ("k",), "ts", 10, None,
    ...                 (OverAgg("n", count(), pa.int64()), OverAgg("s", col("v").sum(), pa.int64())),
    ...                 rows, out)
    >>> op = OverOp(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 1], "ts": [5, 12, 3], "v": [1, 2, 4]}))
    >>> b.watermarks = np.array([NO_WATERMARK, 5, 7])   # ts=3 came after the watermark 7
    >>> op.process(b)
    []
    >>> op.on_watermark(20)[0].to_arrow().to_pydict()
    {'k': [1, 1], 'ts': [5, 12], 'v': [1, 2], 'n': [1, 2], 's': [1, 3]}
    >>> [r.num_rows for r in op.side_outputs()["late"]], op.late_events
    ([1], 1)
    """

    def __init__(self, spec: OverSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        #: string dictionaries of the rows read, by column (the latest holds every code)
        self.dictionaries: dict[str, Any] = {}
        self.late_out: list[Batch] = []
        #: rows older than the watermark as of their arrival (sent to ``.late``)
        self.late_events = 0
        #: rows without an event time (counted as bad records, never emitted)
        self.no_time_events = 0
        #: the watermark rows are emitted up to (every kept row older than it was emitted)
        self.watermark = NO_WATERMARK
        #: the watermark passed on last: the per-row watermark of the rows emitted next
        self.forwarded = NO_WATERMARK
        self.seq = 0
        #: the kept rows: input columns and evaluated aggregate inputs (with their event
        #: times, arrival numbers, and whether each was emitted: then it is kept only for
        #: later rows' frames)
        self.rows: Batch | None = None
        self.ts = np.zeros(0, dtype=np.int64)
        self.arrival = np.zeros(0, dtype=np.int64)
        self.emitted = np.zeros(0, dtype=np.bool_)
        #: the first ``n_sorted`` kept rows are sorted by (key, event time, arrival); the
        #: rest came after them, in arrival order
        self.n_sorted = 0
        #: an unbounded frame: per key, each aggregate's parts over its emitted rows
        #: (``n<i>`` rows or values, ``h<i>`` + ``l<i>`` sum, ``x<i>`` min or max)
        self.carry = self._new_carry() if spec.unbounded else None

    def _new_carry(self) -> SlotTable:
        """An empty table of keys' parts so far (an unbounded frame)."""
        spec = self.spec
        carry = SlotTable(len(spec.keys) + 1, np, select_backend("cpu"))
        for i, a in enumerate(spec.aggs):
            carry.add_column(f"n{i}", np.int64, 0)
            kind = a.agg.kind
            if kind in ("sum", "mean"):
                dtype = physical_dtype(a.out_type)
                acc = np.float64 if kind == "mean" or dtype.kind == "f" else np.int64
                carry.add_column(f"h{i}", acc, 0)  # the sum so far, exactly:
                carry.add_column(f"l{i}", np.float64, 0)  # (a double-double)
            elif kind in ("min", "max"):
                carry.add_column(f"x{i}", physical_dtype(a.out_type), 0)
        return carry

    # -- input ----------------------------------------------------------------------------
    @property
    def state_rows(self) -> int:
        """Rows kept (pending and history)."""
        return int(self.ts.shape[0])

    def restore_dictionaries(self, dictionaries: Mapping[str, StringDictionary]) -> None:
        """The input's dictionaries after a restore: they decode the kept rows."""
        self.dictionaries.update(dictionaries)

    def process(self, batch: Batch) -> list[Batch]:
        if batch.num_rows == 0:
            return []
        batch = batch.to_host()
        spec = self.spec
        self.dictionaries.update(batch.dictionaries)
        wm = batch.watermarks
        assert wm is not None, "OVER windows need per-event watermarks from the source"
        ts = batch[spec.event_time].astype(np.int64, copy=False) + spec.time_shift
        ts_ok = batch.validity(spec.event_time)
        late = ts < np.maximum(wm, self.watermark)
        if ts_ok is not None:
            self.no_time_events += int((~ts_ok).sum())
            late &= ts_ok
        n_late = int(late.sum())
        if n_late:
            self.late_out.append(batch.filter(late))
            self.late_events += n_late
        keep = ~late if ts_ok is None else ~late & ts_ok
        n = batch.num_rows
        arrival = np.arange(self.seq, self.seq + n, dtype=np.int64)
        self.seq += n
        if not keep.all():
            batch, ts, arrival = batch.filter(keep), ts[keep], arrival[keep]
        if batch.num_rows:
            self._append(batch, ts, arrival)
        return []

    def _append(self, batch: Batch, ts: Any, arrival: Any) -> None:
        """Keep ``batch``'s rows with their aggregates' inputs evaluated once."""
        columns = dict(batch.columns)
        validity = {c: batch.validity(c) for c in batch.column_names}
        for i, a in enumerate(self.spec.aggs):
            if a.agg.input is None:
                continue
            col = evaluate(a.agg.input, batch, np)
            columns[_agg_col(i)] = np.asarray(col.values)
            validity[_agg_col(i)] = col.valid
        part = Batch(columns, self._schema(columns), validity, batch.dictionaries)
        self.rows = part if self.rows is None else Batch.concat([self.rows, part], np)
        self.ts = np.concatenate([self.ts, ts])
        self.arrival = np.concatenate([self.arrival, arrival])
        self.emitted = np.concatenate([self.emitted, np.zeros(ts.shape[0], dtype=np.bool_)])

    def _schema(self, columns: dict[str, Any]) -> pa.Schema:
        """The kept rows' schema: the input's, then the aggregates' inputs (as stored)."""
        extra = [pa.field(c, pa.from_numpy_dtype(columns[c].dtype))
                 for c in (_agg_col(i) for i in range(len(self.spec.aggs))) if c in columns]
        return pa.schema(list(self.spec.input_schema) + extra)

    # -- output ---------------------------------------------------------------------------
    def on_watermark(self, watermark: int) -> list[Batch]:
        self.watermark = max(self.watermark, watermark)
        out = self._emit(self.watermark)
        self.forwarded = max(self.forwarded, watermark)  # the rows above go before it
        return out

    def _emit(self, watermark: int) -> list[Batch]:
        rows = self.rows
        if rows is None:
            return []
        due = ~self.emitted & (self.ts < watermark)
        if not due.any():
            return []
        spec = self.spec
        n = rows.num_rows
        kw = key_words(spec.keys, rows, np.arange(n), None, np)
        k = len(spec.keys)
        words = [kw[c] for c in range(k - 1, -1, -1)]
        if k and kw[k].any():  # null keys
            words.insert(0, kw[k])
        stacked = np.stack(words) if words else np.zeros((0, n), dtype=np.uint64)
        # the rows kept sorted last time, merged with those that came since
        order = merge_order(stacked, self.ts, self.n_sorted)
        new_key = np.ones(n, dtype=np.bool_)
        if n > 1:
            sorted_words = stacked[:, order]
            new_key[1:] = (sorted_words[:, 1:] != sorted_words[:, :-1]).any(axis=0)
        # only the keys with a row to emit are worked on
        key_id = np.cumsum(new_key) - 1
        has_due = np.zeros(int(key_id[-1]) + 1, dtype=np.bool_)
        has_due[key_id[due[order]]] = True
        work = has_due[key_id]
        sel = order[work] if not work.all() else order
        new_key = new_key[work] if not work.all() else new_key
        ts = self.ts[sel]
        idx = np.arange(sel.shape[0], dtype=np.int64)
        group = np.maximum.accumulate(np.where(new_key, idx, 0))
        lo, hi = frame_bounds(ts, group, spec.range_span, spec.rows)
        want = due[sel]
        # emitted in (event time, arrival) order
        due_rows = np.nonzero(due)[0]
        due_rows = due_rows[np.lexsort((self.arrival[due_rows], self.ts[due_rows]))]
        where = np.empty(n, dtype=np.int64)
        where[sel] = idx
        out_rows = where[due_rows]
        carried = None
        if spec.unbounded:  # each row's key's parts so far (-1: none yet)
            if self.carry is None:
                self.carry = self._new_carry()
            carried = self.carry.find(np.ascontiguousarray(kw[:, sel]))
        parts = self._parts(rows, sel, group, lo, hi, want, out_rows, carried)
        if carried is not None:
            self._carry_on(kw[:, sel], group, out_rows, parts)
        out = self._output(rows, sel[out_rows], parts)
        self.emitted[due_rows] = True
        self._prune(watermark, order, key_id)
        return [out]

    def _carry_on(self, words: Any, group: Any, out_rows: Any,
                  parts: list[dict[str, Any]]) -> None:
        """Keep the parts at each key's last row emitted now as the key's parts so far
        (an unbounded frame; rows are sorted by key, then time)."""
        carry = self.carry
        assert carry is not None
        order = np.argsort(out_rows, kind="stable")
        g = group[out_rows[order]]
        last = np.ones(g.shape[0], dtype=np.bool_)
        last[:-1] = g[1:] != g[:-1]
        pick = order[last]
        new, _ = carry.upsert(np.ascontiguousarray(words[:, out_rows[pick]]),
                              np.arange(pick.shape[0], dtype=np.int64))
        for i, part in enumerate(parts):
            for field_, values in part.items():
                if field_ != "s":  # (the rounded sum: "h" and "l" are its exact parts)
                    carry.columns[f"{field_}{i}"][new] = values[pick]

    def _parts(self, rows: Batch, sel: Any, group: Any, lo: Any, hi: Any, want: Any,
               out_rows: Any, carried: Any | None) -> list[dict[str, Any]]:
        """Each aggregate's parts over the frames of rows ``sel[out_rows]`` of ``rows``
        (``sel``: the rows worked on, sorted by key, time and arrival; ``group``, ``lo``,
        ``hi`` and ``want`` index it): ``n`` (rows, or values), ``s`` (their sum: sum
        and mean; unbounded: with its exact parts ``h``, ``l``), ``x`` (min or max).
        ``carried``: an unbounded frame's slot of each row's key in ``carry`` (-1: none),
        whose parts so far are added."""
        all_ok = np.ones(sel.shape[0], dtype=np.bool_)
        parts: list[dict[str, Any]] = []
        columns: dict[str, Any] = {} if self.carry is None else self.carry.columns
        have = None if carried is None else (carried >= 0)[out_rows]
        at = None if carried is None else carried[out_rows][have]

        def before(name: str, i: int, where: Any) -> Any:
            """The key's carried ``name`` part at ``where`` (0 without one)."""
            assert carried is not None
            col = columns[f"{name}{i}"]
            return np.where(carried[where] >= 0, col[carried[where]], 0)

        for i, a in enumerate(self.spec.aggs):
            kind = a.agg.kind
            if kind in ("count", "row_number"):  # (row_number: in an unbounded frame)
                n = (hi - lo)[out_rows]
                parts.append({"n": n if carried is None else n + before("n", i, out_rows)})
                continue
            values = rows[_agg_col(i)][sel]
            ok = rows.validity(_agg_col(i))
            ok = all_ok if ok is None else ok[sel]
            n_valid = frame_count(ok, group, lo, hi, out_rows)
            if carried is not None:
                n_valid = n_valid + before("n", i, out_rows)
            dtype = physical_dtype(a.out_type)
            if kind in ("min", "max"):
                got, found = frame_extreme(values, ok, group, lo, hi, want, kind == "max")
                x = got[out_rows].astype(dtype, copy=False)
                if carried is not None and at is not None and at.shape[0]:
                    old = columns[f"x{i}"][at]
                    mine = x[have]
                    pick = np.maximum if kind == "max" else np.minimum
                    x[have] = np.where(found[out_rows][have],
                                       np.where(columns[f"n{i}"][at] > 0, pick(old, mine),
                                                mine), old)
                parts.append({"n": n_valid, "x": x})
                continue
            if kind == "count_valid":
                parts.append({"n": n_valid})
                continue
            acc = np.float64 if kind == "mean" or np.issubdtype(dtype, np.floating) else np.int64
            if carried is None:
                parts.append({"n": n_valid,
                              "s": frame_sum(values, ok, group, lo, hi, out_rows, acc)})
                continue
            every = np.arange(sel.shape[0])
            total, h, low = running_sum(values, ok, group, out_rows, before("h", i, every),
                                        before("l", i, every), acc)
            parts.append({"n": n_valid, "s": total, "h": h, "l": low})
        return parts

    def _output(self, rows: Batch, picked: Any, parts: list[dict[str, Any]],
                on_device: bool = True) -> Batch:
        """The rows ``picked`` of ``rows`` with their aggregates from ``parts`` (moved to
        the backend's device unless ``on_device`` is False)."""
        spec = self.spec
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        for f in spec.input_schema:
            columns[f.name] = rows[f.name][picked]
            ok = rows.validity(f.name)
            validity[f.name] = None if ok is None else ok[picked]
        for a, part in zip(spec.aggs, parts, strict=True):
            kind = a.agg.kind
            dtype = physical_dtype(a.out_type)
            n = part["n"]
            if kind in ("count", "count_valid", "row_number"):
                columns[a.name] = n
                continue
            if kind in ("min", "max"):
                columns[a.name] = part["x"]
            elif kind == "mean":
                columns[a.name] = (part["s"] / np.maximum(n, 1)).astype(dtype, copy=False)
            else:
                columns[a.name] = part["s"].astype(dtype, copy=False)
            validity[a.name] = n > 0
        dictionaries = {c: self.dictionaries[c] for c in spec.schema.names
                        if c in self.dictionaries}
        watermarks = np.full(picked.shape[0], self.forwarded, dtype=np.int64)
        out = Batch(columns, spec.schema, validity, dictionaries, watermarks)
        return out.to_device(self.backend) if on_device else out

    def _prune(self, watermark: int, order: Any, key_id: Any) -> None:
        """Drop the emitted rows no later frame needs: RANGE, those older than the
        watermark minus the range (every row still to come is at least the watermark);
        ROWS, all but the last ``rows`` emitted rows of each key."""
        spec = self.spec
        if watermark >= WATERMARK_END or spec.unbounded:
            drop = self.emitted  # (the input ended, or an unbounded frame carries them)
        elif spec.range_span is not None:
            drop = self.emitted & (self.ts < watermark - spec.range_span)
        else:
            # emitted rows come first in each key's sorted run: rank them from its end
            em = self.emitted[order]
            ids = key_id[em]
            pos = np.arange(ids.shape[0])
            last = np.ones(ids.shape[0], dtype=np.bool_)
            last[:-1] = ids[1:] != ids[:-1]
            end = np.minimum.accumulate(np.where(last, pos, ids.shape[0])[::-1])[::-1]
            drop = np.zeros(order.shape[0], dtype=np.bool_)
            drop[order[em]] = end - pos >= spec.rows
        # the kept rows, in sorted order (the next watermark merges the new ones in)
        if watermark >= WATERMARK_END:
            self.carry = None  # nothing comes after the end
        kept = order[~drop[order]]
        assert self.rows is not None
        self.rows = self.rows.filter(kept)
        self.ts, self.arrival, self.emitted = (self.ts[kept], self.arrival[kept],
                                               self.emitted[kept])
        self.n_sorted = int(kept.shape[0])

    def side_outputs(self) -> dict[str, list[Batch]]:
        out, self.late_out = self.late_out, []
        return {"late": [b.to_device(self.backend) for b in out]} if out else {}

    # -- checkpoints ----------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the kept rows (columns, validity, times, arrival numbers, flags)."""
        total = self.ts.nbytes + self.arrival.nbytes + self.emitted.nbytes
        if self.rows is not None:
            for c in self.rows.column_names:
                ok = self.rows.validity(c)
                total += self.rows[c].nbytes + (0 if ok is None else ok.nbytes)
        if self.carry is not None:
            total += self.carry.state_bytes()
        return int(total)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "watermark": np.array([self.watermark], dtype=np.int64),
            "forwarded": np.array([self.forwarded], dtype=np.int64),
            "seq": np.array([self.seq], dtype=np.int64),
            "n_sorted": np.array([self.n_sorted], dtype=np.int64),
            "ts": self.ts, "arrival": self.arrival, "emitted": self.emitted,
        }
        if self.rows is not None:
            for c in self.rows.column_names:
                state[f"col.{c}"] = self.rows[c]
                ok = self.rows.validity(c)
                if ok is not None:
                    state[f"valid.{c}"] = ok
        if self.carry is not None:
            for k, v in self.carry.snapshot(np.asarray).items():
                state[f"carry.{k}"] = v
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = int(state["watermark"][0])
        self.forwarded = int(state["forwarded"][0])
        self.seq = int(state["seq"][0])
        self.n_sorted = int(state["n_sorted"][0])
        self.ts = np.asarray(state["ts"], dtype=np.int64)
        self.arrival = np.asarray(state["arrival"], dtype=np.int64)
        self.emitted = np.asarray(state["emitted"], dtype=np.bool_)
        carried = {k[6:]: v for k, v in state.items() if k.startswith("carry.")}
        self.carry = None
        if carried:
            self.carry = self._new_carry()
            self.carry.restore(carried, np.asarray)
        columns = {k[4:]: np.asarray(v) for k, v in state.items() if k.startswith("col.")}
        if not columns:
            self.rows = None
            return
        validity = {k[6:]: np.asarray(v, dtype=np.bool_) for k, v in state.items()
                    if k.startswith("valid.")}
        schema = self._schema(columns)
        self.rows = Batch({c: columns[c] for c in schema.names}, schema, validity)
