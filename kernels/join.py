"""Hash-join output expansion: the write pass of a two-pass count-then-write join.

The build side's rows are grouped by key (sorted by key id, so the rows of key ``k`` are
``order[start[k]:start[k] + count[k]]``). The count pass gives each probe row its
number of candidates; an exclusive prefix sum gives each probe row its first output
position and the total, so the output is allocated once, exactly. The write pass then
fills ``(probe row, build row)`` pairs:

- on the GPU, one thread per *output pair*, which finds its probe row by binary search
  over the prefix sums: the work is balanced however skewed the keys are (a key holding
  30 % of the rows does not leave one thread with 30 % of the work);
- on the CPU, one loop over the probe rows writing each one's range.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["EXPAND", "expand_pairs"]

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@numba.njit(nogil=True, cache=CACHE)
def _expand_cpu(first, counts, starts, out_probe, out_build):  # type: ignore[no-untyped-def]
    for i in range(counts.shape[0]):
        base = first[i]
        s = starts[i]
        for j in range(counts[i]):
            out_probe[base + j] = i
            out_build[base + j] = s + j


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1])")
def _expand_cuda(first, counts, starts, out_probe, out_build):  # type: ignore[no-untyped-def]
    t = cuda.grid(1)
    if t >= out_probe.shape[0]:
        return
    lo = 0  # the last probe row whose first position is <= t
    hi = first.shape[0] - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if first[mid] <= t:
            lo = mid
        else:
            hi = mid - 1
    while counts[lo] == 0:  # rows without candidates share their first position
        lo += 1
    out_probe[t] = lo
    out_build[t] = starts[lo] + (t - first[lo])


#: ``(first, counts, starts, out_probe, out_build)``: one CUDA thread per output pair
#: (the CPU twin loops over the probe rows)
EXPAND = KernelPair(_expand_cpu, _expand_cuda)


def expand_pairs(counts: Any, starts: Any, backend: Backend) -> tuple[Any, Any]:
    """``(probe row, build position)`` of every candidate pair, probe rows in order.

    ``counts[i]`` candidates of probe row ``i`` sit at build positions
    ``starts[i] .. starts[i] + counts[i] - 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> p, b = expand_pairs(np.array([2, 0, 1]), np.array([5, 0, 9]), select_backend("cpu"))
    >>> p.tolist(), b.tolist()
    ([0, 0, 2], [5, 6, 9])
    """
    xp = backend.xp
    counts = counts.astype(np.int64)
    first = xp.cumsum(counts) - counts  # exclusive prefix sum: the count pass
    total = int(counts.sum())
    out_probe = xp.empty(total, dtype=np.int64)
    out_build = xp.empty(total, dtype=np.int64)
    if total == 0:
        return out_probe, out_build
    starts = starts.astype(np.int64)
    backend.launch(EXPAND, total, first, counts, starts, out_probe, out_build)
    return out_probe, out_build
