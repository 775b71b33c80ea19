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

**The changelog** (with allowed lateness). A session can change after it fired: a late
event joins it, widens it, or bridges it with other sessions into one. Its output is
then a changelog, as Flink's ``RowKind``, in an ``op`` column:

- ``+I`` (insert): a session's first row;
- ``-U`` (update before) then ``+U`` (update after): the session fired again; ``-U``
  repeats the row it emitted last (window, aggregates and revision as they were), ``+U``
  is its new row (``window_start`` and ``window_end`` may have moved);
- ``-D`` (delete): a session merged into another one: its last row, retracted.

The rows of one firing come in one batch, retractions first. Applying the changelog in
order (add ``+I`` and ``+U`` rows, remove the row that a ``-U`` or ``-D`` repeats) leaves
each key's current sessions, which never overlap. Of sessions merged together, the one
fired most often lives on (``-U`` / ``+U``; its revision continues); the others are
deleted. To keep that promise, two more events are late (see
:mod:`gpustream.kernels.sessions`): one that would overlap a session whose state is
gone, and one older than ``w - gap - allowed_lateness`` as of the watermark ``w`` at
which the session it would join began.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.changelog import DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE, op_dictionary
from gpustream.kernels.sessions import DEAD, FREE, LIVE, sessionize
from gpustream.operators.window import I64_MIN, KeyedAggBase, WindowSpec
from gpustream.state.aggstate import UpdateContext
from gpustream.state.dense import DenseTable
from gpustream.state.table import SlotTable

__all__ = ["SessionAggOp"]

_META = {"start": (np.int64, 0), "end": (np.int64, 0), "next": (np.int64, -1),
         "state": (np.int8, 0), "into": (np.int64, -1), "kslot": (np.int64, -1),
         "dirty": (np.int8, 0), "rev": (np.int64, 0), "emit": (np.int8, 0),
         "inited": (np.int8, 0), "floor": (np.int64, I64_MIN)}



class _Emitted:
    """The last emitted aggregate values of a table's records, read as a state's
    ``finalize`` is (see :meth:`SessionAggOp._emitted_rows`)."""

    def __init__(self, table: Any, j: int) -> None:
        self.values = table.columns[f"__e.{j}"]
        self.valid = table.columns[f"__e.{j}.ok"]

    def finalize(self, slots: Any) -> tuple[Any, Any]:
        return self.values[slots], self.valid[slots]


class SessionAggOp(KeyedAggBase):
    """Session windows per key (see the module docstring).

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.expr import count
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

    With allowed lateness the output is a changelog: here the late event at 12 bridges
    the fired sessions [0, 15) and [20, 30) into [0, 30).

    >>> schema = pa.schema({"window_start": pa.int64(), "window_end": pa.int64(),
    ...                     "n": pa.int64(), "revision": pa.int32(), "op": pa.string()})
    >>> spec = WindowSpec("s", (), "ts", 0, 0, 0, 10, 50,
    ...                   (AggSpec("n", count(), None, pa.int64()),), schema, True)
    >>> op = SessionAggOp(spec, select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"ts": [0, 5, 20, 12]}))
    >>> b.watermarks = np.array([np.iinfo(np.int64).min, 0, 5, 40])
    >>> [r for out in op.process(b) for r in out.to_arrow().to_pylist()]  # doctest: +NORMALIZE_WHITESPACE
    [{'window_start': 0, 'window_end': 15, 'n': 2, 'revision': 0, 'op': '+I'},
     {'window_start': 20, 'window_end': 30, 'n': 1, 'revision': 0, 'op': '+I'},
     {'window_start': 20, 'window_end': 30, 'n': 1, 'revision': 0, 'op': '-D'},
     {'window_start': 0, 'window_end': 15, 'n': 2, 'revision': 0, 'op': '-U'},
     {'window_start': 0, 'window_end': 30, 'n': 4, 'revision': 1, 'op': '+U'}]
    """

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        store = DenseTable(backend, _META)
        super().__init__(spec, backend, store)
        self.store = store
        self.keys = SlotTable(len(spec.keys) + 1, backend.xp, backend)
        self.keys.add_column("head", np.int64, -1)
        #: the largest end of the key's sessions whose state is gone (kernel docstring)
        self.keys.add_column("gone_end", np.int64, I64_MIN)
        self.keys.on_rebuild = self._keys_moved
        self.watermark = I64_MIN  # the last one seen: keys are freed by it
        #: with allowed lateness the output is a changelog (module docstring)
        self.changelog = spec.revision
        self.retired = DenseTable(backend, {"state": (np.int8, 0), "into": (np.int64, -1)})
        if self.changelog:
            if "op" not in spec.schema.names:
                raise ValueError(f"window {spec.name!r}: a session window with allowed "
                                 "lateness emits a changelog; its output schema needs an "
                                 "'op' column (gpustream.plan.window_output_schema adds it)")
            self.op_dictionary = op_dictionary()
            for table in (store, self.retired):
                self._add_emitted_columns(table)

    def _add_emitted_columns(self, table: DenseTable) -> None:
        """Columns holding each record's last emitted row (window, revision, values)."""
        table.add_column("__emitted", np.int8, 0)
        table.add_column("__e_start", np.int64, 0)
        table.add_column("__e_end", np.int64, 0)
        table.add_column("__e_rev", np.int32, 0)
        for j, a in enumerate(self.spec.aggs):
            table.add_column(f"__e.{j}", physical_dtype(self.spec.schema.field(a.name).type), 0)
            table.add_column(f"__e.{j}.ok", np.bool_, False)

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
        # a late event with an event time drops its one membership (its session)
        self._late_rows(batch, late, late[rows].sum())
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
            self._retarget(self.store.compact(m))
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
                       self.backend, self.keys.columns["gone_end"])
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
        free the merged (keeping the last rows of those emitted, to retract when their
        survivor fires); returns the final session of each of the round's events."""
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
        if self.changelog and dead.shape[0]:
            self._retire(dead, rep)
        ok = ev_sess >= 0
        final = ev_sess.copy()
        final[ok] = self._survivor(ev_sess[ok])
        meta["state"][dead] = FREE
        meta["into"][dead] = -1
        meta["inited"][dead] = 0
        return final

    def _retire(self, dead: Any, rep: Any) -> None:
        """Sessions ``dead`` merged into ``rep``: keep the last rows of those emitted, to
        delete when ``rep`` fires next; rows kept for ``dead`` sessions go to ``rep``."""
        retired = self.retired
        r = retired.live_slots()
        if r.shape[0]:  # rows kept for sessions merged away now follow them
            retired.meta["into"][r] = self._survivor(retired.meta["into"][r])
        shown = self.store.columns["__emitted"][dead] == 1
        src, into = dead[shown], rep[shown]
        k = int(src.shape[0])
        if k == 0:
            return
        ids = self.xp.arange(retired.reserve(k), retired.top, dtype=np.int64)
        for name, col in retired.columns.items():
            col[ids] = self.store.columns[name][src]
        retired.meta["into"][ids] = into
        retired.meta["state"][ids] = LIVE

    def _retarget(self, mapping: Any) -> None:
        """The store was compacted (old id -> new id): follow it with the kept rows."""
        r = self.retired.live_slots()
        if r.shape[0]:
            self.retired.meta["into"][r] = mapping[self.retired.meta["into"][r]]

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
        """The rows of sessions ``ids`` firing now; with the changelog, preceded by the
        retraction of the rows they replace (module docstring)."""
        meta = self.store.meta
        rev = meta["rev"][ids]
        if not self.changelog:
            out = self._emit_rows(self.keys.t_keys[:, meta["kslot"][ids]], meta["start"][ids],
                                  meta["end"][ids], ids, rev.astype(np.int32))
            meta["rev"][ids] = rev + 1
            return out
        xp = self.xp
        cols = self.store.columns
        parts = []
        retired = self.retired
        r = retired.live_slots()
        if r.shape[0]:
            gone = r[xp.isin(retired.meta["into"][r], ids)]
            if gone.shape[0]:
                parts.append(self._emitted_rows(retired, gone, retired.meta["into"][gone],
                                                DELETE))
                retired.meta["state"][gone] = FREE
        shown = cols["__emitted"][ids] == 1
        if bool(shown.any()):
            parts.append(self._emitted_rows(self.store, ids[shown], ids[shown], UPDATE_BEFORE))
        op = xp.where(shown, UPDATE_AFTER, INSERT).astype(np.int8)
        cols["__emitted"][ids] = 1
        cols["__e_start"][ids] = meta["start"][ids]
        cols["__e_end"][ids] = meta["end"][ids]
        cols["__e_rev"][ids] = rev.astype(np.int32)
        for j, st in enumerate(self.states):
            values, valid = st.finalize(ids)
            cols[f"__e.{j}"][ids] = values
            cols[f"__e.{j}.ok"][ids] = True if valid is None else valid
        parts.append(self._emitted_rows(self.store, ids, ids, op))
        meta["rev"][ids] = rev + 1
        return Batch.concat(parts, xp)

    def _emitted_rows(self, table: DenseTable, records: Any, sessions: Any, op: Any) -> Batch:
        """Output rows of the last emitted rows of ``records`` of ``table`` (keys: those of
        ``sessions``), with ``op`` (a code, or one per row)."""
        xp = self.xp
        cols = table.columns
        n = int(records.shape[0])
        ops = xp.full(n, op, dtype=np.int8) if isinstance(op, int) else op
        states: Sequence[Any] = [_Emitted(table, j) for j in range(len(self.states))]
        return self._emit_rows(self.keys.t_keys[:, self.store.meta["kslot"][sessions]],
                               cols["__e_start"][records], cols["__e_end"][records], records,
                               cols["__e_rev"][records], states, ops, self.op_dictionary)

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
        self.watermark = max(self.watermark, watermark)
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
                if lateness:
                    self._note_gone(gone)
                for st in self.states:
                    st.free(gone)
                meta["state"][gone] = FREE
                self._rebuild_lists()
        self.forwarded = self.watermark  # the rows above go before it (windows downstream)
        return out

    def _note_gone(self, gone: Any) -> None:
        """Fold the ends of sessions ``gone`` into their keys' ``gone_end``."""
        xp = self.xp
        meta = self.store.meta
        ks, ends = meta["kslot"][gone], meta["end"][gone]
        order = xp.lexsort(xp.stack([ends, ks]))  # by key, then end
        ks, ends = ks[order], ends[order]
        last = xp.ones(ks.shape[0], dtype=bool)
        last[:-1] = ks[1:] != ks[:-1]
        ks, ends = ks[last], ends[last]  # each key's largest end
        gone_end = self.keys.columns["gone_end"]
        gone_end[ks] = xp.maximum(gone_end[ks], ends)

    def _rebuild_lists(self) -> None:
        """Relink every key's live sessions and free the keys that have none left (with
        allowed lateness, once the watermark is ``gap + lateness`` past their
        ``gone_end``: until then an event there is late)."""
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
        idle = head[key_live] < 0
        if self.spec.lateness:
            limit = self.watermark - self.spec.gap - self.spec.lateness
            if limit < I64_MIN:
                return
            idle &= self.keys.columns["gone_end"][key_live] <= limit
        self.keys.free(key_live[idle])

    # -- checkpoints ----------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state: sessions, their states, the key table
        and the retractions waiting for their session to fire."""
        return super().state_bytes() + self.keys.state_bytes() + self.retired.state_bytes()

    def snapshot(self) -> dict[str, Any]:
        to_host = self.backend.to_host
        xp = self.xp
        keys = self.keys.snapshot(to_host)
        key_live = self.keys.live_slots()
        live = self.store.live_slots()
        meta = self.store.meta
        state: dict[str, Any] = {f"keys.{k}": v for k, v in keys.items() if not k.startswith("col.")}
        state["keys.gone_end"] = keys["col.gone_end"]
        state["watermark"] = np.array([self.watermark], dtype=np.int64)
        state["sessions.key"] = to_host(xp.searchsorted(key_live, meta["kslot"][live]))
        state["sessions.start"] = to_host(meta["start"][live])
        state["sessions.end"] = to_host(meta["end"][live])
        state["sessions.dirty"] = to_host(meta["dirty"][live])
        state["sessions.rev"] = to_host(meta["rev"][live])
        state["sessions.floor"] = to_host(meta["floor"][live])
        for name, col in self.store.columns.items():
            state[f"sessions.col.{name}"] = to_host(col[live])
        r = self.retired.live_slots()
        state["retired.into"] = to_host(xp.searchsorted(live, self.retired.meta["into"][r]))
        for name, col in self.retired.columns.items():
            state[f"retired.col.{name}"] = to_host(col[r])
        state.update(self._snapshot_aggs(live))
        state.update(self.strings.snapshot())
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.strings.restore(state)
        to_device = self.backend.to_device
        xp = self.xp
        n_keys = state["keys.hashes"].shape[0]
        gone_end = state.get("keys.gone_end", np.full(n_keys, I64_MIN, dtype=np.int64))
        key_slots = self.keys.restore({"keys": state["keys.keys"], "hashes": state["keys.hashes"],
                                       "col.head": np.full(n_keys, -1), "col.gone_end": gone_end},
                                      to_device)
        self.watermark = int(state["watermark"][0]) if "watermark" in state else I64_MIN
        self.forwarded = self.watermark
        n = int(state["sessions.start"].shape[0])
        store = DenseTable(self.backend, _META)
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
        if "sessions.floor" in state:
            store.meta["floor"][ids] = to_device(state["sessions.floor"])
        retired = DenseTable(self.backend, {"state": (np.int8, 0), "into": (np.int64, -1)})
        for name, (dtype, fill) in self.retired._fill.items():
            retired.add_column(name, dtype, fill)
        self.retired = retired
        k = int(state["retired.into"].shape[0]) if "retired.into" in state else 0
        if k:
            r = xp.arange(retired.reserve(k), retired.top, dtype=np.int64)
            for name in retired.columns:
                retired.columns[name][r] = to_device(state[f"retired.col.{name}"])
            retired.meta["into"][r] = ids[to_device(state["retired.into"])]
            retired.meta["state"][r] = LIVE
        self._rebuild_lists()
        self._restore_aggs(state, ids)
