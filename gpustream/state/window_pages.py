"""Window state in pages: the dense layout of :mod:`gpustream.kernels.fused_dense`.

A key table shared by every open window, and one page of state rows per open window
indexed by the key's slot. A row holds the aggregation states' words of a packed
:class:`~gpustream.state.table.SlotTable` (the ``template``: same columns, same fill
values, same aliases), padded to a power of two of words so that rows share no cache
line; the template's bookkeeping columns are the same for every row of a page (its
window's end; on time; no revision), so pages do not store them and snapshots write
them. Snapshots are the template's (key, window) table format.

Memory is pages x key capacity x row width (:meth:`WindowPages.state_bytes`). The key
table keeps only keys that some open window holds (a key's slot is freed when its last
window fires), and pages are freed when their window fires, so both follow the open
windows. The key table is filled up to :data:`LOAD` (a page has a row per key slot, so
this is also how full pages get), and a state starts with one page and adds half as many
again each time a window finds none free: one open window costs one page.
:meth:`WindowPages.grow` reports when more pages would pass :data:`MAX_BYTES` (many
windows open at once, e.g. events far ahead of the watermark), and the operator then
moves to the (key, window) table layout.

With one key column and count + sum (rows of 4 words), a key slot costs 28 bytes of key
table and 36 per page (its 32-byte row, a byte of ``present``, its entry in the page's
list); a key takes 4/3 to 10/3 slots (the capacity is a power of two, filled to at most
:data:`LOAD`): 85-215 bytes per key in one open window, and 48-120 more per further
open window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.kernels.fused_dense import insert_keys, move_pages, pop_pages
from gpustream.kernels.fused_window import fused_hash_rows
from gpustream.kernels.hashtable import TOMBSTONE, release_tombstones
from gpustream.state.table import MIN_CAPACITY, SlotTable, array_bytes

__all__ = ["FIRST_PAGES", "LOAD", "MAX_BYTES", "WindowPages"]

#: the most bytes of pages a dense state grows to before the operator changes layout
#: (a state may always have 4 pages)
MAX_BYTES = 1 << 29
#: the share of the key table's slots (live or freed) that may be in use: probes stay
#: short, and a page (a row per key slot) stays at least ~40 % used after a growth
LOAD = 0.75
#: pages a new state starts with
FIRST_PAGES = 1
_SHIFT, _HALF, _LOW = np.uint64(32), np.uint64(1 << 32), np.uint64((1 << 32) - 1)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


class WindowPages:
    """Key table plus pages of state rows, for one shard of a tumbling or sliding window
    of ``size``.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> t = SlotTable(3, np, select_backend("cpu"), packed=True)
    >>> t.add_column("__wend", np.int64, 2**63 - 1); t.add_column("__ontime", np.int8, 0)
    >>> t.add_column("n", np.int64, 0)
    >>> st = WindowPages(t, n_keys=1, size=10)
    >>> st.capacity, st.pages, st.width, sorted(st.columns)
    (1024, 1, 1, ['n'])
    >>> st.state_bytes()   # 1,024 key slots x (28 B of key table + 12 B of one page) + 81
    41041
    """

    def __init__(self, template: SlotTable, n_keys: int, size: int) -> None:
        self.template = template
        self.n_keys = n_keys
        self.size = size
        names = template._packed_names
        #: the aggregation states' words, first in a packed row (then the bookkeeping)
        self.hot = sum(not name.startswith("__") for name in names)
        assert names[self.hot] == "__wend", names  # where the output loop reads it
        #: words per row: the states', padded to a power of two (or whole cache lines)
        self.width = _pow2(max(self.hot, 1)) if self.hot <= 8 else -(-self.hot // 8) * 8
        self.fill_row = np.zeros(self.width, dtype=np.int64)
        self.fill_row[: self.hot] = template._fill_row[: self.hot]
        self.live_keys = 0  # key slots in use
        self.used = 0  # key slots not empty (in use or tombstones)
        self.relayouts = 0  # times the key table or the pages grew
        self.pages = 0
        self.block: Any = None  # the pages' rows, then their marks, starts, flags and lists
        self.present: Any = None
        self.p_start: Any = None
        self.p_live: Any = None
        self.p_count: Any = None
        self.p_touched: Any = None
        self._allocate(MIN_CAPACITY, FIRST_PAGES)

    # -- layout ---------------------------------------------------------------------------
    def _allocate(self, capacity: int, pages: int) -> None:
        self.capacity = capacity
        # per slot: hash (0 empty, 1 freed), key words, null bits
        self.d_keys = np.zeros((capacity, self.n_keys + 2), dtype=np.uint64)
        self.refs = np.zeros(capacity, dtype=np.int32)  # pages holding a row of the key
        self._allocate_pages(pages)

    def _allocate_pages(self, pages: int, keep: int = 0) -> None:
        """Arrays for ``pages`` pages, the first ``keep`` of them copied from the current
        ones (of the same key capacity)."""
        capacity, old = self.capacity, self.pages if keep else 0
        if keep:
            o_block, o_present = self.block, self.present
            o_start, o_live, o_count, o_touched = (self.p_start, self.p_live, self.p_count,
                                                   self.p_touched)
        self.pages = pages
        raw = np.empty(pages * capacity * self.width + 8, dtype=np.int64)
        at = (-(raw.ctypes.data // 8)) % 8  # rows start on cache lines
        self.block = raw[at : at + pages * capacity * self.width].reshape(-1, self.width)
        self.block[keep * capacity :] = self.fill_row
        flat = self.block.reshape(-1)
        #: the rows as one flat array of words, read as each word type (the dense loop's)
        self.words = (flat, flat.view(np.float64), flat.view(np.uint64))
        self.p_start = np.zeros(pages, dtype=np.int64)
        self.p_live = np.zeros(pages, dtype=np.int8)
        self.p_count = np.zeros(pages, dtype=np.int64)
        # a page lists at most the live keys, which fill at most LOAD of the key slots
        self.p_touched = np.zeros((pages, self.key_room(capacity)), dtype=np.int32)
        self.present = np.zeros(pages * capacity, dtype=np.int8)
        if keep:  # the pages' rows keep their places: copied as they are
            assert keep <= old
            self.block[: keep * capacity] = o_block[: keep * capacity]
            self.present[: keep * capacity] = o_present[: keep * capacity]
            self.p_start[:keep], self.p_live[:keep] = o_start[:keep], o_live[:keep]
            self.p_count[:keep], self.p_touched[:keep] = o_count[:keep], o_touched[:keep]
        t = self.template
        self.columns = {name: self.block.view(t.columns[name].dtype)[:, j]
                        for j, name in enumerate(t._packed_names[: self.hot])}
        for alias, target in t.aliases.items():
            if target in self.columns:
                self.columns[alias] = self.columns[target]

    def fields(self) -> tuple[tuple[str, int, str], ...]:
        """Each state column's place in a row, ``(name, word, kind)`` (``kind``: ``i``,
        ``f`` or ``u``, its word type), aliases included: the dense loop's ``fields``.

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> t = SlotTable(2, np, select_backend("cpu"), packed=True)
        >>> t.add_column("__wend", np.int64, 0); t.add_column("n", np.int64, 0)
        >>> t.add_column("s", np.float64, 0.0)
        >>> WindowPages(t, n_keys=1, size=5).fields()
        (('n', 0, 'i'), ('s', 1, 'f'))
        """
        t = self.template
        place = {name: j for j, name in enumerate(t._packed_names[: self.hot])}
        place.update({a: place[b] for a, b in t.aliases.items() if b in place})
        return tuple((name, j, np.dtype(t.columns[name].dtype).kind)
                     for name, j in place.items())

    @property
    def key_table(self) -> tuple[Any, Any]:
        return self.d_keys, self.refs

    @property
    def page_arrays(self) -> tuple[Any, Any, Any, Any, Any]:
        return self.p_start, self.p_live, self.p_count, self.p_touched, self.present

    @staticmethod
    def key_room(capacity: int) -> int:
        """The most key slots in use (live or freed) in a key table of ``capacity``."""
        return int(capacity * LOAD)

    def room(self) -> int:
        """Empty key slots the loop may still fill."""
        return self.key_room(self.capacity) - self.used

    def state_bytes(self) -> int:
        """Bytes of the arrays this state holds: the key table and the pages.

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> t = SlotTable(2, np, select_backend("cpu"), packed=True)
        >>> t.add_column("__wend", np.int64, 0); t.add_column("__ontime", np.int8, 0)
        >>> t.add_column("n", np.int64, 0); t.add_column("s", np.float64, 0.0)
        >>> pages = WindowPages(t, n_keys=1, size=5)
        >>> key_table = pages.capacity * (8 + 16 + 4)  # hash, key and null words, refs
        >>> page = pages.capacity * (pages.width * 8 + 1 + 0.75 * 4)  # rows, present, list
        >>> pages.width, pages.state_bytes() - key_table - pages.pages * page  # alignment, info
        (2, 81.0)
        """
        return array_bytes(self.d_keys, self.refs, self.block, self.p_start, self.p_live,
                           self.p_count, self.p_touched, self.present)

    def short(self, remaining: int) -> bool:
        """Whether the key table should grow (or drop its tombstones) before the loop
        folds ``remaining`` more events: it keeps room for a quarter of its live keys."""
        return self.room() < max(1, min(remaining, max(MIN_CAPACITY // 4, self.live_keys // 4)))

    def grow(self, remaining: int, need_page: bool) -> bool:
        """Make room in the key table if it is :meth:`short` (rebuilt without tombstones,
        room for 1.5x its live keys within :data:`LOAD`: a page is as many rows as the
        key table has slots, so it is kept tight) and, if ``need_page``, for half as many
        pages again (at least one more). Returns False where the pages would pass
        :data:`MAX_BYTES`: nothing is changed then."""
        capacity, pages = self.capacity, self.pages
        if need_page:
            pages += max(1, pages // 2)
        short = self.short(remaining)
        if short:
            target = self.live_keys + max(self.live_keys // 2, MIN_CAPACITY // 2)
            capacity = max(capacity, _pow2(int(target / LOAD) + 1))
        if pages * capacity * self.width * 8 > MAX_BYTES and pages > 4:
            return False
        if not short:  # more pages only: the key table stays
            self._allocate_pages(pages, keep=self.pages)
            self.relayouts += 1
        else:
            self._relayout(capacity, pages)
        return True

    def _relayout(self, capacity: int, pages: int) -> None:
        """Move every live key and row into arrays for ``capacity`` keys and ``pages``."""
        old = (self.capacity, self.d_keys, self.refs, self.block, self.p_start, self.p_live,
               self.p_count, self.p_touched)
        o_cap, o_keys, o_refs, o_block, o_start, o_live, o_count, o_touched = old
        live = np.flatnonzero(o_keys[:, 0] > TOMBSTONE)
        self._allocate(capacity, pages)
        self.relayouts += 1
        slots, _ = insert_keys(self.d_keys, o_keys[live, 0], o_keys[live, 1:])
        remap = np.full(o_cap, -1, dtype=np.int64)
        remap[live] = slots
        self.refs[slots] = o_refs[live]
        n_old = o_start.shape[0]
        self.p_start[:n_old], self.p_live[:n_old], self.p_count[:n_old] = o_start, o_live, o_count
        move_pages((o_block, o_cap, o_live, o_count, o_touched), remap, self.block, capacity,
                   self.p_touched, self.present)
        self.used = self.live_keys = int(live.shape[0])

    # -- firing ---------------------------------------------------------------------------
    def pop_due(self, watermark: int) -> tuple[Any, Any] | None:
        """Pop the pages whose window ``watermark`` reached: their rows (the states'
        :attr:`hot` words, then the window end: the packed row's first fields, which is all
        the output loop reads) and key words (``uint64[n, K + 2]``: keys, null bits, window
        start), or None where none is.

        The rows come out in output order: by window end, then by key words (each
        compared unsigned, as :func:`~gpustream.kernels.fused_emit.run_order` orders),
        so what reads them next reads them in order. (Popping a page in memory order and
        sorting the popped rows instead was slower: the output loop then reads them at
        random.)"""
        size = self.size
        due = np.flatnonzero((self.p_live != 0) & (self.p_start <= watermark - size))
        if due.shape[0] == 0:
            return None
        due = due[np.argsort((self.p_start[due] + size).view(np.uint64), kind="stable")]
        k = self.n_keys
        for p in due.tolist() if k else []:  # without keys, a window has one row
            touched = self.p_touched[p, : self.p_count[p]]
            if k == 1:
                words = np.take(self.d_keys[:, 1], touched)
                if touched.shape[0] and words.max() < _HALF:  # (key, slot) in one word:
                    packed = (words << _SHIFT) | touched.astype(np.uint64)  # a plain sort
                    packed.sort()  # is twice as fast as an argsort
                    touched[:] = packed & _LOW
                    continue
                order = np.argsort(words)
            else:
                order = np.lexsort([np.take(self.d_keys[:, c + 1], touched)
                                    for c in range(k - 1, -1, -1)])
            touched[:] = np.take(touched, order)
        n = int(self.p_count[due].sum())
        rows = np.empty((n, self.hot + 1), dtype=np.int64)  # states, then the window end
        keys = np.empty((n, self.n_keys + 2), dtype=np.uint64)
        freed = np.empty(n, dtype=np.int64)
        n_freed = pop_pages(due, self.capacity, size, self.page_arrays, self.block,
                            self.fill_row, self.key_table, rows, keys, freed)
        if n_freed:
            self.live_keys -= n_freed
            self.used -= release_tombstones(self.d_keys[:, 0], freed[:n_freed])
        return rows, keys

    def open_ends(self) -> Any:
        """Ends of the windows holding state."""
        return self.p_start[self.p_live != 0] + self.size

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The (key, window) table format of :meth:`SlotTable.snapshot`: every live row."""
        parts = []
        for p in np.flatnonzero(self.p_live).tolist():
            touched = self.p_touched[p, : self.p_count[p]]
            keys = np.empty((touched.shape[0], self.n_keys + 2), dtype=np.uint64)
            keys[:, :-1] = self.d_keys[touched, 1:]
            keys[:, -1] = np.uint64(self.p_start[p])
            parts.append((self.block[p * self.capacity + touched], keys))
        t = self.template
        width = int(t._block.shape[1])
        n = sum(r.shape[0] for r, _ in parts)
        rows = np.empty((n, width), dtype=np.int64)
        rows[:] = t._fill_row
        keys = (np.concatenate([k for _, k in parts]) if parts
                else np.empty((0, self.n_keys + 2), dtype=np.uint64))
        if parts:
            rows[:, : self.hot] = np.concatenate([r[:, : self.hot] for r, _ in parts])
        views = t.row_views(rows)
        views["__wend"][:] = keys[:, -1].view(np.int64) + self.size  # the page's window
        views["__ontime"][:] = 1  # no allowed lateness: every row was made on time
        keys_t = np.ascontiguousarray(keys.T)
        out: dict[str, Any] = {"keys": keys_t, "hashes": fused_hash_rows(keys_t)}
        for name in t.columns:
            out[f"col.{name}"] = views[name].astype(t._fill[name][0])
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Load the rows of a (key, window) table snapshot (on any path or backend)."""
        keys = np.ascontiguousarray(state["keys"], dtype=np.uint64)  # [K + 2, n]
        n = int(keys.shape[1])
        t = self.template
        rows = np.zeros((n, self.width), dtype=np.int64)
        for j, name in enumerate(t._packed_names[: self.hot]):
            rows.view(t.columns[name].dtype)[:, j] = state[f"col.{name}"]
        starts, page_of = np.unique(keys[-1].view(np.int64), return_inverse=True)
        words = np.ascontiguousarray(keys[:-1])
        hashes = fused_hash_rows(words)
        # distinct keys by their 64-bit hashes (a 1-d sort, not a lexicographic one of the
        # key words): only sizes the table, which keeps room to spare for a collision
        distinct = int(np.unique(hashes).shape[0]) if n else 0
        capacity = max(MIN_CAPACITY, _pow2(int(distinct / LOAD) + 1))
        self._allocate(capacity, max(FIRST_PAGES, starts.shape[0] + 1))
        slots, added = insert_keys(self.d_keys, hashes, words.T)
        np.add.at(self.refs, slots, 1)
        for p, start in enumerate(starts.tolist()):
            mine = np.flatnonzero(page_of == p)
            self.p_start[p], self.p_live[p], self.p_count[p] = start, 1, mine.shape[0]
            self.p_touched[p, : mine.shape[0]] = slots[mine]
            self.block[p * capacity + slots[mine]] = rows[mine]
            self.present[p * capacity + slots[mine]] = 1
        self.used = self.live_keys = added
