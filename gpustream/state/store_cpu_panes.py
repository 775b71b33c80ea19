"""Tumbling and sliding windows' state on the CPU: pages folded by the fused loop, on
every core.

:class:`CpuPaneStore` folds a batch with the generated one-pass loop of
:mod:`gpustream.kernels.fused_dense` (window assignment, lateness, the key's slot in a
key table shared by all windows, every aggregate, in one pass over the events), for
windows without allowed lateness whose aggregations that loop folds. Each shard's state
is a :class:`~gpustream.state.window_pages.WindowPages`: a key table and one page of
packed rows per open window (a sliding window's event finds its key once, then folds into
a row in each of its windows' pages). The state is split into shards by the top bits of
a hash of the key (without the window); each chunk of a batch's events is hashed and
listed per shard in one pass (:class:`~gpustream.kernels.fused_dense.EventShards`, the
hashes kept for the loops), and each shard's loop runs on its own thread over its events
in arrival order (numba releases the GIL), so a key always lives in one shard and is
updated in arrival order: results are exactly the table store's (tested), whatever the
number of shards.

Sliding windows keep a row per window, not per pane (gcd(size, slide)): a window's float
sums and moments would then add its panes' partial sums, not its events one by one, and
differ in the last bits from the table store's (and the checkpoints it restores).

Windows fire inside a batch as soon as a chunk of events has moved the watermark past
their end, which keeps the pages (and their cache footprint) small. Where more pages
would pass their memory bound (far more windows open at once than pages were meant for),
the fold stops and returns the events it did not take: the operator moves the state to
the (key, window) table (:class:`~gpustream.state.store_table.TableStore`). Snapshots are
the table format (the shards' rows together), so a checkpoint restores on every store.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from gpustream.backend import select_backend
from gpustream.batch import physical_dtype
from gpustream.kernels.fused_dense import EventShards, dense_window_kernel
from gpustream.kernels.fused_emit import EmitAgg, emit_kernel
from gpustream.kernels.fused_window import FUSED_KINDS, FusedAgg, fused_hash_rows, key_shards
from gpustream.kernels.hashing import widen_keys
from gpustream.kernels.join_index import cpu_threads
from gpustream.state.aggstate import AggState, make_state
from gpustream.state.keyed import restore_aggs, snapshot_aggs
from gpustream.state.store_table import add_bookkeeping
from gpustream.state.table import SlotTable
from gpustream.state.window_pages import WindowPages
from gpustream.state.window_store import Events, Fired, Folded, WindowStore, ends_of

if TYPE_CHECKING:
    from gpustream.backend import Backend
    from gpustream.operators.window import WindowSpec

__all__ = ["CpuPaneStore", "shard_count"]

#: events folded between two chances to fire windows
FUSED_CHUNK = 1 << 16

#: table columns of each state kind the fused loop folds (besides its non-null count)
_FUSED_COLUMNS = {"count": ("n",), "count_valid": (), "sum": ("acc",), "min": ("acc",),
                  "max": ("acc",), "moments": ("s1", "s2", "pivot")}
#: each state kind's column counting non-null inputs
_COUNT_FIELD = {"count_valid": "n", "sum": "nn", "min": "nn", "max": "nn", "moments": "nn"}
_NO_BOOL = np.empty(0, dtype=np.bool_)
_POOL: ThreadPoolExecutor | None = None
#: a shard's popped rows: packed rows, key words (``uint64[n, K]``), output order
Popped = tuple[Any, Any, Any]


def _pool() -> ThreadPoolExecutor:
    """The process-wide pool the shards' loops run on (one thread per shard)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpustream-shard")
    return _POOL


def _fused_kind(kind: str) -> str:
    return "moments" if kind in ("mean", "var", "std") else kind


def shard_count() -> int:
    """Shards (threads) of a CPU pane store: 2 where the process may use 2 or more cores,
    else 1; ``GPUSTREAM_CPU_THREADS`` overrides (1, 2 or 4).

    Examples
    --------
    >>> shard_count() in (1, 2, 4)
    True
    """
    return cpu_threads()  # one setting for the window and join kernels


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
    """The packed row layout of a shard's pages (the table holds no rows itself)."""
    table = SlotTable(len(spec.keys) + 2, np, select_backend("cpu"), packed=True)
    table.aliases = _shared_counts(spec)
    add_bookkeeping(table)
    return table


class _Shard:
    """One shard: its row layout, aggregation states, and pages."""

    def __init__(self, table: SlotTable, states: list[AggState], n_keys: int,
                 size: int) -> None:
        self.table = table
        self.states = states
        self.pages = WindowPages(table, n_keys, size)
        self.new_ends: list[Any] = []  # ends of windows given rows since last noted
        self.stopped_at: int | None = None  # where a fold stopped for want of pages
        self.dropped = 0  # (event, window) pairs dropped by this shard's folds, to collect

    def pop_due(self, watermark: int) -> Popped | None:
        """Pop the rows of the windows ``watermark`` reached: their packed rows, key words
        and output order, or None where none is due."""
        popped = self.pages.pop_due(watermark)
        if popped is None:
            return None
        rows, keys = popped  # already in output order
        return rows, keys, np.arange(rows.shape[0], dtype=np.int64)


class CpuPaneStore(WindowStore):
    """Tumbling and sliding windows' state on the CPU (see the module docstring).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.batch import Batch
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> store = CpuPaneStore(spec, select_backend("cpu"), shards=2)
    >>> b = Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 12, 5]}))
    >>> wm = np.array([np.iinfo(np.int64).min, 3, 12])
    >>> store.fold(Events(b, b["ts"], None, wm, {0: None}, 0)).late.tolist()
    [False, False, True]
    >>> f = store.fire(12)[0]
    >>> f.keys[0].tolist(), f.starts.tolist(), f.values[0][0].tolist()
    ([1], [0], [1])
    """

    def __init__(self, spec: WindowSpec, backend: Backend, shards: int | None = None) -> None:
        if (backend.is_device or spec.lateness or spec.revision
                or not all(a.agg.kind in FUSED_KINDS for a in spec.aggs)):
            raise ValueError("the fused loop needs the CPU backend, no allowed lateness and "
                             f"only {', '.join(sorted(FUSED_KINDS))}")
        self.spec = spec
        self.backend = backend
        self.nwin = spec.size // spec.slide
        self.pending_ends: set[int] = set()  # ends of windows with rows not fired yet
        self.open_ends: set[int] = set()
        self._make_shards(shard_count() if shards is None else shards)
        table = self.shards[0].table
        aliases = table.aliases
        aggs = []
        sources: dict[tuple[str, Any], int] = {}  # (input, dtype) -> first agg reading it
        for j, st in enumerate(self.shards[0].states):
            kind = _fused_kind(st.agg.kind)
            counts = st.prefix + _COUNT_FIELD[kind] if kind in _COUNT_FIELD else None
            source = None
            if kind != "count":
                read = (repr(st.agg.input), np.dtype(getattr(st, "dtype", np.float64)))
                source = sources.setdefault(read, j)
            aggs.append(FusedAgg(kind, tuple(st.prefix + c for c in _FUSED_COLUMNS[kind]),
                                 None if counts in aliases else counts,
                                 None if source == j else source))
        pages = self.shards[0].pages
        self.kernel = dense_window_kernel(len(spec.keys), tuple(aggs), pages.fields(),
                                          pages.width, self.nwin == 1)
        self._hashes: Any = None  # the key hash of each event of the batch in fold
        self.shard_bits = len(self.shards).bit_length() - 1  # shards: a power of 2
        self._setup_emit()

    def _make_shards(self, n: int) -> None:
        spec = self.spec
        self.shards = []
        for _ in range(n):
            t = _new_table(spec)
            self.shards.append(_Shard(t, [make_state(a.name, a.agg, a.in_type, a.out_type, t)
                                          for a in spec.aggs], len(spec.keys), spec.size))

    def _setup_emit(self) -> None:
        """The output loop for this query (:func:`emit_kernel`) and its output dtypes."""
        table = self.shards[0].table
        packed = table._packed_names

        def field(name: str) -> tuple[int, bool]:
            name = table.aliases.get(name, name)
            return packed.index(name), table.columns[name].dtype.kind == "f"

        aggs: list[EmitAgg] = []
        self.out_dtypes: list[Any] = []
        names: tuple[str, ...]
        dtype: Any
        for st in self.shards[0].states:
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
    def _arguments(self, ev: Events) -> tuple[list[Any], list[Any], tuple[Any, ...],
                                              tuple[Any, ...]]:
        """The loop's leading and trailing arguments, and the key columns as uint64 words
        with their validity (empty: no nulls), which place events in shards."""
        spec = self.spec
        batch = ev.batch
        head: list[Any] = [ev.ts, _NO_BOOL if ev.ts_valid is None else ev.ts_valid, ev.wm,
                           spec.size, spec.slide, spec.offset, self.nwin]
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
        for i, st in enumerate(self.shards[0].states):
            col = ev.inputs[i]
            if col is None:
                tail += [np.zeros(1), _NO_BOOL]
                continue
            dtype = getattr(st, "dtype", np.float64)
            tail += [np.ascontiguousarray(col.values.astype(dtype, copy=False)),
                     _NO_BOOL if col.valid is None else col.valid]
        return head, tail, tuple(keys), tuple(valids)

    @staticmethod
    def _events(shards: EventShards, pos: int, n: int) -> list[Any]:
        """Each shard's events of the chunk from ``pos`` (ascending), their key hashes
        computed."""
        return shards.take(min(pos, n), min(n, pos + FUSED_CHUNK))

    def _fold(self, k: int, head: list[Any], tail: list[Any], events: Any, late: Any,
              fire_at: int | None) -> Popped | None:
        """Shard ``k``'s loop over ``events``, growing its pages as needed; then, if
        ``fire_at`` is a watermark, pop the rows of the windows it reached (on the
        shard's thread). Where more pages would pass their memory bound it stops, noting
        where in ``stopped_at``."""
        shard = self.shards[k]
        pages = shard.pages
        pos, stop = 0, int(events.shape[0])
        counts = np.zeros(5, dtype=np.int64)
        need_page = False
        while pos < stop:
            if need_page or pages.short(stop - pos):
                if not pages.grow(stop - pos, need_page):
                    shard.stopped_at = pos
                    shard.new_ends.append(pages.open_ends())  # the windows it opened
                    return None
                need_page = False
                continue
            pos = self.kernel(*head, events, pos, stop, pages.room(), self._hashes,
                              *tail, *pages.key_table, *pages.page_arrays,
                              *pages.words, late, counts)
            pages.used += int(counts[1])
            pages.live_keys += int(counts[2])
            need_page = bool(counts[3])
            shard.dropped += int(counts[4])
        shard.new_ends.append(pages.open_ends())
        return None if fire_at is None else shard.pop_due(fire_at)

    def _fold_then_emit(self, head: list[Any], tail: list[Any], events: Any, late: Any,
                        fire_at: int | None, ready: list[Popped | None] | None
                        ) -> tuple[Popped | None, list[Fired]]:
        """The last shard's fold, then the output rows of ``ready`` (popped earlier)."""
        popped = self._fold(len(self.shards) - 1, head, tail, events, late, fire_at)
        return popped, [] if ready is None else self._emit_popped(ready)

    def fold(self, ev: Events) -> Folded:
        """Fold the batch chunk by chunk, firing windows as the watermark passes them.

        With several shards the first shard's loop runs on the calling thread and the
        others' on pool threads; the calling thread then lists the next chunk's events per
        shard, while the last shard's thread builds the output rows of the windows the
        previous chunk fired: no core waits on one serial thread. The output is the same
        as folding chunk after chunk.
        """
        n = ev.batch.num_rows
        wm = ev.wm
        head, tail, keys, valid = self._arguments(ev)
        shards = EventShards(keys, valid, self.shard_bits, n)
        self._hashes = shards.hashes
        late = np.zeros(n, dtype=np.int8)  # each shard sets its own events' flags
        pool = _pool() if len(self.shards) > 1 else None
        fired: list[Fired] = []
        ready: list[Popped | None] | None = None  # popped, to build
        rest = None
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
                try:
                    first = self._fold(0, head, tail, events[0], late, fire_at)
                    events = self._events(shards, stop, n)
                finally:  # no shard's thread still touches the state once this returns
                    pending: list[Future[Any]] = [*futures, last]
                    wait(pending)
                popped_last, emitted = last.result()
                fired.extend(emitted)
                ready = None
                popped = [first, *(f.result() for f in futures), popped_last]
            pos = stop
            self._note_ends()
            if any(sh.stopped_at is not None for sh in self.shards):
                # out of memory for pages: what the other shards popped fires, the events
                # not folded go to the table store with the state
                rest = self._rest(chunk, stop, n)
                fired.extend(self._emit_popped(popped))
                break
            if fire_at is not None and self._fired(fire_at):
                if pool is None:
                    fired.extend(self._emit_popped(popped))
                else:
                    ready = popped
        if ready is not None:
            fired.extend(self._emit_popped(ready))
        self._hashes = None
        return Folded(late.view(np.bool_), self._collect_dropped(), fired, rest=rest)

    def _rest(self, chunk: list[Any], stop: int, n: int) -> Any:
        """The events not folded: the stopped shards' from where they stopped in
        ``chunk``, and every event from ``stop`` on, in batch order."""
        parts = []
        for k, sh in enumerate(self.shards):
            if sh.stopped_at is not None:
                parts.append(chunk[k][sh.stopped_at:])
                sh.stopped_at = None
        parts.append(np.arange(stop, n, dtype=np.int64))
        return np.sort(np.concatenate(parts))

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
    def fire(self, watermark: int) -> list[Fired]:
        """Fire and free the windows ``watermark`` reached: with no lateness every row
        fires once, on time, and is freed at once."""
        if not self._fired(watermark):
            return []
        return self._emit_popped([shard.pop_due(watermark) for shard in self.shards])

    def _fired(self, watermark: int) -> bool:
        """Whether ``watermark`` reached a window with state; if so, those windows are
        done (their rows are popped by the caller)."""
        if not self.pending_ends or min(self.pending_ends) > watermark:
            return False
        self.pending_ends = {e for e in self.pending_ends if e > watermark}
        self.open_ends = {e for e in self.open_ends if e > watermark}
        return True

    def _emit_popped(self, popped: list[Popped | None]) -> list[Fired]:
        """The output of fired windows, from the shards' popped rows, key words and
        orders (:meth:`_Shard.pop_due`; None: nothing due in that shard), merged in
        output order by the generated output loop."""
        parts = [p for p in popped if p is not None]
        if not parts:
            return []
        k = len(self.spec.keys)
        m = sum(int(p[0].shape[0]) for p in parts)
        words = np.empty((parts[0][1].shape[1], m), dtype=np.uint64)
        ends = np.empty(m, dtype=np.int64)
        outs: list[Any] = []
        for st, dtype in zip(self.shards[0].states, self.out_dtypes, strict=True):
            outs.append(np.empty(m, dtype=dtype))
            if st.agg.kind not in ("count", "count_valid"):
                outs.append(np.empty(m, dtype=np.bool_))
        runs = [a for rows, keys, order in parts
                for a in (rows, rows.view(np.float64), keys, order)]
        emit_kernel(self.emit_aggs, self.end_field, len(parts))(*runs, k, words, ends, *outs)
        it = iter(outs)
        values = [(next(it), None if a.agg.kind in ("count", "count_valid") else next(it))
                  for a in self.spec.aggs]
        return [Fired(words[: k + 1], words[k + 1].view(np.int64), ends, values,
                      ordered=True)]

    @property
    def state_rows(self) -> int:
        """(key, window) pairs holding state, over every shard (the open-windows gauge)."""
        return sum(int(sh.pages.p_count[sh.pages.p_live != 0].sum()) for sh in self.shards)

    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state, over every shard."""
        return sum(sh.table.state_bytes() + sh.pages.state_bytes()
                   + sum(st.state_bytes() for st in sh.states) for sh in self.shards)

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The table format: the shards' rows as one table."""
        parts = [s.pages.snapshot() for s in self.shards]
        state: dict[str, Any] = {f"table.{k}": np.concatenate([p[k] for p in parts], axis=-1)
                                 for k in parts[0]}
        first = self.shards[0]
        state.update(snapshot_aggs(first.states, first.table.live_slots(), self.backend.to_host))
        state["pending_ends"] = np.array(sorted(self.pending_ends), dtype=np.int64)
        state["open_ends"] = np.array(sorted(self.open_ends), dtype=np.int64)
        return state

    def restore(self, state: dict[str, Any]) -> bool:
        table_state = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        keys = np.ascontiguousarray(table_state["keys"], dtype=np.uint64)
        table_state["hashes"] = fused_hash_rows(keys)
        shard_of = key_shards(np.ascontiguousarray(keys[:-1]), self.shard_bits)  # no start
        for k, shard in enumerate(self.shards):
            mine = shard_of == k
            shard.pages.restore({name: v[..., mine] for name, v in table_state.items()})
        first = self.shards[0]
        restore_aggs(first.states, state, first.table.live_slots(), self.backend.to_device)
        self.pending_ends, self.open_ends = ends_of(state)
        return True
