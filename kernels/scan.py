"""Per-event watermarks: an exclusive running maximum of event times.

The watermark as of event ``i`` is ``max(ts[0..i-1]) - delay`` (DESIGN.md section 3),
so the engine needs, per batch, the exclusive prefix maximum of the event times seeded
with the maximum of all earlier batches. Rows whose event time is null do not raise it.

CPU: one sequential njit pass. CUDA: two launches; each block of ``THREADS`` threads
covers ``THREADS * ITEMS`` rows: first every block's maximum, then every block scans its
rows in shared memory with the maximum of the blocks before it as carry-in. The two
algorithms differ, so the CUDA kernels are pairs without a CPU twin
(:class:`~gpustream.kernels.registry.KernelPair`): the wrapper runs the CPU pass itself.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types as nt
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["BLOCK_MAX", "BLOCK_SCAN", "INT64_MIN", "exclusive_prefix_max", "watermarks_cpu"]

INT64_MIN = np.int64(-(2**63))
THREADS = 256
ITEMS = 8
CHUNK = THREADS * ITEMS

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@numba.njit(nogil=True, cache=CACHE)
def _scan_cpu(ts, valid, carry, out):  # type: ignore[no-untyped-def]
    running = carry
    has_valid = valid.shape[0] > 0
    for i in range(ts.shape[0]):
        out[i] = running
        if (not has_valid or valid[i]) and ts[i] > running:
            running = ts[i]
    return running


@numba.njit(nogil=True, cache=CACHE)
def _watermarks_cpu(ts, valid, carry, delay, out):  # type: ignore[no-untyped-def]
    running = carry
    has_valid = valid.shape[0] > 0
    for i in range(ts.shape[0]):
        out[i] = running if running == INT64_MIN else running - delay
        if (not has_valid or valid[i]) and ts[i] > running:
            running = ts[i]
    return running


def watermarks_cpu(ts: Any, valid: Any, carry: int, delay: int) -> tuple[Any, int]:
    """Per-event watermarks on the CPU in one pass: ``out[i] = max(carry, ts[0..i-1]) -
    delay`` over valid rows (``INT64_MIN`` while nothing came before), and the maximum
    after the batch.

    Examples
    --------
    >>> import numpy as np
    >>> out, running = watermarks_cpu(np.array([5, 3, 9, 1]), None, int(INT64_MIN), 2)
    >>> out.tolist()[1:], bool(out[0] == INT64_MIN), running
    ([3, 3, 7], True, 9)
    """
    out = np.empty(ts.shape[0], dtype=np.int64)
    v = np.empty(0, dtype=np.bool_) if valid is None else valid
    running = _watermarks_cpu(ts, v, np.int64(carry), np.int64(delay), out)
    return out, int(running)


@register_jitable
def _thread_max(ts, valid, base):  # type: ignore[no-untyped-def]
    """Maximum valid event time among the ``ITEMS`` rows a thread covers from ``base``."""
    n = ts.shape[0]
    has_valid = valid.shape[0] > 0
    m = INT64_MIN
    for j in range(ITEMS):
        i = base + j
        if i < n and (not has_valid or valid[i]) and ts[i] > m:
            m = ts[i]
    return m


@cuda_kernel("void(int64[::1], boolean[::1], int64[::1])")
def _block_max_cuda(ts, valid, block_max):  # type: ignore[no-untyped-def]
    shared = cuda.shared.array(THREADS, nt.int64)
    t = cuda.threadIdx.x
    shared[t] = _thread_max(ts, valid, cuda.blockIdx.x * CHUNK + t * ITEMS)
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step and shared[t + step] > shared[t]:
            shared[t] = shared[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        block_max[cuda.blockIdx.x] = shared[0]


@cuda_kernel("void(int64[::1], boolean[::1], int64[::1], int64, int64[::1])")
def _block_scan_cuda(ts, valid, block_max, carry, out):  # type: ignore[no-untyped-def]
    shared = cuda.shared.array(THREADS, nt.int64)
    t = cuda.threadIdx.x
    b = cuda.blockIdx.x
    base = b * CHUNK + t * ITEMS
    n = ts.shape[0]
    has_valid = valid.shape[0] > 0
    shared[t] = _thread_max(ts, valid, base)
    cuda.syncthreads()
    # inclusive Hillis-Steele scan of the threads' maxima
    step = 1
    while step < THREADS:
        v = shared[t]
        if t >= step and shared[t - step] > v:
            v = shared[t - step]
        cuda.syncthreads()
        shared[t] = v
        cuda.syncthreads()
        step *= 2
    running = carry
    for j in range(b):  # the blocks before this one: few per batch
        if block_max[j] > running:
            running = block_max[j]
    if t > 0 and shared[t - 1] > running:
        running = shared[t - 1]
    for j in range(ITEMS):
        i = base + j
        if i < n:
            out[i] = running
            if (not has_valid or valid[i]) and ts[i] > running:
                running = ts[i]


#: ``(ts, valid, block_max)`` and ``(ts, valid, block_max, carry, out)``: one block per
#: ``CHUNK`` rows
BLOCK_MAX = KernelPair(None, _block_max_cuda, items=ITEMS, threads=THREADS)
BLOCK_SCAN = KernelPair(None, _block_scan_cuda, items=ITEMS, threads=THREADS)


def exclusive_prefix_max(ts: Any, valid: Any, carry: int, backend: Backend) -> tuple[Any, int]:
    """``out[i] = max(carry, ts[0..i-1])`` over valid rows, and the maximum after the batch.

    Parameters
    ----------
    ts
        int64 event times (numpy, or cupy on the GPU).
    valid
        Boolean validity of ``ts``, or None when none is null.
    carry
        The maximum of earlier batches (``INT64_MIN`` at the start).
    backend
        The backend that runs it: the CPU pass, or the CUDA kernels.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> out, running = exclusive_prefix_max(np.array([5, 3, 9, 1]), None, 4,
    ...                                     select_backend("cpu"))
    >>> out.tolist(), running
    ([4, 5, 5, 9], 9)
    """
    n = ts.shape[0]
    if not backend.is_device:
        out_h = np.empty(n, dtype=np.int64)
        v = np.empty(0, dtype=np.bool_) if valid is None else valid
        running = _scan_cpu(ts, v, np.int64(carry), out_h)
        return out_h, int(running)
    xp = backend.xp
    out = xp.empty(n, dtype=np.int64)
    if n == 0:
        return out, int(carry)
    v = xp.empty(0, dtype=np.bool_) if valid is None else valid
    block_max = xp.empty(-(-n // CHUNK), dtype=np.int64)
    backend.launch(BLOCK_MAX, n, ts, v, block_max)
    backend.launch(BLOCK_SCAN, n, ts, v, block_max, np.int64(carry), out)
    return out, max(int(carry), int(block_max.max()))
