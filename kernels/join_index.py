"""Key -> dense id maps and the join indexes built on them (CPU kernels).

:class:`KeyIndex` is an open-addressing map (linear probing) from keys of ``K`` uint64
words to dense ids ``0, 1, 2, ...``. A slot is one row of ``uint64[capacity, 1 + K]``:
the key's id + 1 (0: an empty slot) and its words (16 bytes for one word), so a probe
reads one cache line and a large map stays as small as it can; a hash is recomputed
where needed (growing, deleting). Deleting a key shifts the slots after it back (no
tombstones) and recycles its id, so a map whose keys come and go keeps its size. Ids
index the owner's dense per-key arrays; the map grows between kernel calls (a kernel
that finds it full stops and returns where it stopped, the caller grows it and calls
again).

The join indexes hold no rows, only row numbers into their owner's row stores:

- :class:`WindowIndex` (tumbling and sliding window joins): each key an id; each open
  window keeps, per input, its (key id, row) assignments in arrival order in a chain
  of blocks. Firing a window joins its two inputs through the key ids (a hash join
  whose table is the dense ids): nothing is sorted.
- :class:`IntervalIndex` (interval joins): each key an id, each input's rows appended to
  a chain per key; a new row's candidates are the other input's chain of its key.
- :class:`SessionIndex` (session window joins): each key an id, with a list of its open
  sessions; a row joins, extends or merges the sessions it touches, its session's chain
  of its input; a min-heap of session ends says which fire at a watermark.

Rows that leave (their windows fired, the watermark passed their range) are never
paired again. For interval and session joins the owner compacts an input's rows
(``compact``: one pass keeping those still held, in order, renumbering them) once they
have doubled since the last time, so compacting costs O(1) per row, amortised: nothing is
rebuilt per batch. Window joins never renumber: a window's rows leave when it fires, and
windows fire in order of time, so the owner drops the rows below the lowest one still
held (:meth:`WindowIndex.first_row`), copying only those after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.kernels.cache import CACHE
from gpustream.kernels.prefetch import PREFETCH_DISTANCE, _prefetch

__all__ = ["IntervalIndex", "KeyIndex", "SessionIndex", "WindowIndex", "WindowShards",
           "cpu_threads", "grown", "last_of_each", "window_on_time"]

#: the map grows once more than this share of its slots is used
MAX_LOAD = 0.5
#: an input's rows are compacted once they have doubled, and are at least this many
COMPACT_AFTER = 1 << 14

_ZERO = np.uint64(0)
_SEED = np.uint64(0x2545F4914F6CDD1D)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_S29 = np.uint64(29)
_S32 = np.uint64(32)
_COUNT, _NEXT, _FREE = 0, 1, 2  # meta: live keys, next never-used id, free ids
#: rows below which a probe is not split between threads
_SPLIT_ROWS = 1 << 17

_T = TypeVar("_T")
_R = TypeVar("_R")
_POOL: ThreadPoolExecutor | None = None


def cpu_threads() -> int:
    """Threads the join kernels use: 2 where the process may use 2 or more cores, else
    1; ``GPUSTREAM_CPU_THREADS`` overrides (1, 2 or 4), as for windows.

    Examples
    --------
    >>> cpu_threads() in (1, 2, 4)
    True
    """
    env = os.environ.get("GPUSTREAM_CPU_THREADS")
    if env:
        if env not in ("1", "2", "4"):
            raise ValueError(f"GPUSTREAM_CPU_THREADS must be 1, 2 or 4, got {env!r}")
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) >= 2 else 1


def _each(items: Sequence[_T], fn: Callable[[_T], _R]) -> list[_R]:
    """``fn`` of each item, the first on this thread and the others on a pool's (the
    kernels release the GIL); results in order, the first error raised.

    Examples
    --------
    >>> _each([1, 2, 3], lambda x: x * 10)
    [10, 20, 30]
    """
    global _POOL
    if len(items) == 1:
        return [fn(items[0])]
    if _POOL is None:
        # (up to 4 shards, or shards and a task beside them: all but one on the pool)
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpustream-join")
    rest = [_POOL.submit(fn, x) for x in items[1:]]
    try:
        first = fn(items[0])
    finally:
        wait(rest)  # every thread has stopped touching the arrays, even where one failed
    return [first, *(f.result() for f in rest)]


def grown(a: np.ndarray, n: int, fill: Any = None) -> np.ndarray:
    """``a`` if its last axis holds ``n`` items, else a copy along it at least twice as
    large (and at least 16), the new items ``fill`` (or uninitialised).

    Examples
    --------
    >>> grown(np.arange(3), 2).tolist()
    [0, 1, 2]
    >>> b = grown(np.arange(3), 5, fill=-1)
    >>> b.shape, b[:4].tolist()
    ((16,), [0, 1, 2, -1])
    >>> grown(np.zeros((2, 1), np.int8), 3, 7)[:, :3].tolist()
    [[0, 7, 7], [0, 7, 7]]
    """
    have = a.shape[-1]
    if n <= have:
        return a
    size = max(n, 2 * have, 16)
    shape = (*a.shape[:-1], size)
    out = np.empty(shape, dtype=a.dtype) if fill is None else np.full(shape, fill, a.dtype)
    out[..., :have] = a
    return out


# -- the map ---------------------------------------------------------------------------------

@register_jitable
def _finish(h):  # type: ignore[no-untyped-def]
    h ^= h >> _S32
    h *= _MUL2
    return h ^ (h >> _S29)


@register_jitable
def _hash_key(keys, i):  # type: ignore[no-untyped-def]
    """A 64-bit multiply-xorshift hash of row ``i`` of ``keys`` (``uint64[K, n]``): the
    maps here live on the CPU only, so they need not share the GPU kernels' hash."""
    h = _SEED
    for c in range(keys.shape[0]):
        h = (h ^ keys[c, i]) * _MUL
    return _finish(h)


@numba.njit(nogil=True, cache=CACHE)
def _hashes(keys, out):  # type: ignore[no-untyped-def]
    for i in range(out.shape[0]):
        out[i] = _hash_key(keys, i)


@register_jitable
def _slot_of(t, h, keys, i, nk):  # type: ignore[no-untyped-def]
    """The slot holding ``keys[:, i]`` (hash ``h``), or the empty slot where it goes.

    The hot loops inline the probe for one-word keys themselves (a call with arrays,
    and the loop over the words, cost a third more there)."""
    mask = np.int64(t.shape[0] - 1)
    s = np.int64(h & np.uint64(mask))
    while t[s, 0] != _ZERO:
        same = True
        for c in range(nk):
            if t[s, 1 + c] != keys[c, i]:
                same = False
                break
        if same:
            return s
        s = (s + 1) & mask
    return s


@register_jitable
def _hash_word(x):  # type: ignore[no-untyped-def]
    """:func:`_hash_key` of a one-word key ``x``."""
    return _finish((_SEED ^ x) * _MUL)


@register_jitable
def _word_slot(t, h, x):  # type: ignore[no-untyped-def]
    """:func:`_slot_of` for a one-word key given as a scalar."""
    mask = np.int64(t.shape[0] - 1)
    s = np.int64(h & np.uint64(mask))
    while t[s, 0] != _ZERO and t[s, 1] != x:
        s = (s + 1) & mask
    return s


@register_jitable
def _home(t, s):  # type: ignore[no-untyped-def]
    """The slot where the probe for the key held in slot ``s`` starts."""
    h = _SEED
    for c in range(1, t.shape[1]):
        h = (h ^ t[s, c]) * _MUL
    return np.int64(_finish(h) & np.uint64(t.shape[0] - 1))


@register_jitable
def _new_id(free, nxt, nfree):  # type: ignore[no-untyped-def]
    """An id for a new key: the last freed one, else the next never used; returns
    ``(id, nxt, nfree)``. The kernels then write the key's slot themselves
    (:func:`_slot_of` found it empty): ``t[s] = id + 1, words``, and ``id_slot[id] =
    s``. They keep the map's counters (``meta``) in locals while they
    run and store them back when they return; a counter read back from memory after
    the stores into the table, or the stores made in a helper, make a claim several
    times slower."""
    if nfree > 0:
        return free[nfree - 1], nxt, nfree - 1
    return nxt, nxt + 1, nfree


@register_jitable
def _find_or_add(t, id_slot, free, nxt, nfree, keys, i, nk):  # type: ignore[no-untyped-def]
    """The id of ``keys[:, i]``, added under a new id where absent: ``(id, added, nxt,
    nfree)``. For loops where keys are mostly found: the hot ones write a new key's
    slot inline (see :func:`_new_id`)."""
    s = _slot_of(t, _hash_key(keys, i), keys, i, nk)
    if t[s, 0] != _ZERO:
        return np.int64(t[s, 0]) - 1, False, nxt, nfree
    g, nxt, nfree = _new_id(free, nxt, nfree)
    t[s, 0] = np.uint64(g + 1)
    for c in range(nk):
        t[s, 1 + c] = keys[c, i]
    id_slot[g] = s
    return g, True, nxt, nfree


@register_jitable
def _delete(t, id_slot, free, meta, g):  # type: ignore[no-untyped-def]
    """Remove id ``g``'s key, shifting back the slots whose probe passed it."""
    mask = np.int64(t.shape[0] - 1)
    width = t.shape[1]
    j = id_slot[g]
    id_slot[g] = -1
    free[meta[_FREE]] = g
    meta[_FREE] += 1
    meta[_COUNT] -= 1
    t[j, 0] = _ZERO
    k = j
    while True:
        k = (k + 1) & mask
        if t[k, 0] == _ZERO:
            return
        home = _home(t, k)
        # the key at k may stay if its home slot lies cyclically in (j, k]
        stays = (j < home <= k) if j <= k else (home > j or home <= k)
        if not stays:
            for w in range(width):
                t[j, w] = t[k, w]
            id_slot[np.int64(t[j, 0]) - 1] = j
            t[k, 0] = _ZERO
            j = k


@numba.njit(nogil=True, cache=CACHE)
def _rehash(old, new, id_slot):  # type: ignore[no-untyped-def]
    mask = np.int64(new.shape[0] - 1)
    for s in range(old.shape[0]):
        if old[s, 0] == _ZERO:
            continue
        h = _SEED
        for c in range(1, old.shape[1]):
            h = (h ^ old[s, c]) * _MUL
        d = np.int64(_finish(h) & np.uint64(mask))
        while new[d, 0] != _ZERO:
            d = (d + 1) & mask
        for w in range(old.shape[1]):
            new[d, w] = old[s, w]
        id_slot[np.int64(old[s, 0]) - 1] = d


@numba.njit(nogil=True, cache=CACHE)
def _upsert_rows(t, id_slot, free, meta, limit, keys, hashes, valid, out, is_new, pos):  # type: ignore[no-untyped-def]
    n = out.shape[0]
    nk = keys.shape[0]
    width = t.shape[1]
    mask = np.uint64(t.shape[0] - 1)
    imask = np.int64(t.shape[0] - 1)
    flat = t.reshape(t.shape[0] * width)
    count, nxt, nfree = meta[_COUNT], meta[_NEXT], meta[_FREE]
    for i in range(pos, n):
        if i + PREFETCH_DISTANCE < n:
            _prefetch(flat, np.int64(hashes[i + PREFETCH_DISTANCE] & mask) * width)
        if valid.shape[0] and not valid[i]:
            out[i] = -1
            is_new[i] = 0
            continue
        if count >= limit:
            meta[_COUNT], meta[_NEXT], meta[_FREE] = count, nxt, nfree
            return i
        h = hashes[i]
        if nk == 1:
            s = np.int64(h & mask)
            x = keys[0, i]
            while t[s, 0] != _ZERO and t[s, 1] != x:
                s = (s + 1) & imask
        else:
            s = _slot_of(t, h, keys, i, nk)
        if t[s, 0] == _ZERO:
            g, nxt, nfree = _new_id(free, nxt, nfree)
            t[s, 0] = np.uint64(g + 1)
            for c in range(nk):
                t[s, 1 + c] = keys[c, i]
            id_slot[g] = s
            out[i] = g
            count += 1
            is_new[i] = 1
        else:
            out[i] = np.int64(t[s, 0]) - 1
            is_new[i] = 0
    meta[_COUNT], meta[_NEXT], meta[_FREE] = count, nxt, nfree
    return n


@numba.njit(nogil=True, cache=CACHE)
def _find_rows(t, keys, valid, alive, out):  # type: ignore[no-untyped-def]
    # a probe side walks a large map at random: the slot of the row PREFETCH_DISTANCE
    # ahead is loaded early, so that the misses of many rows overlap
    n = out.shape[0]
    nk = keys.shape[0]
    hashes = np.empty(n, dtype=np.uint64)
    _hashes(keys, hashes)
    width = t.shape[1]
    mask = np.uint64(t.shape[0] - 1)
    imask = np.int64(t.shape[0] - 1)
    flat = t.reshape(t.shape[0] * width)
    for i in range(n):
        if i + PREFETCH_DISTANCE < n:
            _prefetch(flat, np.int64(hashes[i + PREFETCH_DISTANCE] & mask) * width)
        if valid.shape[0] and not valid[i]:
            out[i] = -1
            continue
        if nk == 1:
            s = np.int64(hashes[i] & mask)
            x = keys[0, i]
            while t[s, 0] != _ZERO and t[s, 1] != x:
                s = (s + 1) & imask
        else:
            s = _slot_of(t, hashes[i], keys, i, nk)
        g = np.int64(t[s, 0]) - 1
        if g >= 0 and alive.shape[0] and not alive[g]:
            g = -1
        out[i] = g


@numba.njit(nogil=True, cache=CACHE)
def _delete_ids(t, id_slot, free, meta, ids):  # type: ignore[no-untyped-def]
    for j in range(ids.shape[0]):
        _delete(t, id_slot, free, meta, ids[j])


@numba.njit(nogil=True, cache=CACHE)
def _last_of_each(ids, seen, out):  # type: ignore[no-untyped-def]
    for i in range(ids.shape[0] - 1, -1, -1):
        g = ids[i]
        out[i] = g >= 0 and not seen[g]
        if g >= 0:
            seen[g] = True


def last_of_each(ids: np.ndarray, n_ids: int) -> np.ndarray:
    """Which rows hold the last occurrence of their id (ids below ``n_ids``; -1: none).

    Examples
    --------
    >>> last_of_each(np.array([3, 1, -1, 3, 0]), 4).tolist()
    [False, True, False, True, True]
    """
    out = np.empty(ids.shape[0], dtype=np.bool_)
    _last_of_each(ids, np.zeros(n_ids, dtype=np.bool_), out)
    return out


_NO_BOOL = np.zeros(0, dtype=np.bool_)
_NO_ROWS = np.zeros(0, dtype=np.int64)


class KeyIndex:
    """Keys of ``key_words`` uint64 words -> dense ids.

    Parameters
    ----------
    key_words
        Words per key (:func:`gpustream.kernels.hashing.widen_keys` rows).
    capacity
        Initial slots (a power of two); the map grows as keys come.

    Examples
    --------
    >>> import numpy as np
    >>> ix = KeyIndex(1)
    >>> ids, new = ix.upsert(np.array([[7, 9, 7]], dtype=np.uint64))
    >>> ids.tolist(), new.tolist(), ix.count
    ([0, 1, 0], [1, 1, 0], 2)
    >>> ix.find(np.array([[9, 5]], dtype=np.uint64)).tolist()
    [1, -1]
    >>> ix.delete(np.array([0])); ix.upsert(np.array([[8]], dtype=np.uint64))[0].tolist()
    [0]
    >>> ix.keys_of(np.array([0, 1])).tolist()
    [[8, 9]]
    """

    def __init__(self, key_words: int, capacity: int = 1024) -> None:
        if capacity & (capacity - 1) or capacity < 4:
            raise ValueError(f"KeyIndex capacity must be a power of two >= 4, got {capacity}")
        self.key_words = key_words
        self.t = np.zeros((capacity, 1 + key_words), dtype=np.uint64)
        self.id_slot = np.full(self.id_capacity, -1, dtype=np.int64)
        self.free = np.empty(self.id_capacity, dtype=np.int64)
        self.meta = np.zeros(3, dtype=np.int64)

    @property
    def capacity(self) -> int:
        """Slots of the map."""
        return int(self.t.shape[0])

    @property
    def id_capacity(self) -> int:
        """Ids the map can hand out before it grows (the owner's per-id arrays' length)."""
        return int(self.t.shape[0] * MAX_LOAD)

    @property
    def count(self) -> int:
        """Keys held."""
        return int(self.meta[_COUNT])

    @property
    def ids_used(self) -> int:
        """Ids ever handed out and not recycled since the map was made: every id held is
        below it."""
        return int(self.meta[_NEXT])

    def alive(self) -> np.ndarray:
        """The ids held, ascending."""
        return np.flatnonzero(self.id_slot[: self.ids_used] >= 0)

    def grow(self) -> None:
        """Double the slots (and the ids it may hand out)."""
        new = np.zeros((2 * self.capacity, self.t.shape[1]), dtype=np.uint64)
        _rehash(self.t, new, self.id_slot)
        self.t = new
        self._fit_ids()

    def _fit_ids(self) -> None:
        """Id arrays as long as the (grown) map's id capacity."""
        id_slot = np.full(self.id_capacity, -1, dtype=np.int64)
        id_slot[: self.id_slot.shape[0]] = self.id_slot
        free = np.empty(self.id_capacity, dtype=np.int64)
        free[: self.free.shape[0]] = self.free
        self.id_slot, self.free = id_slot, free

    def reserve(self, n: int) -> None:
        """Grow now (once) to hold ``n`` more keys without growing again.

        Examples
        --------
        >>> ix = KeyIndex(1)
        >>> ix.reserve(3000); ix.capacity
        8192
        """
        cap = self.capacity
        while (self.count + n) > cap * MAX_LOAD:
            cap *= 2
        if cap > self.capacity:
            new = np.zeros((cap, self.t.shape[1]), dtype=np.uint64)
            _rehash(self.t, new, self.id_slot)
            self.t = new
            self._fit_ids()

    def upsert(self, keys: np.ndarray, valid: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the keys (``uint64[K, n]``), new ones for new keys (``-1`` where
        ``valid`` is False); and which rows made their key new."""
        n = keys.shape[1]
        out = np.empty(n, dtype=np.int64)
        is_new = np.empty(n, dtype=np.int8)
        v = _NO_BOOL if valid is None else valid
        hashes = np.empty(n, dtype=np.uint64)
        _hashes(keys, hashes)
        pos = 0
        while True:
            pos = int(_upsert_rows(self.t, self.id_slot, self.free, self.meta,
                                   self.id_capacity, keys, hashes, v, out, is_new, pos))
            if pos == n:
                return out, is_new
            self.grow()

    def find(self, keys: np.ndarray, valid: np.ndarray | None = None,
             alive: np.ndarray | None = None) -> np.ndarray:
        """Ids of the keys, -1 where absent, where ``valid`` is False or where the id's
        ``alive`` flag is False."""
        n = keys.shape[1]
        out = np.empty(n, dtype=np.int64)
        parts = max(1, min(cpu_threads(), n // _SPLIT_ROWS))
        cuts = [n * p // parts for p in range(parts + 1)]
        v = _NO_BOOL if valid is None else valid
        a = _NO_BOOL if alive is None else alive

        def part(p: int) -> None:  # the map is only read: parts probe it side by side
            lo, hi = cuts[p], cuts[p + 1]
            _find_rows(self.t, keys[:, lo:hi], v[lo:hi] if v.shape[0] else v, a, out[lo:hi])
        _each(range(parts), part)
        return out

    def delete(self, ids: np.ndarray) -> None:
        """Remove the keys of ``ids`` (held ids); the ids are handed out again."""
        _delete_ids(self.t, self.id_slot, self.free, self.meta, ids.astype(np.int64))

    def keys_of(self, ids: np.ndarray) -> np.ndarray:
        """The key words (``uint64[K, n]``) of held ``ids``."""
        return np.ascontiguousarray(self.t[self.id_slot[ids], 1:].T)

    def state_bytes(self) -> int:
        """Bytes of its arrays."""
        return int(self.t.nbytes + self.id_slot.nbytes + self.free.nbytes + self.meta.nbytes)


# -- window joins (tumbling, sliding) ------------------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _on_time(ts, wm, size, slide, offset, keep):  # type: ignore[no-untyped-def]
    late = 0
    last = np.int64(0)
    span = np.int64(0)  # [last, last + span): the times whose last window starts at last
    for i in range(ts.shape[0]):
        if not last <= ts[i] < last + span:  # (rows in order share it: no division)
            last = ts[i] - (ts[i] - offset) % slide
            span = slide
        keep[i] = last + size > wm[i]
        late += not keep[i]
    return late


def window_on_time(ts: np.ndarray, wm: np.ndarray, size: int, slide: int, offset: int
                   ) -> tuple[np.ndarray, int]:
    """Which rows (times ``ts``, watermarks as of each ``wm``) have a window that has not
    fired (the last window of a row ends after its watermark), and how many do not.

    Examples
    --------
    >>> keep, late = window_on_time(np.array([5, 12, 19]), np.array([0, 25, 15]), 10, 5, 0)
    >>> keep.tolist(), late
    ([True, False, True], 1)
    """
    keep = np.empty(ts.shape[0], dtype=np.bool_)
    return keep, int(_on_time(ts, wm, size, slide, offset, keep))


@register_jitable
def _new_block(b_next, b_fill, b_free, b_meta):  # type: ignore[no-untyped-def]
    if b_meta[1] > 0:
        b_meta[1] -= 1
        b = b_free[b_meta[1]]
    else:
        b = b_meta[0]
        b_meta[0] += 1
    b_next[b] = -1
    b_fill[b] = 0
    return b


@numba.njit(nogil=True, cache=CACHE)
def _own_rows(keys, shard, nshards, sel, hs):  # type: ignore[no-untyped-def]
    """The rows of ``keys`` (``uint64[K, n]``) of shard ``shard`` of ``nshards`` (a power
    of two; by their hashes' high bits, whose low bits pick map slots), in order, into
    ``sel``, and their hashes into ``hs``; returns how many. Each shard picks its own
    rows on its own thread: no pass over the batch is left to one thread."""
    m = np.uint64(nshards - 1)
    k = np.uint64(shard)
    n = 0
    for i in range(keys.shape[1]):
        h = _hash_key(keys, i)
        sel[n] = i  # (written whether or not it is the shard's: no branch to mispredict)
        hs[n] = h
        n += ((h >> _S32) & m) == k
    return n


#: per key id, the scratch of a window's join (int32: 16 bytes, so that a key table's
#: scratch stays in a core's cache): its right entries' chain (first, last, count),
#: valid for the window whose number (mod 2**32) it holds; no pass clears it
_HEAD, _TAIL, _CNT, _GEN = 0, 1, 2, 3


@numba.njit(nogil=True, cache=CACHE)
def _window_insert(kt, k_slot, k_free, k_meta, k_limit, k_scr, wt, w_slot, w_free, w_meta,  # type: ignore[no-untyped-def]
                   w_limit, w_start, w_head, w_tail, b_next, b_fill, b_free, b_meta, e_kid,
                   e_row, e_live, side, keys, hashes, sel, ts, wm, size, slide, offset, nwin,
                   row_base, pos):
    # the rows sel (all rows where it is empty), from its position pos on; hashes[jj] is
    # the hash of the jj-th of them
    n = sel.shape[0] if sel.shape[0] else ts.shape[0]
    nk = keys.shape[0]
    width = kt.shape[1]
    mask = np.uint64(kt.shape[0] - 1)
    imask = np.int64(kt.shape[0] - 1)
    flat = kt.reshape(kt.shape[0] * width)
    n_blocks = b_next.shape[0]
    # counters in locals (see _new_id), stored back on return
    k_count, k_nxt, k_nfree = k_meta[_COUNT], k_meta[_NEXT], k_meta[_FREE]
    w_count, w_nxt, w_nfree = w_meta[_COUNT], w_meta[_NEXT], w_meta[_FREE]
    b_used, b_nfree = b_meta[0], b_meta[1]
    live = e_live[side]
    # the windows met lately, by window number mod cw: their id, tail block and its fill
    # (stored back to b_fill when the window leaves the cache): rows in order share them
    cw = 1
    while cw < 2 * nwin:
        cw *= 2
    c_start = np.empty(cw, dtype=np.int64)
    c_w = np.full(cw, -1, dtype=np.int64)
    c_b = np.full(cw, -1, dtype=np.int64)
    c_fill = np.zeros(cw, dtype=np.int64)
    seen_last = np.int64(0)
    seen_slide = np.int64(0)  # no window seen yet
    seen_num = np.int64(0)
    stop = n
    for jj in range(pos, n):
        if (k_count >= k_limit or w_count + nwin > w_limit
                or n_blocks - b_used + b_nfree < nwin):
            stop = jj
            break
        if jj + PREFETCH_DISTANCE < n:
            _prefetch(flat, np.int64(hashes[jj + PREFETCH_DISTANCE] & mask) * width)
        i = sel[jj] if sel.shape[0] else jj
        if nk == 1:
            s = np.int64(hashes[jj] & mask)
            x = keys[0, i]
            while kt[s, 0] != _ZERO and kt[s, 1] != x:
                s = (s + 1) & imask
        else:
            s = _slot_of(kt, hashes[jj], keys, i, nk)
        if kt[s, 0] == _ZERO:
            kid, k_nxt, k_nfree = _new_id(k_free, k_nxt, k_nfree)
            kt[s, 0] = np.uint64(kid + 1)
            for c in range(nk):
                kt[s, 1 + c] = keys[c, i]
            k_slot[kid] = s
            k_count += 1
            k_scr[kid, _GEN] = -1
        else:
            kid = np.int64(kt[s, 0]) - 1
        if not seen_last <= ts[i] < seen_last + seen_slide:  # (a division is slow: rows
            seen_num = (ts[i] - offset) // slide  # in order share their windows)
            seen_last = offset + seen_num * slide
            seen_slide = slide
        for j in range(nwin):  # the row's windows, latest first, until one has fired
            start = seen_last - j * slide
            if wm.shape[0] and start + size <= wm[i]:
                break
            c = (seen_num - j) & (cw - 1)
            if c_w[c] < 0 or c_start[c] != start:
                if c_b[c] >= 0:
                    b_fill[c_b[c]] = c_fill[c]
                x = np.uint64(start)
                ws = _word_slot(wt, _hash_word(x), x)
                if wt[ws, 0] == _ZERO:
                    w, w_nxt, w_nfree = _new_id(w_free, w_nxt, w_nfree)
                    wt[ws, 0] = np.uint64(w + 1)
                    wt[ws, 1] = x
                    w_slot[w] = ws
                    w_count += 1
                    w_start[w] = start
                    for sd in range(2):
                        w_head[sd, w] = -1
                        w_tail[sd, w] = -1
                else:
                    w = np.int64(wt[ws, 0]) - 1
                c_w[c] = w
                c_start[c] = start
                c_b[c] = w_tail[side, w]
                c_fill[c] = b_fill[c_b[c]] if c_b[c] >= 0 else BLOCK
            if c_fill[c] == BLOCK:  # a new block at the end of the window's chain
                if b_nfree > 0:
                    b_nfree -= 1
                    nb = b_free[b_nfree]
                else:
                    nb = b_used
                    b_used += 1
                b_next[nb] = -1
                w = c_w[c]
                if c_b[c] < 0:
                    w_head[side, w] = nb
                else:
                    b_fill[c_b[c]] = BLOCK
                    b_next[c_b[c]] = nb
                w_tail[side, w] = nb
                c_b[c] = nb
                c_fill[c] = 0
            e = c_b[c] * BLOCK + c_fill[c]
            c_fill[c] += 1
            e_kid[e] = kid
            e_row[e] = row_base + i
            live += 1
    for c in range(cw):
        if c_w[c] >= 0 and c_b[c] >= 0:
            b_fill[c_b[c]] = c_fill[c]
    k_meta[_COUNT], k_meta[_NEXT], k_meta[_FREE] = k_count, k_nxt, k_nfree
    w_meta[_COUNT], w_meta[_NEXT], w_meta[_FREE] = w_count, w_nxt, w_nfree
    b_meta[0], b_meta[1] = b_used, b_nfree
    e_live[side] = live
    return stop


@numba.njit(nogil=True, cache=CACHE)
def _window_due(w_slot, w_used, w_start, size, wm):  # type: ignore[no-untyped-def]
    """The open windows that ``wm`` closes, by start."""
    n = 0
    for w in range(w_used):
        if w_slot[w] >= 0 and w_start[w] + size <= wm:
            n += 1
    due = np.empty(n, dtype=np.int64)
    n = 0
    for w in range(w_used):
        if w_slot[w] >= 0 and w_start[w] + size <= wm:
            due[n] = w
            n += 1
    return due[np.argsort(w_start[due], kind="mergesort")]


@numba.njit(nogil=True, cache=CACHE)
def _window_fire(due, cursor, gen0, wt, w_slot, w_free, w_meta, w_start, w_head, b_next,  # type: ignore[no-untyped-def]
                 b_fill, b_free, b_meta, e_kid, e_row, e_nxt, k_scr, e_live, l_base, r_base,
                 out_l, out_r, out_s):
    """Pairs (left row - ``l_base``, right row - ``r_base``, window start) of the ``due``
    windows, from ``cursor`` =
    (window position, left block, position in it, right side built) on, as many whole
    left rows as ``out_*`` hold; moves the cursor, returns the count (``-c`` when the
    next left row's ``c`` pairs do not fit in empty arrays).

    Per window (the ``gen0 + position``-th fired), the right entries are chained by key
    id (in arrival order) and each left entry walks its key's chain: a hash join whose
    table is the dense key ids. A finished window leaves: its blocks are freed, its id
    forgotten."""
    cap = out_l.shape[0]
    n = 0
    wi, lb, lq, built = cursor[0], cursor[1], cursor[2], cursor[3]
    while wi < due.shape[0]:
        w = due[wi]
        start = w_start[w]
        gen = np.int32(gen0 + wi)
        if not built:
            b = w_head[1, w]
            while b >= 0:
                for q in range(b_fill[b]):
                    e = b * BLOCK + q
                    kid = e_kid[e]
                    e_nxt[e] = -1
                    if k_scr[kid, _GEN] != gen:
                        k_scr[kid, _GEN] = gen
                        k_scr[kid, _HEAD] = e
                        k_scr[kid, _CNT] = 1
                    else:
                        e_nxt[k_scr[kid, _TAIL]] = e
                        k_scr[kid, _CNT] += 1
                    k_scr[kid, _TAIL] = e
                b = b_next[b]
            built = 1
            lb = w_head[0, w]
            lq = 0
        while lb >= 0:
            while lq < b_fill[lb]:
                e = lb * BLOCK + lq
                kid = e_kid[e]
                c = k_scr[kid, _CNT] if k_scr[kid, _GEN] == gen else 0
                if c:
                    if n + c > cap:
                        cursor[0], cursor[1], cursor[2], cursor[3] = wi, lb, lq, built
                        return n if n else -c
                    li = e_row[e] - l_base
                    r = k_scr[kid, _HEAD]
                    while r >= 0:
                        out_l[n] = li
                        out_r[n] = e_row[r] - r_base
                        out_s[n] = start
                        n += 1
                        r = e_nxt[r]
                lq += 1
            lb = b_next[lb]
            lq = 0
        for sd in range(2):  # the window leaves: its blocks are freed
            b = w_head[sd, w]
            while b >= 0:
                nxt = b_next[b]
                e_live[sd] -= b_fill[b]
                b_free[b_meta[1]] = b
                b_meta[1] += 1
                b = nxt
        _delete(wt, w_slot, w_free, w_meta, w)
        built = 0
        wi += 1
    cursor[0], cursor[1], cursor[2], cursor[3] = wi, lb, lq, built
    return n


@numba.njit(nogil=True, cache=CACHE)
def _window_entries(order, side, w_head, w_start, b_next, b_fill, e_kid, e_row):  # type: ignore[no-untyped-def]
    """``side``'s entries of the windows ``order``: (rows, key ids, window starts)."""
    n = 0
    for w in order:
        b = w_head[side, w]
        while b >= 0:
            n += b_fill[b]
            b = b_next[b]
    rows = np.empty(n, dtype=np.int64)
    kids = np.empty(n, dtype=np.int64)
    starts = np.empty(n, dtype=np.int64)
    n = 0
    for w in order:
        b = w_head[side, w]
        while b >= 0:
            for q in range(b_fill[b]):
                rows[n] = e_row[b * BLOCK + q]
                kids[n] = e_kid[b * BLOCK + q]
                starts[n] = w_start[w]
                n += 1
            b = b_next[b]
    return rows, kids, starts


@numba.njit(nogil=True, cache=CACHE)
def _purge_keys(order, w_head, b_next, b_fill, e_kid, t, id_slot, free, meta):  # type: ignore[no-untyped-def]
    """Forget the keys no entry of the open windows ``order`` holds any more."""
    held = np.zeros(meta[_NEXT], dtype=np.bool_)
    for w in order:
        for sd in range(2):
            b = w_head[sd, w]
            while b >= 0:
                for q in range(b_fill[b]):
                    held[e_kid[b * BLOCK + q]] = True
                b = b_next[b]
    for g in range(meta[_NEXT]):
        if id_slot[g] >= 0 and not held[g]:
            _delete(t, id_slot, free, meta, g)


#: entries per block of a window's chain of blocks
BLOCK = 256


class WindowIndex:
    """The assignments of two inputs' rows to windows, for tumbling and sliding joins
    (one shard of :class:`WindowShards`: the rows whose key hashes to it).

    Each key gets a dense id (:class:`KeyIndex`). Each open window keeps, per input, its
    assignments (key id, row) in arrival order, in a chain of fixed-size blocks; a row
    is appended to each of its windows that has not fired, nothing else is touched.
    :meth:`fire` takes the windows a watermark closes in order of start and joins each
    one's two inputs through the key ids (see :func:`_window_fire`); their blocks go
    back to a pool. Keys whose windows have all fired are forgotten when the map is
    full. Row numbers are the owner's (each input's rows numbered in arrival order,
    never renumbered: the owner drops the rows below :meth:`first_row`).

    Examples
    --------
    >>> import numpy as np
    >>> ix = WindowIndex(1, size=10, slide=10, offset=0)
    >>> keys = np.array([[1, 2, 1]], dtype=np.uint64)
    >>> ix.insert(0, keys, _key_hashes(keys), np.array([3, 4, 15]), None, 0)
    >>> right = np.array([[1, 1]], dtype=np.uint64)
    >>> ix.insert(1, right, _key_hashes(right), np.array([5, 9]), None, 0)
    >>> [(l.tolist(), r.tolist(), s.tolist()) for l, r, s in ix.fire(10)]
    [([0, 0], [0, 1], [0, 0])]
    >>> ix.held, ix.live(0)
    (1, 1)
    """

    def __init__(self, key_words: int, size: int, slide: int, offset: int) -> None:
        self.size, self.slide, self.offset = size, slide, offset
        self.nwin = size // slide
        self.keys = KeyIndex(key_words)
        self.k_scr = np.empty((self.keys.id_capacity, 4), dtype=np.int32)
        self.windows = KeyIndex(1, capacity=64)
        wcap = self.windows.id_capacity
        self.w_start = np.empty(wcap, dtype=np.int64)
        self.w_head = np.empty((2, wcap), dtype=np.int64)
        self.w_tail = np.empty((2, wcap), dtype=np.int64)
        self.b_next = np.empty(16, dtype=np.int64)
        self.b_fill = np.empty(16, dtype=np.int64)
        self.b_free = np.empty(16, dtype=np.int64)
        self.b_meta = np.zeros(2, dtype=np.int64)  # blocks ever used, blocks free
        # entries: key id and next right entry as int32 (fewer bytes to move; a shard
        # holds fewer than 2**31 assignments), rows as int64
        self.e_kid = np.empty(16 * BLOCK, dtype=np.int32)
        self.e_row = np.empty(16 * BLOCK, dtype=np.int64)
        self.e_nxt = np.empty(16 * BLOCK, dtype=np.int32)
        self.e_live = np.zeros(2, dtype=np.int64)  # assignments held per input
        self.fired = 0  # windows fired so far
        self._sel = np.empty(0, dtype=np.int64)  # a batch's rows of this shard
        self._hs = np.empty(0, dtype=np.uint64)  # and their hashes

    @property
    def held(self) -> int:
        """Assignments held, both inputs."""
        return int(self.e_live.sum())

    def live(self, side: int) -> int:
        """Assignments of ``side`` held."""
        return int(self.e_live[side])

    def _fit(self) -> None:
        """Grow the per-key and per-window arrays to their maps' id capacities."""
        kcap = self.keys.id_capacity
        if self.k_scr.shape[0] < kcap:
            scr = np.empty((kcap, 4), dtype=np.int32)
            scr[: self.k_scr.shape[0]] = self.k_scr
            self.k_scr = scr
        wcap = self.windows.id_capacity
        if self.w_start.shape[0] < wcap:
            self.w_start = grown(self.w_start, wcap)
            self.w_head, self.w_tail = grown(self.w_head, wcap), grown(self.w_tail, wcap)

    def _more_blocks(self) -> None:
        nb = 2 * self.b_next.shape[0]
        if nb * BLOCK > 2**31:
            raise MemoryError(f"a window join's shard would hold over 2**31 assignments "
                              f"({nb * BLOCK:,}); use shorter windows, fewer slides per "
                              "window or a lower watermark delay")
        self.b_next, self.b_fill = grown(self.b_next, nb), grown(self.b_fill, nb)
        self.b_free = grown(self.b_free, nb)
        self.e_kid, self.e_row = grown(self.e_kid, nb * BLOCK), grown(self.e_row, nb * BLOCK)
        self.e_nxt = grown(self.e_nxt, nb * BLOCK)

    def _make_room(self, nwin: int) -> None:
        """Room for one more row's keys, windows and blocks (a kernel stopped short)."""
        ks = self.keys
        if ks.count >= ks.id_capacity:
            # keys whose windows all fired are forgotten when the map is full, by one
            # pass over the entries held: while they are not many times the keys
            if self.held <= 4 * ks.id_capacity:
                _purge_keys(self.windows.alive(), self.w_head, self.b_next, self.b_fill,
                            self.e_kid, ks.t, ks.id_slot, ks.free, ks.meta)
            if ks.count > ks.id_capacity // 2:  # the map stays at most half full after
                ks.grow()
        if self.windows.count + nwin > self.windows.id_capacity:
            self.windows.grow()
        if self.b_next.shape[0] - self.b_meta[0] + self.b_meta[1] < nwin:
            self._more_blocks()
        self._fit()

    def insert(self, side: int, keys: np.ndarray, hashes: np.ndarray, ts: np.ndarray,
               wm: np.ndarray | None, row_base: int, nwin: int | None = None,
               sel: np.ndarray | None = None) -> None:
        """Assign rows ``row_base ..`` of input ``side`` (key words ``uint64[K, n]``, the
        :func:`_key_hashes` of the rows assigned, times, the watermark as of each row or
        None; only the rows ``sel`` where given, ``hashes`` then one per row of ``sel``)
        to each of their windows whose end is past their watermark. ``nwin=1`` assigns
        each row to the window starting at its ``ts`` only (restoring)."""
        if sel is not None and not sel.shape[0]:
            return
        sel_ = _NO_ROWS if sel is None else sel
        n = sel_.shape[0] if sel is not None else ts.shape[0]
        nwin = self.nwin if nwin is None else nwin
        slide, offset = (self.slide, self.offset) if nwin == self.nwin else (1, 0)
        wm_ = np.zeros(0, dtype=np.int64) if wm is None else wm
        k, w = self.keys, self.windows
        pos = 0
        while True:
            pos = int(_window_insert(
                k.t, k.id_slot, k.free, k.meta, k.id_capacity, self.k_scr, w.t, w.id_slot,
                w.free, w.meta, w.id_capacity, self.w_start, self.w_head, self.w_tail,
                self.b_next, self.b_fill, self.b_free, self.b_meta, self.e_kid,
                self.e_row, self.e_live, side, keys, hashes, sel_, ts, wm_, self.size, slide,
                offset, nwin, row_base, pos))
            if pos == n:
                return
            self._make_room(nwin)

    def insert_own(self, shard: int, nshards: int, side: int, keys: np.ndarray,
                   ts: np.ndarray, wm: np.ndarray | None, row_base: int,
                   nwin: int | None = None) -> None:
        """:meth:`insert` of the rows of ``keys`` whose hash picks shard ``shard`` of
        ``nshards`` (the others are another shard's).

        Examples
        --------
        >>> ix = [WindowIndex(1, size=10, slide=10, offset=0) for _ in range(2)]
        >>> keys = np.arange(100, dtype=np.uint64)[None, :]
        >>> for k in range(2):
        ...     ix[k].insert_own(k, 2, 0, keys, np.full(100, 5), None, 0)
        >>> ix[0].live(0) + ix[1].live(0), ix[0].live(0) > 0 and ix[1].live(0) > 0
        (100, True)
        """
        n = keys.shape[1]
        if self._sel.shape[0] < n:  # (kept: no allocation per batch)
            self._sel = np.empty(max(n, 2 * self._sel.shape[0]), dtype=np.int64)
            self._hs = np.empty(self._sel.shape[0], dtype=np.uint64)
        m = int(_own_rows(keys, shard, nshards, self._sel, self._hs))
        self.insert(side, keys, self._hs[:m], ts, wm, row_base, nwin, self._sel[:m])

    def open_windows(self) -> np.ndarray:
        """The open windows, by start."""
        open_ = self.windows.alive()
        return open_[np.argsort(self.w_start[open_], kind="stable")]

    def fire(self, wm: int, chunk: int = 1 << 22, bases: tuple[int, int] = (0, 0)) -> Any:
        """Pairs ``(left rows, right rows, window starts)`` of the windows whose end
        ``wm`` has reached, in chunks of at most ``chunk`` pairs (or one left row's), by
        window start, then left arrival, then right arrival; the windows are forgotten
        as their pairs are taken. Each input's rows are given less its ``bases`` (the
        owner's number of the first row it stores)."""
        w = self.windows
        due = _window_due(w.id_slot, w.ids_used, self.w_start, self.size, wm)
        gen0 = self.fired + 1
        self.fired += due.shape[0]
        cursor = np.zeros(4, dtype=np.int64)
        cap = min(chunk, 1 << 16)
        while cursor[0] < due.shape[0]:
            out_l = np.empty(cap, dtype=np.int64)
            out_r = np.empty(cap, dtype=np.int64)
            out_s = np.empty(cap, dtype=np.int64)
            n = int(_window_fire(due, cursor, gen0, w.t, w.id_slot, w.free, w.meta, self.w_start,
                                 self.w_head, self.b_next, self.b_fill,
                                 self.b_free, self.b_meta, self.e_kid, self.e_row,
                                 self.e_nxt, self.k_scr, self.e_live, bases[0], bases[1],
                                 out_l, out_r, out_s))
            if n < 0:  # one left row with more pairs than that
                cap = -n
                continue
            if n:
                yield out_l[:n], out_r[:n], out_s[:n]
            cap = max(cap, min(chunk, 2 * cap))

    def first_row(self, side: int) -> int | None:
        """The lowest row of ``side`` an open window holds (None: none held): each
        window's entries are in arrival order, so its head block's first entry is its
        lowest row.

        Examples
        --------
        >>> ix = WindowIndex(1, size=10, slide=10, offset=0)
        >>> keys = np.array([[1, 2, 3]], dtype=np.uint64)
        >>> ix.insert(0, keys, _key_hashes(keys), np.array([3, 15, 4]), None, 7)
        >>> ix.first_row(0), ix.first_row(1)
        (7, None)
        >>> _ = list(ix.fire(10)); ix.first_row(0)  # window [0, 10) fired: rows 7, 9 left
        8
        """
        heads = self.w_head[side, self.windows.alive()]
        heads = heads[heads >= 0]
        return int(self.e_row[heads * BLOCK].min()) if heads.shape[0] else None

    def held_entries(self, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``side``'s held assignments, by window start, then arrival: (rows, key words,
        window starts)."""
        rows, kids, starts = _window_entries(self.open_windows(), side, self.w_head,
                                             self.w_start, self.b_next, self.b_fill,
                                             self.e_kid, self.e_row)
        return rows, self.keys.keys_of(kids), starts

    def state_bytes(self) -> int:
        """Bytes of its arrays."""
        arrays: list[np.ndarray] = [self.k_scr, self.w_start, self.w_head, self.w_tail,
                                    self.b_next, self.b_fill, self.b_free, self.e_kid,
                                    self.e_row, self.e_nxt, self._sel, self._hs]
        return self.keys.state_bytes() + self.windows.state_bytes() + sum(
            int(a.nbytes) for a in arrays)


def _key_hashes(keys: np.ndarray) -> np.ndarray:
    """The maps' hash of each row of ``keys`` (``uint64[K, n]``)."""
    out = np.empty(keys.shape[1], dtype=np.uint64)
    _hashes(keys, out)
    return out


class WindowShards:
    """:class:`WindowIndex` split by key hash into ``nshards`` shards that insert and fire
    on threads of their own (a shard's kernels release the GIL), each picking its own
    rows of a batch; row numbers are the owner's, the same in every shard.

    Examples
    --------
    >>> import numpy as np
    >>> ix = WindowShards(1, size=10, slide=5, offset=0, nshards=2)
    >>> ix.insert(0, np.array([[1, 2, 3, 4]], dtype=np.uint64), np.array([1, 2, 3, 4]), None, 0)
    >>> ix.insert(1, np.array([[4, 3, 2, 1]], dtype=np.uint64), np.array([6, 6, 6, 6]), None, 0)
    >>> sorted((l, r, s) for li, ri, st in ix.fire(10)
    ...        for l, r, s in zip(li.tolist(), ri.tolist(), st.tolist()))
    [(0, 3, 0), (1, 2, 0), (2, 1, 0), (3, 0, 0)]
    >>> ix.held, ix.first_row(0), ix.first_row(1)  # right rows: in [5, 15) too
    (4, None, 0)
    """

    def __init__(self, key_words: int, size: int, slide: int, offset: int,
                 nshards: int = 1) -> None:
        if nshards & (nshards - 1):
            raise ValueError(f"shards must be a power of two, got {nshards}")
        self.shards = [WindowIndex(key_words, size, slide, offset) for _ in range(nshards)]

    @property
    def held(self) -> int:
        """Assignments held, both inputs."""
        return sum(s.held for s in self.shards)

    def insert(self, side: int, keys: np.ndarray, ts: np.ndarray, wm: np.ndarray | None,
               row_base: int, nwin: int | None = None,
               alongside: Callable[[], object] | None = None) -> None:
        """:meth:`WindowIndex.insert` on every shard, and ``alongside()`` (the owner's
        work that does not touch the index: storing the rows) on a thread beside
        them."""
        n = len(self.shards)

        def shard(k: int) -> None:
            if n == 1:
                self.shards[0].insert(side, keys, _key_hashes(keys), ts, wm, row_base, nwin)
            else:
                self.shards[k].insert_own(k, n, side, keys, ts, wm, row_base, nwin)
        _each([*range(n), *([-1] if alongside else [])],
              lambda k: shard(k) if k >= 0 else alongside and alongside())

    def fire(self, wm: int, chunk: int = 1 << 22,
             each: Callable[[np.ndarray, np.ndarray, np.ndarray], _R] | None = None,
             bases: tuple[int, int] = (0, 0)) -> list[Any]:
        """:meth:`WindowIndex.fire` on every shard: the chunks of pairs of shard 0, then
        of shard 1, ...; or what ``each(left rows, right rows, starts)`` makes of each
        chunk, called on the shard's thread (numpy's gathers release the GIL too)."""
        def fire(s: WindowIndex) -> list[Any]:
            return [c if each is None else each(*c) for c in s.fire(wm, chunk, bases)]
        return [c for part in _each(self.shards, fire) for c in part]

    def first_row(self, side: int) -> int | None:
        """The lowest row of ``side`` an open window holds (None: none held): every row
        below it is held no more."""
        firsts = [f for f in (s.first_row(side) for s in self.shards) if f is not None]
        return min(firsts) if firsts else None

    def held_entries(self, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``side``'s held assignments (rows, key words, window starts), shard by shard."""
        parts = [s.held_entries(side) for s in self.shards]
        return (np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts], axis=1),
                np.concatenate([p[2] for p in parts]))

    def state_bytes(self) -> int:
        """Bytes of the shards' arrays."""
        return sum(s.state_bytes() for s in self.shards)


# -- pairs of two chains per group (sessions) ------------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _pairs_emit(groups, cursor, head, cnt, e_row0, e_next0, e_row1, e_next1, out_l, out_r,  # type: ignore[no-untyped-def]
                out_g):
    """Pairs (left row, right row, group) of the groups' two chains, from ``cursor`` =
    (group position, left entry or -1) on, as many whole left rows as ``out_*`` hold (at
    least one); moves the cursor, returns the count. An entry is its row where ``e_row``
    is empty."""
    cap = out_l.shape[0]
    n = 0
    gi, le = cursor[0], cursor[1]
    while gi < groups.shape[0]:
        g = groups[gi]
        if cnt[0, g] and cnt[1, g]:
            if le < 0:
                le = head[0, g]
            while le >= 0:
                if n and n + cnt[1, g] > cap:
                    cursor[0], cursor[1] = gi, le
                    return n
                li = e_row0[le] if e_row0.shape[0] else le
                r = head[1, g]
                while r >= 0:
                    out_l[n] = li
                    out_r[n] = e_row1[r] if e_row1.shape[0] else r
                    out_g[n] = g
                    n += 1
                    r = e_next1[r]
                le = e_next0[le]
        gi += 1
        le = -1
    cursor[0], cursor[1] = gi, le
    return n


def _pair_chunks(groups: np.ndarray, pairs: int, most: int, chunk: int, head: np.ndarray,
                 cnt: np.ndarray, e_row: list[np.ndarray], e_next: list[np.ndarray]) -> Any:
    """:func:`_pairs_emit` over all of ``groups``, in chunks: ``(left rows, right rows,
    groups)``."""
    cursor = np.array([0, -1], dtype=np.int64)
    left = int(pairs)
    while left:
        cap = min(left, max(chunk, int(most)))
        out_l = np.empty(cap, dtype=np.int64)
        out_r = np.empty(cap, dtype=np.int64)
        out_g = np.empty(cap, dtype=np.int64)
        n = int(_pairs_emit(groups, cursor, head, cnt, e_row[0], e_next[0], e_row[1],
                            e_next[1], out_l, out_r, out_g))
        left -= n
        yield out_l[:n], out_r[:n], out_g[:n]


# -- interval joins ----------------------------------------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _interval_append(t, id_slot, free, meta, limit, k_head, k_tail, r_kid, r_next, r_ts,  # type: ignore[no-untyped-def]
                     side, keys, ts, row_base, pos):
    n = ts.shape[0]
    nk = keys.shape[0]
    count, nxt, nfree = meta[_COUNT], meta[_NEXT], meta[_FREE]
    stop = n
    for i in range(pos, n):
        if count >= limit:
            stop = i
            break
        g, added, nxt, nfree = _find_or_add(t, id_slot, free, nxt, nfree, keys, i, nk)
        if added:
            count += 1
            k_head[0, g] = -1
            k_head[1, g] = -1
            k_tail[0, g] = -1
            k_tail[1, g] = -1
        r = row_base + i
        r_kid[r] = g
        r_next[r] = -1
        r_ts[r] = ts[i]
        tail = k_tail[side, g]
        if tail < 0:
            k_head[side, g] = r
        else:
            r_next[tail] = r
        k_tail[side, g] = r
    meta[_COUNT], meta[_NEXT], meta[_FREE] = count, nxt, nfree
    return stop


@numba.njit(nogil=True, cache=CACHE)
def _interval_probe(kids, ts, head, r_next, r_ts, sign, lower, upper, held_off, evicted,  # type: ignore[no-untyped-def]
                    first, out_p, out_b, count_only):
    """Walk the other input's chain of each probe row's key: its rows still held
    (``ts + held_off >= evicted``) whose time difference ``sign * (ts_b - ts_p)`` lies in
    ``[lower, upper]``. Counts them per probe row into ``first``, or (``count_only``
    False) writes the pairs of probe rows ``out_p[0] ..`` from position ``first``."""
    n = kids.shape[0]
    pos = 0
    for i in range(n):
        if not count_only:
            pos = first[i]
        c = 0
        b = head[kids[i]]
        while b >= 0:
            tb = r_ts[b]
            if tb + held_off >= evicted:
                d = (tb - ts[i]) * sign
                if lower <= d <= upper:
                    if not count_only:
                        out_p[pos] = i
                        out_b[pos] = b
                        pos += 1
                    c += 1
            b = r_next[b]
        if count_only:
            first[i] = c


@numba.njit(nogil=True, cache=CACHE)
def _interval_rechain(r_kid, r_next, r_ts, n, keep, k_head, k_tail, side):  # type: ignore[no-untyped-def]
    """Keep the rows of ``keep`` (in order, in place) and chain them again by key."""
    m = 0
    for i in range(n):
        if keep[i]:
            g = r_kid[i]
            r_kid[m] = g
            r_ts[m] = r_ts[i]
            r_next[m] = -1
            tail = k_tail[side, g]
            if tail < 0:
                k_head[side, g] = m
            else:
                r_next[tail] = m
            k_tail[side, g] = m
            m += 1
    return m


@numba.njit(nogil=True, cache=CACHE)
def _reset_heads(k_head, k_tail, used):  # type: ignore[no-untyped-def]
    for g in range(used):
        for side in range(2):
            k_head[side, g] = -1
            k_tail[side, g] = -1


class IntervalIndex:
    """Two inputs' rows chained by key in arrival order, for interval joins.

    A left row at ``t`` pairs with the right rows in ``[t + lower, t + upper]``. After
    :meth:`evict` (the join's watermark ``wm``) a left row is held while ``t + upper >=
    wm``, a right row while ``t - lower >= wm``; rows no longer held are never paired
    and leave the arrays at the next :meth:`compact`.

    Examples
    --------
    >>> import numpy as np
    >>> ix = IntervalIndex(1, lower=0, upper=5)
    >>> _ = ix.append(1, np.array([[4, 4, 8]], dtype=np.uint64), np.array([10, 20, 12]))
    >>> kids = ix.append(0, np.array([[4, 8]], dtype=np.uint64), np.array([9, 9]))
    >>> [(p.tolist(), b.tolist()) for p, b in ix.probe(0, kids, np.array([9, 9]))]
    [([0, 1], [0, 2])]
    """

    def __init__(self, key_words: int, lower: int, upper: int) -> None:
        self.lower, self.upper = lower, upper
        self.keys = KeyIndex(key_words)
        cap = self.keys.id_capacity
        self.k_head = np.empty((2, cap), dtype=np.int64)
        self.k_tail = np.empty((2, cap), dtype=np.int64)
        self.r_kid = [np.empty(0, dtype=np.int64) for _ in range(2)]
        self.r_next = [np.empty(0, dtype=np.int64) for _ in range(2)]
        self.r_ts = [np.empty(0, dtype=np.int64) for _ in range(2)]
        self.rows = [0, 0]
        #: the watermark of the last eviction
        self.evicted = -(2**63)

    def held_off(self, side: int) -> int:
        """What a row's time plus this must reach the eviction watermark to be held."""
        return self.upper if side == 0 else -self.lower

    def append(self, side: int, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Append rows of ``side`` (its next row numbers); returns their key ids."""
        n = ts.shape[0]
        base = self.rows[side]
        need = base + n
        self.r_kid[side] = grown(self.r_kid[side], need)
        self.r_next[side] = grown(self.r_next[side], need)
        self.r_ts[side] = grown(self.r_ts[side], need)
        ix = self.keys
        pos = 0
        while True:
            pos = int(_interval_append(ix.t, ix.id_slot, ix.free, ix.meta, ix.id_capacity,
                                       self.k_head, self.k_tail, self.r_kid[side],
                                       self.r_next[side], self.r_ts[side], side, keys, ts,
                                       base, pos))
            if pos == n:
                break
            ix.grow()
            self.k_head = grown(self.k_head, ix.id_capacity)
            self.k_tail = grown(self.k_tail, ix.id_capacity)
        self.rows[side] = need
        return self.r_kid[side][base:need]

    def probe(self, side: int, kids: np.ndarray, ts: np.ndarray, chunk: int = 1 << 22) -> Any:
        """Pairs ``(probe row, other input's row)`` for rows of ``side`` with key ids
        ``kids`` and times ``ts``, probe rows in order (each one's partners in arrival
        order), in chunks of about ``chunk`` pairs (whole probe rows)."""
        other = 1 - side
        sign = 1 if side == 0 else -1
        args = (self.k_head[other], self.r_next[other], self.r_ts[other], sign, self.lower,
                self.upper, self.held_off(other), self.evicted)
        counts = np.empty(kids.shape[0], dtype=np.int64)
        none = np.empty(0, dtype=np.int64)
        _interval_probe(kids, ts, *args, counts, none, none, True)
        ends = np.cumsum(counts)
        n = counts.shape[0]
        start = 0
        while start < n:
            base = int(ends[start - 1]) if start else 0
            stop = max(int(np.searchsorted(ends, base + chunk, side="right")), start + 1)
            total = int(ends[stop - 1]) - base
            if total:
                first = ends[start:stop] - counts[start:stop] - base
                out_p = np.empty(total, dtype=np.int64)
                out_b = np.empty(total, dtype=np.int64)
                _interval_probe(kids[start:stop], ts[start:stop], *args, first, out_p, out_b,
                                False)
                yield out_p + start, out_b
            start = stop

    def evict(self, wm: int) -> None:
        """Rows that no future row of the other input can match (the join's watermark is
        ``wm``) are held no more."""
        self.evicted = wm

    def held_rows(self, side: int) -> np.ndarray:
        """Which of ``side``'s stored rows are held."""
        n = self.rows[side]
        return self.r_ts[side][:n] + self.held_off(side) >= self.evicted

    @property
    def held(self) -> int:
        """Rows held, both inputs."""
        return int(sum(int(self.held_rows(side).sum()) for side in (0, 1)))

    def compact(self) -> list[np.ndarray]:
        """Drop the rows no longer held (both inputs), and the keys left without rows:
        returns, per input, which stored rows stay (the owner keeps those, in order)."""
        ix = self.keys
        _reset_heads(self.k_head, self.k_tail, ix.ids_used)
        keeps = []
        for side in (0, 1):
            keep = self.held_rows(side)
            self.rows[side] = int(_interval_rechain(self.r_kid[side], self.r_next[side],
                                                    self.r_ts[side], keep.shape[0], keep,
                                                    self.k_head, self.k_tail, side))
            keeps.append(keep)
        alive = ix.alive()
        empty = alive[(self.k_head[0, alive] < 0) & (self.k_head[1, alive] < 0)]
        ix.delete(empty)
        return keeps

    def held_keys(self, side: int, keep: np.ndarray) -> np.ndarray:
        """The key words (``uint64[K, n]``) of ``side``'s stored rows where ``keep``."""
        return self.keys.keys_of(self.r_kid[side][: self.rows[side]][keep])

    def state_bytes(self) -> int:
        """Bytes of its arrays."""
        arrays = [self.k_head, self.k_tail, *self.r_kid, *self.r_next, *self.r_ts]
        return self.keys.state_bytes() + sum(int(a.nbytes) for a in arrays)


# -- session window joins ------------------------------------------------------------------------

@register_jitable
def _heap_push(h_end, h_sid, h_gen, h_meta, end, sid, gen):  # type: ignore[no-untyped-def]
    i = h_meta[0]
    h_meta[0] += 1
    while i > 0:
        up = (i - 1) // 2
        if h_end[up] <= end:
            break
        h_end[i], h_sid[i], h_gen[i] = h_end[up], h_sid[up], h_gen[up]
        i = up
    h_end[i], h_sid[i], h_gen[i] = end, sid, gen


@register_jitable
def _heap_pop(h_end, h_sid, h_gen, h_meta):  # type: ignore[no-untyped-def]
    top = (h_end[0], h_sid[0], h_gen[0])
    n = h_meta[0] - 1
    h_meta[0] = n
    end, sid, gen = h_end[n], h_sid[n], h_gen[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and h_end[c + 1] < h_end[c]:
            c += 1
        if h_end[c] >= end:
            break
        h_end[i], h_sid[i], h_gen[i] = h_end[c], h_sid[c], h_gen[c]
        i = c
    if n:
        h_end[i], h_sid[i], h_gen[i] = end, sid, gen
    return top


@register_jitable
def _session_free(x, s_kid, s_gen, s_free, s_meta):  # type: ignore[no-untyped-def]
    s_kid[x] = -1
    s_gen[x] += 1
    s_free[s_meta[1]] = x
    s_meta[1] += 1
    s_meta[2] -= 1


@numba.njit(nogil=True, cache=CACHE)
def _session_insert(t, id_slot, free, meta, limit, k_sess, s_first, s_last, s_kid, s_next,  # type: ignore[no-untyped-def]
                    s_head, s_tail, s_cnt, s_gen, s_free, s_meta, h_end, h_sid, h_gen, h_meta,
                    r_next0, r_next1, r_kid, r_meta, side, keys, ts, gap, row_base, pos):
    n = ts.shape[0]
    nk = keys.shape[0]
    count, k_nxt, k_nfree = meta[_COUNT], meta[_NEXT], meta[_FREE]
    stop = n
    for i in range(pos, n):
        if count >= limit:
            stop = i
            break
        kid, added, k_nxt, k_nfree = _find_or_add(t, id_slot, free, k_nxt, k_nfree, keys, i, nk)
        if added:
            count += 1
            k_sess[kid] = -1
        at = ts[i]
        # the key's sessions within reach of the row: the first takes it, the others
        # (it bridges them) merge into the first
        target = -1
        prev = -1
        x = k_sess[kid]
        while x >= 0:
            nxt = s_next[x]
            if at - s_last[x] < gap and s_first[x] - at < gap:
                if target < 0:
                    target = x
                    prev = x
                else:
                    for sd in range(2):
                        rn = r_next0 if sd == 0 else r_next1
                        if s_head[sd, x] >= 0:
                            if s_tail[sd, target] < 0:
                                s_head[sd, target] = s_head[sd, x]
                            else:
                                rn[s_tail[sd, target]] = s_head[sd, x]
                            s_tail[sd, target] = s_tail[sd, x]
                            s_cnt[sd, target] += s_cnt[sd, x]
                    s_first[target] = min(s_first[target], s_first[x])
                    s_last[target] = max(s_last[target], s_last[x])
                    if prev < 0:
                        k_sess[kid] = nxt
                    else:
                        s_next[prev] = nxt
                    _session_free(x, s_kid, s_gen, s_free, s_meta)
            else:
                prev = x
            x = nxt
        if target < 0:
            if s_meta[1] > 0:
                s_meta[1] -= 1
                target = s_free[s_meta[1]]
            else:
                target = s_meta[0]
                s_meta[0] += 1
            s_meta[2] += 1
            s_first[target] = at
            s_last[target] = at
            s_kid[target] = kid
            s_next[target] = k_sess[kid]
            k_sess[kid] = target
            for sd in range(2):
                s_head[sd, target] = -1
                s_tail[sd, target] = -1
                s_cnt[sd, target] = 0
            _heap_push(h_end, h_sid, h_gen, h_meta, at + gap, target, s_gen[target])
        else:
            s_first[target] = min(s_first[target], at)
            s_last[target] = max(s_last[target], at)
        r = row_base + i
        rn = r_next0 if side == 0 else r_next1
        rn[r] = -1
        r_kid[r] = kid
        r_meta[0] += 1
        r_meta[1] += 1
        tail = s_tail[side, target]
        if tail < 0:
            s_head[side, target] = r
        else:
            rn[tail] = r
        s_tail[side, target] = r
        s_cnt[side, target] += 1
    meta[_COUNT], meta[_NEXT], meta[_FREE] = count, k_nxt, k_nfree
    return stop


@numba.njit(nogil=True, cache=CACHE)
def _session_due(wm, gap, h_end, h_sid, h_gen, h_meta, s_last, s_gen, s_cnt):  # type: ignore[no-untyped-def]
    """The sessions whose end (last time + gap) ``wm`` has reached, by end; the pairs they
    hold and the most right rows of one."""
    fired = np.empty(h_meta[0], dtype=np.int64)
    m = 0
    pairs = 0
    most = 0
    while h_meta[0] > 0 and h_end[0] <= wm:
        end, sid, gen = _heap_pop(h_end, h_sid, h_gen, h_meta)
        if s_gen[sid] != gen:  # merged into another session, or fired
            continue
        now = s_last[sid] + gap
        if now != end:  # it grew since: back in at its end
            _heap_push(h_end, h_sid, h_gen, h_meta, now, sid, gen)
            continue
        fired[m] = sid
        m += 1
        pairs += s_cnt[0, sid] * s_cnt[1, sid]
        if s_cnt[0, sid] and s_cnt[1, sid] > most:
            most = s_cnt[1, sid]
    return fired[:m], pairs, most


@numba.njit(nogil=True, cache=CACHE)
def _session_release(fired, t, id_slot, free, meta, k_sess, s_kid, s_next, s_head, s_gen,  # type: ignore[no-untyped-def]
                     s_free, s_meta, r_next0, r_next1, r_kid0, r_kid1, r_meta0, r_meta1):
    for sid in fired:
        for sd in range(2):
            rn = r_next0 if sd == 0 else r_next1
            rk = r_kid0 if sd == 0 else r_kid1
            rm = r_meta0 if sd == 0 else r_meta1
            r = s_head[sd, sid]
            while r >= 0:
                rk[r] = -1
                rm[1] -= 1
                r = rn[r]
        kid = s_kid[sid]
        prev = -1
        x = k_sess[kid]
        while x != sid:
            prev = x
            x = s_next[x]
        if prev < 0:
            k_sess[kid] = s_next[sid]
        else:
            s_next[prev] = s_next[sid]
        _session_free(sid, s_kid, s_gen, s_free, s_meta)
        if k_sess[kid] < 0:
            _delete(t, id_slot, free, meta, kid)


@numba.njit(nogil=True, cache=CACHE)
def _session_compact(r_next, r_kid, n, head, tail, s_kid, s_used):  # type: ignore[no-untyped-def]
    """Drop one input's fired rows (``r_kid < 0``), keeping order; renumber the chains.
    Returns (rows kept, keep mask)."""
    new = np.empty(n, dtype=np.int64)
    keep = np.empty(n, dtype=np.bool_)
    m = 0
    for r in range(n):
        keep[r] = r_kid[r] >= 0
        new[r] = m if keep[r] else -1
        if keep[r]:
            m += 1
    for r in range(n):
        d = new[r]
        if d >= 0:
            nxt = r_next[r]
            r_next[d] = new[nxt] if nxt >= 0 else -1
            r_kid[d] = r_kid[r]
    for x in range(s_used):
        if s_kid[x] >= 0 and head[x] >= 0:
            head[x] = new[head[x]]
            tail[x] = new[tail[x]]
    return m, keep


class SessionIndex:
    """Sessions formed by two inputs' rows together, per key, for session window joins.

    A key's sessions are disjoint: rows closer than ``gap`` are in one session. A new
    row opens a session, or joins the one it reaches (and merges those it bridges);
    each session chains each input's rows. :meth:`fire` pairs the two chains of every
    session whose end (last time + gap) the watermark has reached and forgets it.

    Examples
    --------
    >>> import numpy as np
    >>> ix = SessionIndex(1, gap=5)
    >>> ix.insert(0, np.array([[3, 3, 3]], dtype=np.uint64), np.array([0, 20, 8]), 0)
    >>> ix.insert(1, np.array([[3, 3]], dtype=np.uint64), np.array([4, 30]), 0)
    >>> [(l.tolist(), r.tolist(), s.tolist(), e.tolist()) for l, r, s, e in ix.fire(20)]
    [([2, 0], [0, 0], [0, 0], [13, 13])]
    >>> ix.held  # the rows at 20 and 30: two sessions, not yet ended
    2
    """

    def __init__(self, key_words: int, gap: int) -> None:
        self.gap = gap
        self.keys = KeyIndex(key_words)
        self.k_sess = np.empty(self.keys.id_capacity, dtype=np.int64)
        cap = 1024
        self.s_first = np.empty(cap, dtype=np.int64)
        self.s_last = np.empty(cap, dtype=np.int64)
        self.s_kid = np.full(cap, -1, dtype=np.int64)
        self.s_next = np.empty(cap, dtype=np.int64)
        self.s_head = np.empty((2, cap), dtype=np.int64)
        self.s_tail = np.empty((2, cap), dtype=np.int64)
        self.s_cnt = np.empty((2, cap), dtype=np.int64)
        self.s_gen = np.zeros(cap, dtype=np.int64)
        self.s_free = np.empty(cap, dtype=np.int64)
        self.s_meta = np.zeros(3, dtype=np.int64)  # next new id, free ids, live sessions
        self.h_end = np.empty(cap, dtype=np.int64)
        self.h_sid = np.empty(cap, dtype=np.int64)
        self.h_gen = np.empty(cap, dtype=np.int64)
        self.h_meta = np.zeros(1, dtype=np.int64)
        self.r_next = [np.empty(0, dtype=np.int64) for _ in range(2)]
        self.r_kid = [np.empty(0, dtype=np.int64) for _ in range(2)]
        self.r_meta = [np.zeros(2, dtype=np.int64) for _ in range(2)]  # stored, held

    @property
    def held(self) -> int:
        """Rows held, both inputs."""
        return int(self.r_meta[0][1] + self.r_meta[1][1])

    def live(self, side: int) -> int:
        """Rows of ``side`` held."""
        return int(self.r_meta[side][1])

    def insert(self, side: int, keys: np.ndarray, ts: np.ndarray, row_base: int) -> None:
        """Add rows ``row_base ..`` of input ``side`` (key words, times) to their sessions."""
        n = ts.shape[0]
        need = row_base + n
        self.r_next[side] = grown(self.r_next[side], need)
        self.r_kid[side] = grown(self.r_kid[side], need)
        cap = int(self.s_meta[0]) + n  # every row may open a session
        if cap > self.s_first.shape[0]:
            self.s_first, self.s_last = grown(self.s_first, cap), grown(self.s_last, cap)
            self.s_kid, self.s_next = grown(self.s_kid, cap, -1), grown(self.s_next, cap)
            self.s_head, self.s_tail = grown(self.s_head, cap), grown(self.s_tail, cap)
            self.s_cnt, self.s_gen = grown(self.s_cnt, cap), grown(self.s_gen, cap, 0)
            self.s_free = grown(self.s_free, cap)
        heap = int(self.h_meta[0]) + n
        self.h_end, self.h_sid = grown(self.h_end, heap), grown(self.h_sid, heap)
        self.h_gen = grown(self.h_gen, heap)
        ix = self.keys
        pos = 0
        while True:
            pos = int(_session_insert(
                ix.t, ix.id_slot, ix.free, ix.meta, ix.id_capacity, self.k_sess, self.s_first,
                self.s_last, self.s_kid, self.s_next, self.s_head, self.s_tail, self.s_cnt,
                self.s_gen, self.s_free, self.s_meta, self.h_end, self.h_sid, self.h_gen,
                self.h_meta, self.r_next[0], self.r_next[1], self.r_kid[side],
                self.r_meta[side], side, keys, ts, self.gap, row_base, pos))
            if pos == n:
                return
            ix.grow()
            self.k_sess = grown(self.k_sess, ix.id_capacity)

    def fire(self, wm: int, chunk: int = 1 << 22) -> Any:
        """Pairs ``(left rows, right rows, session starts, session ends)`` of the sessions
        whose end ``wm`` has reached, in chunks of about ``chunk`` pairs (whole left
        rows); the sessions are forgotten once the chunks are taken."""
        fired, pairs, most = _session_due(wm, self.gap, self.h_end, self.h_sid, self.h_gen,
                                          self.h_meta, self.s_last, self.s_gen, self.s_cnt)
        none = np.empty(0, dtype=np.int64)
        for li, ri, sid in _pair_chunks(fired, pairs, most, chunk, self.s_head, self.s_cnt,
                                        [none, none], self.r_next):
            yield li, ri, self.s_first[sid], self.s_last[sid] + self.gap
        ix = self.keys
        _session_release(fired, ix.t, ix.id_slot, ix.free, ix.meta, self.k_sess, self.s_kid,
                         self.s_next, self.s_head, self.s_gen, self.s_free, self.s_meta,
                         self.r_next[0], self.r_next[1], self.r_kid[0], self.r_kid[1],
                         self.r_meta[0], self.r_meta[1])

    def compact(self, side: int) -> np.ndarray:
        """Drop ``side``'s fired rows: returns which stored rows stay (the owner keeps
        those, in order)."""
        m, keep = _session_compact(self.r_next[side], self.r_kid[side],
                                   int(self.r_meta[side][0]), self.s_head[side],
                                   self.s_tail[side], self.s_kid, int(self.s_meta[0]))
        self.r_meta[side][0] = m
        return keep

    def held_rows(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """``side``'s held rows in arrival order, and their key words."""
        kids = self.r_kid[side][: int(self.r_meta[side][0])]
        rows = np.flatnonzero(kids >= 0)
        return rows, self.keys.keys_of(kids[rows])

    def state_bytes(self) -> int:
        """Bytes of its arrays."""
        arrays = [self.k_sess, self.s_first, self.s_last, self.s_kid, self.s_next, self.s_head,
                  self.s_tail, self.s_cnt, self.s_gen, self.s_free, self.h_end, self.h_sid,
                  self.h_gen, *self.r_next, *self.r_kid]
        return self.keys.state_bytes() + sum(int(a.nbytes) for a in arrays)
