"""The fused tumbling-window loop over a dense per-window layout (CPU).

:mod:`~gpustream.kernels.fused_window` keeps one hash table over (key, window): every
event probes a table spread over all open windows' slots, so its hash, key and state
lines are all cold. Here the state is split in two:

- a **key table** (open addressing over the key words and null bits, hashed with
  :func:`~gpustream.kernels.fused_window.fused_hash_rows`) shared by every window: each
  key has one slot ``d`` while any open window holds state for it (``refs[d]`` counts
  those windows), so it stays small and in cache;
- **pages**, one per open window (``p_start``, ``p_live``): page ``p`` holds a packed
  state row for key slot ``d`` at row ``p * capacity + d``; ``p_touched[p, :p_count[p]]``
  lists the key slots it has state for, which is what firing reads.

The loop takes the events in blocks of :data:`BLOCK`, in three passes, so that each pass
is short enough for the CPU to overlap the cache misses of many events (one long body
with a data-dependent probe loop serialized them: 45 ns per event against 26 now, on
the 2-core CI machine):

1. the key hash of every event in the block;
2. per event: lateness, window start, page (the last one, else a search of the few open
   ones), key slot (found or inserted; the key table's lines of the event 16 ahead are
   prefetched from its hash): the event's row, or -1 for a late event;
3. per event: the same straight-line folds as the (key, window) loop on its row, the
   row of the event 16 ahead prefetched (and its bookkeeping line where that row is new).

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
    FusedAgg,
    _agg_blocks,
    _input_lines,
    _key_lines,
    _probe_lines,
)
from gpustream.kernels.hashtable import TOMBSTONE
from gpustream.kernels.prefetch import PREFETCH_DISTANCE, _prefetch

__all__ = ["dense_window_kernel", "pop_pages"]

#: events per block of the loop's three passes (hashes, rows, folds)
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


def _create_lines(col: dict[str, str], end: str) -> list[str]:
    """A new row ``s`` of key slot ``d`` in page ``s // capacity``: marked present, its
    window ``end`` and on-time flag written, listed in its page, counted in its key's
    references (the aggregations' own first values follow)."""
    return ["present[s] = 1",
            "p = np.int64(s // ucap)",
            f"{col['__wend']}[s] = {end}",
            f"{col['__ontime']}[s] = 1",
            "p_touched[p, p_count[p]] = np.int64(d)",
            "p_count[p] += 1",
            "refs[d] += 1",
            "created += 1"]


def _source(n_keys: int, aggs: tuple[FusedAgg, ...], columns: tuple[tuple[str, str], ...],
            tumbling: bool) -> str:
    col = {name: f"C{j}" for j, (name, _) in enumerate(columns)}
    words = [f"w{c}" for c in range(n_keys)] + ["nb"]
    args = (["ts", "ts_ok", "wm", "size", "slide", "offset", "nwin", "idx", "j0", "j1", "room"]
            + [f"K{c}, K{c}ok" for c in range(n_keys)]
            + [f"V{j}, V{j}ok" for j in range(len(aggs))]
            + ["d_hash", "d_keys", "refs", "p_start", "p_live", "p_count", "p_touched",
               "present"]
            + [col[name] for name, _ in columns] + ["late", "out"])
    hot = [col[name] for agg in aggs for name in agg.columns] or [col["__ontime"]]
    cold = col["__wend"]
    L = [f"def dense({', '.join(args)}):",
         "    cap = d_hash.shape[0]",
         "    mask = np.uint64(cap - 1)",
         "    ucap = np.uint64(cap)",
         "    KW = np.uint64(d_keys.shape[1])",
         "    d_keys_flat = d_keys.reshape(d_keys.shape[0] * d_keys.shape[1])",
         "    pages = p_start.shape[0]",
         "    hbuf = np.empty(BLOCK, np.uint64)",
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
         # pass 1: the key hashes of the block's events
         "        for k in range(m):",
         "            i = np.uint64(idx[j + k])"]  # unsigned indices: no wraparound checks
    L += ["            " + line for line in _key_lines(n_keys, "h")]
    L += ["            hbuf[k] = _finish(h)",
          # pass 2: lateness, the page, the key slot (found or inserted): the event's row
          "        done = m",
          "        for k in range(m):",
          "            if k + PF < m:",
          "                sa = hbuf[k + PF] & mask",
          "                _prefetch(d_hash, sa)",
          "                _prefetch(d_keys_flat, sa * KW)",
          "            i = np.uint64(idx[j + k])",
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
    L += ["            " + line for line in _key_lines(n_keys, "unused")]
    same = " and ".join(f"d_keys[d, {c}] == {wd}" for c, wd in enumerate(words))
    L += ["            h = hbuf[k]",
          "            d = h & mask"]
    L += ["            " + line for line in _probe_lines("d", "d_hash", same)]
    L += ["            if not found:",
          "                if tomb >= 0:",
          "                    d = np.uint64(tomb)",
          "                else:",
          "                    empties += 1",
          "                d_hash[d] = h"]
    L += [f"                d_keys[d, {c}] = {wd}" for c, wd in enumerate(words)]
    L += ["                refs[d] = 0",
          "                new_keys += 1",
          "            rbuf[k] = np.int64(np.uint64(base) + d)" if tumbling
          else "            rbuf[k] = np.int64(d)"]
    init, body = _agg_blocks(aggs, col)
    hot_cols = list(dict.fromkeys([hot[0], hot[-1]]))
    if tumbling:
        # pass 3: fold each event into its row; the rows PF events ahead are prefetched
        # (and, for a row not yet present, its bookkeeping line)
        L += ["        for k in range(done):",
              "            if k + PF < done:",
              "                sa = rbuf[k + PF]",
              "                if sa >= 0:",
              "                    ua = np.uint64(sa)"]
        L += [f"                    _prefetch({c}, ua)" for c in hot_cols]
        L += ["                    if present[ua] == 0:",
              f"                        _prefetch({cold}, ua)",
              "            if rbuf[k] < 0:",
              "                continue",
              "            s = np.uint64(rbuf[k])",
              "            i = np.uint64(idx[j + k])"]
        L += ["            " + line for line in _input_lines(aggs)]
        L += ["            if present[s] == 0:",
              "                d = s & mask"]
        L += ["                " + line for line in _create_lines(col, "p_start[p] + size")]
        L += ["                " + line for line in init]
        L += ["            " + line for line in body]
    else:
        # pass 3: fold each event into the row of its key in each of its open windows'
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
        L += [f"                            _prefetch({c}, np.uint64(bases[jw] + sa))"
              for c in hot_cols]
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
              "                if present[s] == 0:"]
        L += ["                    " + line for line in _create_lines(col, "st + size")]
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
                        columns: tuple[tuple[str, str], ...], tumbling: bool = True) -> Any:
    """The compiled dense window loop for ``n_keys`` key columns and ``aggs``: tumbling
    windows (one per event), or with ``tumbling=False`` sliding ones (``nwin`` per event,
    each in its own page, the key's slot found once).

    ``columns`` lists every state column as ``(name, fill)`` in the order their arrays
    (views of the pages' rows, ``pages * capacity`` long) are passed; it must hold
    ``__wend`` and ``__ontime``. Arguments: event times, their validity (empty: none),
    per-event watermarks, ``size``, ``slide``, ``offset``, ``nwin`` (``size // slide``;
    tumbling: ``slide == size``, ``nwin`` 1), ``idx``, ``j0``, ``j1`` (fold the events
    ``idx[j0:j1]``), ``room`` (empty key slots it may fill), each key column as uint64
    with its validity, each aggregation's input values with their validity, the key
    table (``d_hash``, ``d_keys`` ``uint64[capacity, K + 1]``, ``refs``: how many pages
    hold a row of the key), the pages (``p_start``, ``p_live``, ``p_count``,
    ``p_touched``, ``present``: int8 per row), the columns, ``late`` (int8 per event) and
    ``out`` (int64[5]: rows created, empty key slots filled, keys added, 1 if it stopped
    for want of a page, (event, window) pairs of the folded events dropped because the
    window had fired). Returns the position in ``idx`` of the next event.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.kernels.hashtable import new_table
    >>> d_hash, _, d_keys = new_table(8, 2, np)
    >>> cols = (("__wend", "I64_MAX"), ("__ontime", "0"), ("n", "0"))
    >>> k = dense_window_kernel(1, (FusedAgg("count", ("n",)),), cols)
    >>> pages, none = 2, np.empty(0, np.bool_)
    >>> wend, ontime, n = np.full(16, 2**63 - 1), np.zeros(16, np.int64), np.zeros(16, np.int64)
    >>> p_start, p_live, p_count = np.zeros(2, np.int64), np.zeros(2, np.int8), np.zeros(2, np.int64)
    >>> p_touched, refs = np.zeros((2, 8), np.int64), np.zeros(8, np.int64)
    >>> present, late, out = np.zeros(16, np.int8), np.zeros(4, np.int8), np.zeros(5, np.int64)
    >>> k(np.array([5, 7, 12, 3]), none, np.array([-99, 5, 7, 12]), 10, 10, 0, 1, np.arange(4),
    ...   0, 4, 4, np.array([4, 4, 4, 4], np.uint64), none, np.zeros(1), none, d_hash, d_keys,
    ...   refs, p_start, p_live, p_count, p_touched, present, wend, ontime, n, late, out)
    4
    >>> p_start.tolist(), p_count.tolist(), out.tolist(), late.tolist()
    ([0, 10], [1, 1], [2, 1, 1, 0, 1], [0, 0, 0, 1])
    >>> d = int(p_touched[0, 0]); int(n[d]), int(n[8 + d]), int(refs[d])
    (2, 1, 2)

    Sliding windows of 10 every 5: the event at 7 is in [0, 10) and [5, 15), the one at
    12 in [5, 15) and [10, 20); by then the watermark 7 has not fired [0, 10).

    >>> k = dense_window_kernel(1, (FusedAgg("count", ("n",)),), cols, tumbling=False)
    >>> d_hash, _, d_keys = new_table(8, 2, np)
    >>> p_start, p_live, p_count = np.zeros(4, np.int64), np.zeros(4, np.int8), np.zeros(4, np.int64)
    >>> wend, ontime, n = np.full(32, 2**63 - 1), np.zeros(32, np.int64), np.zeros(32, np.int64)
    >>> p_touched, refs, present = np.zeros((4, 8), np.int64), np.zeros(8, np.int64), np.zeros(32, np.int8)
    >>> k(np.array([7, 12]), none, np.array([-99, 7]), 10, 5, 0, 2, np.arange(2), 0, 2, 4,
    ...   np.array([4, 4], np.uint64), none, np.zeros(1), none, d_hash, d_keys, refs,
    ...   p_start, p_live, p_count, p_touched, present, wend, ontime, n, late, out)
    2
    >>> sorted(zip(p_start.tolist(), p_count.tolist()))[1:], out.tolist(), int(refs.max())
    ([(0, 1), (5, 1), (10, 1)], [3, 1, 1, 0, 0], 3)
    >>> sorted(int(n[p * 8 + int(p_touched[p, 0])]) for p in range(3))
    [1, 1, 2]
    """
    prelude = _PRELUDE.replace("fused_window:", "fused_dense:") + (
        "from gpustream.kernels.fused_dense import BLOCK\n\n\n")
    return generated_kernel(prelude + _source(n_keys, aggs, columns, tumbling), "dense",
                            "fused_dense", nogil=True)


@numba.njit(nogil=True, cache=CACHE)
def _pop_pages(pages, cap, size, p_start, p_live, p_count, p_touched, present, block, fill_row,  # type: ignore[no-untyped-def]
               d_hash, d_keys, refs, rows, keys, freed):
    width = block.shape[1]
    hot = rows.shape[1] - 1  # the state words; the window end goes after them
    kw = d_keys.shape[1]
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
                _prefetch(flat, ahead * width + max(hot - 1, 0))
            d = p_touched[p, j]
            s = base + d
            for w in range(hot):
                rows[o, w] = block[s, w]
                block[s, w] = fill_row[w]
            rows[o, hot] = end
            present[s] = 0
            for c in range(kw):
                keys[o, c] = d_keys[d, c]
            keys[o, kw] = np.uint64(p_start[p])
            o += 1
            refs[d] -= 1
            if refs[d] == 0:
                d_hash[d] = TOMBSTONE
                freed[n_freed] = d
                n_freed += 1
        p_count[p] = 0
        p_live[p] = 0
    return n_freed


def pop_pages(pages: Any, cap: int, size: int, page_arrays: tuple[Any, Any, Any, Any, Any],
              block: Any, fill_row: Any, key_table: tuple[Any, Any, Any], rows: Any, keys: Any,
              freed: Any) -> int:
    """Copy the rows of ``pages`` (windows of ``size``) into ``rows`` and their key words
    plus window start into ``keys`` (``uint64[n, K + 2]``), reset the rows (and their
    ``present`` marks: the last of ``page_arrays``), free the pages, and tombstone the key
    slots no open window needs any more (listed in ``freed``; returns how many).

    ``rows`` is ``int64[n, H + 1]``: a row's first ``H`` words (its aggregation states,
    which a packed row holds first) and then its window's end. Only those ``H`` words are
    read and reset: the bookkeeping words after them are written when a row is created,
    so a popped row costs one cache line, not two.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.kernels.hashtable import new_table
    >>> d_hash, _, d_keys = new_table(4, 2, np)
    >>> d_hash[1], d_keys[1] = 99, [7, 0]
    >>> refs = np.array([0, 1, 0, 0])
    >>> block = np.arange(24, dtype=np.int64).reshape(8, 3)   # 2 pages of 4 rows
    >>> pages = (np.array([0, 30]), np.array([0, 1], np.int8), np.array([0, 1]),
    ...          np.array([[0, 0, 0, 0], [1, 0, 0, 0]]), np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int8))
    >>> rows, keys, freed = np.empty((1, 3), np.int64), np.empty((1, 3), np.uint64), np.empty(1, np.int64)
    >>> pop_pages(np.array([1]), 4, 10, pages, block, np.zeros(3, np.int64),
    ...           (d_hash, d_keys, refs), rows, keys, freed)
    1
    >>> rows.tolist(), keys.tolist(), block[5].tolist(), int(d_hash[1]), pages[1].tolist()
    ([[15, 16, 40]], [[7, 0, 30]], [0, 0, 17], 1, [0, 0])
    >>> int(pages[4].sum())
    0
    """
    p_start, p_live, p_count, p_touched, present = page_arrays
    d_hash, d_keys, refs = key_table
    return int(_pop_pages(pages, cap, size, p_start, p_live, p_count, p_touched, present, block,
                          fill_row, d_hash, d_keys, refs, rows, keys, freed))
