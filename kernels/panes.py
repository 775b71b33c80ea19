"""The fused pane kernel: one CUDA launch folds a batch into window panes.

A pane is ``slide`` long: a tumbling window is one pane, a sliding window of ``size``
is ``size / slide`` panes, and every event updates exactly one pane; a window fires by
combining its panes (:meth:`~gpustream.state.device_panes.DevicePanes.combine`).

State (built and grown by :class:`~gpustream.state.device_panes.DevicePanes`):

- a **key -> dense id map** (``t_hash``, ``t_ready``, ``t_keys``: the layout of
  :mod:`~gpustream.kernels.hashtable`, over the key words and their null bits, without
  the window): a key's id ``d`` is its slot;
- **pages**, one per open pane (in ``meta``, after the counters: each page's pane start,
  :data:`FREE` for a free page, then its row count ``c``; ``p_touched[p, :c]``: the ids
  holding state there), with the aggregation states in columns of ``istate`` (int64) and
  ``fstate`` (float64): key ``d`` of page ``p`` is row ``p * C + d`` of every column,
  where ``C`` is the map's capacity. The CPU's paged loop
  (:mod:`~gpustream.kernels.fused_dense`) keeps pages of rows too; checkpoints move
  between the two through the window operators' snapshot format.

One thread per event: it decides the event's lateness from its own watermark, finds its
pane's page (a scan of the few pages, then a compare-and-swap claim of a free one), finds
or claims its key's id (load before CAS, one CAS per claim, the key words published by a
release fence and a flag read back with an acquire fence and coherent loads, as
:func:`~gpustream.kernels.hashtable.upsert`), marks the row present (listing it in its
page the first time) and folds every aggregation into it with atomics, driven by a small
program (:data:`COUNT` ... :data:`MOMENTS` with the input and columns each reads and
writes), so that one compiled kernel serves every query. With few hot keys, a block's
tile of events is first folded in shared memory (see :func:`fold_panes`).

Where a page or a key slot is short (every page holds another pane; the map reached its
load limit) or a key's slot is claimed but not yet published, the event goes on a retry
list untouched; the host grows what is short and launches again for those events. An
event of a sliding window some of whose windows had fired by its own watermark, but not
yet here, goes on a defer list: the host fires them, then folds it. ``meta`` returns,
in one small read: retries, late events, dropped memberships, key slots used, why events
were retried, deferred events, and the pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import float64, int64
from numba.extending import register_jitable

from gpustream.kernels.hashing import _fmix32, hash_row
from gpustream.kernels.hashtable import EMPTY, _keys_equal, _live_hash
from gpustream.kernels.registry import KernelPair, cuda_kernel
from gpustream.kernels.windows import window_end, window_start

__all__ = [
    "COUNT",
    "COUNT_VALID",
    "FOLD_PANES",
    "FREE",
    "KEY_SHORT",
    "LIMIT",
    "MAX_F",
    "MAX_I",
    "META",
    "MIN_F",
    "MIN_I",
    "MOMENTS",
    "N_DROPPED",
    "N_LATE",
    "N_RETRY",
    "PAGE_SHORT",
    "SUM_F",
    "SUM_I",
    "USED",
    "fold_panes",
]

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile

#: the pane start of a free page (no event time reaches int64's minimum: dead letters)
FREE = np.int64(np.iinfo(np.int64).min)

# aggregation program kinds (``prog[a] = kind, input, column 1, column 2, column 3``)
COUNT = 0  # istate[c1] += 1
COUNT_VALID = 1  # istate[c1] += 1 for a non-null input
SUM_I = 2  # istate[c1] += ivals[input]; istate[c2] (non-null count) += 1
SUM_F = 3  # fstate[c1] += fvals[input]; istate[c2] += 1
MIN_I = 4
MAX_I = 5
MIN_F = 6
MAX_F = 7
#: istate[c2] += 1; fstate[c1] += x - p; fstate[c3] += (x - p) ** 2, where p is the key's
#: pivot (``pivots[prog[a, 5], d]``: its first finite value, set when the key is claimed,
#: copied into the row's pivot column ``fstate[prog[a, 6]]`` when the row is created)
MOMENTS = 8

# ``counters`` slots
N_RETRY = 0
N_LATE = 1
N_DROPPED = 2
USED = 3  # key slots claimed (live or freed) in the map
LIMIT = 4  # the most key slots the map may hold (read only)
PAGE_SHORT = 5  # events retried because every page held another pane
KEY_SHORT = 6  # events retried because the map reached LIMIT
N_DEFER = 7  # events deferred until windows fire (sliding windows)
#: where the pages' starts begin in ``meta`` (their row counts follow)
META = 8

# how a column's shared-memory partials combine into its page rows
ADD = 0
MIN = 1
MAX = 2
#: shared-memory slots of a block (rows pre-aggregated per tile), and their hash bits
SLOTS = 256
SLOT_BITS = 8
#: slots a row may probe before it folds straight into its page row
PROBES = 8
_M32 = np.uint64(0xFFFFFFFF)
#: the most int64 (and float64) state columns pre-aggregated in shared memory (34 KiB)
MAX_COLUMNS = 8


@register_jitable
def _same_key(t_keys, s, keys, i):  # type: ignore[no-untyped-def]
    """Slot ``s`` holds row ``i``'s key words, each read with an atomic (served by L2,
    which every SM sees, never a stale L1 line). The simulator binds ``cuda`` only in the
    launched kernel's module, so this module keeps its own copy of hashtable's check."""
    for c in range(keys.shape[0]):
        if cuda.atomic.add(t_keys, (s, c), np.uint64(0)) != keys[c, i]:
            return False
    return True


@register_jitable
def _retry(retry, counters, i, why):  # type: ignore[no-untyped-def]
    pos = cuda.atomic.add(counters, N_RETRY, 1)
    retry[pos] = i
    if why >= 0:
        cuda.atomic.add(counters, why, 1)


@register_jitable
def _place(ts, ts_ok, wm, size, slide, nwin, offset, fired_to, epoch, keys, i, t_hash,  # type: ignore[no-untyped-def]
           t_ready, t_keys, refs, p_touched, present, late, retry, defer, meta, prog, fvals,
           valid, pivots, fstate):
    """Event ``i``'s row (page ``p`` * capacity + key id) and whether its key was published
    in this launch; row -1 where it is late (flagged and counted), must be retried (listed
    in ``retry``) or must wait for windows to fire (listed in ``defer``)."""
    cap = t_hash.shape[0]
    mask = np.uint64(cap - 1)
    pages = p_touched.shape[0]
    if ts_ok.shape[0] != 0 and not ts_ok[i]:
        late[i] = 1
        cuda.atomic.add(meta, N_LATE, 1)
        return -1, False
    w = wm[i]
    lo = window_start(ts[i], slide, offset)  # its pane, and its newest window's start
    if window_end(lo, size) <= w:  # its newest window has fired, so have all: late
        late[i] = 1
        cuda.atomic.add(meta, N_LATE, 1)
        cuda.atomic.add(meta, N_DROPPED, nwin)
        return -1, False
    # its windows that had fired when it came (ends lo + k * slide <= w, k >= 1) must not
    # take it; the pane is shared with them, so it waits until they have fired here too
    fired = (w - lo) // slide if w >= lo else 0
    if fired > 0 and lo + fired * slide > fired_to:
        pos = cuda.atomic.add(meta, N_DEFER, 1)
        defer[pos] = i
        return -1, False
    # the pane's page: a page's start goes from FREE to a pane once in a launch, so a
    # plain load that shows a start is the truth; a FREE one is claimed by CAS, in the
    # same order by every thread of the pane, so one pane never gets two pages (a page
    # freed between launches is why the search scans every page before any claim)
    # Both scans start at the pane's own page of a direct-mapped directory (its index
    # modulo the pages), where it is found at once unless two open panes share one.
    home = ((lo - offset) // slide) % pages
    p = -1
    for step in range(pages):
        q = (home + step) % pages
        if meta[META + q] == lo:
            p = q
            break
    if p < 0:
        for step in range(pages):
            q = (home + step) % pages
            old = meta[META + q]
            if old == FREE:
                old = cuda.atomic.cas(meta, META + q, FREE, lo)
            if old == FREE or old == lo:  # noqa: SIM109 (a tuple test does not compile for CUDA)
                p = q
                break
    if p < 0:
        _retry(retry, meta, i, PAGE_SHORT)
        return -1, False
    # the key's id: find, or claim an empty slot (load before CAS)
    h = _live_hash(hash_row(keys, i))
    s = h & mask
    d = -1
    wait = False
    fresh = False  # published in this launch: its key words and pivots read coherently
    while True:
        old = t_hash[s]
        if old == EMPTY:
            if cuda.atomic.add(meta, USED, 1) >= meta[LIMIT]:
                cuda.atomic.add(meta, USED, -1)
                break
            old = cuda.atomic.cas(t_hash, s, EMPTY, h)
            if old == EMPTY:
                for c in range(keys.shape[0]):
                    t_keys[s, c] = keys[c, i]
                for a in range(prog.shape[0]):  # the key's pivots: its first finite values
                    if prog[a, 0] == MOMENTS:
                        x = fvals[prog[a, 1], i]
                        ok = valid[prog[a, 1], i] and x - x == 0.0
                        pivots[prog[a, 5], s] = x if ok else 0.0
                cuda.threadfence()  # release: the key words and pivots before the flag
                cuda.atomic.exch(t_ready, s, np.int32(epoch))
                d = np.int64(s)
                fresh = True
                break
            cuda.atomic.add(meta, USED, -1)  # another thread took the slot
        if old == h:
            ready = t_ready[s]
            if ready != 0 and ready != epoch:
                # published by an earlier launch (a slot is published once): what it wrote
                # is visible to plain loads here, kernels being ordered
                if _keys_equal(t_keys, s, keys, i):
                    d = np.int64(s)
                    break
            else:
                if cuda.atomic.add(t_ready, s, 0) == 0:
                    wait = True  # claimed, key words not yet published
                    break
                # acquire: the flag was read by an atomic; the fence orders the key reads
                # after it, and they are coherent (never a stale L1 line)
                cuda.threadfence()
                if _same_key(t_keys, s, keys, i):
                    d = np.int64(s)
                    fresh = True
                    break
        s = (s + np.uint64(1)) & mask
    if d < 0:
        _retry(retry, meta, i, -1 if wait else KEY_SHORT)
        return -1, False
    r = p * cap + d
    if present[r] == 0 and cuda.atomic.cas(present, r, np.int32(0), np.int32(1)) == 0:
        k = cuda.atomic.add(meta, META + pages + p, 1)
        p_touched[p, k] = np.int32(d)
        cuda.atomic.add(refs, d, 1)
        for a in range(prog.shape[0]):  # the row's pivot column: its key's pivot
            if prog[a, 0] == MOMENTS:
                fstate[prog[a, 6], r] = _pivot(pivots, prog[a, 5], d, fresh)
    if fired > 0:
        cuda.atomic.add(meta, N_DROPPED, fired)
    return r, fresh


@register_jitable
def _pivot(pivots, m, d, fresh):  # type: ignore[no-untyped-def]
    """Key ``d``'s ``m``-th pivot: read coherently where the key was published in this
    launch (another SM's L1 may hold the line as it was), plainly otherwise."""
    if fresh:
        return cuda.atomic.add(pivots, (m, d), 0.0)
    return pivots[m, d]


@register_jitable
def _fold(prog, ivals, fvals, valid, pivots, i, d, fresh, ints, floats, at):  # type: ignore[no-untyped-def]
    """Fold event ``i`` of key ``d`` into column position ``at`` of ``ints``/``floats`` (a
    page row of the state, or a block's shared-memory slot)."""
    for a in range(prog.shape[0]):
        kind = prog[a, 0]
        src = prog[a, 1]
        c1 = prog[a, 2]
        if kind == COUNT:
            cuda.atomic.add(ints, (c1, at), 1)
            continue
        if not valid[src, i]:
            continue
        if kind == COUNT_VALID:
            cuda.atomic.add(ints, (c1, at), 1)
            continue
        cuda.atomic.add(ints, (prog[a, 3], at), 1)  # the non-null count
        if kind == SUM_I:
            cuda.atomic.add(ints, (c1, at), ivals[src, i])
        elif kind == SUM_F:
            cuda.atomic.add(floats, (c1, at), fvals[src, i])
        elif kind == MIN_I:
            cuda.atomic.min(ints, (c1, at), ivals[src, i])
        elif kind == MAX_I:
            cuda.atomic.max(ints, (c1, at), ivals[src, i])
        elif kind == MIN_F:  # NaN is no value, as in the CPU's loop
            cuda.atomic.nanmin(floats, (c1, at), fvals[src, i])
        elif kind == MAX_F:
            cuda.atomic.nanmax(floats, (c1, at), fvals[src, i])
        else:  # MOMENTS, shifted by the key's pivot (read coherently: set by a claim)
            x = fvals[src, i] - _pivot(pivots, prog[a, 5], d, fresh)
            cuda.atomic.add(floats, (c1, at), x)
            cuda.atomic.add(floats, (prog[a, 4], at), x * x)


@register_jitable
def _shared_slot(sh_rows, r):  # type: ignore[no-untyped-def]
    """The block's shared-memory slot for row ``r`` (found or claimed), or -1 where
    :data:`PROBES` slots hold other rows."""
    s = np.int64(_fmix32(np.uint64(r) & _M32) >> np.uint64(32 - SLOT_BITS))
    for _ in range(PROBES):
        old = sh_rows[s]
        if old == -1:
            old = cuda.atomic.cas(sh_rows, s, np.int64(-1), np.int64(r))
        if old == -1 or old == r:
            return s
        s = (s + 1) & (SLOTS - 1)
    return -1


@register_jitable
def _merge(state, c, r, value, how, fill):  # type: ignore[no-untyped-def]
    """Fold a shared partial ``value`` into ``state[c, r]`` (``how``: ADD, MIN or MAX)."""
    if value == fill:  # nothing folded into it (or nothing that changes the row)
        return
    if how == ADD:
        cuda.atomic.add(state, (c, r), value)
    elif how == MIN:
        cuda.atomic.nanmin(state, (c, r), value)
    else:
        cuda.atomic.nanmax(state, (c, r), value)


@cuda_kernel(
    "void(int64[::1], boolean[::1], int64[::1], int64, int64, int64, int64, int64, int64, "
    "uint64[:, ::1], int64[::1], uint64[::1], int32[::1], uint64[:, ::1], int32[::1], "
    "int32[:, ::1], int32[::1], int64[:, ::1], int64[:, ::1], float64[:, ::1], "
    "boolean[:, ::1], int64[:, ::1], float64[:, ::1], int64[::1], int64[::1], float64[::1], "
    "int64[::1], int64, int8[::1], int64[::1], int64[::1], int64[::1], float64[:, ::1])"
)
def fold_panes(ts, ts_ok, wm, size, slide, nwin, offset, fired_to, epoch, keys, rows, t_hash,  # type: ignore[no-untyped-def]
               t_ready, t_keys, refs, p_touched, present, prog, ivals, fvals, valid, istate,
               fstate, ifill, fhow, ffill, ihow, preagg, late, retry, defer, meta, pivots):
    """Fold the events ``rows`` of a batch into their panes' pages (a pane is ``slide``
    long: a tumbling window, or the stride of sliding windows of ``nwin`` panes).

    ``epoch`` numbers the launch (>= 2): a key slot's ``t_ready`` holds the launch that
    published it (1: the host's upsert), so a key published by an earlier launch is read
    with plain loads. ``fired_to``: the windows ending at or before it have fired here. An event some of
    whose windows had fired when it came (its own watermark) but have not yet fired here
    goes to ``defer``: the host fires them, then folds it.

    Each block takes tiles of ``blockDim`` events. With ``preagg`` (few keys: many events
    of a tile share a row) a tile's events fold into the block's shared-memory slots
    (one per row, :data:`SLOTS` of them, found by hashing the row), whose partials then
    go to the page rows with one atomic per column and row: hot keys cost shared-memory
    atomics, not contended global ones. ``ifill``/``ffill`` are the columns' fill values
    and ``ihow``/``fhow`` how partials combine (:data:`ADD`, :data:`MIN`, :data:`MAX`);
    ``meta`` holds the counters, then each page's pane start, then its row count (one
    array: the host reads it back in one copy). ``pivots[m, d]``: key ``d``'s pivot for
    the ``m``-th mean/var/std (see :data:`MOMENTS`).
    """
    sh_rows = cuda.shared.array(SLOTS, int64)
    sh_i = cuda.shared.array((MAX_COLUMNS, SLOTS), int64)
    sh_f = cuda.shared.array((MAX_COLUMNS, SLOTS), float64)
    tid = cuda.threadIdx.x
    bdim = cuda.blockDim.x
    cap = t_hash.shape[0]
    m = rows.shape[0]
    ni = ihow.shape[0]
    nf = fhow.shape[0]
    for tile in range(cuda.blockIdx.x, (m + bdim - 1) // bdim, cuda.gridDim.x):
        if preagg:  # uniform over the block: every thread reaches each barrier
            for s in range(tid, SLOTS, bdim):
                sh_rows[s] = -1
                for c in range(ni):
                    sh_i[c, s] = ifill[c]
                for c in range(nf):
                    sh_f[c, s] = ffill[c]
            cuda.syncthreads()
        j = tile * bdim + tid
        if j < m:
            i = rows[j]
            r, fresh = _place(ts, ts_ok, wm, size, slide, nwin, offset, fired_to, epoch, keys,
                              i, t_hash, t_ready, t_keys, refs, p_touched, present, late,
                              retry, defer, meta, prog, fvals, valid, pivots, fstate)
            if r >= 0:
                s = _shared_slot(sh_rows, r) if preagg else -1
                if s >= 0:
                    _fold(prog, ivals, fvals, valid, pivots, i, r % cap, fresh, sh_i, sh_f, s)
                else:
                    _fold(prog, ivals, fvals, valid, pivots, i, r % cap, fresh, istate, fstate,
                          r)
        if preagg:
            cuda.syncthreads()
            for s in range(tid, SLOTS, bdim):
                r = sh_rows[s]
                if r >= 0:
                    for c in range(ni):
                        _merge(istate, c, r, sh_i[c, s], ihow[c], ifill[c])
                    for c in range(nf):
                        _merge(fstate, c, r, sh_f[c, s], fhow[c], ffill[c])
            cuda.syncthreads()  # the slots are read before the next tile resets them


#: the pane kernel, launched through :meth:`Backend.launch <gpustream.backend.Backend.launch>`
#: on the device backends (the CPU folds its panes with :mod:`gpustream.kernels.fused_dense`)
FOLD_PANES = KernelPair(None, fold_panes)
