"""Window assignment with per-event lateness, for tumbling and sliding windows.

Each event belongs to ``nwin = size / slide`` windows (1 for tumbling). For every
(event, window) pair the kernel writes the window start and a status, decided from the
event's own watermark ``wm`` (DESIGN.md section 3):

- ``ON_TIME``: the window has not fired for this event (``end > wm``);
- ``LATE``: it has fired, but its state is kept (``end <= wm < end + lateness``);
- ``DROPPED``: its state is gone (``end + lateness <= wm``);
- ``NO_TIME``: the event time is null.

The helpers :func:`window_start` and :func:`window_end` are written once for the CPU,
CUDA and the simulator. Event times near int64's limits never reach a window: the
runtime makes them dead letters (:data:`gpustream.ingest.deadletter.EVENT_TIME_MAX`); a
window end past int64's maximum would still saturate there (the end-of-input watermark,
which fires it) instead of wrapping around to a time long past.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["ASSIGN", "DROPPED", "LATE", "NO_TIME", "ON_TIME", "assign_windows", "window_end",
           "window_start"]

ON_TIME = np.int8(0)
LATE = np.int8(1)
DROPPED = np.int8(2)
NO_TIME = np.int8(3)
I64_MAX = np.int64(np.iinfo(np.int64).max)

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@register_jitable
def window_start(ts, slide, offset):  # type: ignore[no-untyped-def]
    """Start of the last window of stride ``slide`` aligned to ``offset`` that holds ``ts``.

    Examples
    --------
    >>> window_start(10_500, 1_000, 0), window_start(-1, 1_000, 0), window_start(10_500, 1_000, 200)
    (10000, -1000, 10200)
    """
    return ts - (ts - offset) % slide


@register_jitable
def window_end(start, size):  # type: ignore[no-untyped-def]
    """``start + size``, saturated at int64's maximum instead of wrapping around.

    Examples
    --------
    >>> window_end(10_000, 1_000), int(window_end(2**63 - 5, 10))
    (11000, 9223372036854775807)
    """
    return start + size if start <= I64_MAX - size else I64_MAX


@register_jitable
def _status(end, wm, lateness):  # type: ignore[no-untyped-def]
    if end > wm:
        return ON_TIME
    # late while end + lateness > wm, in terms that never overflow (lateness >= 0)
    if end < 0:
        return LATE if end + lateness > wm else DROPPED
    return LATE if wm - end < lateness else DROPPED  # 0 <= end <= wm


@register_jitable
def _assign_event(i, ts, valid, wm, size, slide, offset, lateness, nwin, starts, status):  # type: ignore[no-untyped-def]
    """Window starts and statuses of event ``i``'s ``nwin`` windows."""
    no_time = valid.shape[0] > 0 and not valid[i]
    last = window_start(ts[i], slide, offset)
    for j in range(nwin):
        a = i * nwin + j
        st = last - j * slide
        starts[a] = st
        status[a] = NO_TIME if no_time else _status(window_end(st, size), wm[i], lateness)


@numba.njit(nogil=True, cache=CACHE)
def _assign_cpu(ts, valid, wm, size, slide, offset, lateness, nwin, starts, status):  # type: ignore[no-untyped-def]
    # events arrive nearly in time order: the last window start usually holds the next
    # event too, which saves the 64-bit division of window_start (most of the cost)
    lo = np.int64(1)
    hi = np.int64(0)
    top = np.iinfo(np.int64).max - slide
    for i in range(ts.shape[0]):
        t = ts[i]
        if t >= lo and t < hi:
            last = lo
        else:
            last = window_start(t, slide, offset)
            lo = last
            hi = last + slide if last <= top else last  # an empty range: no reuse
        no_time = valid.shape[0] > 0 and not valid[i]
        w = wm[i]
        for j in range(nwin):
            a = i * nwin + j
            st = last - j * slide
            starts[a] = st
            status[a] = NO_TIME if no_time else _status(window_end(st, size), w, lateness)


@cuda_kernel("void(int64[::1], boolean[::1], int64[::1], int64, int64, int64, int64, int64, "
             "int64[::1], int8[::1])")
def _assign_cuda(ts, valid, wm, size, slide, offset, lateness, nwin, starts, status):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i < ts.shape[0]:
        _assign_event(i, ts, valid, wm, size, slide, offset, lateness, nwin, starts, status)


#: ``(ts, valid, wm, size, slide, offset, lateness, nwin, starts, status)``: one thread
#: per event
ASSIGN = KernelPair(_assign_cpu, _assign_cuda)


def assign_windows(
    ts: Any, valid: Any, wm: Any, size: int, slide: int, offset: int, lateness: int,
    backend: Backend,
) -> tuple[Any, Any]:
    """Window starts and statuses of every (event, window) pair, event-major, on
    ``backend``.

    Assignment ``a`` belongs to event ``a // nwin`` with ``nwin = size // slide``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> ts = np.array([1500, 200])
    >>> wm = np.array([-10**18, 2000])     # the second event arrives after the first
    >>> starts, status = assign_windows(ts, None, wm, 1000, 500, 0, 0, select_backend("cpu"))
    >>> starts.tolist(), status.tolist()
    ([1500, 1000, 0, -500], [0, 0, 2, 2])
    """
    xp = backend.xp
    # Python ints, not numpy scalars: numba types them faster (int64 either way)
    size, slide, offset, lateness = int(size), int(slide), int(offset), int(lateness)
    nwin = size // slide
    n = ts.shape[0]
    starts = xp.empty(n * nwin, dtype=np.int64)
    status = xp.empty(n * nwin, dtype=np.int8)
    v = xp.empty(0, dtype=np.bool_) if valid is None else valid
    backend.launch(ASSIGN, n, ts, v, wm, size, slide, offset, lateness, nwin, starts, status)
    return starts, status
