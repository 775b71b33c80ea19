"""Append-only string dictionaries: strings become int32 codes at ingest.

One dictionary per string column per stream; it grows across batches in order of first
appearance (so codes never depend on how the stream is cut into batches) and is plain
Arrow data, ready to be checkpointed. Kernels only ever see the codes.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["StringDictionary"]


class StringDictionary:
    """Maps strings to stable int32 codes; grows across batches.

    One thread writes (:meth:`encode`: the stream's source thread) while others read
    (operators on the pipeline thread). Each growth replaces :attr:`values` with a new,
    immutable Arrow array, so a reader that takes ``values`` once holds a consistent
    snapshot: every code of a batch encoded before that read is below ``len(values)``.
    Readers must not read ``len(d)`` and ``d.values`` separately and assume they agree.

    Examples
    --------
    >>> import pyarrow as pa
    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["b", "a", None, "b"]))
    >>> codes.tolist(), valid.tolist()
    ([0, 1, 0, 0], [True, True, False, True])
    >>> d.encode(pa.array(["c", "a"]))[0].tolist()
    [2, 1]
    >>> d.decode(codes, valid).to_pylist()
    ['b', 'a', None, 'b']
    >>> d.lookup("a"), d.lookup("zebra")
    (1, -1)
    >>> cats = pa.DictionaryArray.from_arrays(pa.array([1, 0, None], pa.int8()), ["x", "c"])
    >>> codes, valid = d.encode(cats)
    >>> d.decode(codes, valid).to_pylist(), len(d)
    (['c', 'x', None], 4)
    """

    def __init__(self, values: pa.Array | None = None) -> None:
        self._values: pa.Array = pa.nulls(0, pa.large_string())  # (pa.array would load pandas)
        self._lock = threading.Lock()
        if values is not None:
            self.restore(values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def values(self) -> pa.Array:
        """The dictionary: code ``i`` stands for ``values[i]`` (an immutable snapshot)."""
        return self._values

    def encode(self, array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes (int32) and validity (None when there are no nulls) for a string array.

        Plain, large and view strings and dictionary arrays of any index width are
        accepted; a dictionary array is read through its own dictionary (its strings
        looked up once, not per row), whatever dictionary earlier batches had.
        """
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if not pa.types.is_dictionary(array.type):
            array = pc.dictionary_encode(array)
        local_dict = array.dictionary.cast(pa.large_string())
        local_idx = array.indices
        with self._lock:
            pos = pc.index_in(local_dict, value_set=self._values)
            missing = pc.and_(pos.is_null(), local_dict.is_valid())
            if pc.any(missing).as_py():
                new_values = pc.unique(local_dict.filter(missing))
                self._values = pa.concat_arrays([self._values, new_values])
                pos = pc.index_in(local_dict, value_set=self._values)
        # a null in the dictionary itself (Arrow allows it) is a null row
        remap = _ints(pos, -1).astype(np.int32, copy=False)
        idx = _ints(local_idx, 0)
        valid = local_idx.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
        codes = remap[idx] if len(remap) else np.zeros(len(idx), dtype=np.int32)
        if local_dict.null_count and len(codes):
            null_value = codes < 0
            valid = ~null_value if valid is None else valid & ~null_value
            codes[null_value] = 0
        return codes.astype(np.int32, copy=False), valid

    def decode(self, codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
        """The strings (``pa.string()``) for host codes, with nulls where ``valid`` is False."""
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        bitmap, nulls = None, 0
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            nulls = len(valid) - int(np.count_nonzero(valid))
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
        indices = pa.Array.from_buffers(pa.int32(), len(codes), [bitmap, pa.py_buffer(codes)],
                                        null_count=nulls)
        return self._values.take(indices).cast(pa.string())

    def lookup(self, value: str) -> int:
        """The code of ``value``, or -1 when it has not been seen (it then matches no row)."""
        pos = pc.index_in(pa.array([value], type=pa.large_string()), value_set=self._values)
        code = pos[0].as_py()
        return -1 if code is None else int(code)

    def snapshot(self) -> pa.Array:
        """The dictionary as an Arrow array, for checkpoints."""
        return self._values

    def restore(self, values: pa.Array) -> None:
        """Replace the dictionary with a snapshot."""
        self._values = values.cast(pa.large_string())


def _ints(arr: pa.Array, null: int) -> np.ndarray:
    """An integer Arrow array's values as numpy (a view where it has no nulls), ``null``
    where it is null. Read from its buffers: ``pc.fill_null`` and ``pa.array`` of numpy
    data make pyarrow import pandas, half a second of every run's start."""
    dtype = np.dtype(f"{'u' if pa.types.is_unsigned_integer(arr.type) else 'i'}"
                     f"{arr.type.bit_width // 8}")
    if not len(arr):
        return np.zeros(0, dtype=dtype)
    values = np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))
    values = values[arr.offset:]
    if arr.null_count:
        return np.where(arr.is_valid().to_numpy(zero_copy_only=False), values,
                        values.dtype.type(null))
    return values
