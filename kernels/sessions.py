"""Session assignment: events of a key, in arrival order, open, extend or merge sessions.

Sessions of one key are disjoint half-open intervals ``[start, end)`` where ``end`` is
the last event time + gap, kept in a linked list per key. For each event (time ``t``,
watermark ``w``) the kernel looks at the key's sessions whose state is held
(``end + lateness > w``) and overlap ``[t, t + gap)``: one of them absorbs the event and
the others (they are merged: ``into[s]`` names the session they went into); with none,
the event opens a session, unless ``t + gap + lateness <= w``, when it is late (its
window has fired and passed the allowed lateness). The session that absorbs the others
is the one fired most often (the earliest on a tie), so that a merged session's next
firing continues the row emitted most recently.

With allowed lateness (``split``) two more rules keep a key's sessions from ever
overlapping, with bounded state (:mod:`gpustream.operators.session`):

- ``gone_end[key]`` is the largest end of the key's sessions whose state is gone
  (``end + lateness <= w``); those lie before every held session, and an event with
  ``t < gone_end`` is late (it would overlap one of them, or lies before it);
- each session has a ``floor``, the smallest event time it may still take:
  ``w - gap - lateness`` as of the event that opened it (the smallest of the floors of
  the sessions merged into it), so that an event can only join a session through a chain
  of ever later late events while it is within the allowed lateness of the watermark at
  which the session began.

Work is split by key: the events are sorted by key (arrival order kept within a key)
and one thread (CUDA) or one loop iteration (CPU) walks one key's events. A new session
takes the record id ``base + position of its event``, so no atomics are needed and both
backends produce identical records. Skewed keys serialise only their own thread.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["DEAD", "FREE", "LIVE", "SESSIONIZE", "sessionize"]

FREE = np.int8(0)
LIVE = np.int8(1)
DEAD = np.int8(2)  # merged into another session (``into``)

_I64_MIN = np.int64(np.iinfo(np.int64).min)
_I64_MAX = np.int64(np.iinfo(np.int64).max)

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@register_jitable
def _segment(g, seg_pos, seg_end, order, ts, wm, kslot, gap, lateness, split, rnd, base,  # type: ignore[no-untyped-def]
             head, gone_end, s_start, s_end, s_next, s_state, s_into, s_kslot, s_dirty, s_rev,
             s_emit, s_floor, ev_sess, ev_round):
    j = seg_pos[g]
    stop = seg_end[g]
    while j < stop:
        e = order[j]
        t = ts[e]
        w = wm[e]
        ks = kslot[e]
        if split:
            # sessions of this key that reached their end with unemitted data fire first
            due = False
            s = head[ks]
            while s != -1:
                if s_dirty[s] == 1 and s_end[s] <= w:
                    s_emit[s] = 1
                    s_dirty[s] = 0
                    due = True
                s = s_next[s]
            if due:
                seg_pos[g] = j
                return
        ev_round[e] = rnd
        # the held sessions the event's window overlaps: their extent, the smallest of
        # their floors, and the one fired most often (it absorbs the others)
        lo = t
        hi = t + gap
        dst = -1
        floor = _I64_MAX
        gone = gone_end[ks]
        s = head[ks]
        while s != -1:
            # its state is still held: end + lateness > w (w may be INT64_MIN: no subtraction)
            if s_end[s] + lateness > w:
                if s_start[s] < t + gap and t < s_end[s]:
                    lo = min(lo, s_start[s])
                    hi = max(hi, s_end[s])
                    floor = min(floor, s_floor[s])
                    if (dst == -1 or s_rev[s] > s_rev[dst]
                            or (s_rev[s] == s_rev[dst] and s_start[s] < s_start[dst])):
                        dst = s
            elif s_end[s] > gone:
                gone = s_end[s]
            s = s_next[s]
        if split:
            gone_end[ks] = gone
            late = t < gone or (dst != -1 and t < floor)
        else:
            late = False
        if dst == -1 and hi + lateness <= w:  # too late for any window
            late = True
        if late:
            ev_sess[e] = -1
            j += 1
            continue
        if dst == -1:
            dst = base + j
            s_state[dst] = LIVE
            s_into[dst] = -1
            s_kslot[dst] = ks
            s_rev[dst] = 0
            s_dirty[dst] = 0
            s_next[dst] = head[ks]
            head[ks] = dst
            # w - gap - lateness, saturating at INT64_MIN
            s_floor[dst] = _I64_MIN if w < _I64_MIN + gap + lateness else w - gap - lateness
        else:
            # the other overlapping held sessions go into dst (their extents unchanged yet)
            prev = -1
            s = head[ks]
            while s != -1:
                nxt = s_next[s]
                if (s != dst and s_end[s] + lateness > w and s_start[s] < t + gap
                        and t < s_end[s]):
                    s_state[s] = DEAD
                    s_into[s] = dst
                    s_rev[dst] = max(s_rev[dst], s_rev[s])
                    s_dirty[dst] = max(s_dirty[dst], s_dirty[s])
                    if prev == -1:
                        head[ks] = nxt
                    else:
                        s_next[prev] = nxt
                else:
                    prev = s
                s = nxt
            s_floor[dst] = floor
        s_start[dst] = lo
        s_end[dst] = hi
        ev_sess[e] = dst
        if split and hi <= w:
            # the window had fired: it fires again now, with this event
            s_emit[dst] = 1
            s_dirty[dst] = 0
            seg_pos[g] = j + 1
            return
        s_dirty[dst] = 1
        j += 1
    seg_pos[g] = stop


@numba.njit(nogil=True, cache=CACHE)
def _sessionize_cpu(seg_pos, seg_end, order, ts, wm, kslot, gap, lateness, split, rnd, base,  # type: ignore[no-untyped-def]
                    head, gone_end, s_start, s_end, s_next, s_state, s_into, s_kslot, s_dirty,
                    s_rev, s_emit, s_floor, ev_sess, ev_round):
    for g in range(seg_pos.shape[0]):
        _segment(g, seg_pos, seg_end, order, ts, wm, kslot, gap, lateness, split, rnd, base,
                 head, gone_end, s_start, s_end, s_next, s_state, s_into, s_kslot, s_dirty,
                 s_rev, s_emit, s_floor, ev_sess, ev_round)


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64, "
             "int64, boolean, int64, int64, int64[::1], int64[::1], int64[::1], int64[::1], "
             "int64[::1], int8[::1], int64[::1], int64[::1], int8[::1], int64[::1], int8[::1], "
             "int64[::1], int64[::1], int64[::1])")
def _sessionize_cuda(seg_pos, seg_end, order, ts, wm, kslot, gap, lateness, split, rnd, base,  # type: ignore[no-untyped-def]
                     head, gone_end, s_start, s_end, s_next, s_state, s_into, s_kslot, s_dirty,
                     s_rev, s_emit, s_floor, ev_sess, ev_round):
    g = cuda.grid(1)
    if g < seg_pos.shape[0]:
        _segment(g, seg_pos, seg_end, order, ts, wm, kslot, gap, lateness, split, rnd, base,
                 head, gone_end, s_start, s_end, s_next, s_state, s_into, s_kslot, s_dirty,
                 s_rev, s_emit, s_floor, ev_sess, ev_round)


#: one thread (CPU: one loop iteration) per key segment
SESSIONIZE = KernelPair(_sessionize_cpu, _sessionize_cuda)


def sessionize(seg_pos: Any, seg_end: Any, order: Any, ts: Any, wm: Any, kslot: Any, gap: int,
               lateness: int, split: bool, rnd: int, base: int, head: Any, store: dict[str, Any],
               ev_sess: Any, ev_round: Any, backend: Backend,
               gone_end: Any | None = None) -> None:
    """One round of session assignment over every key's remaining events.

    Parameters
    ----------
    seg_pos, seg_end
        Per key segment: the position in ``order`` to resume from (updated in place) and
        where its events end.
    order
        Event indices sorted by key, arrival order kept within a key.
    ts, wm, kslot
        Per event: event time, watermark as of the event, key slot.
    gap, lateness
        Session gap and allowed lateness, in event-time units.
    split
        With allowed lateness: stop a key's walk where a session must fire before an
        event (``emit`` set), and right after a late event re-fires its session, so the
        caller can fold and emit exactly the state as of that event, then call again;
        and apply the ``gone_end`` and ``floor`` rules of the module docstring.
    rnd
        This round's number, written to ``ev_round`` for the events it handled.
    base
        First free record id; the event at position ``j`` of ``order`` may take ``base + j``.
    head
        Per key slot: first session record of its list (-1: none).
    store
        Session records: ``start``, ``end``, ``next``, ``state``, ``into``, ``kslot``,
        ``dirty`` (data not emitted yet), ``rev`` (firings so far), ``emit`` and
        ``floor`` (optional: none).
    ev_sess
        Out: each handled event's session record (-1: late for every window).
    backend
        The backend that runs it.
    gone_end
        Per key slot: the largest end of its sessions whose state is gone (updated in
        place; optional: none known).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> store = {k: np.full(8, -1, np.int64) for k in ("start", "end", "next", "into", "kslot",
    ...                                                 "rev")}
    >>> store.update({k: np.zeros(8, np.int8) for k in ("state", "dirty", "emit")})
    >>> head = np.full(1, -1, np.int64)
    >>> ts = np.array([10, 30, 20]); wm = np.array([-99, 10, 15])
    >>> sess, rounds = np.full(3, -1), np.full(3, -1)
    >>> sessionize(np.array([0]), np.array([3]), np.arange(3), ts, wm, np.zeros(3, np.int64),
    ...            12, 0, False, 0, 0, head, store, sess, rounds, select_backend("cpu"))
    >>> sess.tolist(), store["state"][:3].tolist(), store["into"][:2].tolist()
    ([0, 1, 0], [1, 2, 0], [-1, 0])
    >>> int(store["start"][0]), int(store["end"][0])    # 20 bridged [10, 22) and [30, 42)
    (10, 42)
    """
    xp = backend.xp
    if gone_end is None:  # no gone sessions known
        gone_end = xp.full(head.shape[0], _I64_MIN, dtype=np.int64)
    floor = store.get("floor")
    if floor is None:  # no floors
        floor = xp.full(store["start"].shape[0], _I64_MIN, dtype=np.int64)
    args = (seg_pos, seg_end, order, ts, wm, kslot, np.int64(gap), np.int64(lateness),
            np.bool_(split), np.int64(rnd), np.int64(base), head, gone_end, store["start"],
            store["end"], store["next"], store["state"], store["into"], store["kslot"],
            store["dirty"], store["rev"], store["emit"], floor, ev_sess, ev_round)
    backend.launch(SESSIONIZE, seg_pos.shape[0], *args)
