"""Tumbling and sliding windows on the GPU: one fused kernel per batch over panes.

:class:`PaneWindowAggOp` is :class:`~gpustream.operators.window.WindowAggOp` with its
state in :class:`~gpustream.state.device_panes.DevicePanes` (a key -> id map and one page
of rows per open pane, a pane being ``slide`` long) and its per-batch work done by one
launch of :func:`~gpustream.kernels.panes.fold_panes`: lateness, the pane's page, the
key's id and every aggregate, for every event, instead of the separate kernels'
assignment, upsert, initialisation and one kernel per aggregate (and one row per window
of a sliding window's event). It runs windows without allowed lateness whose
aggregations the kernel folds (count, sum, min, max, mean, var, std) on the ``cuda`` and
``cudasim`` backends; :func:`pane_fusable` says which.

Windows fire on the watermark after a batch: a tumbling window reads its pane's rows, a
sliding window combines its panes' rows per key. An event of a sliding window some of
whose windows had fired by its own watermark (DESIGN.md section 3) must not reach them
through the pane they share with its later windows: the kernel defers it, the windows
fire here (mid-batch), then it is folded.

Snapshots are the window operators' table format, a row per (key, window) not fired
(``mean``/``var``/``std`` shifted by a pivot per key), which the CPU restores; sliding windows add
their panes' rows, which this operator restores. A CPU checkpoint of tumbling windows
restores here; one of sliding windows cannot (windows do not split into panes) and says
so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.kernels import panes as K
from gpustream.kernels.fused_window import FUSED_KINDS
from gpustream.kernels.hashing import hash_rows
from gpustream.operators.window import I64_MAX, WindowAggOp, WindowSpec
from gpustream.state.aggstate import make_state
from gpustream.state.device_panes import DevicePanes

__all__ = ["PaneWindowAggOp", "pane_fusable"]

_MOMENTS = ("mean", "var", "std")


def pane_fusable(spec: WindowSpec, backend: Backend) -> bool:
    """Whether the fused pane kernel runs this window: a device backend, a tumbling
    window without allowed lateness, and only aggregations the kernel folds.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> pane_fusable(spec, select_backend("cpu"))   # the CPU has its own fused loop
    False
    """
    return (backend.is_device and spec.lateness == 0 and not spec.revision
            and all(a.agg.kind in FUSED_KINDS for a in spec.aggs))


class _Scratch:
    """Columns of combined rows, read by a second set of aggregation states."""

    on_device = True

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.columns: dict[str, Any] = {}

    def add_column(self, name: str, dtype: Any, fill: Any) -> None:
        pass  # filled by the firing that reads them

    def live_slots(self) -> Any:
        raise NotImplementedError

    def held_slots(self) -> Any:
        raise NotImplementedError

    def state_bytes(self) -> int:
        return 0


class PaneWindowAggOp(WindowAggOp):
    """Tumbling windows through the fused pane kernel (see the module docstring).

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),),
    ...                   pa.schema({"k": pa.int64(), "window_start": pa.int64(),
    ...                              "window_end": pa.int64(), "n": pa.int64()}), False)
    >>> op = PaneWindowAggOp(spec, select_backend("cpu"))  # arrays only: nothing launched
    >>> op.store.capacity, op.store.pages, op.prog.tolist()   # COUNT into int column 0
    (1024, 4, [[0, 0, 0, 0, 0, 0, 0]])
    """

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        if spec.lateness or spec.revision:
            raise ValueError("the pane kernel runs windows without allowed lateness")
        store = DevicePanes(len(spec.keys), spec.size, spec.offset, backend.xp, spec.slide)
        super().__init__(spec, backend, table=store)
        self.store = store
        #: the separate kernels' operator, once the state moved there (see
        #: :meth:`_to_separate_kernels`), else None
        self.fallback: WindowAggOp | None = None
        self._program()
        store.allocate()
        #: the states again, over the combined rows of sliding windows' panes
        self.scratch = _Scratch(backend.xp)
        self.scratch_states = [make_state(a.name, a.agg, a.in_type, a.out_type, self.scratch)
                               for a in spec.aggs]
        self._no_bool = backend.xp.empty(0, dtype=np.bool_)

    def _program(self) -> None:
        """The kernel's aggregation program: per state, its kind, input and columns."""
        ints = {name: k for k, name in enumerate(self.store.int_names)}
        floats = {name: k for k, name in enumerate(self.store.float_names)}
        prog = []
        #: per input slot: the state it feeds, and the matrix its values go to ("i": int,
        #: "f": float, "": none, only its validity)
        self.slots: list[tuple[int, str]] = []
        for j, st in enumerate(self.states):
            kind = st.agg.kind
            p = st.prefix
            if kind == "count":
                prog.append((K.COUNT, 0, ints[p + "n"], 0, 0, 0, 0))
                continue
            src = len(self.slots)
            if kind == "count_valid":
                self.slots.append((j, ""))
                prog.append((K.COUNT_VALID, src, ints[p + "n"], 0, 0, 0, 0))
            elif kind in _MOMENTS:
                self.slots.append((j, "f"))
                prog.append((K.MOMENTS, src, floats[p + "s1"], ints[p + "nn"], floats[p + "s2"],
                             len(self.store.pivot_columns), floats[p + "pivot"]))
                self.store.pivot_columns.append(p + "pivot")
            else:
                is_int = np.dtype(st.dtype).kind != "f"  # type: ignore[attr-defined]
                self.slots.append((j, "i" if is_int else "f"))
                code = {("sum", True): K.SUM_I, ("sum", False): K.SUM_F,
                        ("min", True): K.MIN_I, ("min", False): K.MIN_F,
                        ("max", True): K.MAX_I, ("max", False): K.MAX_F}[(kind, is_int)]
                cols = ints if is_int else floats
                prog.append((code, src, cols[p + "acc"], ints[p + "nn"], 0, 0, 0))
        self.prog = self.backend.to_device(np.array(prog, dtype=np.int64).reshape(-1, 7))

    @property
    def state_rows(self) -> int:
        """(key, pane) pairs holding state (the open-windows gauge)."""
        if self.fallback is not None:
            return int(self.fallback.table.live_count)
        return self.store.live_count

    def state_bytes(self) -> int:
        if self.fallback is not None:
            return self.fallback.state_bytes()
        return self.store.state_bytes()

    # -- the separate kernels, where the panes would pass their memory bound -------------
    def _hand_over(self, fallback: WindowAggOp) -> None:
        """From now on ``fallback`` (restored already) runs this window."""
        fallback.late_events = self.late_events
        fallback.dropped_memberships = self.dropped_memberships
        fallback.no_time_events = self.no_time_events
        fallback.dictionaries = dict(self.dictionaries)
        fallback.late_out, self.late_out = self.late_out, []
        self.fallback = fallback
        self.store.allocate(16, 1)  # give the panes' device memory back

    def _synced(self, out: list[Batch]) -> list[Batch]:
        fb = self.fallback
        assert fb is not None
        self.late_events = fb.late_events
        self.dropped_memberships = fb.dropped_memberships
        self.no_time_events = fb.no_time_events
        return out

    def _to_separate_kernels(self, batch: Batch, remaining: Any) -> list[Batch]:
        """Move the state to the separate kernels' (key, window) table (through a
        snapshot, as a restart would) and fold the ``remaining`` events of ``batch`` there
        (the panes would pass :data:`~gpustream.state.device_panes.MAX_BYTES`: far more
        panes open at once, or keys, than pages of rows hold in that much memory)."""
        fallback = WindowAggOp(self.spec, self.backend)
        fallback.restore(self.snapshot())
        self._hand_over(fallback)
        mask = self.xp.zeros(batch.num_rows, dtype=np.bool_)
        mask[remaining] = True
        return self._synced(fallback.process(batch.filter(mask)))

    def side_outputs(self) -> dict[str, list[Batch]]:
        if self.fallback is not None:
            return self.fallback.side_outputs()
        return super().side_outputs()

    def process(self, batch: Batch) -> list[Batch]:
        if self.fallback is not None:
            return self._synced(self.fallback.process(batch))
        n = batch.num_rows
        if n == 0:
            return []
        ts, ts_valid, wm = self._event_times(batch)
        store = self.store
        keys = self._key_words(batch, store._arange(n), None)
        inputs = self._inputs(batch)
        iv, fv, va = self._matrices(n, inputs)
        ts_ok = self._no_bool if ts_valid is None else ts_valid
        late, n_late, n_dropped, deferred = store.fold(ts, ts_ok, wm, keys, self.prog, iv, fv,
                                                       va)
        out: list[Batch] = []
        while store.stuck is None and deferred.shape[0]:
            # events some of whose windows had fired when they came: fire the next window
            # here, then fold them (those still waiting come back)
            out += self._fire(self._next_end(ts, deferred))
            _, _, dropped, deferred = store.fold(ts, ts_ok, wm, keys, self.prog, iv, fv, va,
                                                 rows=deferred)
            n_dropped += dropped
        self.seq += n
        self.dropped_memberships += n_dropped
        if n_late:
            self.late_out.append(batch.filter(late.view(np.bool_)))
            self.late_events += n_late
        if store.stuck is not None:
            out += self._to_separate_kernels(batch,
                                             self.xp.concatenate([store.stuck, deferred]))
        return out

    def _matrices(self, n: int, inputs: dict[int, Any]) -> tuple[Any, Any, Any]:
        """Input slot ``s`` is row ``s`` of the int or the float matrix and of validity."""
        store = self.store
        m = len(self.slots)
        iv = store._buffer("i", (m, n), np.int64)
        fv = store._buffer("f", (m, n), np.float64)
        va = store._buffer("v", (m, n), np.bool_)
        for s, (j, matrix) in enumerate(self.slots):
            col = inputs[j]
            if matrix:
                (iv if matrix == "i" else fv)[s, :n] = col.values
            va[s, :n] = True if col.valid is None else col.valid
        return iv, fv, va

    def on_watermark(self, watermark: int) -> list[Batch]:
        if self.fallback is not None:
            return self._synced(self.fallback.on_watermark(watermark))
        return self._fire(watermark)

    def _next_end(self, ts: Any, deferred: Any) -> int:
        """The first window end past ``fired_to`` that a ``deferred`` event waits for:
        the windows up to it fire next (none of theirs holds such an event)."""
        store = self.store
        t = ts[deferred]
        lo = t - (t - self.spec.offset) % store.slide  # each event's pane
        ft = store.fired_to
        # a deferred event's pane is within a window of fired_to: no overflow
        k = self.xp.where(lo <= ft, (ft - self.xp.minimum(lo, ft)) // store.slide + 1, 1)
        return int((lo + k * store.slide).min())

    def _fire(self, watermark: int) -> list[Batch]:
        """Emit the windows ending at or before ``watermark`` not fired yet, free the
        panes no open window needs."""
        store = self.store
        out = self._fire_tumbling(watermark) if store.nwin == 1 else self._fire_sliding(watermark)
        store.fired_to = max(store.fired_to, watermark)
        return out

    def _fire_tumbling(self, watermark: int) -> list[Batch]:
        store = self.store
        due = [s for s in store.open_starts() if store.end_of(s) <= watermark]
        if not due:
            return []
        ids, rows, starts, ends = store.take(due)
        out = self._emit_rows(store.t_keys[ids].T, starts, ends, rows, None)
        store.release(due)
        return [out] if out.num_rows else []

    def _fire_sliding(self, watermark: int) -> list[Batch]:
        """Each due window's rows: its panes' rows combined per key (a row a pane lacks
        holds its columns' identities: the fill values)."""
        store, size = self.store, self.spec.size
        panes = store.open_starts()
        windows = sorted({p - j * store.slide for p in panes for j in range(store.nwin)
                          if store.fired_to < p - j * store.slide + size <= watermark})
        if windows:
            ids, starts, cols = store.combine([(w, [p for p in panes if w <= p < w + size])
                                               for w in windows])
            scratch = self.scratch
            scratch.columns = cols
            m = int(ids.shape[0])
            ends = self.xp.where(starts <= I64_MAX - size, starts + size, I64_MAX)
            out = self._emit_rows(store.t_keys[ids].T, starts, ends,
                                  self.xp.arange(m, dtype=np.int64), None, states=self.scratch_states)
        store.release([p for p in panes if p + size <= watermark])  # its last window fired
        return [out] if windows and out.num_rows else []

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The window operators' table format (see :meth:`WindowAggOp.snapshot`): a row
        per (key, window) not fired yet, which the CPU restores; sliding windows add their
        panes' rows (``panes.*``), which this operator restores."""
        if self.fallback is not None:
            return self.fallback.snapshot()
        store = self.store
        to_host = self.backend.to_host
        panes, rows = store.snapshot(to_host)
        state: dict[str, Any] = {}
        if store.nwin == 1:
            table = panes  # a tumbling window is its pane
        else:
            state.update({f"panes.{k}": v for k, v in panes.items()})
            state["panes.fired_to"] = np.array([store.fired_to], dtype=np.int64)
            open_panes = store.open_starts()
            size, slide = self.spec.size, store.slide
            windows = sorted({p - j * slide for p in open_panes for j in range(store.nwin)
                              if p - j * slide + size > store.fired_to})
            ids, starts, cols = store.combine(
                [(w, [p for p in open_panes if w <= p < w + size]) for w in windows])
            words = to_host(store.t_keys[ids].T).reshape(store.key_words, -1)
            table = {"keys": np.ascontiguousarray(np.concatenate(
                [words, to_host(starts).view(np.uint64)[None, :]]))}
            for name, dt, _ in store.specs:
                table[f"col.{name}"] = to_host(cols[name]).astype(dt, copy=False)
            rows = self.xp.arange(int(ids.shape[0]), dtype=np.int64)
        keys = table["keys"]
        n = keys.shape[1]
        starts = keys[-1].view(np.int64)
        size = self.spec.size
        with np.errstate(over="ignore"):  # the saturated ends take I64_MAX
            ends = np.where(starts <= I64_MAX - size, starts + size, I64_MAX)
        table["hashes"] = hash_rows(keys, on_device=False)
        table["col.__wend"] = ends
        table["col.__rev"] = np.zeros(n, dtype=np.int32)
        table["col.__ontime"] = np.ones(n, dtype=np.int8)
        state.update({f"table.{k}": v for k, v in table.items()})
        state.update(self._snapshot_aggs(rows))
        open_ends = np.unique(ends)
        state["pending_ends"] = open_ends
        state["open_ends"] = open_ends.copy()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        store = self.store
        prefix = "table." if store.nwin == 1 else "panes."
        if f"{prefix}keys" not in state:
            # sliding windows as the CPU (or the separate kernels) keep them, (key, window)
            # rows, which do not split into panes: the separate kernels run them on
            fallback = WindowAggOp(self.spec, self.backend)
            fallback.restore(state)
            self._hand_over(fallback)
            return
        keys = np.ascontiguousarray(state[f"{prefix}keys"], dtype=np.uint64)
        cols = {name: np.asarray(state[f"{prefix}col.{name}"]) for name, _, _ in store.specs}
        if store.pivot_columns and keys.shape[1]:
            # rows of one key shift to one pivot (the key's, kept once): its first row's
            _, first, which = np.unique(keys[:-1], axis=1, return_index=True,
                                        return_inverse=True)
            for name in store.pivot_columns:
                p = name[: -len("pivot")]
                piv = cols[name].astype(np.float64)
                target = piv[first][which.reshape(-1)]
                d = piv - target
                nn = cols[p + "nn"].astype(np.float64)
                s1 = cols[p + "s1"].astype(np.float64)
                cols[p + "s2"] = cols[p + "s2"] + 2.0 * d * s1 + nn * d * d
                cols[p + "s1"] = s1 + nn * d
                cols[name] = target
        rows = store.restore(keys, cols, self.backend.to_device)
        if "panes.fired_to" in state:
            store.fired_to = int(state["panes.fired_to"][0])
        self._restore_aggs(state, rows)
