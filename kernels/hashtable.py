"""Open-addressing hash table of multi-word keys: the state layout of keyed operators.

The table is three arrays, the same on every backend so that a checkpoint taken on a
GPU restores on a CPU-only machine and back:

- ``t_hash: uint64[C]``: 0 empty, 1 tombstone (a freed slot), else the key's hash;
- ``t_ready: int32[C]``: 1 once the slot's key words are written;
- ``t_keys: uint64[K, C]``: the key words (key columns, null bits, window start ...).

``C`` is a power of two; probing is linear. Slots are never reused in place (a freed
slot stays a tombstone until the table is rebuilt), so two threads can never claim two
slots for one key.

On the GPU one thread handles one row: it claims an empty slot with an atomic
compare-and-swap on ``t_hash``, writes the key words, then publishes ``t_ready``. A
thread that meets its own hash in a slot whose key words are not yet published does
not wait: it puts its row on a retry list, and the host launches again for those rows
(after the launch, every claimed slot is published). The CPU twin inserts rows one by
one in arrival order.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from gpustream.backend import Backend
from gpustream.kernels.cache import CACHE
from gpustream.kernels.prefetch import PREFETCH_DISTANCE, _prefetch
from gpustream.kernels.registry import KernelPair, cuda_kernel

__all__ = ["EMPTY", "LOOKUP", "TOMBSTONE", "UPSERT", "lookup", "new_table",
           "release_tombstones", "upsert", "upsert_cpu_into"]

EMPTY = np.uint64(0)
TOMBSTONE = np.uint64(1)
_TWO = np.uint64(2)

cuda: Any = None  # numba.cuda, bound by the kernel registry before the first compile


@register_jitable
def _live_hash(h):  # type: ignore[no-untyped-def]
    """Hashes 0 and 1 mark empty and freed slots; move real hashes off them."""
    if h < _TWO:
        return h + _TWO
    return h


@register_jitable
def _keys_equal(t_keys, s, keys, i):  # type: ignore[no-untyped-def]
    for c in range(keys.shape[0]):  # noqa: SIM110 (a plain loop compiles for CUDA)
        if t_keys[s, c] != keys[c, i]:
            return False
    return True


@numba.njit(nogil=True, cache=CACHE)
def _upsert_cpu(t_hash, t_ready, t_keys, hashes, keys, rows, slots, is_new):  # type: ignore[no-untyped-def]
    mask = np.uint64(t_hash.shape[0] - 1)
    created = 0
    for j in range(rows.shape[0]):
        i = rows[j]
        h = _live_hash(hashes[i])
        s = h & mask
        while True:
            th = t_hash[s]
            if th == EMPTY:
                t_hash[s] = h
                for c in range(keys.shape[0]):
                    t_keys[s, c] = keys[c, i]
                t_ready[s] = 1
                slots[i] = s
                is_new[i] = 1
                created += 1
                break
            if th == h and _keys_equal(t_keys, s, keys, i):
                slots[i] = s
                is_new[i] = 0
                break
            s = (s + np.uint64(1)) & mask
    return created


@register_jitable
def _keys_equal_coherent(t_keys, s, keys, i):  # type: ignore[no-untyped-def]
    """``_keys_equal`` for a slot another thread may have just filled: each key word is
    read with an atomic (served by L2, which every SM sees), never by a plain load that
    an SM's L1 could answer with the line as it was before the writer's stores."""
    for c in range(keys.shape[0]):
        if cuda.atomic.add(t_keys, (s, c), np.uint64(0)) != keys[c, i]:
            return False
    return True


@cuda_kernel("void(uint64[::1], int32[::1], uint64[:, ::1], uint64[::1], uint64[:, ::1], "
             "int64[::1], int64[::1], int8[::1], int64[::1], int64[::1])")
def _upsert_cuda(t_hash, t_ready, t_keys, hashes, keys, rows, slots, is_new, retry, n_retry):  # type: ignore[no-untyped-def]
    j = cuda.grid(1)
    if j >= rows.shape[0]:
        return
    i = rows[j]
    mask = np.uint64(t_hash.shape[0] - 1)
    h = _live_hash(hashes[i])
    s = h & mask
    while True:
        # load before CAS: a slot's hash goes from EMPTY to its final value once in a
        # launch, so a plain load that sees another hash can move on; only an EMPTY
        # (perhaps stale) slot is claimed with a CAS, whose answer is the truth
        old = t_hash[s]
        if old == EMPTY:
            old = cuda.atomic.cas(t_hash, s, EMPTY, h)
        if old == EMPTY:
            for c in range(keys.shape[0]):
                t_keys[s, c] = keys[c, i]
            cuda.threadfence()  # release: the key words before the ready flag
            cuda.atomic.exch(t_ready, s, 1)
            slots[i] = s
            is_new[i] = 1
            return
        if old == h:
            if cuda.atomic.add(t_ready, s, 0) == 0:
                pos = cuda.atomic.add(n_retry, 0, 1)
                retry[pos] = i
                return
            # acquire: the flag was read by an atomic; the fence orders the key reads
            # after it, and the key words are read coherently (not from a stale L1 line)
            cuda.threadfence()
            if _keys_equal_coherent(t_keys, s, keys, i):
                slots[i] = s
                is_new[i] = 0
                return
        s = (s + np.uint64(1)) & mask


#: the GPU's insert with its retry list; the CPU inserts in arrival order through
#: :func:`upsert_cpu_into` (another contract: no retries, a count of the keys created)
UPSERT = KernelPair(None, _upsert_cuda)


@register_jitable
def _find(t_hash, t_keys, hashes, keys, i):  # type: ignore[no-untyped-def]
    """The slot holding row ``i``'s key, or -1 (probing stops at an empty slot)."""
    mask = np.uint64(t_hash.shape[0] - 1)
    h = _live_hash(hashes[i])
    s = h & mask
    for _ in range(t_hash.shape[0]):
        th = t_hash[s]
        if th == EMPTY:
            return -1
        if th == h and _keys_equal(t_keys, s, keys, i):
            return np.int64(s)
        s = (s + np.uint64(1)) & mask
    return -1


@numba.njit(nogil=True, cache=CACHE)
def _lookup_cpu(t_hash, t_keys, hashes, keys, out):  # type: ignore[no-untyped-def]
    # a probe side walks a large table at random: start loading the lines of the row
    # PREFETCH_DISTANCE ahead so that the misses of many rows overlap
    n = out.shape[0]
    mask = np.uint64(t_hash.shape[0] - 1)
    kw = np.uint64(t_keys.shape[1])
    t_keys_flat = t_keys.reshape(t_keys.shape[0] * t_keys.shape[1])
    for i in range(n):
        if i + PREFETCH_DISTANCE < n:
            s = _live_hash(hashes[i + PREFETCH_DISTANCE]) & mask
            _prefetch(t_hash, s)
            _prefetch(t_keys_flat, s * kw)
        out[i] = _find(t_hash, t_keys, hashes, keys, i)


@cuda_kernel("void(uint64[::1], uint64[:, ::1], uint64[::1], uint64[:, ::1], int64[::1])")
def _lookup_cuda(t_hash, t_keys, hashes, keys, out):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = _find(t_hash, t_keys, hashes, keys, i)


#: ``(t_hash, t_keys, hashes, keys, out)``: one thread per probe row
LOOKUP = KernelPair(_lookup_cpu, _lookup_cuda)


def lookup(table: tuple[Any, Any, Any], hashes: Any, keys: Any,
           backend: Backend) -> Any:
    """The slot of every row's key, -1 where the table does not hold it (read only: the
    probe side of a hash join), on ``backend``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> from gpustream.kernels.hashing import hash_rows
    >>> cpu = select_backend("cpu")
    >>> table = new_table(16, 1, np)
    >>> build = np.array([[7, 8]], dtype=np.uint64)
    >>> slots, _ = upsert(table, hash_rows(build, cpu), build, np.arange(2), cpu)
    >>> probe = np.array([[8, 5, 7]], dtype=np.uint64)
    >>> found = lookup(table, hash_rows(probe, cpu), probe, cpu)
    >>> found.tolist() == [slots[1], -1, slots[0]]
    True
    """
    t_hash, _, t_keys = table
    n = hashes.shape[0]
    out = backend.xp.empty(n, dtype=np.int64)
    backend.launch(LOOKUP, n, t_hash, t_keys, hashes, keys, out)
    return out


@numba.njit(nogil=True, cache=CACHE)
def _release_cpu(t_hash, slots):  # type: ignore[no-untyped-def]
    mask = np.int64(t_hash.shape[0] - 1)
    n = 0
    for j in range(slots.shape[0]):
        s = np.int64(slots[j])
        if t_hash[s] != TOMBSTONE or t_hash[(s + 1) & mask] != EMPTY:
            continue
        while t_hash[s] == TOMBSTONE:
            t_hash[s] = EMPTY
            n += 1
            s = (s - 1) & mask
    return n


def release_tombstones(t_hash: Any, slots: Any) -> int:
    """Turn freed ``slots`` back into empty ones where no probe can need them (CPU).

    A tombstone followed by an empty slot ends every probe that reaches it anyway, so it
    can be empty itself, and so can the tombstones just before it. Between kernels this
    keeps a table whose keys come and go (windows) from filling with tombstones. The
    caller resets the slots' columns to their fill values. Returns how many it emptied.

    Examples
    --------
    >>> import numpy as np
    >>> t_hash = np.array([5, 1, 1, 0, 7, 1, 9, 0], dtype=np.uint64)
    >>> release_tombstones(t_hash, np.array([2, 5])), t_hash.tolist()
    (2, [5, 0, 0, 0, 7, 1, 9, 0])
    """
    return int(_release_cpu(t_hash, slots))


def new_table(capacity: int, key_words: int, xp: Any) -> tuple[Any, Any, Any]:
    """Empty ``(t_hash, t_ready, t_keys)`` arrays for ``capacity`` slots (a power of two).

    ``t_keys`` is slot-major (``uint64[capacity, key_words]``): a slot's key words share a
    cache line, so a probe that compares keys touches one line, not one per word.

    Examples
    --------
    >>> import numpy as np
    >>> h, r, k = new_table(8, 3, np)
    >>> h.shape, r.dtype, k.shape
    ((8,), dtype('int32'), (8, 3))
    """
    if capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two, got {capacity}")
    return (xp.zeros(capacity, dtype=np.uint64), xp.zeros(capacity, dtype=np.int32),
            xp.zeros((capacity, key_words), dtype=np.uint64))


def upsert_cpu_into(table: tuple[Any, Any, Any], hashes: Any, keys: Any, rows: Any,
                    slots: Any, is_new: Any) -> int:
    """CPU twin writing into caller-owned ``slots``/``is_new``; returns how many keys it created.

    Examples
    --------
    >>> import numpy as np
    >>> table = new_table(8, 1, np)
    >>> keys = np.array([[3, 3, 4]], dtype=np.uint64)
    >>> slots, new = np.full(3, -1), np.zeros(3, np.int8)
    >>> upsert_cpu_into(table, keys[0].copy(), keys, np.arange(3), slots, new), new.tolist()
    (2, [1, 0, 1])
    """
    return int(_upsert_cpu(table[0], table[1], table[2], hashes, keys, rows, slots, is_new))


def upsert(
    table: tuple[Any, Any, Any], hashes: Any, keys: Any, rows: Any, backend: Backend,
) -> tuple[Any, Any]:
    """Find or insert the keys of ``rows``; returns ``(slots, is_new)`` indexed by row.

    Rows not listed in ``rows`` get slot -1. The caller keeps the load factor below 1
    (the table must have a free slot for every new key). ``backend`` runs it.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> from gpustream.kernels.hashing import hash_rows
    >>> cpu = select_backend("cpu")
    >>> table = new_table(16, 1, np)
    >>> keys = np.array([[7, 8, 7, 9]], dtype=np.uint64)
    >>> slots, new = upsert(table, hash_rows(keys, cpu), keys, np.arange(4), cpu)
    >>> bool(slots[0] == slots[2]), new.tolist()
    (True, [1, 1, 0, 1])
    """
    t_hash, t_ready, t_keys = table
    n = hashes.shape[0]
    if not backend.is_device:
        slots_h = np.full(n, -1, dtype=np.int64)
        new_h = np.zeros(n, dtype=np.int8)
        _upsert_cpu(t_hash, t_ready, t_keys, hashes, keys, rows, slots_h, new_h)
        return slots_h, new_h
    xp = backend.xp
    slots = xp.full(n, -1, dtype=np.int64)
    is_new = xp.zeros(n, dtype=np.int8)
    retry = xp.empty(max(1, rows.shape[0]), dtype=np.int64)
    n_retry = xp.zeros(1, dtype=np.int64)
    todo = rows
    while todo.shape[0]:
        n_retry[0] = 0
        backend.launch(UPSERT, todo.shape[0], t_hash, t_ready, t_keys, hashes, keys, todo, slots,
                  is_new, retry, n_retry)
        k = int(n_retry[0])
        todo = retry[:k].copy()
    return slots, is_new
