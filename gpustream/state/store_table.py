"""A window's state as a (key, window) table, folded by the separate kernels.

Per batch (DESIGN.md section 3, decided per event, so batching never changes a result):

1. every (event, window) pair gets a status from the event's own watermark (on time,
   late within the allowed lateness, dropped) in one kernel;
2. events all of whose windows are dropped are late (the operator sends them to
   ``.late``); every dropped pair, of those events and of events still on time for
   another window, is counted;
3. the pairs that update state find or create their (key, window) slot in the state
   table; new slots are initialised; on-time pairs are folded into the aggregates.

On each watermark the store fires the windows whose end it reached (revision 0), then
folds late pairs one per window at a time in arrival order, re-firing the window after
each (revision 1, 2, ...), and frees windows once the watermark passes end + allowed
lateness. Memory is bounded by the open windows. This store runs on every backend; it is
the one for allowed lateness and for the aggregations the fused loops do not fold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpustream.backend import select_backend
from gpustream.kernels.hashing import hash_rows
from gpustream.kernels.windows import DROPPED, LATE, ON_TIME, assign_windows
from gpustream.state.aggstate import AggState, UpdateContext, make_state
from gpustream.state.keyed import (
    finalized,
    init_new,
    key_words,
    restore_aggs,
    snapshot_aggs,
    update_states,
)
from gpustream.state.table import SlotTable
from gpustream.state.window_store import Events, Fired, Folded, WindowStore, ends_of

if TYPE_CHECKING:
    from gpustream.backend import Backend
    from gpustream.operators.window import WindowSpec

__all__ = ["TableStore", "add_bookkeeping"]

I64_MAX = np.iinfo(np.int64).max


def add_bookkeeping(table: SlotTable) -> None:
    """The columns a window keeps per (key, window) slot besides its states'.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> t = SlotTable(3, np, select_backend("cpu"))
    >>> add_bookkeeping(t)
    >>> sorted(t.columns)
    ['__ontime', '__rev', '__wend']
    """
    table.add_column("__wend", np.int64, I64_MAX)
    table.add_column("__rev", np.int32, 0)  # firings so far
    table.add_column("__ontime", np.int8, 0)  # 1 once an on-time event updated it


class _Late:
    """Late pairs of one batch, kept until the next watermark."""

    def __init__(self, slots: Any, rows: Any, inputs: dict[int, Any],
                 ctx: UpdateContext) -> None:
        self.slots, self.rows, self.inputs, self.ctx = slots, rows, inputs, ctx


class TableStore(WindowStore):
    """Tumbling and sliding windows' state in a (key, window) table (module docstring).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.batch import Batch
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> store = TableStore(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 12, 5]}))
    >>> wm = np.array([np.iinfo(np.int64).min, 3, 12])
    >>> folded = store.fold(Events(b, b["ts"], None, wm, {0: None}, 0))
    >>> folded.late.tolist(), int(folded.dropped)   # k=2 at ts 5 came after wm 12
    ([False, False, True], 1)
    >>> f = store.fire(12)[0]
    >>> f.keys[0].tolist(), f.starts.tolist(), f.values[0][0].tolist()
    ([1], [0], [1])
    """

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        self.table = SlotTable(len(spec.keys) + 2, backend.xp, backend)
        add_bookkeeping(self.table)
        self.states: list[AggState] = [
            make_state(a.name, a.agg, a.in_type, a.out_type, self.table) for a in spec.aggs
        ]
        self.nwin = spec.size // spec.slide
        self.pending_ends: set[int] = set()  # ends of windows with state not fired yet
        self.open_ends: set[int] = set()  # ends of windows holding state
        self.late_pending: list[_Late] = []

    @property
    def state_rows(self) -> int:
        return int(self.table.live_count)

    def state_bytes(self) -> int:
        return self.table.state_bytes() + sum(st.state_bytes() for st in self.states)

    def fold(self, ev: Events) -> Folded:
        batch = ev.batch
        n = batch.num_rows
        xp = self.xp
        spec = self.spec
        starts, status = assign_windows(ev.ts, ev.ts_valid, ev.wm, spec.size, spec.slide,
                                        spec.offset, spec.lateness, self.backend)
        late = xp.all(status.reshape(n, self.nwin) >= DROPPED, axis=1)
        folded = Folded(late, (status == DROPPED).sum())
        rows = xp.arange(n * self.nwin, dtype=np.int64) // self.nwin
        todo = xp.nonzero(status <= LATE)[0]
        if todo.shape[0] == 0:
            return folded
        keys = key_words(spec.keys, batch, rows, starts, xp)
        slots, is_new = self.table.upsert(keys, todo)
        wend = starts + spec.size
        init_new(self.states, slots, is_new, rows, ev.inputs, xp)
        created = is_new.astype(bool)
        self.table.columns["__wend"][slots[created]] = wend[created]
        new_ends = self.backend.to_host(xp.unique(wend[created]))
        self.pending_ends.update(int(e) for e in new_ends)
        self.open_ends.update(int(e) for e in new_ends)
        ctx = UpdateContext(ev.ts, xp.arange(ev.seq, ev.seq + n, dtype=np.int64))
        on_time = xp.where(status == ON_TIME, slots, -1)
        self.table.columns["__ontime"][on_time[on_time >= 0]] = 1
        update_states(self.states, on_time, rows, ev.inputs, ctx, xp)
        late_idx = xp.nonzero(status == LATE)[0]
        if late_idx.shape[0]:
            self.late_pending.append(_Late(slots[late_idx], rows[late_idx], ev.inputs, ctx))
        return folded

    def _fired(self, slots: Any, revision: Any | None) -> Fired:
        """The output of state ``slots``."""
        k = len(self.spec.keys)
        words = self.table.arrays[2][slots].T  # gather whole slot rows of key words
        return Fired(words[: k + 1], words[k + 1].view(np.int64),
                     self.table.columns["__wend"][slots], finalized(self.states, slots),
                     revision)

    def fire(self, watermark: int) -> list[Fired]:
        out: list[Fired] = []
        wend = self.table.columns["__wend"]
        rev = self.table.columns["__rev"]
        due = sorted(e for e in self.pending_ends if e <= watermark)
        if due:
            live = self.table.live_slots()
            ontime = self.table.columns["__ontime"]
            fire = live[(wend[live] <= watermark) & (rev[live] == 0) & (ontime[live] == 1)]
            if fire.shape[0]:
                out.append(self._fired(fire, None))
                rev[fire] = 1
            self.pending_ends.difference_update(due)
        for late in self.late_pending:
            out.extend(self._late_rounds(late))
        self.late_pending = []
        lateness = self.spec.lateness
        limit = watermark - lateness if watermark > -I64_MAX + lateness else None
        gone = sorted(e for e in self.open_ends if limit is not None and e <= limit)
        if gone:
            live = self.table.live_slots()
            self._free(live[wend[live] <= limit])
            self.open_ends.difference_update(gone)
        return out

    def _free(self, slots: Any) -> None:
        for st in self.states:
            st.free(slots)
        self.table.free(slots)

    def _late_rounds(self, late: _Late) -> list[Fired]:
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
            update_states(self.states, only, late.rows, late.inputs, late.ctx, xp)
            out.append(self._fired(slots, rev[slots].astype(np.int32)))
            rev[slots] += 1
            remaining = remaining[~take]
        return out

    def snapshot(self) -> dict[str, Any]:
        to_host = self.backend.to_host
        state: dict[str, Any] = {f"table.{k}": v for k, v in self.table.snapshot(to_host).items()}
        state.update(snapshot_aggs(self.states, self.table.live_slots(), to_host))
        state["pending_ends"] = np.array(sorted(self.pending_ends), dtype=np.int64)
        state["open_ends"] = np.array(sorted(self.open_ends), dtype=np.int64)
        return state

    def restore(self, state: dict[str, Any]) -> bool:
        table_state = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        # this table's hashes (a fused CPU loop's snapshot holds its own)
        keys = np.ascontiguousarray(table_state["keys"], dtype=np.uint64)
        table_state["hashes"] = hash_rows(keys, select_backend("cpu"))
        slots = self.table.restore(table_state, self.backend.to_device)
        restore_aggs(self.states, state, slots, self.backend.to_device)
        self.pending_ends, self.open_ends = ends_of(state)
        return True
