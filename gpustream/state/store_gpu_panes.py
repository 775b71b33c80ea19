"""Tumbling and sliding windows' state on the GPU: one fused kernel per batch over panes.

:class:`GpuPaneStore` keeps the state in
:class:`~gpustream.state.device_panes.DevicePanes` (a key -> id map and one page of rows
per open pane, a pane being ``slide`` long) and folds a batch with one launch of
:func:`~gpustream.kernels.panes.fold_panes`: lateness, the pane's page, the key's id and
every aggregate, for every event, instead of the table store's assignment, upsert,
initialisation and one kernel per aggregate (and one row per window of a sliding
window's event). It runs windows without allowed lateness whose aggregations the kernel
folds (count, sum, min, max, mean, var, std) on the ``cuda`` and ``cudasim`` backends.

Windows fire on the watermark after a batch: a tumbling window reads its pane's rows, a
sliding window combines its panes' rows per key. An event of a sliding window some of
whose windows had fired by its own watermark (DESIGN.md section 3) must not reach them
through the pane they share with its later windows: the kernel defers it, the windows
fire here (mid-batch), then it is folded. Where the panes would pass their memory bound
the fold returns the events it did not take, and the operator moves the state to the
(key, window) table (:class:`~gpustream.state.store_table.TableStore`).

Snapshots are the table format, a row per (key, window) not fired (``mean``/``var``/
``std`` shifted by a pivot per key), which every store restores; sliding windows add
their panes' rows (``panes.*``), which this store restores. A CPU checkpoint of tumbling
windows restores here; one of sliding windows cannot (windows do not split into panes):
:meth:`GpuPaneStore.restore` says so and the operator restores it into a table store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gpustream.backend import Backend, select_backend
from gpustream.kernels import panes as K
from gpustream.kernels.fused_window import FUSED_KINDS
from gpustream.kernels.hashing import hash_rows
from gpustream.state.aggstate import AggState, make_state
from gpustream.state.device_panes import DevicePanes
from gpustream.state.keyed import finalized, key_words, restore_aggs, snapshot_aggs
from gpustream.state.window_store import Events, Fired, Folded, WindowStore

if TYPE_CHECKING:
    from gpustream.operators.window import WindowSpec

__all__ = ["GpuPaneStore"]

I64_MAX = np.iinfo(np.int64).max
_MOMENTS = ("mean", "var", "std")


class _Scratch:
    """Columns of combined rows, read by a second set of aggregation states."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.xp = backend.xp
        self.columns: dict[str, Any] = {}

    def add_column(self, name: str, dtype: Any, fill: Any) -> None:
        pass  # filled by the firing that reads them

    def live_slots(self) -> Any:
        raise NotImplementedError

    def held_slots(self) -> Any:
        raise NotImplementedError

    def state_bytes(self) -> int:
        return 0


class GpuPaneStore(WindowStore):
    """Tumbling and sliding windows' state on the GPU (see the module docstring).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> store = GpuPaneStore(spec, select_backend("cpu"))  # arrays only: nothing launched
    >>> store.panes.capacity, store.panes.pages, store.prog.tolist()   # COUNT into int col 0
    (1024, 4, [[0, 0, 0, 0, 0, 0, 0]])
    """

    def __init__(self, spec: WindowSpec, backend: Backend) -> None:
        if spec.lateness or spec.revision or not all(a.agg.kind in FUSED_KINDS
                                                     for a in spec.aggs):
            raise ValueError("the pane kernel runs windows without allowed lateness, of "
                             f"{', '.join(sorted(FUSED_KINDS))}")
        self.spec = spec
        self.backend = backend
        self.xp = backend.xp
        panes = DevicePanes(len(spec.keys), spec.size, spec.offset, backend, spec.slide)
        self.panes = panes
        self.states: list[AggState] = [
            make_state(a.name, a.agg, a.in_type, a.out_type, panes) for a in spec.aggs
        ]
        self._program()
        panes.allocate()
        #: the states again, over the combined rows of sliding windows' panes
        self.scratch = _Scratch(backend)
        self.scratch_states = [make_state(a.name, a.agg, a.in_type, a.out_type, self.scratch)
                               for a in spec.aggs]
        self._no_bool = backend.xp.empty(0, dtype=np.bool_)

    def _program(self) -> None:
        """The kernel's aggregation program: per state, its kind, input and columns."""
        ints = {name: k for k, name in enumerate(self.panes.int_names)}
        floats = {name: k for k, name in enumerate(self.panes.float_names)}
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
                             len(self.panes.pivot_columns), floats[p + "pivot"]))
                self.panes.pivot_columns.append(p + "pivot")
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
        return self.panes.live_count

    def state_bytes(self) -> int:
        return self.panes.state_bytes()

    def close(self) -> None:
        """Give the panes' device memory back (the state moved to another store)."""
        self.panes.allocate(16, 1)

    # -- folding --------------------------------------------------------------------------
    def fold(self, ev: Events) -> Folded:
        batch = ev.batch
        n = batch.num_rows
        panes = self.panes
        keys = key_words(self.spec.keys, batch, panes._arange(n), None, self.xp)
        iv, fv, va = self._matrices(n, ev.inputs)
        ts, wm = ev.ts, ev.wm
        ts_ok = self._no_bool if ev.ts_valid is None else ev.ts_valid
        late, n_late, n_dropped, deferred = panes.fold(ts, ts_ok, wm, keys, self.prog, iv, fv,
                                                       va)
        fired: list[Fired] = []
        while panes.stuck is None and deferred.shape[0]:
            # events some of whose windows had fired when they came: fire the next window
            # here, then fold them (those still waiting come back)
            fired += self.fire(self._next_end(ts, deferred))
            _, _, dropped, deferred = panes.fold(ts, ts_ok, wm, keys, self.prog, iv, fv, va,
                                                 rows=deferred)
            n_dropped += dropped
        rest = None
        if panes.stuck is not None:
            rest = self.xp.concatenate([panes.stuck, deferred])
            panes.stuck = None
        return Folded(late.view(np.bool_), n_dropped, fired, n_late=n_late, rest=rest)

    def _matrices(self, n: int, inputs: dict[int, Any]) -> tuple[Any, Any, Any]:
        """Input slot ``s`` is row ``s`` of the int or the float matrix and of validity."""
        panes = self.panes
        m = len(self.slots)
        iv = panes._buffer("i", (m, n), np.int64)
        fv = panes._buffer("f", (m, n), np.float64)
        va = panes._buffer("v", (m, n), np.bool_)
        for s, (j, matrix) in enumerate(self.slots):
            col = inputs[j]
            if matrix:
                (iv if matrix == "i" else fv)[s, :n] = col.values
            va[s, :n] = True if col.valid is None else col.valid
        return iv, fv, va

    def _next_end(self, ts: Any, deferred: Any) -> int:
        """The first window end past ``fired_to`` that a ``deferred`` event waits for:
        the windows up to it fire next (none of theirs holds such an event)."""
        panes = self.panes
        t = ts[deferred]
        lo = t - (t - self.spec.offset) % panes.slide  # each event's pane
        ft = panes.fired_to
        # a deferred event's pane is within a window of fired_to: no overflow
        k = self.xp.where(lo <= ft, (ft - self.xp.minimum(lo, ft)) // panes.slide + 1, 1)
        return int((lo + k * panes.slide).min())

    # -- firing ---------------------------------------------------------------------------
    def fire(self, watermark: int) -> list[Fired]:
        """Fire the windows ending at or before ``watermark`` not fired yet, free the
        panes no open window needs."""
        panes = self.panes
        out = self._fire_tumbling(watermark) if panes.nwin == 1 else self._fire_sliding(watermark)
        panes.fired_to = max(panes.fired_to, watermark)
        return out

    def _fire_tumbling(self, watermark: int) -> list[Fired]:
        panes = self.panes
        due = [s for s in panes.open_starts() if panes.end_of(s) <= watermark]
        if not due:
            return []
        ids, rows, starts, ends = panes.take(due)
        out = Fired(panes.t_keys[ids].T, starts, ends, finalized(self.states, rows))
        panes.release(due)
        return [out]

    def _fire_sliding(self, watermark: int) -> list[Fired]:
        """Each due window's rows: its panes' rows combined per key (a row a pane lacks
        holds its columns' identities: the fill values)."""
        panes, size = self.panes, self.spec.size
        open_panes = panes.open_starts()
        windows = sorted({p - j * panes.slide for p in open_panes for j in range(panes.nwin)
                          if panes.fired_to < p - j * panes.slide + size <= watermark})
        out = []
        if windows:
            ids, starts, cols = panes.combine([(w, [p for p in open_panes if w <= p < w + size])
                                               for w in windows])
            self.scratch.columns = cols
            m = int(ids.shape[0])
            ends = self.xp.where(starts <= I64_MAX - size, starts + size, I64_MAX)
            out.append(Fired(panes.t_keys[ids].T, starts, ends,
                             finalized(self.scratch_states, self.xp.arange(m, dtype=np.int64))))
        panes.release([p for p in open_panes if p + size <= watermark])  # last window fired
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The table format (see :class:`~gpustream.state.window_store.WindowStore`): a
        row per (key, window) not fired yet, which every store restores; sliding windows
        add their panes' rows (``panes.*``), which this store restores."""
        panes = self.panes
        to_host = self.backend.to_host
        pane_rows, rows = panes.snapshot(to_host)
        state: dict[str, Any] = {}
        if panes.nwin == 1:
            table = pane_rows  # a tumbling window is its pane
        else:
            state.update({f"panes.{k}": v for k, v in pane_rows.items()})
            state["panes.fired_to"] = np.array([panes.fired_to], dtype=np.int64)
            open_panes = panes.open_starts()
            size, slide = self.spec.size, panes.slide
            windows = sorted({p - j * slide for p in open_panes for j in range(panes.nwin)
                              if p - j * slide + size > panes.fired_to})
            ids, starts, cols = panes.combine(
                [(w, [p for p in open_panes if w <= p < w + size]) for w in windows])
            words = to_host(panes.t_keys[ids].T).reshape(panes.key_words, -1)
            table = {"keys": np.ascontiguousarray(np.concatenate(
                [words, to_host(starts).view(np.uint64)[None, :]]))}
            for name, dt, _ in panes.specs:
                table[f"col.{name}"] = to_host(cols[name]).astype(dt, copy=False)
            rows = self.xp.arange(int(ids.shape[0]), dtype=np.int64)
        keys = table["keys"]
        n = keys.shape[1]
        starts = keys[-1].view(np.int64)
        size = self.spec.size
        with np.errstate(over="ignore"):  # the saturated ends take I64_MAX
            ends = np.where(starts <= I64_MAX - size, starts + size, I64_MAX)
        table["hashes"] = hash_rows(keys, select_backend("cpu"))
        table["col.__wend"] = ends
        table["col.__rev"] = np.zeros(n, dtype=np.int32)
        table["col.__ontime"] = np.ones(n, dtype=np.int8)
        state.update({f"table.{k}": v for k, v in table.items()})
        state.update(snapshot_aggs(self.states, rows, to_host))
        open_ends = np.unique(ends)
        state["pending_ends"] = open_ends
        state["open_ends"] = open_ends.copy()
        return state

    def restore(self, state: dict[str, Any]) -> bool:
        panes = self.panes
        prefix = "table." if panes.nwin == 1 else "panes."
        if f"{prefix}keys" not in state:
            # sliding windows as the CPU (or the table store) keep them, (key, window)
            # rows, which do not split into panes
            return False
        keys = np.ascontiguousarray(state[f"{prefix}keys"], dtype=np.uint64)
        cols = {name: np.asarray(state[f"{prefix}col.{name}"]) for name, _, _ in panes.specs}
        if panes.pivot_columns and keys.shape[1]:
            # rows of one key shift to one pivot (the key's, kept once): its first row's
            _, first, which = np.unique(keys[:-1], axis=1, return_index=True,
                                        return_inverse=True)
            for name in panes.pivot_columns:
                p = name[: -len("pivot")]
                piv = cols[name].astype(np.float64)
                target = piv[first][which.reshape(-1)]
                d = piv - target
                nn = cols[p + "nn"].astype(np.float64)
                s1 = cols[p + "s1"].astype(np.float64)
                cols[p + "s2"] = cols[p + "s2"] + 2.0 * d * s1 + nn * d * d
                cols[p + "s1"] = s1 + nn * d
                cols[name] = target
        rows = panes.restore(keys, cols, self.backend.to_device)
        if "panes.fired_to" in state:
            panes.fired_to = int(state["panes.fired_to"][0])
        restore_aggs(self.states, state, rows, self.backend.to_device)
        return True
