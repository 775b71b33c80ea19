"""Keyed session windows: events closer than ``gap`` merge; a session ends at last + gap.

Per batch: key slots for the events (a hash table of keys), a sort by key keeping
arrival order, then :func:`gpustream.kernels.sessions.sessionize` assigns each event to
a session in arrival order, per key, deciding lateness on the merged window (as Flink
does): an event is late when it opens no session and its own window ``[t, t + gap)``
has already fired. Sessions the batch merged are folded into the session they went
into (aggregation states are mergeable and order-independent), then the batch's events
are folded into their final sessions. On each watermark, sessions whose end it reached
fire once and are freed; a later event starts a new session, as in Flink with no
allowed lateness (allowed lateness for sessions is not implemented yet: the planner
says so).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.kernels.sessions import DEAD, FREE, LIVE, sessionize
from gpustream.operators.window import KeyedAggBase, WindowSpec
from gpustream.state.aggstate import UpdateContext
from gpustream.state.dense import DenseTable
from gpustream.state.table import SlotTable

__all__ = ["SessionAggOp"]

_META = {"start": (np.int64, 0), "end": (np.int64, 0), "next": (np.int64, -1),
         "state": (np.int8, 0), "into": (np.int64, -1), "kslot": (np.int64, -1)}


class SessionAggOp(KeyedAggBase):
    """Session windows per key (see the module docstring).

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec
    >>> spec = WindowSpec("s", ("k",), "ts", 0, 0, 0, 10, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),),
    ...                   pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                              "window_end": pa.int64(), "n": pa.int64()}), False)
    >>> op = SessionAggOp(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 1, 2], "ts": [0, 5, 30, 3]}))
    >>> b.watermarks = np.full(4, np.iinfo(np.int64).min)
    >>> _ = op.process(b)
    >>> op.on_watermark(100)[0].to_arrow().to_pydict()
    {'k': [2, 1, 1], 'window_start': [3, 0, 30], 'window_end': [13, 15, 40], 'n': [1, 2, 1]}
    """

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        store = DenseTable(backend.xp, backend.is_device, _META)
        super().__init__(spec, backend, store)
        self.store = store
        self.keys = SlotTable(len(spec.keys) + 1, backend.xp, backend.is_device)
        self.keys.add_column("head", np.int64, -1)
        self.keys.on_rebuild = self._keys_moved
        self._inputs_for: Batch | None = None
        self._inputs_cache: dict[int, Any] = {}

    def process(self, batch: Batch) -> list[Batch]:
        n = batch.num_rows
        if n == 0:
            return []
        xp = self.xp
        ts_all, ts_valid, wm_all = self._event_times(batch)
        rows = (xp.arange(n, dtype=np.int64) if ts_valid is None
                else xp.nonzero(ts_valid)[0])
        m = int(rows.shape[0])
        late = xp.ones(n, dtype=bool)
        if m:
            ev_sess = self._assign(batch, rows, ts_all[rows], wm_all[rows])
            late[rows] = ev_sess < 0
            self._fold(batch, rows, ev_sess)
        self._late_rows(batch, late)
        return []

    def _assign(self, batch: Batch, rows: Any, ts: Any, wm: Any) -> Any:
        """Run the session kernel; returns each event's final session (-1: late)."""
        xp = self.xp
        m = int(rows.shape[0])
        if self.store.top + m > self.store.capacity:
            # compact before the keys of this batch are looked up: relinking frees the keys
            # that have no session, which a key new in this batch has not yet
            self.store.compact(m)
            self._rebuild_lists()
        key_words = self._key_words(batch, rows, None)
        kslot, new_key = self.keys.upsert(key_words, xp.arange(m, dtype=np.int64))
        self.keys.init(kslot[new_key.astype(bool)])
        order = xp.argsort(kslot, kind="stable")
        ks_sorted = kslot[order]
        bounds = xp.nonzero(ks_sorted[1:] != ks_sorted[:-1])[0] + 1
        seg_starts = xp.concatenate([xp.zeros(1, np.int64), bounds.astype(np.int64),
                                     xp.full(1, m, np.int64)])
        base = self.store.reserve(m)
        meta = self.store.meta
        ev_sess = sessionize(seg_starts, order.astype(np.int64), ts, wm, kslot, self.spec.gap,
                             base, self.keys.columns["head"], meta, self.on_device)
        # new sessions that survived: initialise their state from the event that opened them
        block = xp.arange(base, base + m, dtype=np.int64)
        new = block[meta["state"][block] == LIVE]
        creators = rows[order[new - base]]
        self._init_new(new, xp.ones(new.shape[0], dtype=bool), creators,
                       self._cached_inputs(batch))
        # sessions merged away this batch: fold their earlier state into their survivor
        dead = xp.nonzero((meta["state"] == DEAD) & (meta["into"] >= 0))[0]
        rep = self._survivor(meta["into"][dead])
        old = dead < base
        self._merge_rounds(rep[old], dead[old])
        # events opened or joined sessions that may have merged later in the batch
        ok = ev_sess >= 0
        ev_final = ev_sess.copy()
        ev_final[ok] = self._survivor(ev_sess[ok])
        meta["state"][dead] = FREE
        meta["into"][dead] = -1
        return ev_final

    def _keys_moved(self, old: Any, new: Any) -> None:
        """The key table was rebuilt: point the sessions at their keys' new slots."""
        xp = self.xp
        remap = xp.full(int(old.max()) + 1 if old.shape[0] else 1, -1, dtype=np.int64)
        remap[old] = new
        meta = self.store.meta
        live = self.store.live_slots()
        meta["kslot"][live] = remap[meta["kslot"][live]]

    def _survivor(self, ids: Any) -> Any:
        """Follow ``into`` links (merge chains within a batch) to the live session."""
        xp = self.xp
        meta = self.store.meta
        ids = ids.copy()
        while ids.shape[0]:
            step = meta["into"][ids]
            hop = (meta["state"][ids] == DEAD) & (step >= 0)
            if not bool(hop.any()):
                break
            ids = xp.where(hop, step, ids)
        return ids

    def _merge_rounds(self, dst: Any, src: Any) -> None:
        """Merge states ``src`` into ``dst`` pairwise, at most one source per target a round."""
        xp = self.xp
        while dst.shape[0]:
            order = xp.argsort(dst, kind="stable")
            first = xp.ones(dst.shape[0], dtype=bool)
            first[1:] = dst[order][1:] != dst[order][:-1]
            take = xp.zeros(dst.shape[0], dtype=bool)
            take[order[first]] = True
            for st in self.states:
                st.merge(dst[take], src[take])
            dst, src = dst[~take], src[~take]

    def _cached_inputs(self, batch: Batch) -> dict[int, Any]:
        if self._inputs_for is not batch:
            self._inputs_for = batch
            self._inputs_cache = self._inputs(batch)
        return self._inputs_cache

    def _fold(self, batch: Batch, rows: Any, ev_sess: Any) -> None:
        xp = self.xp
        n = batch.num_rows
        slots = xp.full(n, -1, dtype=np.int64)
        slots[rows] = ev_sess
        ctx = UpdateContext(batch[self.spec.event_time],
                            xp.arange(self.seq, self.seq + n, dtype=np.int64))
        self.seq += n
        self._update(slots, xp.arange(n, dtype=np.int64), self._cached_inputs(batch), ctx)
        self._inputs_for = None

    def on_watermark(self, watermark: int) -> list[Batch]:
        meta = self.store.meta
        live = self.store.live_slots()
        fire = live[meta["end"][live] <= watermark]
        if fire.shape[0] == 0:
            return []
        kslot = meta["kslot"][fire]
        out = self._emit_rows(self.keys.t_keys[:, kslot], meta["start"][fire],
                              meta["end"][fire], fire, None)
        for st in self.states:
            st.free(fire)
        meta["state"][fire] = FREE
        self._rebuild_lists()
        return [out]

    def _rebuild_lists(self) -> None:
        """Relink every key's live sessions and free the keys that have none left."""
        xp = self.xp
        meta = self.store.meta
        live = self.store.live_slots()
        ks = meta["kslot"][live]
        order = xp.argsort(ks, kind="stable")
        ids, ks = live[order], ks[order]
        same = ks[1:] == ks[:-1]
        nxt = xp.full(ids.shape[0], -1, dtype=np.int64)
        nxt[:-1] = xp.where(same, ids[1:], -1)
        meta["next"][ids] = nxt
        head = self.keys.columns["head"]
        head[:] = -1
        first = xp.ones(ids.shape[0], dtype=bool)
        first[1:] = ~same
        head[ks[first]] = ids[first]
        key_live = self.keys.live_slots()
        self.keys.free(key_live[head[key_live] < 0])

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        to_host = self.backend.to_host
        xp = self.xp
        keys = self.keys.snapshot(to_host)
        key_live = self.keys.live_slots()
        live = self.store.live_slots()
        meta = self.store.meta
        state: dict[str, Any] = {f"keys.{k}": v for k, v in keys.items() if not k.startswith("col.")}
        state["sessions.key"] = to_host(xp.searchsorted(key_live, meta["kslot"][live]))
        state["sessions.start"] = to_host(meta["start"][live])
        state["sessions.end"] = to_host(meta["end"][live])
        for name, col in self.store.columns.items():
            state[f"sessions.col.{name}"] = to_host(col[live])
        state.update(self._snapshot_aggs(live))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        to_device = self.backend.to_device
        xp = self.xp
        key_slots = self.keys.restore({"keys": state["keys.keys"], "hashes": state["keys.hashes"],
                                       "col.head": np.full(state["keys.hashes"].shape[0], -1)},
                                      to_device)
        n = int(state["sessions.start"].shape[0])
        store = DenseTable(xp, self.on_device, _META)
        for name, (dtype, fill) in self.store._fill.items():
            store.add_column(name, dtype, fill)
        self.store = self.table = store
        for st in self.states:
            st.table = store
        base = store.reserve(n)
        ids = xp.arange(base, base + n, dtype=np.int64)
        for name in self.store.columns:
            store.columns[name][ids] = to_device(state[f"sessions.col.{name}"])
        store.meta["start"][ids] = to_device(state["sessions.start"])
        store.meta["end"][ids] = to_device(state["sessions.end"])
        store.meta["kslot"][ids] = key_slots[to_device(state["sessions.key"])]
        store.meta["state"][ids] = LIVE
        self._rebuild_lists()
        self._restore_aggs(state, ids)
