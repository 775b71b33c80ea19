"""The fused tumbling- and sliding-window loop over a dense per-window layout (CPU).

:mod:`~gpustream.kernels.fused_window` keeps one hash table over (key, window): every
event probes a table spread over all open windows' slots, so its hash, key and state
lines are all cold. Here the state is split in two:

- a **key table** ``d_keys`` (``uint64[capacity, K + 2]``: each slot's hash, then its
  key words and null bits, so that a probe reads one line; open addressing, hashed with
  :func:`~gpustream.kernels.fused_window.fused_hash_rows`) shared by every window: each
  key has one slot ``d`` while any open window holds state for it (``refs[d]`` counts
  those windows), so it stays small and in cache;
- **pages**, one per open window (``p_start``, ``p_live``): page ``p`` holds the state
  row of key slot ``d`` at row ``p * capacity + d``; ``p_touched[p, :p_count[p]]`` lists
  the key slots it has state for, which is what firing reads. A row is only the
  aggregation states' words (a cache line or less): a row's window end is its page's,
  and every row of a window without allowed lateness was made by an on-time event.

Each event's key hash is computed once per batch, with its shard
(:class:`EventShards`). The loop then takes a shard's events in blocks of
:data:`BLOCK`, in two passes, so that each pass is short enough for the CPU to overlap
the cache misses of many events:

1. per event: lateness, window start, page (the last one, else a search of the few open
   ones), key slot (found or inserted; the key table's line of the event 16 ahead is
   prefetched from its hash): the event's row, or -1 for a late event;
2. per event: the same straight-line folds as the (key, window) loop on its row (sliding
   windows: on its key's row in each of its open windows' pages), the row of the event
   16 ahead prefetched.

``present`` (one byte per row, so that the check stays in cache) marks the rows that hold
state; the others hold the fill values (pages are reset when they fire). The loop stops
early (returning the next event) when the key table has no room left or a new window
needs a page and none is free, having folded exactly the events before that one; the
caller grows what is short.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numba
import numpy as np

from gpustream.kernels.cache import CACHE, generated_kernel
from gpustream.kernels.fused_window import (
    _PRELUDE,
    _SEED64,
    FusedAgg,
    _agg_blocks,
    _finish,
    _input_lines,
    _mix_word,
    _probe_lines,
    _word_lines,
    fused_hash_rows,
)
from gpustream.kernels.hashtable import EMPTY, TOMBSTONE
from gpustream.kernels.prefetch import PREFETCH_DISTANCE, _prefetch

__all__ = ["EventShards", "dense_window_kernel", "insert_keys", "move_pages", "pop_pages"]

#: events per block of the loop's two passes (rows, folds)
BLOCK = 1024


def _page_lines(var: str, start: str) -> list[str]:
    """``var`` = the live page of the window starting at ``start``, else a free page made
    live for it, else -1 (no page free)."""
    return [f"{var} = -1",
            "for p in range(pages):",
            f"    if p_live[p] != 0 and p_start[p] == {start}:",
            f"        {var} = p",
            "        break",
            f"if {var} < 0:",
            "    for p in range(pages):",
            "        if p_live[p] == 0:",
            f"            {var} = p",
            f"            p_live[{var}] = 1",
            f"            p_start[{var}] = {start}",
            f"            p_count[{var}] = 0",
            "            break"]


#: a new row ``s`` of key slot ``d`` in page ``s // capacity``: marked present, listed in
#: its page, counted in its key's references (the aggregations' first values follow)
_CREATE = ["present[s] = 1",
           "p = np.int64(s // ucap)",
           "p_touched[p, p_count[p]] = np.int64(d)",
           "p_count[p] += 1",
           "refs[d] += 1",
           "created += 1"]


def _source(n_keys: int, aggs: tuple[FusedAgg, ...], fields: tuple[tuple[str, int, str], ...],
            width: int, tumbling: bool) -> str:
    # a field of the row at word ``o`` of the block, read as its word type
    ref = {name: f"B{kind.upper()}[o + {j}]" for name, j, kind in fields}
    words = [f"w{c}" for c in range(n_keys)] + ["nb"]
    args = (["ts", "ts_ok", "wm", "size", "slide", "offset", "nwin", "idx", "j0", "j1", "room",
             "hashes"]
            + [f"K{c}, K{c}ok" for c in range(n_keys)]
            + [f"V{j}, V{j}ok" for j in range(len(aggs))]
            + ["d_keys", "refs", "p_start", "p_live", "p_count", "p_touched", "present",
               "BI", "BF", "BU", "late", "out"])
    # the words of a row's lines to prefetch (rows are aligned: a line holds 8 words)
    lines = ["", f" + {width - 1}"] if width > 8 else [""]
    L = [f"def dense({', '.join(args)}):",
         "    cap = d_keys.shape[0]",
         f"    W = np.uint64({width})",
         "    mask = np.uint64(cap - 1)",
         "    ucap = np.uint64(cap)",
         "    KW = np.uint64(d_keys.shape[1])",
         "    d_keys_flat = d_keys.reshape(d_keys.shape[0] * d_keys.shape[1])",
         "    pages = p_start.shape[0]",
         "    rbuf = np.empty(BLOCK, np.int64)",
         "    bases = np.full(nwin, -1, np.int64)",
         "    lo = np.int64(1)",
         "    hi = np.int64(0)",
         "    top = I64_MAX - slide",
         "    cur_st = np.int64(0)",
         "    cur_p = -1",
         "    base = np.int64(0)",
         "    created = 0",
         "    new_keys = 0",
         "    empties = 0",
         "    need_page = 0",
         "    dropped = 0",
         "    stopped = False",
         "    j = j0",
         "    while j < j1 and not stopped:",
         "        m = min(BLOCK, j1 - j)",
         # pass 1: lateness, the page, the key slot (found or inserted): the event's row
         "        done = m",
         "        for k in range(m):",
         "            if k + PF < m:",
         "                _prefetch(d_keys_flat, (hashes[idx[j + k + PF]] & mask) * KW)",
         "            i = np.uint64(idx[j + k])",  # unsigned indices: no wraparound checks
         "            if empties >= room:",
         "                done = k",
         "                stopped = True",
         "                break",
         "            rbuf[k] = -1",
         "            if ts_ok.shape[0] != 0 and not ts_ok[i]:",
         "                late[i] = 1",
         "                continue",
         "            t = ts[i]",
         "            if not (t >= lo and t < hi):",
         "                lo = window_start(t, slide, offset)",
         "                hi = lo + slide if lo <= top else lo",
         "            w = wm[i]",
         "            if lo + size <= w:",  # its newest window has fired: all have
         "                late[i] = 1",
         "                dropped += nwin",
         "                continue"]
    if tumbling:
        L += ["            if cur_p < 0 or lo != cur_st:"]
        L += ["                " + line for line in _page_lines("cur_p", "lo")]
        L += ["                if cur_p < 0:",
              "                    need_page = 1",
              "                    done = k",
              "                    stopped = True",
              "                    break",
              "                cur_st = lo",
              "                base = np.int64(cur_p) * cap"]
    else:
        # a page for each window of the event still open; the watermark only rises, so
        # later events of the same newest window need no more of them
        L += ["            if cur_p < 0 or lo != cur_st:",
              "                short = False",
              "                for jw in range(nwin):",
              "                    st = lo - jw * slide",
              "                    if st + size <= w:",
              "                        break"]
        L += ["                    " + line for line in _page_lines("q", "st")]
        L += ["                    if q < 0:",
              "                        short = True",
              "                        break",
              "                if short:",
              "                    need_page = 1",
              "                    done = k",
              "                    stopped = True",
              "                    break",
              "                cur_st = lo",
              "                cur_p = 0"]
    L += ["            " + line for line in _word_lines(n_keys)]
    same = " and ".join(f"d_keys[d, {c + 1}] == {wd}" for c, wd in enumerate(words))
    L += ["            h = hashes[i]",
          "            d = h & mask"]
    L += ["            " + line for line in _probe_lines("d", "d_keys[d, 0]", same)]
    L += ["            if not found:",
          "                if tomb >= 0:",
          "                    d = np.uint64(tomb)",
          "                else:",
          "                    empties += 1",
          "                d_keys[d, 0] = h"]
    L += [f"                d_keys[d, {c + 1}] = {wd}" for c, wd in enumerate(words)]
    L += ["                refs[d] = 0",
          "                new_keys += 1",
          "            rbuf[k] = np.int64(np.uint64(base) + d)" if tumbling
          else "            rbuf[k] = np.int64(d)"]
    init, body = _agg_blocks(aggs, ref)
    if tumbling:
        # pass 2: fold each event into its row; the row PF events ahead is prefetched
        L += ["        for k in range(done):",
              "            if k + PF < done:",
              "                sa = rbuf[k + PF]",
              "                if sa >= 0:"]
        L += [f"                    _prefetch(BI, np.uint64(sa) * W{at})" for at in lines]
        L += ["            if rbuf[k] < 0:",
              "                continue",
              "            s = np.uint64(rbuf[k])",
              "            o = s * W",
              "            i = np.uint64(idx[j + k])"]
        L += ["            " + line for line in _input_lines(aggs)]
        L += ["            if present[s] == 0:",
              "                d = s & mask"]
        L += ["                " + line for line in _CREATE]
        L += ["                " + line for line in init]
        L += ["            " + line for line in body]
    else:
        # pass 2: fold each event into the row of its key in each of its open windows'
        # pages (``bases``: found once per newest window); the key's rows in the pages of
        # the event PF ahead are prefetched
        L += ["        lo3 = np.int64(1)",
              "        hi3 = np.int64(0)",
              "        cur3 = np.int64(0)",
              "        have3 = False",
              "        for k in range(done):",
              "            if have3 and k + PF < done:",
              "                sa = rbuf[k + PF]",
              "                if sa >= 0:",
              "                    for jw in range(nwin):",
              "                        if bases[jw] >= 0:"]
        L += [f"                            _prefetch(BI, np.uint64(bases[jw] + sa) * W{at})"
              for at in lines]
        L += ["            if rbuf[k] < 0:",
              "                continue",
              "            d = np.uint64(rbuf[k])",
              "            i = np.uint64(idx[j + k])",
              "            t = ts[i]",
              "            if not (t >= lo3 and t < hi3):",
              "                lo3 = window_start(t, slide, offset)",
              "                hi3 = lo3 + slide if lo3 <= top else lo3",
              "            if not have3 or lo3 != cur3:",
              "                for jw in range(nwin):",
              "                    st = lo3 - jw * slide",
              "                    bases[jw] = -1",
              "                    for p in range(pages):",
              "                        if p_live[p] != 0 and p_start[p] == st:",
              "                            bases[jw] = np.int64(p) * cap",
              "                            break",
              "                cur3 = lo3",
              "                have3 = True",
              "            w = wm[i]"]
        L += ["            " + line for line in _input_lines(aggs)]
        L += ["            for jw in range(nwin):",
              "                st = lo3 - jw * slide",
              "                if st + size <= w:",
              "                    dropped += nwin - jw",  # older windows end earlier:
              "                    break",  # fired too
              "                s = np.uint64(bases[jw]) + d",
              "                o = s * W",
              "                if present[s] == 0:"]
        L += ["                    " + line for line in _CREATE]
        L += ["                    " + line for line in init]
        L += ["                " + line for line in body]
    L += ["        j += done",
          "    out[0] = created",
          "    out[1] = empties",
          "    out[2] = new_keys",
          "    out[3] = need_page",
          "    out[4] = dropped",
          "    return j"]
    return "\n".join(L) + "\n"


@lru_cache(maxsize=64)
def dense_window_kernel(n_keys: int, aggs: tuple[FusedAgg, ...],
                        fields: tuple[tuple[str, int, str], ...], width: int,
                        tumbling: bool = True) -> Any:
    """The compiled dense window loop for ``n_keys`` key columns and ``aggs``: tumbling
    windows (one per event), or with ``tumbling=False`` sliding ones (``nwin`` per event,
    each in its own page, the key's slot found once).

    The pages' rows are ``width`` words (a power of two, or whole cache lines); ``fields``
    places each state column in a row as ``(name, word, kind)``, ``kind`` its word type
    (``i`` int64, ``f`` float64, ``u`` uint64). Arguments: event times, their validity (empty: none), per-event watermarks, ``size``,
    ``slide``, ``offset``, ``nwin`` (``size // slide``; tumbling: ``slide == size``,
    ``nwin`` 1), ``idx``, ``j0``, ``j1`` (fold the events ``idx[j0:j1]``), ``room``
    (empty key slots it may fill), each event's key hash (:class:`EventShards`), each
    key column as uint64 with its validity, each aggregation's input values with their
    validity, the key table (``d_keys`` ``uint64[capacity, K + 2]``: hash, key words,
    null bits; ``refs``: how many pages hold a row of the key), the pages (``p_start``,
    ``p_live``, ``p_count``, ``p_touched``, ``present``: int8 per row), the rows as one
    flat array of words read as int64, float64 and uint64, ``late`` (int8 per event) and ``out`` (int64[5]: rows created, empty key slots
    filled, keys added, 1 if it stopped for want of a page, (event, window) pairs of the
    folded events dropped because the window had fired). Returns the position in ``idx``
    of the next event.

    Examples
    --------
    >>> import numpy as np
    >>> k = dense_window_kernel(1, (FusedAgg("count", ("n",)),), (("n", 0, "i"),), 1)
    >>> none, keys = np.empty(0, np.bool_), np.array([4, 4, 4, 4], np.uint64)
    >>> shards = EventShards((keys,), (none,), 0, 4)
    >>> hashes, _ = shards.hashes, shards.take(0, 4)
    >>> d_keys, refs = np.zeros((8, 3), np.uint64), np.zeros(8, np.int32)
    >>> p_start, p_live, p_count = np.zeros(2, np.int64), np.zeros(2, np.int8), np.zeros(2, np.int64)
    >>> p_touched, present, n = np.zeros((2, 8), np.int32), np.zeros(16, np.int8), np.zeros(16, np.int64)
    >>> late, out = np.zeros(4, np.int8), np.zeros(5, np.int64)
    >>> k(np.array([5, 7, 12, 3]), none, np.array([-99, 5, 7, 12]), 10, 10, 0, 1, np.arange(4),
    ...   0, 4, 4, hashes, keys, none, np.zeros(1), none, d_keys, refs,
    ...   p_start, p_live, p_count, p_touched, present, n, n.view(float), n.view(np.uint64),
    ...   late, out)
    4
    >>> p_start.tolist(), p_count.tolist(), out.tolist(), late.tolist()
    ([0, 10], [1, 1], [2, 1, 1, 0, 1], [0, 0, 0, 1])
    >>> d = int(p_touched[0, 0]); int(n[d]), int(n[8 + d]), int(refs[d]), int(d_keys[d, 1])
    (2, 1, 2, 4)

    Sliding windows of 10 every 5: the event at 7 is in [0, 10) and [5, 15), the one at
    12 in [5, 15) and [10, 20); by then the watermark 7 has not fired [0, 10).

    >>> k = dense_window_kernel(1, (FusedAgg("count", ("n",)),), (("n", 0, "i"),), 1,
    ...                         tumbling=False)
    >>> d_keys, refs = np.zeros((8, 3), np.uint64), np.zeros(8, np.int32)
    >>> p_start, p_live, p_count = np.zeros(4, np.int64), np.zeros(4, np.int8), np.zeros(4, np.int64)
    >>> p_touched, present, n = np.zeros((4, 8), np.int32), np.zeros(32, np.int8), np.zeros(32, np.int64)
    >>> k(np.array([7, 12]), none, np.array([-99, 7]), 10, 5, 0, 2, np.arange(2), 0, 2, 4,
    ...   hashes, keys, none, np.zeros(1), none, d_keys, refs,
    ...   p_start, p_live, p_count, p_touched, present, n, n.view(float), n.view(np.uint64),
    ...   late, out)
    2
    >>> sorted(zip(p_start.tolist(), p_count.tolist()))[1:], out.tolist(), int(refs.max())
    ([(0, 1), (5, 1), (10, 1)], [3, 1, 1, 0, 0], 3)
    >>> sorted(int(n[p * 8 + int(p_touched[p, 0])]) for p in range(3))
    [1, 1, 2]
    """
    prelude = _PRELUDE.replace("fused_window:", "fused_dense:") + (
        "from gpustream.kernels.fused_dense import BLOCK\n\n\n")
    return generated_kernel(prelude + _source(n_keys, aggs, fields, width, tumbling), "dense",
                            "fused_dense", nogil=True)


@numba.njit(nogil=True, cache=CACHE)
def _hash_and_shard(keys, valid, bits, start, stop, hashes, lists, counts):  # type: ignore[no-untyped-def]
    shift = np.uint64(64 - max(bits, 1))
    c0, c1 = counts[0], counts[-1]  # two shards: counted in registers, written branch-free
    for i in range(start, stop):
        h = _SEED64
        nb = np.uint64(0)
        for c in range(len(keys)):
            w = keys[c][i]
            if valid[c].shape[0] != 0 and not valid[c][i]:
                w = np.uint64(0)
                nb |= np.uint64(1) << np.uint64(c)
            h = _mix_word(h, w)
        h = _finish(_mix_word(h, nb))
        hashes[i] = h
        if bits == 1:
            b = np.int64(h >> shift)
            lists[0, c0] = i
            lists[1, c1] = i
            c0 += 1 - b
            c1 += b
        elif bits:
            s = np.int64(h >> shift)
            lists[s, counts[s]] = i
            counts[s] += 1
    if bits == 1:
        counts[0], counts[1] = c0, c1


class EventShards:
    """Each event's key hash (over its key words, 0 where null, and null bits: the hash
    :func:`~gpustream.kernels.fused_window.fused_hash_rows` gives those words) and each
    shard's events (``2 ** bits`` shards, from the hash's top bits as
    :func:`~gpustream.kernels.fused_window.key_shards`), for a batch of ``n`` events,
    computed a range of events at a time (:meth:`take`) in one pass. ``keys`` are uint64
    arrays, ``valid`` their validity (empty: no nulls).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.kernels.fused_window import fused_hash_rows, key_shards
    >>> keys, ok = np.arange(1000, dtype=np.uint64), np.arange(1000) % 7 != 0
    >>> ev = EventShards((keys,), (ok,), 1, 1000)
    >>> lists = [np.concatenate(parts) for parts in zip(ev.take(0, 600), ev.take(600, 1000))]
    >>> words = np.stack([np.where(ok, keys, 0), (~ok).astype(np.uint64)])
    >>> bool((ev.hashes == fused_hash_rows(words)).all())
    True
    >>> shard = key_shards(words, 1)
    >>> [bool((lst == np.flatnonzero(shard == s)).all()) for s, lst in enumerate(lists)]
    [True, True]
    >>> EventShards((keys,), (ok,), 0, 1000).take(5, 8)[0].tolist()
    [5, 6, 7]
    """

    def __init__(self, keys: tuple[Any, ...], valid: tuple[Any, ...], bits: int, n: int) -> None:
        self.keys, self.valid, self.bits = keys, valid, bits
        #: each event's key hash, once :meth:`take` has reached it
        self.hashes = np.empty(n, dtype=np.uint64)
        shards = 1 << bits
        self.lists = np.empty((shards if bits else 0, n), dtype=np.int64)
        self.counts = np.zeros(shards, dtype=np.int64)
        if not keys:  # no key columns: every event has the key of no words, no null bits
            self.hashes[:] = fused_hash_rows(np.zeros((1, 1), dtype=np.uint64))[0]

    def take(self, start: int, stop: int) -> list[Any]:
        """Hash the events ``start:stop`` (the next ones) and return each shard's among
        them, ascending."""
        if not self.bits:
            if self.keys:
                _hash_and_shard(self.keys, self.valid, 0, start, stop, self.hashes, self.lists,
                                self.counts)
            return [np.arange(start, stop, dtype=np.int64)]
        before = self.counts.copy()
        if self.keys:
            _hash_and_shard(self.keys, self.valid, self.bits, start, stop, self.hashes,
                            self.lists, self.counts)
        else:
            s = int(self.hashes[0] >> np.uint64(64 - self.bits)) if stop > start else 0
            self.lists[s, before[s] : before[s] + stop - start] = np.arange(start, stop)
            self.counts[s] += stop - start
        return [self.lists[s, before[s] : self.counts[s]] for s in range(self.counts.shape[0])]


@numba.njit(nogil=True, cache=CACHE)
def _insert_keys(d_keys, hashes, words, slots):  # type: ignore[no-untyped-def]
    mask = np.uint64(d_keys.shape[0] - 1)
    kw = words.shape[1]
    added = 0
    for i in range(hashes.shape[0]):
        h = hashes[i]
        d = h & mask
        while True:
            th = d_keys[d, 0]
            if th == EMPTY:
                d_keys[d, 0] = h
                for c in range(kw):
                    d_keys[d, c + 1] = words[i, c]
                added += 1
                break
            if th == h:
                same = True
                for c in range(kw):
                    if d_keys[d, c + 1] != words[i, c]:
                        same = False
                        break
                if same:
                    break
            d = (d + np.uint64(1)) & mask
        slots[i] = np.int64(d)
    return added


def insert_keys(d_keys: Any, hashes: Any, words: Any) -> tuple[Any, int]:
    """The slots of keys (their ``hashes`` and ``words``, ``uint64[n, K + 1]``) in the key
    table ``d_keys`` (as :func:`dense_window_kernel` keeps it, without freed slots),
    inserting the missing ones; and how many it inserted.

    Examples
    --------
    >>> import numpy as np
    >>> d_keys = np.zeros((8, 3), np.uint64)
    >>> words = np.array([[5, 0], [6, 0], [5, 0]], np.uint64)
    >>> slots, added = insert_keys(d_keys, np.array([11, 12, 11], np.uint64), words)
    >>> added, bool(slots[0] == slots[2]), d_keys[slots[1]].tolist()
    (2, True, [12, 6, 0])
    """
    slots = np.empty(hashes.shape[0], dtype=np.int64)
    added = _insert_keys(d_keys, hashes, np.ascontiguousarray(words, dtype=np.uint64), slots)
    return slots, int(added)


@numba.njit(nogil=True, cache=CACHE)
def _pop_pages(pages, cap, size, p_start, p_live, p_count, p_touched, present, block, fill_row,  # type: ignore[no-untyped-def]
               d_keys, refs, rows, keys, freed):
    width = block.shape[1]
    hot = rows.shape[1] - 1  # the state words; the window end goes after them
    kw = d_keys.shape[1] - 1
    flat = block.reshape(block.shape[0] * width)
    o = 0
    n_freed = 0
    for q in range(pages.shape[0]):
        p = pages[q]
        base = np.int64(p) * cap
        cnt = p_count[p]
        end = p_start[p] + size
        for j in range(cnt):
            if j + PREFETCH_DISTANCE < cnt:
                ahead = base + p_touched[p, j + PREFETCH_DISTANCE]
                _prefetch(flat, ahead * width)
                if width > 8:
                    _prefetch(flat, ahead * width + width - 1)
            d = np.int64(p_touched[p, j])
            s = base + d
            for w in range(hot):
                rows[o, w] = block[s, w]
            for w in range(width):
                block[s, w] = fill_row[w]
            rows[o, hot] = end
            present[s] = 0
            for c in range(kw):
                keys[o, c] = d_keys[d, c + 1]
            keys[o, kw] = np.uint64(p_start[p])
            o += 1
            refs[d] -= 1
            if refs[d] == 0:
                d_keys[d, 0] = TOMBSTONE
                freed[n_freed] = d
                n_freed += 1
        p_count[p] = 0
        p_live[p] = 0
    return n_freed


def pop_pages(pages: Any, cap: int, size: int, page_arrays: tuple[Any, Any, Any, Any, Any],
              block: Any, fill_row: Any, key_table: tuple[Any, Any], rows: Any, keys: Any,
              freed: Any) -> int:
    """Copy the rows of ``pages`` (windows of ``size``) into ``rows`` and their key words
    plus window start into ``keys`` (``uint64[n, K + 2]``), page after page, each in the
    order of its list (``p_touched``), reset the rows to ``fill_row`` (and their
    ``present`` marks: the last of ``page_arrays``), free the pages, and tombstone the key
    slots no open window needs any more (listed in ``freed``; returns how many).

    ``rows`` is ``int64[n, H + 1]``: a row's ``H`` state words, then its window's end.

    Examples
    --------
    >>> import numpy as np
    >>> d_keys = np.zeros((4, 3), np.uint64)
    >>> d_keys[1] = [99, 7, 0]
    >>> refs = np.array([0, 1, 0, 0], np.int32)
    >>> block = np.arange(16, dtype=np.int64).reshape(8, 2)   # 2 pages of 4 rows
    >>> pages = (np.array([0, 30]), np.array([0, 1], np.int8), np.array([0, 1]),
    ...          np.array([[0, 0, 0, 0], [1, 0, 0, 0]]), np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int8))
    >>> rows, keys, freed = np.empty((1, 3), np.int64), np.empty((1, 3), np.uint64), np.empty(1, np.int64)
    >>> pop_pages(np.array([1]), 4, 10, pages, block, np.zeros(2, np.int64),
    ...           (d_keys, refs), rows, keys, freed)
    1
    >>> rows.tolist(), keys.tolist(), block[5].tolist(), int(d_keys[1, 0]), pages[1].tolist()
    ([[10, 11, 40]], [[7, 0, 30]], [0, 0], 1, [0, 0])
    >>> int(pages[4].sum())
    0
    """
    p_start, p_live, p_count, p_touched, present = page_arrays
    d_keys, refs = key_table
    return int(_pop_pages(pages, cap, size, p_start, p_live, p_count, p_touched, present, block,
                          fill_row, d_keys, refs, rows, keys, freed))


@numba.njit(nogil=True, cache=CACHE)
def _move_pages(o_block, o_cap, o_live, o_count, o_touched, remap, block, cap, p_touched,  # type: ignore[no-untyped-def]
                present):
    width = o_block.shape[1]
    for p in range(o_live.shape[0]):
        if o_live[p] == 0:
            continue
        for j in range(o_count[p]):
            d = o_touched[p, j]
            nd = remap[d]
            p_touched[p, j] = nd
            src = np.int64(p) * o_cap + d
            dst = np.int64(p) * cap + nd
            for w in range(width):
                block[dst, w] = o_block[src, w]
            present[dst] = 1


def move_pages(old: tuple[Any, int, Any, Any, Any], remap: Any, block: Any, cap: int,
               p_touched: Any, present: Any) -> None:
    """Copy the rows of the live pages of ``old`` (``block``, capacity, ``p_live``,
    ``p_count``, ``p_touched``) into ``block`` of key capacity ``cap``, key slot ``d``
    becoming ``remap[d]``: their lists into ``p_touched``, their marks into ``present``.

    Examples
    --------
    >>> import numpy as np
    >>> o_block = np.arange(8, dtype=np.int64).reshape(4, 2)   # 2 pages of 2 rows
    >>> old = (o_block, 2, np.array([0, 1], np.int8), np.array([0, 1]), np.array([[0], [1]]))
    >>> block, present = np.zeros((8, 2), np.int64), np.zeros(8, np.int8)
    >>> touched = np.zeros((2, 1), np.int32)
    >>> move_pages(old, np.array([3, 2]), block, 4, touched, present)
    >>> block[6].tolist(), touched.tolist(), present.tolist()
    ([6, 7], [[0], [2]], [0, 0, 0, 0, 0, 0, 1, 0])
    """
    o_block, o_cap, o_live, o_count, o_touched = old
    _move_pages(o_block, o_cap, o_live, o_count, o_touched, remap, block, cap, p_touched, present)
