"""Repartitioning by key: which partition each row of an Arrow batch belongs to.

A row goes to partition ``hash(key) % count``. The hash is of the key's *values* (a
string's UTF-8 bytes, a number's bits), never of a process's dictionary codes, so every
partition of a run, on any worker, sends a key to the same place, and a restarted run
sends it where it went before its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["partition_of", "split_rows"]


def _fnv1a(offsets: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:
    """64-bit FNV-1a of each string given by Arrow ``offsets`` into ``data``."""
    for i in range(len(out)):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        out[i] = h


_FNV1A = None


def _string_words(arr: pa.Array) -> np.ndarray:
    """A stable 64-bit word per string of a plain string column (nulls: anything)."""
    global _FNV1A
    if _FNV1A is None:  # numba loads when a run repartitions, not at import
        from numba import njit

        _FNV1A = njit(cache=True, nogil=True)(_fnv1a)
    if not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.large_string())
    arr = arr.fill_null("") if arr.null_count else arr
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = (np.frombuffer(data_buf, np.uint8) if data_buf is not None
            else np.zeros(0, np.uint8))
    out = np.empty(len(arr), np.uint64)
    _FNV1A(offsets, data, out)
    return out


def _value_words(arr: pa.Array) -> np.ndarray:
    """A word per value: a string's hash, a number's bits (nulls: anything)."""
    t = arr.type
    if pa.types.is_dictionary(t):  # the values' words, by the values' type
        words = _value_words(arr.dictionary)
        idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return words[idx] if len(words) else np.zeros(len(arr), np.uint64)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _string_words(arr)
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t) \
            or pa.types.is_time(t):
        arr = arr.view(pa.int64()) if t.bit_width == 64 else pc.cast(arr.view(pa.int32()),
                                                                      pa.int64())
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int64())
    values = arr.fill_null(0).to_numpy(zero_copy_only=False) if arr.null_count \
        else arr.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        values = values.astype(np.float64).view(np.int64)
    return values.astype(np.int64).view(np.uint64)


def _words(arr: pa.Array) -> np.ndarray:
    """A column as one uint64 word per row, the same whatever the column's encoding (a
    dictionary or plain, int32 or int64, string or string view); every null is 0."""
    out = np.array(_value_words(arr), dtype=np.uint64)
    if arr.null_count:
        out[~arr.is_valid().to_numpy(zero_copy_only=False)] = 0
    return out


def partition_of(data: pa.RecordBatch, keys: Sequence[str], count: int) -> np.ndarray:
    """The partition (``0 .. count-1``) of each row: a hash of its ``keys`` values.

    Examples
    --------
    >>> rb = pa.record_batch({"k": ["a", "b", "a", None], "n": [1, 2, 1, 3]})
    >>> p = partition_of(rb, ["k"], 4)
    >>> bool(p[0] == p[2]), p.dtype.name, bool(((p >= 0) & (p < 4)).all())
    (True, 'int64', True)
    >>> dict_rb = pa.record_batch({"k": pa.array(["a", "b", "a", None]).dictionary_encode(),
    ...                            "n": [1, 2, 1, 3]})
    >>> (partition_of(dict_rb, ["k"], 4) == p).all()   # the encoding does not matter
    np.True_
    """
    from gpustream.backend import select_backend
    from gpustream.kernels.hashing import hash_rows

    if count == 1 or not data.num_rows:
        return np.zeros(data.num_rows, np.int64)
    words = np.ascontiguousarray(np.stack([_words(data.column(k)) for k in keys]))
    hashes = np.asarray(hash_rows(words, select_backend("cpu")))
    return (hashes % np.uint64(count)).astype(np.int64)


def split_rows(data: pa.RecordBatch, keys: Sequence[str], count: int
               ) -> list[pa.RecordBatch | None]:
    """``data``'s rows by partition (order kept within each); None where none goes.

    Examples
    --------
    >>> rb = pa.record_batch({"k": [1, 2, 3, 1, 2, 3], "v": [0, 1, 2, 3, 4, 5]})
    >>> parts = split_rows(rb, ["k"], 2)
    >>> sorted(v for p in parts if p is not None for v in p["v"].to_pylist())
    [0, 1, 2, 3, 4, 5]
    >>> all(p is None or len(set(p["k"].to_pylist()) & set(q["k"].to_pylist())) == 0
    ...     for p in parts for q in parts if q is not None and p is not q)
    True
    """
    if count == 1:
        return [data if data.num_rows else None]
    part = partition_of(data, keys, count)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(count + 1))
    taken = data.take(pa.array(order))
    return [taken.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j]))
            if bounds[j + 1] > bounds[j] else None for j in range(count)]
