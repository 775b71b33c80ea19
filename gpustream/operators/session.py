"""Keyed session windows: events closer than ``gap`` merge; a session ends at last + gap.

Per batch: key slots for the events (a hash table of keys), a sort by key keeping
arrival order, then :func:`gpustream.kernels.sessions.sessionize` assigns each event to
a session in arrival order, per key, deciding lateness on the merged window (as Flink
does): an event is late when it joins no session whose state is held and its own
window ``[t, t + gap)`` is past the watermark by the allowed lateness. Sessions the
batch merged are folded into the session they went into (aggregation states are
mergeable and order-independent), then the events into their final sessions.

A session fires when the watermark reaches its end, with its revision (firings so
far). With allowed lateness its state is kept until the watermark passes end +
lateness: a late event that joins it re-fires it at once, and an on-time event can
still extend it (it then fires again at its new end). So that each firing holds exactly
the events before it, the kernel then works in rounds: each key's walk stops where one
of its sessions must fire before an event, or right after a late event; the round is
folded and emitted, and the next round resumes there. Without lateness a fired session
is closed and one round suffices.
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
         "state": (np.int8, 0), "into": (np.int64, -1), "kslot": (np.int64, -1),
         "dirty": (np.int8, 0), "rev": (np.int64, 0), "emit": (np.int8, 0),
         "inited": (np.int8, 0)}


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

    def process(self, batch: Batch) -> list[Batch]:
        n = batch.num_rows
        if n == 0:
            return []
        xp = self.xp
        ts_all, ts_valid, wm_all = self._event_times(batch)
        rows = (xp.arange(n, dtype=np.int64) if ts_valid is None
                else xp.nonzero(ts_valid)[0])
        late = xp.ones(n, dtype=bool)
        out: list[Batch] = []
        if rows.shape[0]:
            out = self._assign(batch, rows, ts_all[rows], wm_all[rows], late)
        self._late_rows(batch, late)
        return out

    def _assign(self, batch: Batch, rows: Any, ts: Any, wm: Any, late: Any) -> list[Batch]:
        """Run the session kernel in rounds, folding and emitting after each."""
        xp = self.xp
        spec = self.spec
        m = int(rows.shape[0])
        n = batch.num_rows
        if self.store.top + m > self.store.capacity:
            # compact before the keys of this batch are looked up: relinking frees the keys
            # that have no session, which a key new in this batch has not yet
            self.store.compact(m)
            self._rebuild_lists()
        key_words = self._key_words(batch, rows, None)
        kslot, _ = self.keys.upsert(key_words, xp.arange(m, dtype=np.int64))
        order = xp.argsort(kslot, kind="stable").astype(np.int64)
        ks_sorted = kslot[order]
        bounds = xp.nonzero(ks_sorted[1:] != ks_sorted[:-1])[0] + 1
        seg_starts = xp.concatenate([xp.zeros(1, np.int64), bounds.astype(np.int64),
                                     xp.full(1, m, np.int64)])
        seg_pos, seg_end = seg_starts[:-1].copy(), seg_starts[1:].copy()
        base = self.store.reserve(m)
        ev_sess = xp.full(m, -1, dtype=np.int64)
        ev_round = xp.full(m, -1, dtype=np.int64)
        inputs = self._inputs(batch)
        ctx = UpdateContext(batch[spec.event_time],
                            xp.arange(self.seq, self.seq + n, dtype=np.int64))
        self.seq += n
        split = spec.lateness > 0
        out = []
        rnd = 0
        while True:
            sessionize(seg_pos, seg_end, order, ts, wm, kslot, spec.gap, spec.lateness, split,
                       rnd, base, self.keys.columns["head"], self.store.meta, ev_sess, ev_round,
                       self.on_device)
            this = xp.nonzero(ev_round == rnd)[0]
            final = self._settle(ev_sess[this], base, rows, order, inputs)
            placed = final >= 0
            late[rows[this]] = ~placed
            slots = xp.full(n, -1, dtype=np.int64)
            slots[rows[this[placed]]] = final[placed]
            self._update(slots, xp.arange(n, dtype=np.int64), inputs, ctx)
            emitted = self._emit_flagged()
            if emitted is not None:
                out.append(emitted)
            if not split or not bool((seg_pos < seg_end).any()):
                break
            rnd += 1
        return out

    def _settle(self, ev_sess: Any, base: int, rows: Any, order: Any,
                inputs: dict[int, Any]) -> Any:
        """After a round: initialise new sessions, fold merged ones into their survivors,
        free the merged; returns the final session of each of the round's events."""
        xp = self.xp
        meta = self.store.meta
        live = self.store.live_slots()
        new = live[(meta["inited"][live] == 0) & (live >= base)]
        creators = rows[order[new - base]]
        self._init_new(new, xp.ones(new.shape[0], dtype=bool), creators, inputs)
        meta["inited"][new] = 1
        dead = xp.nonzero((meta["state"] == DEAD) & (meta["into"] >= 0))[0]
        rep = self._survivor(meta["into"][dead])
        had_state = meta["inited"][dead] == 1
        self._merge_rounds(rep[had_state], dead[had_state])
        ok = ev_sess >= 0
        final = ev_sess.copy()
        final[ok] = self._survivor(ev_sess[ok])
        meta["state"][dead] = FREE
        meta["into"][dead] = -1
        meta["inited"][dead] = 0
        return final

    def _emit_flagged(self) -> Batch | None:
        """Emit the sessions the kernel flagged to fire now, with their revisions."""
        meta = self.store.meta
        live = self.store.live_slots()
        ids = live[meta["emit"][live] == 1]
        if ids.shape[0] == 0:
            return None
        out = self._emit_sessions(ids)
        meta["emit"][ids] = 0
        return out

    def _emit_sessions(self, ids: Any) -> Batch:
        meta = self.store.meta
        rev = meta["rev"][ids]
        out = self._emit_rows(self.keys.t_keys[:, meta["kslot"][ids]], meta["start"][ids],
                              meta["end"][ids], ids, rev.astype(np.int32))
        meta["rev"][ids] = rev + 1
        return out

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

    def on_watermark(self, watermark: int) -> list[Batch]:
        meta = self.store.meta
        live = self.store.live_slots()
        due = live[(meta["end"][live] <= watermark) & (meta["dirty"][live] == 1)]
        out = []
        if due.shape[0]:
            out.append(self._emit_sessions(due))
            meta["dirty"][due] = 0
        lateness = self.spec.lateness
        if watermark - lateness >= -(2**63):
            gone = live[meta["end"][live] <= watermark - lateness]
            if gone.shape[0]:
                for st in self.states:
                    st.free(gone)
                meta["state"][gone] = FREE
                self._rebuild_lists()
        return out

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
        state["sessions.dirty"] = to_host(meta["dirty"][live])
        state["sessions.rev"] = to_host(meta["rev"][live])
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
        store.meta["inited"][ids] = 1
        store.meta["dirty"][ids] = to_device(state["sessions.dirty"])
        store.meta["rev"][ids] = to_device(state["sessions.rev"])
        self._rebuild_lists()
        self._restore_aggs(state, ids)
