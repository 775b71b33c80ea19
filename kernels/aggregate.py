"""Aggregate update kernels: CPU twins (sequential njit) and CUDA kernels (atomics).

Every kernel folds (event, window) assignments into per-slot state arrays. Assignment
``a`` updates slot ``slots[a]`` (skipped when -1) with the value of row ``rows[a]``;
``valid`` (empty when the column has no nulls) marks non-null values, which SQL-style
aggregations skip. Floating-point sums on the GPU add in a nondeterministic order, so
they can differ from the CPU in the last bits; integer results are exact everywhere.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.hashing import hash_u64
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["ARGBEST_RANK", "ARGBEST_SEQ", "ARGBEST_VALUE", "COUNT", "HLL", "MINMAX", "MOMENTS",
           "SUM", "hll_update", "update_argbest", "update_count", "update_minmax",
           "update_moments", "update_sum"]

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile

_SEED_HLL = np.uint64(0x5BD1E995)
_ONE = np.uint64(1)


@register_jitable
def _take(valid, r):  # type: ignore[no-untyped-def]
    return valid.shape[0] == 0 or valid[r]


# ---- count -----------------------------------------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _count_cpu(cnt, slots, rows, valid):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        if s >= 0 and _take(valid, rows[a]):
            cnt[s] += 1


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], boolean[::1])")
def _count_cuda(cnt, slots, rows, valid):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        if s >= 0 and _take(valid, rows[a]):
            cuda.atomic.add(cnt, s, 1)


#: ``(cnt, slots, rows, valid)``: one thread per assignment
COUNT = KernelPair(_count_cpu, _count_cuda)


# ---- sum (int64 or float64 accumulators) -----------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _sum_cpu(acc, nn, slots, rows, values, valid):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            acc[s] += values[r]
            nn[s] += 1


@cuda_kernel(
    "void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], boolean[::1])",
    "void(float64[::1], int64[::1], int64[::1], int64[::1], float64[::1], boolean[::1])",
)
def _sum_cuda(acc, nn, slots, rows, values, valid):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            cuda.atomic.add(acc, s, values[r])
            cuda.atomic.add(nn, s, 1)


#: ``(acc, nn, slots, rows, values, valid)``
SUM = KernelPair(_sum_cpu, _sum_cuda)


# ---- min / max --------------------------------------------------------------------------

@numba.njit(nogil=True, cache=CACHE)
def _minmax_cpu(acc, nn, slots, rows, values, valid, is_max):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            v = values[r]
            if (is_max and v > acc[s]) or (not is_max and v < acc[s]):
                acc[s] = v
            nn[s] += 1


@cuda_kernel(
    "void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], boolean[::1], boolean)",
    "void(float64[::1], int64[::1], int64[::1], int64[::1], float64[::1], boolean[::1], boolean)",
)
def _minmax_cuda(acc, nn, slots, rows, values, valid, is_max):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            if is_max:
                cuda.atomic.max(acc, s, values[r])
            else:
                cuda.atomic.min(acc, s, values[r])
            cuda.atomic.add(nn, s, 1)


#: ``(acc, nn, slots, rows, values, valid, is_max)``
MINMAX = KernelPair(_minmax_cpu, _minmax_cuda)


# ---- moments for mean / var / std (shifted by a per-slot pivot) ------------------------

@numba.njit(nogil=True, cache=CACHE)
def _moments_cpu(nn, s1, s2, pivot, slots, rows, values, valid):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            d = values[r] - pivot[s]
            nn[s] += 1
            s1[s] += d
            s2[s] += d * d


@cuda_kernel("void(int64[::1], float64[::1], float64[::1], float64[::1], int64[::1], int64[::1], "
             "float64[::1], boolean[::1])")
def _moments_cuda(nn, s1, s2, pivot, slots, rows, values, valid):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            d = values[r] - pivot[s]
            cuda.atomic.add(nn, s, 1)
            cuda.atomic.add(s1, s, d)
            cuda.atomic.add(s2, s, d * d)


#: ``(nn, s1, s2, pivot, slots, rows, values, valid)``
MOMENTS = KernelPair(_moments_cpu, _moments_cuda)


# ---- max_by / min_by (the value on the row of the best rank; ties: the smallest seq) ---
# Three passes, each a kernel pair, so the GPU needs no lock: (1) each row raises its
# slot's best rank with a 64-bit atomic max; the wrapper then resets the best seq of each
# slot whose rank rose; (2) each row holding its slot's best rank lowers the slot's seq
# with a 64-bit atomic min (seqs are arrival numbers: the first row of a tie wins); (3)
# the one row holding both writes the value. The passes are separate launches on one
# stream: a launch starts only once the one before it has finished and its writes are
# visible to the whole device, so a pass reads the final best rank (seq) of the pass
# before it and needs no fence. A rank and a seq do not fit in one 64-bit word together
# (both are 64 bits), hence the passes. The CPU twins run the same passes in order.

@numba.njit(nogil=True, cache=CACHE)
def _argbest_rank_cpu(best, slots, rows, rank, valid):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r) and rank[r] > best[s]:
            best[s] = rank[r]


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], boolean[::1])")
def _argbest_rank_cuda(best, slots, rows, rank, valid):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r):
            cuda.atomic.max(best, s, rank[r])


#: ``(best, slots, rows, rank, valid)``: pass 1 of max_by / min_by
ARGBEST_RANK = KernelPair(_argbest_rank_cpu, _argbest_rank_cuda)


@numba.njit(nogil=True, cache=CACHE)
def _argbest_seq_cpu(best, bseq, slots, rows, rank, seq, valid):  # type: ignore[no-untyped-def]
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r) and rank[r] == best[s] and seq[r] < bseq[s]:
            bseq[s] = seq[r]


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], "
             "boolean[::1])")
def _argbest_seq_cuda(best, bseq, slots, rows, rank, seq, valid):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r) and rank[r] == best[s]:
            cuda.atomic.min(bseq, s, seq[r])


#: ``(best, bseq, slots, rows, rank, seq, valid)``: pass 2 of max_by / min_by
ARGBEST_SEQ = KernelPair(_argbest_seq_cpu, _argbest_seq_cuda)


@numba.njit(nogil=True, cache=CACHE)
def _argbest_value_cpu(best, bseq, value, slots, rows, rank, seq, bits,  # type: ignore[no-untyped-def]
                       valid):
    for a in range(slots.shape[0]):
        s = slots[a]
        r = rows[a]
        if s >= 0 and _take(valid, r) and rank[r] == best[s] and seq[r] == bseq[s]:
            value[s] = bits[r]


@cuda_kernel("void(int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64[::1], "
             "int64[::1], int64[::1], boolean[::1])")
def _argbest_value_cuda(best, bseq, value, slots, rows, rank, seq, bits,  # type: ignore[no-untyped-def]
                        valid):
    a = cuda.grid(1)
    if a < slots.shape[0]:
        s = slots[a]
        r = rows[a]
        # one row per slot at most: seqs are unique (a row folds into a slot once)
        if s >= 0 and _take(valid, r) and rank[r] == best[s] and seq[r] == bseq[s]:
            value[s] = bits[r]


#: ``(best, bseq, value, slots, rows, rank, seq, bits, valid)``: pass 3 of max_by / min_by
ARGBEST_VALUE = KernelPair(_argbest_value_cpu, _argbest_value_cuda)


# ---- HyperLogLog registers -------------------------------------------------------------
# One byte per register (ranks are at most 61), ``uint8[rows, m]``. The GPU kernel raises a
# register with a compare-and-swap of the 32-bit word holding it (a view of the same
# bytes: a row of m >= 16 registers is whole words), so both twins share one layout. The
# twins take ``(registers, m, ...)``: the GPU kernel the words, the CPU twin the bytes
# (``uint8[rows, m]``; indexing them directly is ~10% faster than through a byte view).

@register_jitable
def _hll_position(bits, p):  # type: ignore[no-untyped-def]
    """(register index, rank) of a value's 64-bit pattern for 2**p registers."""
    h = hash_u64(bits, _SEED_HLL)
    idx = np.int64(h >> np.uint64(64 - p))
    rest = h << np.uint64(p)
    rank = 1
    limit = 64 - p + 1
    while rank < limit and (rest >> np.uint64(63)) == np.uint64(0):
        rank += 1
        rest = rest << _ONE
    return idx, rank


@numba.njit(nogil=True, cache=CACHE)
def _hll_cpu(regs, m, reg_rows, rows, bits, valid, p):  # type: ignore[no-untyped-def]
    for a in range(reg_rows.shape[0]):
        d = reg_rows[a]
        r = rows[a]
        if d >= 0 and _take(valid, r):
            idx, rank = _hll_position(bits[r], p)
            if rank > regs[d, idx]:
                regs[d, idx] = rank


@cuda_kernel("void(uint32[::1], int64, int64[::1], int64[::1], uint64[::1], boolean[::1], int64)")
def _hll_cuda(words, m, reg_rows, rows, bits, valid, p):  # type: ignore[no-untyped-def]
    a = cuda.grid(1)
    if a < reg_rows.shape[0]:
        d = reg_rows[a]
        r = rows[a]
        if d >= 0 and _take(valid, r):
            idx, rank = _hll_position(bits[r], p)
            at = d * m + idx  # the register's byte; its word, and its bits in the word
            w = at >> 2
            shift = (at & 3) * 8
            old = words[w]
            while ((np.int64(old) >> shift) & 0xFF) < rank:
                new = np.uint32((np.int64(old) & ~(np.int64(0xFF) << shift))
                                | (np.int64(rank) << shift))
                seen = cuda.atomic.cas(words, w, old, new)
                if seen == old:
                    break
                old = seen


#: ``(registers, m, reg_rows, rows, bits, valid, p)``: the registers as ``uint8[n, m]`` on
#: the CPU, as the ``uint32[n * m / 4]`` words over them on the GPU
HLL = KernelPair(_hll_cpu, _hll_cuda)


# ---- dispatch ---------------------------------------------------------------------------

def _empty_valid(valid: Any, xp: Any) -> Any:
    return xp.empty(0, dtype=np.bool_) if valid is None else valid


def update_count(cnt: Any, slots: Any, rows: Any, valid: Any, backend: Backend) -> None:
    """``cnt[slot] += 1`` per assignment (only non-null rows when ``valid`` is given).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> cnt = np.zeros(3, np.int64)
    >>> update_count(cnt, np.array([0, 2, 2, -1]), np.arange(4), None, select_backend("cpu"))
    >>> cnt.tolist()
    [1, 0, 2]
    """
    backend.launch(COUNT, slots.shape[0], cnt, slots, rows, _empty_valid(valid, backend.xp))


def update_sum(acc: Any, nn: Any, slots: Any, rows: Any, values: Any, valid: Any,
               backend: Backend) -> None:
    """``acc[slot] += value`` and ``nn[slot] += 1`` for non-null values (int64 or float64).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> acc, nn = np.zeros(2, np.int64), np.zeros(2, np.int64)
    >>> update_sum(acc, nn, np.array([1, 1, 0]), np.arange(3), np.array([5, 6, 7]),
    ...            np.array([True, True, False]), select_backend("cpu"))
    >>> acc.tolist(), nn.tolist()
    ([0, 11], [0, 2])
    """
    backend.launch(SUM, slots.shape[0], acc, nn, slots, rows, values,
                   _empty_valid(valid, backend.xp))


def update_minmax(acc: Any, nn: Any, slots: Any, rows: Any, values: Any, valid: Any,
                  is_max: bool, backend: Backend) -> None:
    """Running min or max of non-null values (``acc`` starts at +/- the type's extreme).

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> acc, nn = np.full(1, -np.inf), np.zeros(1, np.int64)
    >>> update_minmax(acc, nn, np.array([0, 0]), np.arange(2), np.array([3.0, 9.0]), None,
    ...               True, select_backend("cpu"))
    >>> acc.tolist()
    [9.0]
    """
    backend.launch(MINMAX, slots.shape[0], acc, nn, slots, rows, values,
                   _empty_valid(valid, backend.xp), is_max)


def update_moments(nn: Any, s1: Any, s2: Any, pivot: Any, slots: Any, rows: Any, values: Any,
                   valid: Any, backend: Backend) -> None:
    """Count, sum and sum of squares of ``value - pivot[slot]`` (float64), for mean/var/std.

    Shifting by a per-slot pivot (a value of the group) keeps the variance accurate when
    the values are large compared with their spread.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> nn, s1, s2, piv = np.zeros(1, np.int64), np.zeros(1), np.zeros(1), np.array([10.0])
    >>> update_moments(nn, s1, s2, piv, np.zeros(3, np.int64), np.arange(3),
    ...                np.array([9.0, 10.0, 11.0]), None, select_backend("cpu"))
    >>> nn.tolist(), s1.tolist(), s2.tolist()
    ([3], [0.0], [2.0])
    """
    backend.launch(MOMENTS, slots.shape[0], nn, s1, s2, pivot, slots, rows, values,
                   _empty_valid(valid, backend.xp))


def hll_update(regs: Any, reg_rows: Any, rows: Any, bits: Any, valid: Any, p: int,
               backend: Backend) -> None:
    """Raise the HyperLogLog registers of row ``reg_rows[a]`` of ``regs`` (``uint8[n, 2**p]``,
    C-contiguous; -1: skip) with the rank of the value ``bits[rows[a]]`` (a 64-bit
    pattern), for each assignment ``a`` whose value is not null.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> regs = np.zeros((2, 16), np.uint8)
    >>> hll_update(regs, np.array([1] * 99 + [-1]), np.arange(100),
    ...            np.arange(100, dtype=np.uint64), None, 4, select_backend("cpu"))
    >>> int((regs[1] > 0).sum()) > 10, int(regs[0].sum())
    (True, 0)
    """
    m = int(regs.shape[1])
    if backend.is_device:  # the CUDA kernel takes the 32-bit words over the registers' bytes
        if not regs.flags.c_contiguous:  # a reshape would copy: the registers would not change
            raise ValueError("hll_update: regs must be C-contiguous on the device; allocate it "
                             "with xp.zeros((n, 2**p), np.uint8)")
        regs = regs.reshape(-1).view(np.uint32)
    # Python ints, not numpy scalars: numba types them faster (int64 either way)
    backend.launch(HLL, reg_rows.shape[0], regs, m, reg_rows, rows, bits,
                   _empty_valid(valid, backend.xp), int(p))


def update_argbest(best: Any, bseq: Any, value: Any, slots: Any, rows: Any, rank: Any,
                   seq: Any, bits: Any, valid: Any, backend: Backend) -> None:
    """Fold rows into max_by / min_by states: slot ``s`` keeps the best ``rank`` seen
    (``best[s]``; larger wins), the smallest ``seq`` among the rows of that rank
    (``bseq[s]``; I64_MAX: none yet) and that row's value ``bits`` (``value[s]``). All
    arrays int64 and contiguous; ``valid`` (or None) marks the rows that take part.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> best = np.full(2, np.iinfo(np.int64).min)
    >>> bseq, value = np.full(2, np.iinfo(np.int64).max), np.zeros(2, np.int64)
    >>> update_argbest(best, bseq, value, np.array([0, 0, 0, 1]), np.arange(4),
    ...                np.array([5, 9, 9, 1]), np.arange(4), np.array([10, 11, 12, 13]),
    ...                None, select_backend("cpu"))
    >>> best.tolist(), bseq.tolist(), value.tolist()
    ([9, 1], [1, 3], [11, 13])
    """
    xp = backend.xp
    ok = _empty_valid(valid, xp)
    n = slots.shape[0]
    before = best[slots]  # slot -1 reads the last slot: ignored below
    backend.launch(ARGBEST_RANK, n, best, slots, rows, rank, ok)
    rose = slots[(slots >= 0) & (best[slots] > before)]
    bseq[rose] = np.iinfo(np.int64).max  # the old best row lost: its seq no longer counts
    backend.launch(ARGBEST_SEQ, n, best, bseq, slots, rows, rank, seq, ok)
    backend.launch(ARGBEST_VALUE, n, best, bseq, value, slots, rows, rank, seq, bits, ok)
