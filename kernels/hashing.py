"""Row hashing of key columns: a CUDA kernel and its CPU twin over one scalar helper.

Every key column is widened to 64 bits and the columns of a row are folded into one
64-bit hash. The scalar helpers only multiply numbers below 2**32 in uint64, so they
never overflow: numba's CPU and CUDA targets and the simulator (which follows numpy's
scalar rules) give the same bits. Hash tables of the windowed and join operators use
these hashes on both backends, which keeps their state layout identical.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["HASH_ROWS", "hash_row", "hash_rows", "hash_u64", "widen_keys"]

_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0x85EBCA6B)
_C2 = np.uint64(0xC2B2AE35)
_GOLD = np.uint64(0x9E3779B9)
_S13 = np.uint64(13)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_SEED = np.uint64(0x2545F491)

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@register_jitable
def _fmix32(h):  # type: ignore[no-untyped-def]
    """murmur3's 32-bit finalizer on a uint64 holding a value below 2**32."""
    h = h ^ (h >> _S16)
    h = (h * _C1) & _M32
    h = h ^ (h >> _S13)
    h = (h * _C2) & _M32
    return h ^ (h >> _S16)


@register_jitable
def hash_u64(x, seed):  # type: ignore[no-untyped-def]
    """A 64-bit hash of a uint64 ``x`` under a uint64 ``seed`` (both below 2**64).

    Examples
    --------
    >>> import numpy as np
    >>> h = hash_u64(np.uint64(42), np.uint64(7))
    >>> int(h) == int(hash_u64(np.uint64(42), np.uint64(7))), int(h) != int(hash_u64(np.uint64(43), np.uint64(7)))
    (True, True)
    """
    s = seed & _M32
    lo = _fmix32((x & _M32) ^ s)
    hi = _fmix32((x >> _S32) ^ ((lo + _GOLD) & _M32))
    hi = _fmix32(hi ^ ((seed >> _S32) & _M32))
    lo = _fmix32(lo ^ hi)
    return (hi << _S32) | lo


@register_jitable
def hash_row(keys, i):  # type: ignore[no-untyped-def]
    """The 64-bit hash of row ``i`` of ``keys`` (``uint64[k, n]``).

    Two 32-bit lanes run through the words: each word's low half is mixed into the low
    lane, its high half (with the new low lane) into the high lane; a last mix folds the
    high lane into the low one, so the low bits (which pick table slots) depend on every
    bit of every word. Two ``fmix32`` per word and one more per row.
    """
    lo = _SEED & _M32
    hi = _SEED >> _S32
    for c in range(keys.shape[0]):
        x = keys[c, i]
        lo = _fmix32((x & _M32) ^ lo)
        hi = _fmix32((x >> _S32) ^ hi ^ lo)
    lo = _fmix32(lo ^ ((hi + _GOLD) & _M32))
    return (hi << _S32) | lo


@numba.njit(cache=CACHE, nogil=True)
def _hash_rows_cpu(keys, out):  # type: ignore[no-untyped-def]
    for i in range(out.shape[0]):
        out[i] = hash_row(keys, i)


@cuda_kernel("void(uint64[:, ::1], uint64[::1])")
def _hash_rows_cuda(keys, out):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = hash_row(keys, i)


#: ``(keys uint64[k, n], out uint64[n])``: one thread per row
HASH_ROWS = KernelPair(_hash_rows_cpu, _hash_rows_cuda)


def widen_keys(columns: list[Any], xp: Any) -> Any:
    """Stack key columns as a C-contiguous ``uint64[k, n]`` array (bit patterns kept).

    Examples
    --------
    >>> import numpy as np
    >>> widen_keys([np.array([1, -1], np.int32), np.array([True, False])], np).tolist()
    [[1, 18446744073709551615], [1, 0]]
    """
    if not columns:
        raise ValueError("widen_keys needs at least one key column")
    n = len(columns[0])
    out = xp.empty((len(columns), n), dtype=np.uint64)
    for c, col in enumerate(columns):
        if col.dtype.kind == "f":
            col = col.astype(np.float64).view(np.int64)
        out[c] = col.astype(np.int64).view(np.uint64)
    return out


def hash_rows(keys: Any, backend: Backend) -> Any:
    """64-bit hashes of the rows of ``keys`` (``uint64[k, n]``, from :func:`widen_keys`).

    Parameters
    ----------
    keys
        numpy (``cpu``, ``cudasim``) or cupy (``cuda``) array.
    backend
        The backend that hashes them; the hashes are an array of its ``xp``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> keys = widen_keys([np.array([1, 2, 1]), np.array([5, 5, 5])], np)
    >>> h = hash_rows(keys, select_backend("cpu"))
    >>> bool(h[0] == h[2]), bool(h[0] != h[1]), h.dtype
    (True, True, dtype('uint64'))
    """
    n = keys.shape[1]
    out = backend.xp.empty(n, dtype=np.uint64)
    backend.launch(HASH_ROWS, n, keys, out)
    return out
