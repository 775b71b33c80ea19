"""Keyed event-time windowed aggregation for tumbling and sliding windows.

Per batch (DESIGN.md section 3, decided per event, so batching never changes a result):

1. every (event, window) pair gets a status from the event's own watermark (on time,
   late within the allowed lateness, dropped) in one kernel;
2. events all of whose windows are dropped go to the ``.late`` side output unchanged
   (counted in ``late_events``); every dropped pair, of those events and of events still
   on time for another window, is counted in ``dropped_memberships``;
3. the pairs that update state find or create their (key, window) slot in the state
   table; new slots are initialised; on-time pairs are folded into the aggregates.

On each watermark the operator fires the windows whose end it reached (revision 0),
then folds late pairs one per window at a time in arrival order, re-firing the window
after each (revision 1, 2, ...), and frees windows once the watermark passes
end + allowed lateness. Memory is bounded by the open windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.aggs import Agg
from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.expr import Col, evaluate
from gpustream.ingest.dictionary import StringDictionary
from gpustream.kernels.hashing import hash_rows, widen_keys
from gpustream.kernels.windows import DROPPED, LATE, ON_TIME, assign_windows
from gpustream.operators.base import Operator
from gpustream.state.aggstate import AggState, UpdateContext, make_state
from gpustream.state.table import SlotTable, StateTable

__all__ = ["AggSpec", "WindowAggOp", "WindowSpec"]

I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class AggSpec:
    """One output aggregate: name, aggregation, input and output types."""

    name: str
    agg: Agg
    in_type: pa.DataType | None
    out_type: pa.DataType


@dataclass(frozen=True)
class WindowSpec:
    """Everything the physical windowed operators need, in event-time units."""

    name: str
    keys: tuple[str, ...]
    event_time: str
    size: int
    slide: int
    offset: int
    gap: int  # > 0 for session windows
    lateness: int
    aggs: tuple[AggSpec, ...]
    schema: pa.Schema  # the output schema
    revision: bool


class _Late:
    """Late pairs of one batch, kept until the next watermark."""

    def __init__(self, slots: Any, rows: Any, inputs: dict[int, Any], ctx: UpdateContext,
                 batch: Batch) -> None:
        self.slots, self.rows, self.inputs, self.ctx, self.batch = slots, rows, inputs, ctx, batch


class KeyedAggBase(Operator):
    """What the tumbling/sliding and the session operators share: keys, states, output."""

    def __init__(self, spec: WindowSpec, backend: Backend, table: Any) -> None:
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.on_device = backend.is_device
        self.table: Any = table
        self.states: list[AggState] = [
            make_state(a.name, a.agg, a.in_type, a.out_type, table) for a in spec.aggs
        ]
        self.seq = 0
        self.dictionaries: dict[str, Any] = {}
        self.late_out: list[Batch] = []
        #: events too late for every window they belong to (sent to ``.late``)
        self.late_events = 0
        #: (event, window) memberships not applied because the window's state was gone at
        #: the event's arrival (fired, and past the allowed lateness): those of the events
        #: in ``late_events`` and those of events still on time for another window
        self.dropped_memberships = 0
        self.no_time_events = 0

    # -- inputs ---------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state: the key table and the states' storage."""
        return self.table.state_bytes() + sum(st.state_bytes() for st in self.states)

    def _inputs(self, batch: Batch) -> dict[int, Any]:
        """Each aggregation's input column (values, validity), evaluated once per batch."""
        out: dict[int, Any] = {}
        for i, a in enumerate(self.spec.aggs):
            out[i] = None if a.agg.input is None else evaluate(a.agg.input, batch, self.xp)
        return out

    def _key_words(self, batch: Batch, rows: Any, extra: Any | None) -> Any:
        """``uint64[K, len(rows)]``: key columns, their null bits, then ``extra`` if given."""
        xp = self.xp
        identity = rows.shape[0] == batch.num_rows  # one assignment per event, in order
        cols = []
        nulls = None
        for c, name in enumerate(self.spec.keys):
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

    def _event_times(self, batch: Batch) -> tuple[Any, Any | None, Any]:
        """Event times, their validity, and per-event watermarks; counts rows without time."""
        self._remember_dictionaries(batch)
        ts_valid = batch.validity(self.spec.event_time)
        wm = batch.watermarks
        assert wm is not None, "windowed operators need per-event watermarks from the source"
        if ts_valid is not None:
            self.no_time_events += int((~ts_valid).sum())
        return batch[self.spec.event_time], ts_valid, wm

    def _remember_dictionaries(self, batch: Batch) -> None:
        for name, d in batch.dictionaries.items():
            self.dictionaries[name] = d

    def _init_new(self, slots: Any, is_new: Any, rows: Any, inputs: dict[int, Any]) -> None:
        xp = self.xp
        idx = xp.nonzero(is_new)[0]
        if idx.shape[0] == 0:
            return
        new_slots = slots[idx]  # their columns hold the fill values: never used before
        for i, st in enumerate(self.states):
            col = inputs[i]
            if col is not None:
                st.init(new_slots, rows[idx], col.values, col.valid)
            else:
                st.init(new_slots, rows[idx], xp.zeros(1), None)

    def _update(self, slots: Any, rows: Any, inputs: dict[int, Any], ctx: UpdateContext) -> None:
        for i, st in enumerate(self.states):
            col = inputs[i]
            if col is None:
                st.update(slots, rows, self.xp.zeros(1, dtype=np.int64), None, ctx)
            else:
                st.update(slots, rows, col.values, col.valid, ctx)

    def _late_rows(self, batch: Batch, late: Any, dropped: Any = 0) -> None:
        """Send the ``late`` events of ``batch`` to ``.late`` and count them, with the
        ``dropped`` memberships of the batch (an int, or a device scalar: both counts then
        come back to the host in one read)."""
        if isinstance(dropped, int):
            n_late, n_dropped = int(late.sum()), dropped
        else:
            both = self.backend.to_host(self.xp.stack([late.sum(), dropped]))
            n_late, n_dropped = int(both[0]), int(both[1])
        self.dropped_memberships += n_dropped
        if n_late:
            self.late_out.append(batch.filter(late))
            self.late_events += n_late

    # -- output ---------------------------------------------------------------------------
    def _emit(self, slots: Any, revision: Any | None) -> Batch:
        """Output rows for state ``slots`` of the (key, window) table."""
        k = len(self.spec.keys)
        words = self.table.arrays[2][slots].T  # gather whole slot rows of key words
        return self._emit_rows(words[: k + 1], words[k + 1].view(np.int64),
                               self.table.columns["__wend"][slots], slots, revision)

    def _emit_rows(self, key_words: Any, starts: Any, ends: Any, slots: Any,
                   revision: Any | None, states: Sequence[Any] | None = None,
                   op: Any | None = None,
                   op_dictionary: StringDictionary | None = None) -> Batch:
        """Rows ordered by (window_end, window_start, keys): keys, window_start, window_end,
        the aggregates of state ``slots`` in order, ``revision`` with allowed lateness, and
        ``op`` where the schema has it (codes into ``op_dictionary``).

        ``key_words`` holds the key columns' words and then their null bits; ``states``
        (default: the operator's) are read through their ``finalize``.
        """
        xp = self.xp
        spec = self.spec
        k = len(spec.keys)
        sort_by = [key_words[c] for c in range(k - 1, -1, -1)]
        if starts.shape[0] and bool((starts != starts[0]).any() | (ends != ends[0]).any()):
            sort_by += [starts.view(np.uint64), ends.view(np.uint64)]
        if not sort_by:
            order = xp.argsort(starts, kind="stable")
        elif len(sort_by) == 1:
            # keys are unique within a window (a null key and the key 0 aside, whose
            # order is as arbitrary as the table's): no stable sort needed
            order = xp.argsort(sort_by[0])
        else:
            order = xp.lexsort(xp.stack(sort_by))
        key_words, slots = key_words[:, order], slots[order]
        starts, ends = starts[order], ends[order]
        if revision is not None:
            revision = revision[order]
        if op is not None:
            op = op[order]
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        nulls = key_words[k].view(np.int64)
        any_null = bool(nulls.any()) if k else False
        for c, name in enumerate(spec.keys):
            dtype = physical_dtype(spec.schema.field(name).type)
            columns[name] = key_words[c].view(np.int64).astype(dtype)
            validity[name] = ((nulls >> c) & 1) == 0 if any_null else None
        columns["window_start"] = starts
        columns["window_end"] = ends
        for a, st in zip(spec.aggs, self.states if states is None else states, strict=True):
            values, valid = st.finalize(slots)
            columns[a.name] = values
            validity[a.name] = valid
        if spec.revision:
            columns["revision"] = (revision if revision is not None
                                   else xp.zeros(slots.shape[0], dtype=np.int32))
        dictionaries: dict[str, StringDictionary] = {}
        if op is not None:
            assert op_dictionary is not None
            columns["op"] = op.astype(np.int32)
            dictionaries["op"] = op_dictionary
        for f in spec.schema:
            src = self._string_source(f.name)
            if src is not None and src in self.dictionaries:
                dictionaries[f.name] = self.dictionaries[src]
        return Batch(columns, spec.schema, validity, dictionaries)

    def _string_source(self, out_name: str) -> str | None:
        if out_name in self.spec.keys:
            return out_name
        for a in self.spec.aggs:
            if a.name == out_name and isinstance(a.agg.input, Col):
                return a.agg.input.name
        return None

    def side_outputs(self) -> dict[str, list[Batch]]:
        out, self.late_out = self.late_out, []
        return {"late": out} if out else {}

    # -- checkpoints ----------------------------------------------------------------------
    def _snapshot_aggs(self, live: Any) -> dict[str, Any]:
        to_host = self.backend.to_host
        state: dict[str, Any] = {"seq": np.array([self.seq], dtype=np.int64)}
        for st in self.states:
            for k, v in st.snapshot_extra(live, to_host).items():
                state[f"agg.{st.name}.{k}"] = v
        return state

    def _restore_aggs(self, state: dict[str, Any], slots: Any) -> None:
        for st in self.states:
            prefix = f"agg.{st.name}."
            extra = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            st.restore_extra(extra, slots, self.backend.to_device)
        self.seq = int(state["seq"][0])


class WindowAggOp(KeyedAggBase):
    """Tumbling (``slide == size``) and sliding windows.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),),
    ...                   pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                              "window_end": pa.int64(), "n": pa.int64()}), False)
    >>> op = WindowAggOp(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 12, 5]}))
    >>> b.watermarks = np.array([np.iinfo(np.int64).min, 3, 12])
    >>> _ = op.process(b)
    >>> op.on_watermark(12)[0].to_arrow().to_pydict()
    {'k': [1], 'window_start': [0], 'window_end': [10], 'n': [1]}
    >>> [r.num_rows for r in op.side_outputs()["late"]]   # k=2 at ts 5 came after wm 12
    [1]
    >>> op.late_events, op.dropped_memberships
    (1, 1)
    """

    def __init__(self, spec: WindowSpec, backend: Backend,
                 table: StateTable | None = None) -> None:
        if table is None:
            table = SlotTable(len(spec.keys) + 2, backend.xp, backend.is_device)
            self.add_bookkeeping(table)
        super().__init__(spec, backend, table)
        self.nwin = spec.size // spec.slide
        self.pending_ends: set[int] = set()
        self.open_ends: set[int] = set()
        self.late_pending: list[_Late] = []

    @staticmethod
    def add_bookkeeping(table: SlotTable) -> None:
        """The columns this operator keeps per (key, window) slot besides the states'."""
        table.add_column("__wend", np.int64, I64_MAX)
        table.add_column("__rev", np.int32, 0)  # firings so far
        table.add_column("__ontime", np.int8, 0)  # 1 once an on-time event updated it

    def process(self, batch: Batch) -> list[Batch]:
        n = batch.num_rows
        if n == 0:
            return []
        xp = self.xp
        spec = self.spec
        ts, ts_valid, wm = self._event_times(batch)
        starts, status = assign_windows(ts, ts_valid, wm, spec.size, spec.slide, spec.offset,
                                        spec.lateness, self.on_device)
        late = xp.all(status.reshape(n, self.nwin) >= DROPPED, axis=1)
        self._late_rows(batch, late, (status == DROPPED).sum())
        rows = xp.arange(n * self.nwin, dtype=np.int64) // self.nwin
        todo = xp.nonzero(status <= LATE)[0]
        if todo.shape[0] == 0:
            return []
        keys = self._key_words(batch, rows, starts)
        slots, is_new = self.table.upsert(keys, todo)
        inputs = self._inputs(batch)
        wend = starts + spec.size
        self._init_new(slots, is_new, rows, inputs)
        created = is_new.astype(bool)
        self.table.columns["__wend"][slots[created]] = wend[created]
        new_ends = self.backend.to_host(xp.unique(wend[created]))
        self.pending_ends.update(int(e) for e in new_ends)
        self.open_ends.update(int(e) for e in new_ends)  # ends of windows holding state
        ctx = UpdateContext(ts, xp.arange(self.seq, self.seq + n, dtype=np.int64))
        self.seq += n
        on_time = xp.where(status == ON_TIME, slots, -1)
        self.table.columns["__ontime"][on_time[on_time >= 0]] = 1
        self._update(on_time, rows, inputs, ctx)
        late_idx = xp.nonzero(status == LATE)[0]
        if late_idx.shape[0]:
            self.late_pending.append(_Late(slots[late_idx], rows[late_idx], inputs, ctx, batch))
        return []

    def on_watermark(self, watermark: int) -> list[Batch]:
        out: list[Batch] = []
        wend = self.table.columns["__wend"]
        rev = self.table.columns["__rev"]
        due = sorted(e for e in self.pending_ends if e <= watermark)
        if due:
            live = self.table.live_slots()
            ontime = self.table.columns["__ontime"]
            fire = live[(wend[live] <= watermark) & (rev[live] == 0) & (ontime[live] == 1)]
            if fire.shape[0]:
                out.append(self._emit(fire, None))
                rev[fire] = 1
            self.pending_ends.difference_update(due)
        for late in self.late_pending:
            out.extend(self._late_rounds(late))
        self.late_pending = []
        limit = watermark - self.spec.lateness if watermark > -I64_MAX + self.spec.lateness else None
        gone = sorted(e for e in self.open_ends if limit is not None and e <= limit)
        if gone:
            live = self.table.live_slots()
            self._free(live[wend[live] <= limit])
            self.open_ends.difference_update(gone)
        return [b for b in out if b.num_rows]

    def _free(self, slots: Any) -> None:
        for st in self.states:
            st.free(slots)
        self.table.free(slots)

    def _late_rounds(self, late: _Late) -> list[Batch]:
        """Fold late pairs in arrival order, one per window per round, re-firing each time."""
        xp = self.xp
        rev = self.table.columns["__rev"]
        out = []
        remaining = xp.arange(late.slots.shape[0], dtype=np.int64)
        while remaining.shape[0]:
            s = late.slots[remaining]
            order = xp.argsort(s, kind="stable")
            head = xp.ones(s.shape[0], dtype=bool)
            head[1:] = s[order][1:] != s[order][:-1]
            take = xp.zeros(s.shape[0], dtype=bool)
            take[order[head]] = True
            now = remaining[take]
            slots = late.slots[now]
            only = xp.full(late.slots.shape[0], -1, dtype=np.int64)
            only[now] = slots
            self._update(only, late.rows, late.inputs, late.ctx)
            out.append(self._emit(slots, rev[slots].astype(np.int32)))
            rev[slots] += 1
            remaining = remaining[~take]
        return out

    def snapshot(self) -> dict[str, Any]:
        to_host = self.backend.to_host
        state: dict[str, Any] = {f"table.{k}": v for k, v in self.table.snapshot(to_host).items()}
        state.update(self._snapshot_aggs(self.table.live_slots()))
        state["pending_ends"] = np.array(sorted(self.pending_ends), dtype=np.int64)
        state["open_ends"] = np.array(sorted(self.open_ends), dtype=np.int64)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        table_state = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        # the separate kernels' hashes (a fused CPU loop's snapshot holds its own)
        keys = np.ascontiguousarray(table_state["keys"], dtype=np.uint64)
        table_state["hashes"] = hash_rows(keys, on_device=False)
        slots = self.table.restore(table_state, self.backend.to_device)
        self._restore_aggs(state, slots)
        self.pending_ends = {int(e) for e in state["pending_ends"]}
        self.open_ends = {int(e) for e in state["open_ends"]}

