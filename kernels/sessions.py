"""Session assignment: events of a key, in arrival order, open, extend or merge sessions.

Sessions of one key are disjoint half-open intervals ``[start, end)`` where ``end`` is
the last event time + gap, kept in a linked list per key. For each event (time ``t``,
watermark ``w``) the kernel looks at the key's sessions that have not fired
(``end > w``) and overlap ``[t, t + gap)``: the first of them absorbs the event and the
others (they are merged: ``into[s]`` names the session they went into); with none, the
event opens a session, unless ``t + gap <= w``, when it is late (its window has fired).

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

from gpustream.kernels.registry import cuda_kernel, launch_config

__all__ = ["DEAD", "FREE", "LIVE", "sessionize"]

FREE = np.int8(0)
LIVE = np.int8(1)
DEAD = np.int8(2)  # merged into another session (``into``)

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@register_jitable
def _segment(g, seg_starts, order, ts, wm, kslot, gap, base, head, s_start, s_end, s_next,  # type: ignore[no-untyped-def]
             s_state, s_into, s_kslot, ev_sess):
    for j in range(seg_starts[g], seg_starts[g + 1]):
        e = order[j]
        t = ts[e]
        w = wm[e]
        ks = kslot[e]
        lo = t
        hi = t + gap
        dst = -1
        prev = -1
        s = head[ks]
        while s != -1:
            nxt = s_next[s]
            if s_end[s] > w and s_start[s] < t + gap and t < s_end[s]:
                lo = min(lo, s_start[s])
                hi = max(hi, s_end[s])
                if dst == -1:
                    dst = s
                    prev = s
                else:
                    s_state[s] = DEAD
                    s_into[s] = dst
                    if prev == -1:
                        head[ks] = nxt
                    else:
                        s_next[prev] = nxt
            else:
                prev = s
            s = nxt
        if dst == -1:
            if hi <= w:
                ev_sess[e] = -1
                continue
            dst = base + j
            s_state[dst] = LIVE
            s_into[dst] = -1
            s_kslot[dst] = ks
            s_next[dst] = head[ks]
            head[ks] = dst
        s_start[dst] = lo
        s_end[dst] = hi
        ev_sess[e] = dst


@numba.njit(nogil=True, cache=False)
def _sessionize_cpu(seg_starts, order, ts, wm, kslot, gap, base, head, s_start, s_end, s_next,  # type: ignore[no-untyped-def]
                    s_state, s_into, s_kslot, ev_sess):
    for g in range(seg_starts.shape[0] - 1):
        _segment(g, seg_starts, order, ts, wm, kslot, gap, base, head, s_start, s_end, s_next,
                 s_state, s_into, s_kslot, ev_sess)


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64, int64, "
             "int64[::1], int64[::1], int64[::1], int64[::1], int8[::1], int64[::1], int64[::1], "
             "int64[::1])")
def _sessionize_cuda(seg_starts, order, ts, wm, kslot, gap, base, head, s_start, s_end, s_next,  # type: ignore[no-untyped-def]
                     s_state, s_into, s_kslot, ev_sess):
    g = cuda.grid(1)
    if g < seg_starts.shape[0] - 1:
        _segment(g, seg_starts, order, ts, wm, kslot, gap, base, head, s_start, s_end, s_next,
                 s_state, s_into, s_kslot, ev_sess)


def sessionize(seg_starts: Any, order: Any, ts: Any, wm: Any, kslot: Any, gap: int, base: int,
               head: Any, store: dict[str, Any], on_device: bool) -> Any:
    """Assign events to sessions; returns the session record of each event (-1: late).

    Parameters
    ----------
    seg_starts
        Offsets into ``order`` where each key's events begin (plus the end), int64.
    order
        Event indices sorted by key, arrival order kept within a key.
    ts, wm, kslot
        Per event: event time, watermark as of the event, key slot.
    gap
        Session gap in event-time units.
    base
        First free record id; the event at position ``j`` of ``order`` may take ``base + j``.
    head
        Per key slot: first session record of its list (-1: none).
    store
        Session records: ``start``, ``end``, ``next``, ``state``, ``into``, ``kslot``.

    Examples
    --------
    >>> import numpy as np
    >>> store = {k: np.full(8, -1, np.int64) for k in ("start", "end", "next", "into", "kslot")}
    >>> store["state"] = np.zeros(8, np.int8)
    >>> head = np.full(1, -1, np.int64)
    >>> ts = np.array([10, 30, 20]); wm = np.array([-99, 10, 15])
    >>> sess = sessionize(np.array([0, 3]), np.arange(3), ts, wm, np.zeros(3, np.int64), 12, 0,
    ...                   head, store, on_device=False)
    >>> sess.tolist(), store["state"][:3].tolist(), store["into"][:2].tolist()
    ([0, 1, 1], [2, 1, 0], [1, -1])
    >>> int(store["start"][1]), int(store["end"][1])    # 20 bridged [10, 22) and [30, 42)
    (10, 42)
    """
    n = ts.shape[0]
    xp: Any = np if isinstance(ts, np.ndarray) else __import__("cupy")
    ev_sess = xp.full(n, -1, dtype=np.int64)
    args = (seg_starts, order, ts, wm, kslot, np.int64(gap), np.int64(base), head,
            store["start"], store["end"], store["next"], store["state"], store["into"],
            store["kslot"], ev_sess)
    if not on_device:
        _sessionize_cpu(*args)
    elif seg_starts.shape[0] > 1:
        _sessionize_cuda[launch_config(seg_starts.shape[0] - 1)](*args)
    return ev_sess
