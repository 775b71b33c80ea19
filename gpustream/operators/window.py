"""Keyed event-time windowed aggregation: the tumbling/sliding window operator and what
it shares with the session operator.

Whether an event belongs to a window, is late for it or is dropped is decided per event
from its own watermark (DESIGN.md section 3), so batching never changes a result.
:class:`WindowAggOp` is the one tumbling/sliding operator on every backend: it owns the
event times and watermarks, the late events (``.late``, ``late_events``,
``dropped_memberships``), the output rows and the snapshot format, over a state store
(:mod:`gpustream.state.window_store`: the CPU's fused loop, the GPU's pane kernel, or the
(key, window) table that also runs allowed lateness, with revisions). Memory is bounded
by the open windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.expr import Agg
from gpustream.ingest.dictionary import StringDictionary
from gpustream.operators.base import Operator
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
from gpustream.state.store_table import TableStore
from gpustream.state.window_store import Events, Fired, WindowStore, make_store

__all__ = ["AggOpBase", "AggSpec", "KeyedAggBase", "WindowAggOp", "WindowSpec"]

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
    #: added to the event-time column's values: -1 where that column is an upstream
    #: window's ``window_end`` (the event time of a window's row is its end - 1)
    time_shift: int = 0


class AggOpBase(Operator):
    """What keyed aggregation operators (windows, sessions) share: their spec, event
    times, late events and the output rows."""

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
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
        #: the last watermark this operator passed on (after firing what it reached): the
        #: per-row watermark of the rows it emits, as a source's rows carry the watermark
        #: as of their arrival, so that a window downstream sees them on time
        self.forwarded = I64_MIN
        #: aggregates of computed strings: their codes in dictionaries this step owns
        self.strings = ComputedStrings(spec.aggs, backend)

    def owned_dictionaries(self) -> dict[str, StringDictionary]:
        """The dictionaries of string aggregates of computed expressions."""
        return self.strings.dictionaries

    # -- inputs ---------------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> dict[int, Any]:
        """Each aggregation's input column (values, validity), evaluated once per batch
        (:func:`~gpustream.expr.evaluate.agg_input`: a filter's rows not kept are invalid)."""
        return self.strings.inputs(batch)

    def _event_times(self, batch: Batch) -> tuple[Any, Any | None, Any]:
        """Event times, their validity, and per-event watermarks; counts rows without time."""
        self._remember_dictionaries(batch)
        ts, ts_valid, wm = self._times(batch)
        if ts_valid is not None:
            self.no_time_events += int((~ts_valid).sum())
        return ts, ts_valid, wm

    def _times(self, batch: Batch) -> tuple[Any, Any | None, Any]:
        """:meth:`_event_times` without counting the rows without time."""
        ts_valid = batch.validity(self.spec.event_time)
        wm = batch.watermarks
        assert wm is not None, "windowed operators need per-event watermarks from the source"
        ts = batch[self.spec.event_time]
        if self.spec.time_shift:  # an upstream window's ends: its rows' times are end - 1
            ts = ts + self.spec.time_shift
        return ts, ts_valid, wm

    def _remember_dictionaries(self, batch: Batch) -> None:
        for name, d in batch.dictionaries.items():
            self.dictionaries[name] = d

    def restore_dictionaries(self, dictionaries: Mapping[str, StringDictionary]) -> None:
        """The input's dictionaries after a restore: they decode the restored keys."""
        self.dictionaries.update(dictionaries)

    def _late_rows(self, batch: Batch, late: Any, dropped: Any = 0,
                   n_late: int | None = None) -> None:
        """Send the ``late`` events of ``batch`` to ``.late`` and count them, with the
        ``dropped`` memberships of the batch (an int, or a device scalar: both counts then
        come back to the host in one read; ``n_late``: their count, where already read)."""
        if n_late is not None:
            n_dropped = int(dropped)
        elif isinstance(dropped, int):
            n_late, n_dropped = int(late.sum()), dropped
        else:
            both = self.backend.to_host(self.xp.stack([late.sum(), dropped]))
            n_late, n_dropped = int(both[0]), int(both[1])
        self.dropped_memberships += n_dropped
        if n_late:
            self.late_out.append(batch.filter(late))
            self.late_events += n_late

    # -- output ---------------------------------------------------------------------------
    def _emit_values(self, key_words: Any, starts: Any, ends: Any,
                     values: Sequence[tuple[Any, Any | None]], revision: Any | None,
                     op: Any | None = None, op_dictionary: StringDictionary | None = None,
                     ordered: bool = False) -> Batch:
        """Rows ordered by (window_end, window_start, keys): keys, window_start, window_end,
        the aggregates' ``values`` (values, validity) in order, ``revision`` with allowed
        lateness, and ``op`` where the schema has it (codes into ``op_dictionary``).

        ``key_words`` holds the key columns' words and then their null bits; ``ordered``:
        the rows are in that order already.
        """
        xp = self.xp
        spec = self.spec
        k = len(spec.keys)
        if not ordered:
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
            key_words, starts, ends = key_words[:, order], starts[order], ends[order]
            values = [(v[order], None if ok is None else ok[order]) for v, ok in values]
            if revision is not None:
                revision = revision[order]
            if op is not None:
                op = op[order]
        columns, validity = key_columns(spec.keys, spec.schema, key_words, xp)
        columns["window_start"] = starts
        columns["window_end"] = ends
        for a, (v, ok) in zip(spec.aggs, values, strict=True):
            columns[a.name] = v
            validity[a.name] = ok
        if spec.revision:
            columns["revision"] = (revision if revision is not None
                                   else xp.zeros(starts.shape[0], dtype=np.int32))
        dictionaries: dict[str, StringDictionary] = {}
        if op is not None:
            assert op_dictionary is not None
            columns["op"] = op.astype(np.int32)
            dictionaries["op"] = op_dictionary
        dictionaries.update(output_dictionaries(spec.keys, spec.aggs, self.dictionaries,
                                                self.strings.dictionaries))
        watermarks = xp.full(starts.shape[0], self.forwarded, dtype=np.int64)
        return Batch(columns, spec.schema, validity, dictionaries, watermarks)

    def side_outputs(self) -> dict[str, list[Batch]]:
        out, self.late_out = self.late_out, []
        return {"late": out} if out else {}


class KeyedAggBase(AggOpBase):
    """An aggregation operator over one keyed table of slots and its states (sessions)."""

    def __init__(self, spec: WindowSpec, backend: Backend, table: Any) -> None:
        super().__init__(spec, backend)
        self.table: Any = table
        self.states: list[AggState] = [
            make_state(a.name, a.agg, a.in_type, a.out_type, table) for a in spec.aggs
        ]

    @property
    def state_rows(self) -> int:
        """Records of the key table holding state (the open-windows gauge)."""
        return int(self.table.live_count)

    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state: the key table and the states' storage."""
        return self.table.state_bytes() + sum(st.state_bytes() for st in self.states)

    def _key_words(self, batch: Batch, rows: Any, extra: Any | None) -> Any:
        """``uint64[K, len(rows)]``: key columns, their null bits, then ``extra`` if given."""
        return key_words(self.spec.keys, batch, rows, extra, self.xp)

    def _init_new(self, slots: Any, is_new: Any, rows: Any, inputs: dict[int, Any]) -> None:
        init_new(self.states, slots, is_new, rows, inputs, self.xp)

    def _update(self, slots: Any, rows: Any, inputs: dict[int, Any], ctx: UpdateContext) -> None:
        update_states(self.states, slots, rows, inputs, ctx, self.xp)

    def _emit_rows(self, key_words: Any, starts: Any, ends: Any, slots: Any,
                   revision: Any | None, states: Sequence[Any] | None = None,
                   op: Any | None = None,
                   op_dictionary: StringDictionary | None = None) -> Batch:
        """:meth:`_emit_values` of state ``slots``, read through ``states``' ``finalize``
        (default: the operator's)."""
        values = finalized(self.states if states is None else states, slots)
        return self._emit_values(key_words, starts, ends, values, revision, op, op_dictionary)

    # -- checkpoints ----------------------------------------------------------------------
    def _snapshot_aggs(self, live: Any) -> dict[str, Any]:
        state: dict[str, Any] = {"seq": np.array([self.seq], dtype=np.int64)}
        state.update(snapshot_aggs(self.states, live, self.backend.to_host))
        return state

    def _restore_aggs(self, state: dict[str, Any], slots: Any) -> None:
        restore_aggs(self.states, state, slots, self.backend.to_device)
        self.seq = int(state["seq"][0])


class WindowAggOp(AggOpBase):
    """Tumbling (``slide == size``) and sliding windows, over a state store.

    The operator reads each batch's event times, watermarks and aggregation inputs, hands
    them to its :class:`~gpustream.state.window_store.WindowStore` (chosen by
    :func:`~gpustream.state.window_store.make_store`: the CPU's fused loop, the GPU's
    pane kernel, or the (key, window) table), sends late events to ``.late`` and counts
    them and the dropped memberships, builds the output rows of the windows the store
    fires, and owns the snapshot format. Where a pane store would pass its memory bound,
    the operator moves its state to a table store (through a snapshot, as a restart
    would) and folds the rest of the batch there.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),),
    ...                   pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                              "window_end": pa.int64(), "n": pa.int64()}), False)
    >>> op = WindowAggOp(spec, select_backend("cpu"))
    >>> type(op.store).__name__
    'CpuPaneStore'
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 12, 5]}))
    >>> b.watermarks = np.array([np.iinfo(np.int64).min, 3, 12])
    >>> op.process(b)
    []
    >>> op.on_watermark(12)[0].to_arrow().to_pydict()
    {'k': [1], 'window_start': [0], 'window_end': [10], 'n': [1]}
    >>> [r.num_rows for r in op.side_outputs()["late"]]   # k=2 at ts 5 came after wm 12
    [1]
    >>> op.late_events, op.dropped_memberships
    (1, 1)
    """

    def __init__(self, spec: WindowSpec, backend: Backend,
                 store: WindowStore | None = None) -> None:
        super().__init__(spec, backend)
        self.store = make_store(spec, backend) if store is None else store

    @property
    def state_rows(self) -> int:
        """Rows holding state (the open-windows gauge)."""
        return self.store.state_rows

    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state."""
        return self.store.state_bytes()

    def process(self, batch: Batch) -> list[Batch]:
        n = batch.num_rows
        if n == 0:
            return []
        ts, ts_valid, wm = self._event_times(batch)
        folded = self.store.fold(Events(batch, ts, ts_valid, wm, self._inputs(batch),
                                        self.seq))
        self.seq += n
        self._late_rows(batch, folded.late, folded.dropped, folded.n_late)
        out = [self._emit(f) for f in folded.fired]
        if folded.rest is not None:
            out += self._to_table(batch, folded.rest)
        return [b for b in out if b.num_rows]

    def _to_table(self, batch: Batch, rest: Any) -> list[Batch]:
        """Move the state to a table store (through a snapshot, as a restart would) and
        fold the events ``rest`` of ``batch`` there: the pane store would pass its memory
        bound (far more windows or panes open at once, or keys, than pages hold)."""
        self._move_to_table(self.store.snapshot())
        mask = self.xp.zeros(batch.num_rows, dtype=np.bool_)
        mask[rest] = True
        part = batch.filter(mask)
        ts, ts_valid, wm = self._times(part)  # its rows without time were counted
        folded = self.store.fold(Events(part, ts, ts_valid, wm, self._inputs(part), self.seq))
        self._late_rows(part, folded.late, folded.dropped, folded.n_late)
        return [self._emit(f) for f in folded.fired]

    def _move_to_table(self, state: dict[str, Any]) -> None:
        table = TableStore(self.spec, self.backend)
        table.restore(state)
        self.store.close()
        self.store = table

    def on_watermark(self, watermark: int) -> list[Batch]:
        out = [b for b in (self._emit(f) for f in self.store.fire(watermark)) if b.num_rows]
        self.forwarded = max(self.forwarded, watermark)  # the rows above go before it
        return out

    def _emit(self, fired: Fired) -> Batch:
        return self._emit_values(fired.keys, fired.starts, fired.ends, fired.values,
                                 fired.revision, ordered=fired.ordered)

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The store's state in the table format (every store restores it), ``seq`` and
        the watermark passed on last."""
        state = self.store.snapshot()
        state["seq"] = np.array([self.seq], dtype=np.int64)
        state["forwarded"] = np.array([self.forwarded], dtype=np.int64)
        state.update(self.strings.snapshot())
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.strings.restore(state)
        if not self.store.restore(state):
            self._move_to_table(state)
        self.seq = int(state["seq"][0])
        if "forwarded" in state:  # (checkpoints before windows over windows lack it)
            self.forwarded = int(state["forwarded"][0])
