"""Window state in panes on the device: the store behind the fused pane kernel.

A key -> dense id map and one page of state rows per open pane (see
:mod:`gpustream.kernels.panes` for the layout and the kernel). This class owns the
arrays, launches the kernel once per batch (again only for the events it could not
place: a page or key slot short, or a key slot claimed but not yet published, after
growing what was short), reads the rows of due panes (a tumbling window) or combines
them (a sliding window), frees panes no open window needs, and converts to and from the
window operators' snapshot format.

Per batch: one launch and one small device-to-host read (``meta``: the kernel's counters,
each page's pane start and row count), which firing needs anyway. Arrays are allocated
only when the state grows (map or pages) and for the output rows of a firing; input
buffers are reused across batches.

Memory: pages x key capacity x (state words + a ``present`` word) plus the map (key
words, hash, flag, reference count per slot). A key whose last pane fired keeps its slot
(recurring keys, the common case, are found again without a claim) until the map reaches
its load limit; the rebuild then keeps only the keys some open pane holds, so the map and
the pages follow the open panes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from gpustream.kernels import panes as K
from gpustream.kernels.hashtable import new_table, upsert
from gpustream.state.table import MIN_CAPACITY, array_bytes

if TYPE_CHECKING:
    from gpustream.backend import Backend

__all__ = ["FIRST_CAPACITY", "FIRST_PAGES", "LOAD", "MAX_BYTES", "DevicePanes", "StateTooLarge"]

#: the share of the map's slots (keys of open panes, and idle keys) in use before a rebuild
LOAD = 0.5
#: pages a new state starts with (doubled whenever every page holds another open pane)
FIRST_PAGES = 4
#: key slots a new state starts with (doubled as the keys of the open panes grow)
FIRST_CAPACITY = MIN_CAPACITY
#: the most bytes the map and the pages may grow to; past it, :class:`StateTooLarge` and the operator moves the state
#: to the separate kernels' (key, window) table, whose rows follow the state held
MAX_BYTES = 1 << 32
#: pre-aggregate in shared memory: None to decide per batch (when the rows holding state
#: are few: hot keys), True or False to force it (tests)
PREAGG: bool | None = None
_META = K.META  # counters before the pages' starts and counts in ``meta``
I64_MAX = np.iinfo(np.int64).max


class StateTooLarge(Exception):
    """Growing the map or the pages would pass :data:`MAX_BYTES`."""


def _how(fill: Any) -> int:
    """How partials of a column combine, from its fill value (the identity element):
    +inf / int64's maximum: min; -inf / int64's minimum: max; otherwise a sum."""
    f = float(fill)
    if f == np.inf or (not isinstance(fill, float) and int(fill) == I64_MAX):
        return K.MIN
    if f == -np.inf or (not isinstance(fill, float) and int(fill) == -I64_MAX - 1):
        return K.MAX
    return K.ADD


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


class DevicePanes:
    """Key map plus pages of pane state rows (``xp``: cupy, or numpy under cudasim).

    Aggregation states register their columns with :meth:`add_column` (as on a
    :class:`~gpustream.state.table.SlotTable`), then :meth:`allocate` makes the arrays;
    ``columns[name]`` is a view over every page's rows (row ``p * capacity + d``).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> st = DevicePanes(1, 10, 0, select_backend("cpu"))   # tumbling 10 (arrays only)
    >>> st.add_column("n.n", np.int64, 0); st.allocate()
    >>> st.capacity, st.pages, st.columns["n.n"].shape
    (1024, 4, (4096,))
    """

    def __init__(self, n_keys: int, size: int, offset: int, backend: Backend,
                 slide: int | None = None) -> None:
        #: the backend its kernels run on (a device one: the arrays are ``backend.xp``'s)
        self.backend = backend
        self.xp = backend.xp
        self.key_words = n_keys + 1  # key columns, then their null bits
        self.size, self.offset = size, offset
        #: a pane's length: the windows' stride (tumbling: the window)
        self.slide = size if slide is None else slide
        self.nwin = size // self.slide
        #: windows ending at or before it have fired (their rows were read)
        self.fired_to = int(np.iinfo(np.int64).min)
        self.columns: dict[str, Any] = {}
        self.specs: list[tuple[str, Any, Any]] = []  # (name, dtype, fill) in order
        #: the rows' pivot columns of mean/var/std, in the order of ``pivots``' rows: a
        #: key's pivot is the same in every pane (set when it is claimed)
        self.pivot_columns: list[str] = []
        self.live_count = 0  # rows holding state, as of the last read
        self.rebuilds = 0  # times the map or the pages were re-laid out
        self._buffers: dict[str, Any] = {}
        self.epoch = 1  # the last launch's number (see :meth:`_next_epoch`)
        #: events :meth:`fold` did not fold because the state would pass MAX_BYTES
        self.stuck: Any = None

    # -- layout ---------------------------------------------------------------------------
    def add_column(self, name: str, dtype: Any, fill: Any) -> None:
        """Register a state column (before :meth:`allocate`)."""
        self.specs.append((name, np.dtype(dtype), fill))

    @property
    def int_names(self) -> list[str]:
        return [n for n, dt, _ in self.specs if dt.kind != "f"]

    @property
    def float_names(self) -> list[str]:
        return [n for n, dt, _ in self.specs if dt.kind == "f"]

    def allocate(self, capacity: int | None = None, pages: int | None = None) -> None:
        """Empty map of ``capacity`` slots and ``pages`` free pages."""
        xp = self.xp
        capacity = FIRST_CAPACITY if capacity is None else capacity
        pages = FIRST_PAGES if pages is None else pages
        self.capacity, self.pages = capacity, pages
        self.t_hash, self.t_ready, self.t_keys = new_table(capacity, self.key_words, xp)
        self.refs = xp.zeros(capacity, dtype=np.int32)
        self.pivots = xp.zeros((max(1, len(self.pivot_columns)), capacity), dtype=np.float64)
        self.istate, self.fstate = self._fresh_state(pages * capacity)
        self.present = xp.zeros(pages * capacity, dtype=np.int32)
        self.p_touched = xp.zeros((pages, capacity), dtype=np.int32)
        self._set_meta(np.full(pages, K.FREE, dtype=np.int64), np.zeros(pages, np.int64), 0)
        self._link()
        ints = [f for _, dt, f in self.specs if dt.kind != "f"]
        floats = [f for _, dt, f in self.specs if dt.kind == "f"]
        self.ifill = xp.asarray(np.array(ints, dtype=np.int64))
        self.ffill = xp.asarray(np.array(floats, dtype=np.float64))
        self.ihow = xp.asarray(np.array([_how(f) for f in ints], dtype=np.int64))
        self.fhow = xp.asarray(np.array([_how(f) for f in floats], dtype=np.int64))
        self.can_preagg = len(ints) <= K.MAX_COLUMNS and len(floats) <= K.MAX_COLUMNS

    def _fresh_state(self, rows: int) -> tuple[Any, Any]:
        xp = self.xp
        ints = [(dt, f) for _, dt, f in self.specs if dt.kind != "f"]
        floats = [(dt, f) for _, dt, f in self.specs if dt.kind == "f"]
        istate = xp.empty((max(1, len(ints)), rows), dtype=np.int64)
        fstate = xp.empty((max(1, len(floats)), rows), dtype=np.float64)
        for k, (_, f) in enumerate(ints):
            istate[k] = int(f)
        for k, (_, f) in enumerate(floats):
            fstate[k] = float(f)
        return istate, fstate

    def _set_meta(self, starts: np.ndarray, counts: np.ndarray, used: int) -> None:
        """``meta`` on the device (counters, page starts, page counts) and its host copy."""
        pages = starts.shape[0]
        host = np.zeros(_META + 2 * pages, dtype=np.int64)
        host[K.USED] = used
        host[K.LIMIT] = int(self.capacity * LOAD)
        host[_META:_META + pages] = starts
        host[_META + pages:] = counts
        self.meta = self.xp.array(host)  # a copy: the host keeps its own
        self.host = host

    def _link(self) -> None:
        """``columns``: each registered name as a view of its row of ``istate``/``fstate``."""
        self.columns = {}
        for k, name in enumerate(self.int_names):
            self.columns[name] = self.istate[k]
        for k, name in enumerate(self.float_names):
            self.columns[name] = self.fstate[k]

    def bytes_for(self, capacity: int, pages: int) -> int:
        """Bytes of a map of ``capacity`` slots with ``pages`` pages (as allocated).

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> st = DevicePanes(1, 10, 0, select_backend("cpu"))
        >>> st.add_column("n.n", np.int64, 0); st.allocate()
        >>> st.bytes_for(st.capacity, st.pages) == st.state_bytes() - st.meta.nbytes
        True
        """
        columns = max(1, len(self.int_names)) + max(1, len(self.float_names))
        per_slot = (self.key_words * 8 + 8 + 4 + 4 + 8 * max(1, len(self.pivot_columns)))
        return capacity * per_slot + pages * capacity * (8 * columns + 4 + 4)

    def _check_bytes(self, capacity: int, pages: int) -> None:
        if self.bytes_for(capacity, pages) > MAX_BYTES:
            raise StateTooLarge(f"{pages} pages of {capacity:,} rows would pass "
                                f"{MAX_BYTES:,} bytes")

    def state_bytes(self) -> int:
        """Bytes of the map and the pages."""
        return array_bytes(self.t_hash, self.t_ready, self.t_keys, self.refs, self.pivots,
                           self.istate,
                           self.fstate, self.present, self.p_touched, self.meta)

    def live_slots(self) -> Any:
        """Rows holding state, page by page (the StateTable protocol)."""
        return self.xp.nonzero(self.present)[0]

    def held_slots(self) -> Any:
        return self.live_slots()

    # -- folding --------------------------------------------------------------------------
    def _buffer(self, name: str, shape: tuple[int, int], dtype: Any) -> Any:
        """A reused input buffer of at least ``shape`` (grown, never per batch)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1] < shape[1]:
            grown = (max(shape[0], 1), _pow2(max(shape[1], 1024)))
            buf = self.xp.empty(grown, dtype=dtype)
            self._buffers[name] = buf
        return buf

    def fold(self, ts: Any, ts_ok: Any, wm: Any, keys: Any, prog: Any, iv: Any, fv: Any,
             va: Any, rows: Any = None) -> tuple[Any, int, int, Any]:
        """Fold a batch's events (``rows``, default all); returns (late flags ``int8[n]``,
        late events, dropped memberships, the events deferred until windows fire here:
        see :func:`~gpustream.kernels.panes.fold_panes`). ``keys`` is ``uint64[K + 1, n]``
        (key words, null bits)."""
        n = int(ts.shape[0])
        late = self._buffer("late", (1, n), np.int8)[0, :n]
        retry = self._buffer("retry", (1, n), np.int64)[0]
        defer = self._buffer("defer", (1, n), np.int64)[0]
        if rows is None:
            late[:] = 0
            rows = self._arange(n)
        self.stuck = None
        self.meta[: K.USED] = 0
        self.meta[K.PAGE_SHORT:_META] = 0
        n_late = n_dropped = 0
        # hot keys: the rows holding state would fit one block's shared slots, so a tile
        # of events shares rows (with many keys, a tile's rows are all distinct)
        preagg = self.can_preagg and (PREAGG if PREAGG is not None
                                      else self.live_count <= K.SLOTS)
        while rows.shape[0]:
            self.meta[K.N_RETRY] = 0
            self.meta[K.PAGE_SHORT:K.N_DEFER] = 0
            self.backend.launch(
                K.FOLD_PANES, int(rows.shape[0]), ts, ts_ok, wm, self.size, self.slide, self.nwin, self.offset, self.fired_to,
                self._next_epoch(), keys, rows, self.t_hash, self.t_ready, self.t_keys, self.refs, self.p_touched,
                self.present, prog, iv, fv, va, self.istate, self.fstate, self.ifill,
                self.fhow, self.ffill, self.ihow, int(preagg), late, retry, defer, self.meta,
                self.pivots)
            self.host = self._read()  # the one small read of a launch
            h = self.host
            n_late, n_dropped = int(h[K.N_LATE]), int(h[K.N_DROPPED])
            k = int(h[K.N_RETRY])
            if not k:
                break
            rows = retry[:k].copy()
            try:
                if h[K.PAGE_SHORT]:
                    self._grow_pages(self.pages * 2)
                if h[K.KEY_SHORT]:
                    self._rebuild()
            except StateTooLarge:
                self.stuck = rows  # not folded: the caller moves the state elsewhere
                break
        self.live_count = int(self.host[_META + self.pages:].sum())
        deferred = defer[: int(self.host[K.N_DEFER])].copy()
        if self.stuck is None and self.host[K.USED] > 0.9 * self.host[K.LIMIT]:
            with contextlib.suppress(StateTooLarge):  # the next batch finds it short
                self._rebuild()  # between batches: the next one finds room
        return late, n_late, n_dropped, deferred

    def _next_epoch(self) -> int:
        """The next launch's number: 2, 3, ... (1 marks slots the host's upsert published)."""
        self.epoch = 2 if self.epoch >= np.iinfo(np.int32).max else self.epoch + 1
        return self.epoch

    def _arange(self, n: int) -> Any:
        a = self._buffers.get("arange")
        if a is None or a.shape[0] < n:
            a = self.xp.arange(_pow2(max(n, 1024)), dtype=np.int64)
            self._buffers["arange"] = a
        return a[:n]

    def _read(self) -> np.ndarray:
        meta = self.meta
        return np.array(meta.get() if hasattr(meta, "get") else meta, dtype=np.int64)

    # -- growth ---------------------------------------------------------------------------
    def _grow_pages(self, pages: int) -> None:
        """More pages (the same map): the rows of the pages kept do not move."""
        self._check_bytes(self.capacity, pages)
        xp = self.xp
        old = self.pages * self.capacity
        istate, fstate = self._fresh_state(pages * self.capacity)
        istate[:, :old] = self.istate
        fstate[:, :old] = self.fstate
        present = xp.zeros(pages * self.capacity, dtype=np.int32)
        present[:old] = self.present
        touched = xp.zeros((pages, self.capacity), dtype=np.int32)
        touched[: self.pages] = self.p_touched
        h = self.host  # read by the fold that found the state short
        starts = np.full(pages, K.FREE, dtype=np.int64)
        counts = np.zeros(pages, dtype=np.int64)
        starts[: self.pages] = h[_META:_META + self.pages]
        counts[: self.pages] = h[_META + self.pages:]
        self.istate, self.fstate, self.present, self.p_touched = istate, fstate, present, touched
        self.pages = pages
        counters = h[:_META].copy()
        self._set_meta(starts, counts, int(h[K.USED]))
        self.meta[:_META] = self.xp.asarray(counters)
        self.host[:_META] = counters
        self.rebuilds += 1
        self._link()

    def _rebuild(self) -> None:
        """A new map of the keys some page holds (twice the capacity where they fill more
        than half of the limit), the pages' rows moved to the keys' new ids."""
        xp = self.xp
        live = xp.nonzero((self.t_hash >= np.uint64(2)) & (self.refs > 0))[0]
        m = int(live.shape[0])
        capacity = self.capacity
        while m > capacity * LOAD / 2:
            capacity *= 2
        if capacity > self.capacity:
            self._check_bytes(capacity, self.pages)
        table = new_table(capacity, self.key_words, xp)
        keys = xp.ascontiguousarray(self.t_keys[live].T)
        ids, _ = upsert(table, self.t_hash[live], keys, xp.arange(m, dtype=np.int64),
                        self.backend)
        remap = xp.zeros(self.capacity, dtype=np.int32)
        remap[live] = ids.astype(np.int32)
        pages = xp.arange(self.pages, dtype=np.int64)[:, None]
        old_rows = (pages * self.capacity + live[None, :]).ravel()
        new_rows = (pages * capacity + ids[None, :]).ravel()
        istate, fstate = self._fresh_state(self.pages * capacity)
        istate[:, new_rows] = self.istate[:, old_rows]
        fstate[:, new_rows] = self.fstate[:, old_rows]
        present = xp.zeros(self.pages * capacity, dtype=np.int32)
        present[new_rows] = self.present[old_rows]
        touched = xp.zeros((self.pages, capacity), dtype=np.int32)
        touched[:, : self.capacity] = remap[self.p_touched]
        refs = xp.zeros(capacity, dtype=np.int32)
        refs[ids] = self.refs[live]
        pivots = xp.zeros((self.pivots.shape[0], capacity), dtype=np.float64)
        pivots[:, ids] = self.pivots[:, live]
        h = self.host  # read by the fold that found the state short
        counters = h[:_META].copy()
        self.t_hash, self.t_ready, self.t_keys = table
        self.refs, self.pivots, self.istate, self.fstate = refs, pivots, istate, fstate
        self.present, self.p_touched = present, touched
        self.capacity = capacity
        self._set_meta(h[_META:_META + self.pages].copy(), h[_META + self.pages:].copy(), m)
        counters[K.USED] = m
        counters[K.LIMIT] = int(capacity * LOAD)
        self.meta[:_META] = xp.asarray(counters)
        self.host[:_META] = counters
        self.rebuilds += 1
        self._link()

    # -- firing ---------------------------------------------------------------------------
    def open_starts(self) -> list[int]:
        """Starts of the panes holding state, ascending (as of the last read)."""
        starts = self.host[_META:_META + self.pages]
        return sorted(int(s) for s in starts if s != K.FREE)

    def end_of(self, start: int) -> int:
        return start + self.size if start <= I64_MAX - self.size else I64_MAX

    def take(self, starts: list[int]) -> tuple[Any, Any, Any, Any]:
        """The rows of the panes ``starts``: (key ids, rows, pane starts, pane ends),
        page after page."""
        xp = self.xp
        h = self.host
        ids, rows, st, en = [], [], [], []
        for s in starts:
            p = self._page_of(s)
            cnt = int(h[_META + self.pages + p])
            d = self.p_touched[p, :cnt].astype(np.int64)
            ids.append(d)
            rows.append(d + p * self.capacity)
            st.append(xp.full(cnt, s, dtype=np.int64))
            en.append(xp.full(cnt, self.end_of(s), dtype=np.int64))
        if len(ids) == 1:
            return ids[0], rows[0], st[0], en[0]
        return (xp.concatenate(ids), xp.concatenate(rows), xp.concatenate(st),
                xp.concatenate(en))

    def combine(self, windows: list[tuple[int, list[int]]]) -> tuple[Any, Any, dict[str, Any]]:
        """Rows of windows made of panes: for each ``(window start, pane starts)``, the
        keys any of its panes holds, each column folded over the panes by how it combines
        (a pane without the key holds the column's identity, its fill value). Returns the
        keys' ids, the rows' window starts and the combined columns, window after window.
        """
        xp = self.xp
        h = self.host
        ids_out, starts_out = [], []
        parts: dict[str, list[Any]] = {name: [] for name, _, _ in self.specs}
        for start, pane_starts in windows:
            pages = [self._page_of(p) for p in pane_starts]
            lists = [self.p_touched[p, : int(h[_META + self.pages + p])] for p in pages]
            ids = xp.unique(xp.concatenate(lists)).astype(np.int64)
            if not ids.shape[0]:
                continue
            for name, _, fill in self.specs:
                if name in self.pivot_columns:  # the key's, the same in every pane
                    parts[name].append(self.pivots[self.pivot_columns.index(name), ids])
                    continue
                col = self.columns[name]
                how = _how(fill)
                acc = col[pages[0] * self.capacity + ids]
                for p in pages[1:]:
                    more = col[p * self.capacity + ids]
                    acc = (acc + more if how == K.ADD
                           else xp.fmin(acc, more) if how == K.MIN else xp.fmax(acc, more))
                parts[name].append(acc)
            ids_out.append(ids)
            starts_out.append(xp.full(ids.shape[0], start, dtype=np.int64))
        if not ids_out:
            empty = xp.empty(0, dtype=np.int64)
            return empty, empty, {name: xp.empty(0, dtype=dt) for name, dt, _ in self.specs}
        return (xp.concatenate(ids_out), xp.concatenate(starts_out),
                {name: xp.concatenate(p) for name, p in parts.items()})

    def _page_of(self, start: int) -> int:
        found = np.flatnonzero(self.host[_META:_META + self.pages] == start)
        assert found.shape[0] == 1, (start, found)
        return int(found[0])

    def release(self, starts: list[int]) -> None:
        """Free the pages of ``starts`` (after their rows were read): rows back to their
        fill values, each key's count of pages holding it lowered. A key no page holds
        keeps its slot (and id): the next window's events of a recurring key find it
        without a claim; :meth:`_rebuild` drops such keys when the map reaches its limit."""
        for s in starts:
            p = self._page_of(s)
            cnt = int(self.host[_META + self.pages + p])
            d = self.p_touched[p, :cnt].astype(np.int64)
            rows = d + p * self.capacity
            for k, f in enumerate(f for _, dt, f in self.specs if dt.kind != "f"):
                self.istate[k, rows] = int(f)
            for k, f in enumerate(f for _, dt, f in self.specs if dt.kind == "f"):
                self.fstate[k, rows] = float(f)
            self.present[rows] = 0
            self.refs[d] -= 1  # a key no page holds keeps its id until the next rebuild
            self.host[_META + p] = K.FREE
            self.host[_META + self.pages + p] = 0
            self.meta[_META + p] = K.FREE
            self.meta[_META + self.pages + p] = 0
        self.live_count = int(self.host[_META + self.pages:].sum())

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self, to_host: Any) -> tuple[dict[str, np.ndarray], Any]:
        """The open panes' rows as the window operators' table format (``keys``: key
        words, null bits and the pane start; ``col.<name>``), and their rows here."""
        starts = self.open_starts()
        if not starts:
            empty = self.xp.empty(0, dtype=np.int64)
            keys = np.empty((self.key_words + 1, 0), dtype=np.uint64)
            return ({"keys": keys, **{f"col.{n}": np.empty(0, dt) for n, dt, _ in self.specs}},
                    empty)
        ids, rows, st, _ = self.take(starts)
        words = to_host(self.t_keys[ids].T)
        keys = np.concatenate([words, to_host(st).view(np.uint64)[None, :]])
        out: dict[str, np.ndarray] = {"keys": np.ascontiguousarray(keys)}
        for name, dt, _ in self.specs:
            out[f"col.{name}"] = to_host(self.columns[name][rows]).astype(dt, copy=False)
        return out, rows

    def restore(self, keys: np.ndarray, cols: dict[str, np.ndarray], to_device: Any) -> Any:
        """Load rows of the table format (``keys`` with the pane start last, ``cols`` by
        column name); returns each row's new row here."""
        xp = self.xp
        n = int(keys.shape[1])
        starts = keys[-1].view(np.int64)
        distinct = np.unique(starts)
        pages = FIRST_PAGES
        while pages < distinct.shape[0]:
            pages *= 2
        words = np.ascontiguousarray(keys[:-1])
        n_keys = int(np.unique(words, axis=1).shape[1]) if n else 0
        capacity = max(FIRST_CAPACITY, _pow2(int(n_keys / LOAD * 2) + 1))
        self.allocate(capacity, pages)
        if not n:
            return xp.empty(0, dtype=np.int64)
        from gpustream.kernels.hashing import hash_rows

        d_words = xp.ascontiguousarray(to_device(words))
        ids, is_new = upsert((self.t_hash, self.t_ready, self.t_keys),
                             hash_rows(d_words, self.backend), d_words,
                             xp.arange(n, dtype=np.int64), self.backend)
        page = np.searchsorted(distinct, starts)
        d_page = to_device(page.astype(np.int64))
        rows = d_page * self.capacity + ids
        for name, _, _ in self.specs:
            self.columns[name][rows] = to_device(cols[name])
        for m, name in enumerate(self.pivot_columns):  # rows of a key share its pivot
            self.pivots[m, ids] = to_device(cols[name])
        self.present[rows] = 1
        counts = np.bincount(page, minlength=pages).astype(np.int64)
        h_ids = np.asarray(ids.get() if hasattr(ids, "get") else ids)
        for p in range(distinct.shape[0]):
            mine = h_ids[page == p].astype(np.int32)
            self.p_touched[p, : mine.shape[0]] = to_device(mine)
        self.refs[:] = to_device(np.bincount(h_ids, minlength=self.capacity).astype(np.int32))
        page_starts = np.full(pages, K.FREE, dtype=np.int64)
        page_starts[: distinct.shape[0]] = distinct
        used = int(np.asarray(is_new.get() if hasattr(is_new, "get") else is_new).sum())
        self._set_meta(page_starts, counts, used)
        self.live_count = n
        return rows
