"""Tumbling and sliding windows on the CPU: the fused loop, on every core.

:class:`FusedWindowAggOp` is :class:`~gpustream.operators.window.WindowAggOp` with the
per-batch work done by the generated one-pass loop of
:mod:`gpustream.kernels.fused_window` (window assignment, hashing, find-or-insert and
every aggregate in one pass over the events), for windows without allowed lateness whose
aggregations that loop folds. The state is split into shards by the top bits of a hash
of the key (without the window), one state table per shard; each chunk of a batch's
events is hashed and listed per shard in one pass
(:class:`~gpustream.kernels.fused_dense.EventShards`, the hashes kept for the loops),
and each shard's loop runs on its own thread over its events in arrival order (numba
releases the GIL), so a key always lives in one shard and is updated in arrival order:
results are exactly the separate kernels' (tested), whatever the number of shards.

Tumbling and sliding windows keep each shard's state in pages
(:mod:`gpustream.state.window_pages`: a key table shared by all windows, one page of rows
per open window), read by the loop of :mod:`gpustream.kernels.fused_dense` (a sliding
window's event finds its key once, then folds into a row in each of its windows' pages);
where too many windows are open at once the state moves to the (key, window) table
(:meth:`FusedWindowAggOp._unpage`). Sliding windows are not kept as panes (one row per
gcd(size, slide) that windows combine when they fire): a window's float sums and moments
would then add its panes' partial sums, not its events one by one, and differ in the
last bits from the separate kernels' (and the checkpoints they restore).

Windows fire inside a batch as soon as a chunk of events has moved the watermark past
their end, which keeps the tables (and their cache footprint) small. Each shard logs the
slots it creates with their window's end, so firing pops exactly the due slots without
scanning the table. Snapshots are the separate kernels' format (one table: the shards'
live slots together), so a checkpoint restores on either path and on the GPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch, physical_dtype
from gpustream.kernels.fused_dense import EventShards, dense_window_kernel
from gpustream.kernels.fused_emit import EmitAgg, emit_kernel, run_order
from gpustream.kernels.fused_window import (
    FUSED_KINDS,
    FusedAgg,
    fused_hash_rows,
    fused_window_kernel,
    key_shards,
)
from gpustream.kernels.hashing import widen_keys
from gpustream.kernels.join_index import cpu_threads
from gpustream.operators.window import I64_MAX, I64_MIN, WindowAggOp, WindowSpec
from gpustream.state.aggstate import AggState, make_state
from gpustream.state.table import SlotTable
from gpustream.state.window_pages import WindowPages

__all__ = ["FusedWindowAggOp", "fusable", "shard_count", "window_operator"]

#: events folded between two chances to fire windows
FUSED_CHUNK = 1 << 16
#: windows keep their state in pages (:mod:`gpustream.state.window_pages`)
PAGED = True

#: table columns of each state kind the fused loop folds (besides its non-null count)
_FUSED_COLUMNS = {"count": ("n",), "count_valid": (), "sum": ("acc",), "min": ("acc",),
                  "max": ("acc",), "moments": ("s1", "s2", "pivot")}
#: each state kind's column counting non-null inputs
_COUNT_FIELD = {"count_valid": "n", "sum": "nn", "min": "nn", "max": "nn", "moments": "nn"}
_NO_BOOL = np.empty(0, dtype=np.bool_)
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The process-wide pool the shards' loops run on (one thread per shard)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpustream-shard")
    return _POOL


def _fused_kind(kind: str) -> str:
    return "moments" if kind in ("mean", "var", "std") else kind


def _fill_source(dtype: Any, fill: Any) -> str:
    """A column's fill value as Python source for the generated loop."""
    if np.dtype(dtype).kind == "f":
        f = float(fill)
        return ("np.inf" if f > 0 else "-np.inf") if np.isinf(f) else repr(f)
    value = int(fill)
    return {I64_MAX: "I64_MAX", I64_MIN: "I64_MIN"}.get(value, str(value))


def shard_count() -> int:
    """Shards (threads) of a fused window: 2 where the process may use 2 or more cores,
    else 1; ``GPUSTREAM_CPU_THREADS`` overrides (1, 2 or 4).

    Examples
    --------
    >>> shard_count() in (1, 2, 4)
    True
    """
    return cpu_threads()  # one setting for the window and join kernels


def fusable(spec: WindowSpec, backend: Backend) -> bool:
    """Whether the fused CPU loop runs this window: the CPU backend, no allowed lateness
    (no revisions), and only aggregations it folds.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> fusable(spec, select_backend("cpu"))
    True
    """
    return (not backend.is_device and spec.lateness == 0 and not spec.revision
            and all(a.agg.kind in FUSED_KINDS for a in spec.aggs))


def window_operator(spec: WindowSpec, backend: Backend) -> WindowAggOp:
    """The operator for a tumbling or sliding window: the CPU's fused loop where
    :func:`fusable`, the GPU's pane kernel where
    :func:`~gpustream.operators.window_panes.pane_fusable`, else the separate kernels.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.aggs import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> type(window_operator(spec, select_backend("cpu"))).__name__
    'FusedWindowAggOp'
    """
    if fusable(spec, backend):
        return FusedWindowAggOp(spec, backend)
    from gpustream.operators.window_panes import PaneWindowAggOp, pane_fusable

    if pane_fusable(spec, backend):
        return PaneWindowAggOp(spec, backend)
    return WindowAggOp(spec, backend)


def _shared_counts(spec: WindowSpec) -> dict[str, str]:
    """Non-null count columns of aggregations of one input, as aliases of the first one:
    they always hold the same numbers, so the fused loop keeps and updates one."""
    first: dict[str, str] = {}
    aliases = {}
    for a in spec.aggs:
        kind = _fused_kind(a.agg.kind)
        if kind not in _COUNT_FIELD:
            continue
        column = f"{a.name}.{_COUNT_FIELD[kind]}"
        key = repr(a.agg.input)
        if key in first:
            aliases[column] = first[key]
        else:
            first[key] = column
    return aliases


def _new_table(spec: WindowSpec) -> SlotTable:
    table = SlotTable(len(spec.keys) + 2, np, False, packed=True)
    table.aliases = _shared_counts(spec)
    WindowAggOp.add_bookkeeping(table)
    return table


class _Shard:
    """One state table, its aggregation states, and its log of unfired created slots."""

    def __init__(self, table: SlotTable, states: list[AggState], n_keys: int,
                 size: int | None = None) -> None:
        self.table = table
        self.n_keys = n_keys
        self.states = states
        self.log: dict[int, list[Any]] = {}  # window end -> slots created for it
        self.new_ends: list[Any] = []  # ends of windows given slots since last noted
        #: the state in pages (windows of ``size``), else in ``table``
        self.pages = None if size is None else WindowPages(table, n_keys, size)
        self.size = size
        self.stopped_at: int | None = None  # where a paged fold stopped for want of pages
        self.dropped = 0  # (event, window) pairs dropped by this shard's folds, to collect

    def note(self, slots: Any, ends: Any) -> None:
        """Log created ``slots`` under their windows' ``ends``."""
        distinct = np.unique(ends)
        self.new_ends.append(distinct)
        if distinct.shape[0] == 1:
            self.log.setdefault(int(distinct[0]), []).append(slots)
            return
        for e in distinct.tolist():
            self.log.setdefault(e, []).append(slots[ends == e])

    def remap(self, remap: Any) -> None:
        """Follow a rebuild of the table (old slot -> new slot)."""
        self.log = {e: [remap[sl] for sl in parts] for e, parts in self.log.items()}

    def due(self, watermark: int) -> Any:
        """Slots of the windows that ``watermark`` reached, taken off the log."""
        ends = [e for e in self.log if e <= watermark]
        if not ends:
            return np.empty(0, dtype=np.int64)
        parts = [sl for e in ends for sl in self.log.pop(e)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def pop_due(self, watermark: int, end_field: int) -> tuple[Any, Any, Any] | None:
        """Pop the slots of the windows ``watermark`` reached: their packed rows, key
        words (``uint64[n, K]``) and output order (:func:`run_order`; the row's window
        end at position ``end_field``), or None where none is due."""
        if self.pages is not None:
            popped = self.pages.pop_due(watermark)
            if popped is None:
                return None
            rows, keys = popped  # already in output order
            return rows, keys, np.arange(rows.shape[0], dtype=np.int64)
        slots = self.due(watermark)
        if slots.shape[0] == 0:
            return None
        n = int(slots.shape[0])
        rows = np.empty((n, self.table._block.shape[1]), dtype=np.int64)
        keys = np.empty((n, self.table.key_words), dtype=np.uint64)
        self.table.pop_into(slots, rows, keys)
        order = np.ascontiguousarray(run_order(keys, rows[:, end_field], self.n_keys))
        return rows, keys, order


class FusedWindowAggOp(WindowAggOp):
    """Tumbling and sliding windows on the CPU through the fused loop (see module doc).

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
    >>> op = FusedWindowAggOp(spec, select_backend("cpu"), shards=2)
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 12, 5]}))
    >>> b.watermarks = np.array([np.iinfo(np.int64).min, 3, 12])
    >>> op.process(b)
    []
    >>> op.on_watermark(12)[0].to_arrow().to_pydict()
    {'k': [1], 'window_start': [0], 'window_end': [10], 'n': [1]}
    """

    def __init__(self, spec: WindowSpec, backend: Backend, shards: int | None = None) -> None:
        if not fusable(spec, backend):
            raise ValueError("the fused loop needs the CPU backend, no allowed lateness and "
                             f"only {', '.join(sorted(FUSED_KINDS))}")
        super().__init__(spec, backend, table=_new_table(spec))
        n = shard_count() if shards is None else shards
        self.paged = PAGED
        self._make_shards(n)
        aliases = self.table.aliases
        aggs = []
        sources: dict[tuple[str, Any], int] = {}  # (input, dtype) -> first agg reading it
        for j, st in enumerate(self.states):
            kind = _fused_kind(st.agg.kind)
            counts = st.prefix + _COUNT_FIELD[kind] if kind in _COUNT_FIELD else None
            source = None
            if kind != "count":
                read = (repr(st.agg.input), np.dtype(getattr(st, "dtype", np.float64)))
                source = sources.setdefault(read, j)
            aggs.append(FusedAgg(kind, tuple(st.prefix + c for c in _FUSED_COLUMNS[kind]),
                                 None if counts in aliases else counts,
                                 None if source == j else source))
        fills = self.table._fill
        self.column_names = tuple(self.table.columns)
        columns = tuple((name, _fill_source(*fills[name])) for name in self.column_names)
        self.kernel = fused_window_kernel(len(spec.keys), tuple(aggs), columns, self.nwin == 1)
        pages = self.shards[0].pages
        self.paged_kernel = (None if pages is None else dense_window_kernel(
            len(spec.keys), tuple(aggs), pages.fields(), pages.width, self.nwin == 1))
        self._hashes: Any = None  # the key hash of each event of the batch in process
        self.shard_bits = len(self.shards).bit_length() - 1  # shards: a power of 2
        self._setup_emit()

    def _make_shards(self, n: int) -> None:
        """``n`` shards, the first holding ``self.table`` and ``self.states``."""
        spec = self.spec
        k = len(spec.keys)
        size = spec.size if self.paged else None
        self.shards = [_Shard(self.table, self.states, k, size)]
        for _ in range(n - 1):
            t = _new_table(spec)
            self.shards.append(_Shard(t, [make_state(a.name, a.agg, a.in_type, a.out_type, t)
                                          for a in spec.aggs], k, size))

    def _unpage_and_finish(self, head: list[Any], tail: list[Any], chunk: list[Any],
                           late: Any, fire_at: int | None,
                           popped: list[Any]) -> list[Any]:
        """Unpage, then fold the rest of the chunk of the shards that stopped for want of
        pages (the others have folded theirs and popped what ``fire_at`` fired)."""
        rest = {k: chunk[k][sh.stopped_at:] for k, sh in enumerate(self.shards)
                if sh.stopped_at is not None}
        self._unpage()
        for k, events in rest.items():
            popped[k] = self._fold(k, head, tail, events, late, fire_at)
        self._note_ends()
        return popped

    def _unpage(self) -> None:
        """Move the state from pages to (key, window) tables: far more windows are open
        at once than pages were meant for (see :mod:`gpustream.state.window_pages`)."""
        state = self.snapshot()
        self.paged = False
        self.dropped_memberships += self._collect_dropped()  # the shards are replaced
        self._make_shards(len(self.shards))
        self.restore(state)

    def _setup_emit(self) -> None:
        """The output loop for this query (:func:`emit_kernel`) and its output dtypes."""
        table = self.table
        packed = table._packed_names

        def field(name: str) -> tuple[int, bool]:
            name = table.aliases.get(name, name)
            return packed.index(name), table.columns[name].dtype.kind == "f"

        aggs: list[EmitAgg] = []
        self.out_dtypes: list[Any] = []
        names: tuple[str, ...]
        dtype: Any
        for st in self.states:
            kind = st.agg.kind
            if kind in ("count", "count_valid"):
                names, dtype = ("n",), np.dtype(np.int64)
            elif kind == "sum":
                names, dtype = ("acc", "nn"), table.columns[st.prefix + "acc"].dtype
            elif kind in ("min", "max"):
                names, dtype = ("acc", "nn"), physical_dtype(st.out_type)
            else:
                names, dtype = ("nn", "s1", "s2", "pivot"), np.dtype(np.float64)
            pos = [field(st.prefix + name) for name in names]
            aggs.append(EmitAgg("count" if kind == "count_valid" else kind,
                                tuple(p for p, _ in pos), tuple(f for _, f in pos)))
            self.out_dtypes.append(dtype)
        self.end_field = field("__wend")[0]
        self.emit_aggs = tuple(aggs)

    # -- folding --------------------------------------------------------------------------
    def _arguments(self, batch: Batch) -> tuple[list[Any], list[Any], Any, tuple[Any, ...],
                                                tuple[Any, ...]]:
        """The loop's leading and trailing arguments, the watermarks, and the key columns
        as uint64 words with their validity (empty: no nulls), which place events in
        shards."""
        spec = self.spec
        ts, ts_valid, wm = self._event_times(batch)
        head: list[Any] = [ts, _NO_BOOL if ts_valid is None else ts_valid, wm, spec.size,
                           spec.slide, spec.offset, self.nwin]
        tail: list[Any] = []
        keys: list[Any] = []
        valids: list[Any] = []
        for name in spec.keys:
            valid = batch.validity(name)
            values = batch[name]
            if values.dtype.kind in "iu" and values.dtype.itemsize == 8:
                word = np.ascontiguousarray(values).view(np.uint64)  # no copy
            else:
                word = np.ascontiguousarray(widen_keys([values], np)[0], dtype=np.uint64)
            keys.append(word)  # a null's word is ignored: the loops read the validity
            valids.append(_NO_BOOL if valid is None else np.ascontiguousarray(valid))
            tail += [word, valids[-1]]
        inputs = self._inputs(batch)
        for i, st in enumerate(self.states):
            col = inputs[i]
            if col is None:
                tail += [np.zeros(1), _NO_BOOL]
                continue
            dtype = getattr(st, "dtype", np.float64)
            tail += [np.ascontiguousarray(col.values.astype(dtype, copy=False)),
                     _NO_BOOL if col.valid is None else col.valid]
        return head, tail, wm, tuple(keys), tuple(valids)

    @staticmethod
    def _events(shards: EventShards, pos: int, n: int) -> list[Any]:
        """Each shard's events of the chunk from ``pos`` (ascending), their key hashes
        computed."""
        return shards.take(min(pos, n), min(n, pos + FUSED_CHUNK))

    def _fold(self, k: int, head: list[Any], tail: list[Any], events: Any, late: Any,
              fire_at: int | None) -> tuple[Any, Any, Any] | None:
        """Shard ``k``'s loop over ``events``, growing its table as needed; then, if
        ``fire_at`` is a watermark, pop the slots of the windows it reached (on the
        shard's thread: see :meth:`_emit_popped`)."""
        shard = self.shards[k]
        if shard.pages is not None:
            return self._fold_paged(shard, head, tail, events, late, fire_at)
        table = shard.table
        pos, stop = 0, int(events.shape[0])
        size = max(1, stop * self.nwin)
        counts = np.zeros(3, dtype=np.int64)
        while pos < stop:
            room = table.room()
            remap = table.make_room((stop - pos) * self.nwin, room, self.nwin)
            if remap is not None:
                shard.remap(remap)
                continue
            log_slots = np.empty(size, dtype=np.int64)
            log_ends = np.empty(size, dtype=np.int64)
            cols = [table.columns[name] for name in self.column_names]
            pos = self.kernel(*head, events, pos, stop, room, *tail, *table.arrays, *cols,
                              late, log_slots, log_ends, counts)
            created = int(counts[0])
            table.live_count += created
            table.used += int(counts[1])
            shard.dropped += int(counts[2])
            if created:
                shard.note(log_slots[:created], log_ends[:created])
        return None if fire_at is None else shard.pop_due(fire_at, self.end_field)

    def _fold_paged(self, shard: _Shard, head: list[Any], tail: list[Any], events: Any,
                    late: Any, fire_at: int | None) -> tuple[Any, Any, Any] | None:
        """:meth:`_fold` for a shard whose state is in pages. Where more pages would pass
        their memory bound it stops, noting where in ``stopped_at`` (see :meth:`_unpage`)."""
        pages = shard.pages
        assert pages is not None and self.paged_kernel is not None
        pos, stop = 0, int(events.shape[0])
        counts = np.zeros(5, dtype=np.int64)
        need_page = False
        while pos < stop:
            if need_page or pages.short(stop - pos):
                if not pages.grow(stop - pos, need_page):
                    shard.stopped_at = pos
                    return None
                need_page = False
                continue
            pos = self.paged_kernel(*head, events, pos, stop, pages.room(), self._hashes,
                                    *tail, *pages.key_table, *pages.page_arrays,
                                    *pages.words, late, counts)
            pages.used += int(counts[1])
            pages.live_keys += int(counts[2])
            need_page = bool(counts[3])
            shard.dropped += int(counts[4])
        shard.new_ends.append(pages.open_ends())
        return None if fire_at is None else shard.pop_due(fire_at, self.end_field)

    def _fold_then_emit(self, head: list[Any], tail: list[Any], events: Any, late: Any,
                        fire_at: int | None, ready: list[Any] | None
                        ) -> tuple[tuple[Any, Any, Any] | None, list[Batch]]:
        """The last shard's fold, then the output rows of ``ready`` (popped earlier)."""
        popped = self._fold(len(self.shards) - 1, head, tail, events, late, fire_at)
        return popped, [] if ready is None else self._emit_popped(ready)

    def process(self, batch: Batch) -> list[Batch]:
        """Fold ``batch`` chunk by chunk, firing windows as the watermark passes them.

        With several shards the first shard's loop runs on the calling thread and the
        others' on pool threads; the calling thread then lists the next chunk's events per
        shard, while the last shard's thread builds the output rows of the windows the
        previous chunk fired: no core waits on one serial thread. The output is the same
        as folding chunk after chunk.
        """
        n = batch.num_rows
        if n == 0:
            return []
        head, tail, wm, keys, valid = self._arguments(batch)
        shards = EventShards(keys, valid, self.shard_bits, n)
        self._hashes = shards.hashes
        late = np.zeros(n, dtype=np.int8)  # each shard sets its own events' flags
        pool = _pool() if len(self.shards) > 1 else None
        out: list[Batch] = []
        ready: list[tuple[Any, Any, Any] | None] | None = None  # popped, to build
        pos = 0
        events = self._events(shards, 0, n)
        while pos < n:
            stop = min(n, pos + FUSED_CHUNK)
            # wm[stop] is the watermark after every event before ``stop``: the windows it
            # reached can take no more events, so each shard pops them after its loop
            # and they fire now
            fire_at = int(wm[stop]) if stop < n else None
            chunk = events
            if pool is None:
                popped = [self._fold(0, head, tail, events[0], late, fire_at)]
                events = self._events(shards, stop, n)
            else:
                # the last shard's thread then builds the rows the last chunk fired, while
                # this thread lists the next chunk's events: the load stays even
                futures = [pool.submit(self._fold, k, head, tail, events[k], late, fire_at)
                           for k in range(1, len(self.shards) - 1)]
                last = pool.submit(self._fold_then_emit, head, tail, events[-1], late, fire_at,
                                   ready)
                first = self._fold(0, head, tail, events[0], late, fire_at)
                events = self._events(shards, stop, n)
                popped_last, emitted = last.result()
                out.extend(emitted)
                ready = None
                popped = [first, *(f.result() for f in futures), popped_last]
            pos = stop
            self._note_ends()
            if any(sh.stopped_at is not None for sh in self.shards):
                popped = self._unpage_and_finish(head, tail, chunk, late, fire_at, popped)
            if fire_at is not None and self._fired(fire_at):
                if pool is None:
                    out.extend(self._emit_popped(popped))
                else:
                    ready = popped
        if ready is not None:
            out.extend(self._emit_popped(ready))
        self._hashes = None
        self.seq += n
        self._late_rows(batch, late.view(np.bool_), self._collect_dropped())
        return out

    def _collect_dropped(self) -> int:
        """The (event, window) pairs the shards dropped since the last call."""
        n = 0
        for shard in self.shards:
            n += shard.dropped
            shard.dropped = 0
        return n

    def _note_ends(self) -> None:
        for shard in self.shards:
            for ends in shard.new_ends:
                self.pending_ends.update(ends.tolist())
                self.open_ends.update(ends.tolist())
            shard.new_ends = []

    # -- firing ---------------------------------------------------------------------------
    def on_watermark(self, watermark: int) -> list[Batch]:
        """Fire and free the windows ``watermark`` reached: with no lateness every created
        slot fires once, on time, and is freed at once."""
        if not self._fired(watermark):
            return []
        return self._emit_popped([shard.pop_due(watermark, self.end_field)
                                  for shard in self.shards])

    def _fired(self, watermark: int) -> bool:
        """Whether ``watermark`` reached a window with state; if so, those windows are
        done (their slots are popped by the caller)."""
        if not self.pending_ends or min(self.pending_ends) > watermark:
            return False
        self.pending_ends = {e for e in self.pending_ends if e > watermark}
        self.open_ends = {e for e in self.open_ends if e > watermark}
        return True

    def _emit_popped(self, popped: list[tuple[Any, Any, Any] | None]) -> list[Batch]:
        """The output rows of fired windows, from the shards' popped rows, key words and
        orders (:meth:`_Shard.pop_due`; None: nothing due in that shard)."""
        parts = [p for p in popped if p is not None]
        if not parts:
            return []
        spec = self.spec
        k = len(spec.keys)
        m = sum(int(p[0].shape[0]) for p in parts)
        words = np.empty((parts[0][1].shape[1], m), dtype=np.uint64)
        ends = np.empty(m, dtype=np.int64)
        outs: list[Any] = []
        for st, dtype in zip(self.states, self.out_dtypes, strict=True):
            outs.append(np.empty(m, dtype=dtype))
            if st.agg.kind not in ("count", "count_valid"):
                outs.append(np.empty(m, dtype=np.bool_))
        runs = [a for rows, keys, order in parts
                for a in (rows, rows.view(np.float64), keys, order)]
        emit_kernel(self.emit_aggs, self.end_field, len(parts))(*runs, k, words, ends, *outs)
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        nulls = words[k].view(np.int64)
        any_null = bool(nulls.any())
        for c, name in enumerate(spec.keys):
            dtype = physical_dtype(spec.schema.field(name).type)
            columns[name] = words[c].view(np.int64).astype(dtype, copy=False)
            validity[name] = ((nulls >> c) & 1) == 0 if any_null else None
        columns["window_start"] = words[k + 1].view(np.int64)
        columns["window_end"] = ends
        it = iter(outs)
        for a in spec.aggs:
            columns[a.name] = next(it)
            validity[a.name] = None if a.agg.kind in ("count", "count_valid") else next(it)
        dictionaries = {}
        for f in spec.schema:
            src = self._string_source(f.name)
            if src is not None and src in self.dictionaries:
                dictionaries[f.name] = self.dictionaries[src]
        return [Batch(columns, spec.schema, validity, dictionaries)]

    @property
    def state_rows(self) -> int:
        """(key, window) pairs holding state, over every shard (the open-windows gauge)."""
        return sum(int(sh.pages.p_count[sh.pages.p_live != 0].sum()) if sh.pages is not None
                   else sh.table.live_count for sh in self.shards)

    # -- checkpoints ----------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state, over every shard (pages or table)."""
        return sum(sh.table.state_bytes() + (0 if sh.pages is None else sh.pages.state_bytes())
                   + sum(st.state_bytes() for st in sh.states) for sh in self.shards)

    def snapshot(self) -> dict[str, Any]:
        """The separate kernels' format: the shards' live slots as one table."""
        parts = [s.table.snapshot(self.backend.to_host) if s.pages is None
                 else s.pages.snapshot() for s in self.shards]
        state: dict[str, Any] = {f"table.{k}": np.concatenate([p[k] for p in parts], axis=-1)
                                 for k in parts[0]}
        state.update(self._snapshot_aggs(self.table.live_slots()))
        state["pending_ends"] = np.array(sorted(self.pending_ends), dtype=np.int64)
        state["open_ends"] = np.array(sorted(self.open_ends), dtype=np.int64)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        table_state = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        keys = np.ascontiguousarray(table_state["keys"], dtype=np.uint64)
        table_state["hashes"] = fused_hash_rows(keys)
        shard_of = key_shards(np.ascontiguousarray(keys[:-1]), self.shard_bits)  # no start
        for k, shard in enumerate(self.shards):
            mine = shard_of == k
            if shard.pages is not None:
                shard.pages.restore({name: v[..., mine] for name, v in table_state.items()})
                continue
            shard.table.restore({name: v[..., mine] for name, v in table_state.items()},
                                self.backend.to_device)
            live = shard.table.live_slots()
            shard.log = {}
            shard.note(live, shard.table.columns["__wend"][live])
            shard.new_ends = []
        self._restore_aggs(state, self.table.live_slots())
        self.pending_ends = {int(e) for e in state["pending_ends"]}
        self.open_ends = {int(e) for e in state["open_ends"]}
