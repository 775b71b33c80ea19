"""``SlotTable``: a keyed state table on one backend, growing and compacting as needed.

It wraps the kernels of :mod:`gpustream.kernels.hashtable` (the same array layout on
every backend) and owns named per-slot columns that aggregation states register; when
the table is rebuilt (to grow, or to drop freed slots) every column follows its slot.
Memory stays bounded by the live keys: freed slots are dropped at the next rebuild.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from gpustream.backend import Backend
from gpustream.kernels.hashing import hash_rows
from gpustream.kernels.hashtable import (
    TOMBSTONE,
    lookup,
    new_table,
    upsert,
    upsert_cpu_into,
)

__all__ = ["SlotTable", "StateTable", "array_bytes", "backend_of"]

MAX_LOAD = 0.5
MIN_CAPACITY = 1024


class StateTable(Protocol):
    """What aggregation states need of the table that holds them (slot or dense); they
    launch their kernels on its backend (:func:`backend_of`)."""

    xp: Any
    columns: dict[str, Any]

    def add_column(self, name: str, dtype: Any, fill: Any) -> None: ...

    def live_slots(self) -> Any: ...

    def held_slots(self) -> Any: ...

    def state_bytes(self) -> int: ...


def array_bytes(*arrays: Any) -> int:
    """Bytes of the memory behind ``arrays`` (numpy or cupy; None skipped), each buffer
    counted once however many views of it are given.

    Examples
    --------
    >>> a = np.zeros(10, dtype=np.int64)
    >>> array_bytes(a, a[2:], a.view(np.float64)[::2], None, np.zeros(3, dtype=np.int8))
    83
    >>> array_bytes(np.frombuffer(bytes(16), dtype=np.int32), memoryview(bytes(5)))
    21
    """
    roots: dict[int, int] = {}
    for a in arrays:
        if a is None:
            continue
        # a view: count the array it views (not a buffer of another kind it may wrap)
        while isinstance(getattr(a, "base", None), type(a)):
            a = a.base
        roots[id(a)] = int(a.nbytes)
    return sum(roots.values())


def backend_of(table: Any) -> Backend:
    """The backend whose kernels update ``table``'s columns: its ``backend``.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> backend_of(SlotTable(1, np, select_backend("cpu"))).name
    'cpu'
    """
    backend: Backend = table.backend
    return backend


def _pow2_at_least(n: int) -> int:
    c = MIN_CAPACITY
    while c < n:
        c *= 2
    return c


class SlotTable:
    """Keys (``uint64[K]`` per slot) -> slot, plus named per-slot state columns.

    Parameters
    ----------
    key_words
        Number of uint64 words per key.
    xp
        numpy or cupy: the backend's ``xp``.
    backend
        The backend whose kernels run it (the CUDA kernels on ``cuda``/``cudasim``, the
        CPU twins on ``cpu``).
    packed
        On the host (``xp`` numpy), keep the numeric columns side by side, one row of
        64-bit words per slot aligned to a cache line (integer columns widened to int64),
        so that updating every state of a slot touches one or two cache lines instead of
        one per column. Columns are then strided views; snapshots have the declared dtypes.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> t = SlotTable(1, np, select_backend("cpu"))
    >>> t.add_column("total", np.int64, 0)
    >>> keys = np.array([[5, 6, 5]], dtype=np.uint64)
    >>> slots, new = t.upsert(keys, np.arange(3))
    >>> np.add.at(t.columns["total"], slots, [1, 2, 3])
    >>> t.live_count, int(t.columns["total"][slots[0]])
    (2, 4)
    """

    def __init__(self, key_words: int, xp: Any, backend: Backend,
                 capacity: int = MIN_CAPACITY, packed: bool = False) -> None:
        self.key_words = key_words
        self.xp = xp
        self.backend = backend
        self.packed = packed and xp is np
        self._packed_names: list[str] = []
        self._block: Any = None  # the packed columns' rows (int64 words)
        self._fill_row: Any = None  # a row of their fill values
        #: column name -> the earlier column it shares memory with (set before adding):
        #: for owners whose states hold the same values (non-null counts of one input)
        self.aliases: dict[str, str] = {}
        self.capacity = _pow2_at_least(capacity)
        self.arrays = new_table(self.capacity, key_words, xp)
        self.columns: dict[str, Any] = {}
        self._fill: dict[str, tuple[Any, Any]] = {}
        self.live_count = 0
        self.used = 0  # live + freed (tombstones)
        self.rebuilds = 0
        #: called as ``on_rebuild(old_slots, new_slots)`` after a rebuild moved live slots,
        #: for owners that keep slot numbers outside the table's columns
        self.on_rebuild: Any = None

    # -- columns --------------------------------------------------------------------------
    def add_column(self, name: str, dtype: Any, fill: Any) -> None:
        """Register a per-slot column. A slot never used before holds ``fill``."""
        self._fill[name] = (dtype, fill)
        if name in self.aliases:
            self.columns[name] = self.columns[self.aliases[name]]
            return
        if self.packed and np.dtype(dtype).kind in "iuf":
            # the owner's bookkeeping columns ("__...") after the states' hot fields
            self._packed_names.append(name)
            self._packed_names.sort(key=lambda n: n.startswith("__"))
            old = {n: self.columns[n] for n in self._packed_names if n != name}
            self.columns.update(self._link(self._fresh_packed(self.capacity)))
            for n, col in old.items():
                self.columns[n][:] = col
            return
        self.columns[name] = self.xp.full(self.capacity, fill, dtype=dtype)

    def _link(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Point the aliases among ``columns``' names at their targets' arrays."""
        for name, target in self.aliases.items():
            if name in self._fill and target in columns:
                columns[name] = columns[target]
        return columns

    def _fresh_packed(self, capacity: int) -> dict[str, Any]:
        """Views of a new cache-line-aligned block holding the packed columns, filled."""
        width = -(-len(self._packed_names) // 8) * 8
        raw = np.empty(capacity * width + 8, dtype=np.int64)
        at = (-(raw.ctypes.data // 8)) % 8
        block = raw[at : at + capacity * width].reshape(capacity, width)
        self._block = block
        out = {}
        for j, name in enumerate(self._packed_names):
            dtype, fill = self._fill[name]
            kind = np.dtype(dtype).kind
            word = np.float64 if kind == "f" else np.uint64 if kind == "u" else np.int64
            out[name] = block.view(word)[:, j]
            out[name][:] = fill
        self._fill_row = block[0].copy()
        return out

    def row_views(self, rows: Any) -> dict[str, Any]:
        """Each column of packed ``rows`` (``int64[n, W]``, as pages pop them), by name."""
        return self._link({name: rows.view(self.columns[name].dtype)[:, j]
                           for j, name in enumerate(self._packed_names)})

    def _fresh_columns(self, capacity: int) -> dict[str, Any]:
        """Every column for ``capacity`` slots, filled."""
        out = self._fresh_packed(capacity) if self._packed_names else {}
        for name, (dtype, fill) in self._fill.items():
            if name not in out and name not in self.aliases:
                col = self.columns[name]
                out[name] = self.xp.full((capacity, *col.shape[1:]), fill, dtype=dtype)
        return self._link(out)

    def state_bytes(self) -> int:
        """Bytes of the arrays this table holds (host or device): keys and columns, at
        its capacity.

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> t = SlotTable(2, np, select_backend("cpu"))
        >>> t.add_column("n", np.int64, 0); t.add_column("ok", np.int8, 0)
        >>> t.state_bytes() == t.capacity * (8 + 4 + 2 * 8 + 8 + 1)
        True
        """
        return array_bytes(*self.arrays, *self.columns.values())

    # -- keys -----------------------------------------------------------------------------
    @property
    def t_hash(self) -> Any:
        """Per-slot hash (0 empty, 1 freed)."""
        return self.arrays[0]

    @property
    def t_keys(self) -> Any:
        """Per-slot key words as ``uint64[K, capacity]`` (a view of the slot-major array)."""
        return self.arrays[2].T

    def ensure_room(self, extra: int) -> None:
        """Rebuild (larger, without freed slots) if ``extra`` new keys could overfill it."""
        if self.used + extra <= self.capacity * MAX_LOAD:
            return
        self.rebuild(_pow2_at_least(int((self.live_count + extra) / MAX_LOAD) + 1))

    def upsert(self, keys: Any, rows: Any) -> tuple[Any, Any]:
        """Slots of the keys of ``rows`` (others -1), creating missing ones; and which are new.

        A slot that was never used holds every column's fill value (freed slots are not
        reused until a rebuild, which starts from fresh arrays), so new slots need no
        reset; states set their own initial values.

        On the GPU the table first grows to hold every row as a new key (a kernel cannot
        pause to grow it). The CPU inserts in chunks no larger than the room left and grows
        between chunks, so the table tracks the keys actually seen.
        """
        hashes = hash_rows(keys, self.backend)
        m = int(rows.shape[0])
        if self.backend.is_device:
            self.ensure_room(m)
            slots, is_new = upsert(self.arrays, hashes, keys, rows, self.backend)
            created = int(is_new.sum())
            self.live_count += created
            self.used += created
            return slots, is_new
        slots = np.full(hashes.shape[0], -1, dtype=np.int64)
        is_new = np.zeros(hashes.shape[0], dtype=np.int8)
        pos = 0
        while pos < m:
            room = self.room()
            remap = self.make_room(m - pos, room)
            if remap is not None:
                if pos:  # the rows placed so far moved with their keys
                    done = rows[:pos]
                    slots[done] = remap[slots[done]]
                continue
            part = rows[pos : pos + room]
            self.created(upsert_cpu_into(self.arrays, hashes, keys, part, slots, is_new))
            pos += room
        return slots, is_new

    def find(self, keys: Any) -> Any:
        """The slot of each row's key (``uint64[K, n]``), -1 where absent; inserts nothing.

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> t = SlotTable(1, np, select_backend("cpu"))
        >>> slots, _ = t.upsert(np.array([[5, 6]], dtype=np.uint64), np.arange(2))
        >>> t.find(np.array([[6, 9]], dtype=np.uint64)).tolist() == [slots[1], -1]
        True
        """
        return lookup(self.arrays, hash_rows(keys, self.backend), keys, self.backend)

    def room(self) -> int:
        """How many new keys fit before the table must be rebuilt."""
        return int(self.capacity * MAX_LOAD) - self.used

    def make_room(self, wanted: int, room: int, at_least: int = 1) -> Any | None:
        """Rebuild when ``room`` is short of what ``wanted`` more keys need (CPU inserts).

        Rebuilding drops freed slots and grows geometrically (room for ``wanted``, or 4x
        the live keys), rather than letting inserts trickle in small chunks. Returns None,
        or the remap array old slot -> new slot of the rebuild.
        """
        if room >= max(at_least, min(wanted, max(MIN_CAPACITY, self.live_count))):
            return None
        target = self.live_count + max(at_least, min(wanted, max(4 * self.live_count,
                                                                 MIN_CAPACITY)))
        old_capacity, old = self.capacity, self.live_slots()
        new = self.rebuild(_pow2_at_least(int(target / MAX_LOAD) + 1))
        remap = self.xp.full(old_capacity, -1, dtype=np.int64)
        remap[old] = new
        return remap

    def created(self, n: int) -> None:
        """Account for ``n`` keys a kernel inserted directly."""
        self.live_count += n
        self.used += n

    def free(self, slots: Any) -> None:
        """Free ``slots`` (their columns keep stale values until the next rebuild)."""
        if slots.shape[0] == 0:
            return
        self.arrays[0][slots] = TOMBSTONE
        self.arrays[1][slots] = 0
        self.live_count -= int(slots.shape[0])

    def live_slots(self) -> Any:
        """Indices of the live slots, ascending."""
        return self.xp.nonzero(self.arrays[0] > TOMBSTONE)[0]

    def held_slots(self) -> Any:
        """Slots whose state must be kept (here: the live ones)."""
        return self.live_slots()

    def rebuild(self, capacity: int | None = None) -> Any:
        """Re-insert the live keys into fresh arrays; returns old slot -> new slot for them."""
        xp = self.xp
        capacity = _pow2_at_least(capacity or int(self.live_count / MAX_LOAD) + 1)
        old = self.live_slots()
        keys = xp.ascontiguousarray(self.t_keys[:, old])
        arrays = new_table(capacity, self.key_words, xp)
        new_slots, _ = upsert(arrays, self.arrays[0][old], keys,
                              xp.arange(old.shape[0], dtype=np.int64), self.backend)
        fresh = self._fresh_columns(capacity)
        for name, col in fresh.items():
            col[new_slots] = self.columns[name][old]
        self.columns = fresh
        self.arrays = arrays
        self.capacity = capacity
        self.used = self.live_count = int(old.shape[0])
        self.rebuilds += 1
        if self.on_rebuild is not None:
            self.on_rebuild(old, new_slots)
        return new_slots

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self, to_host: Any) -> dict[str, np.ndarray]:
        """The live keys and their columns as host arrays (no empty or freed slots)."""
        live = self.live_slots()
        out = {"keys": to_host(self.t_keys[:, live]), "hashes": to_host(self.arrays[0][live])}
        for name, col in self.columns.items():
            out[f"col.{name}"] = to_host(col[live]).astype(self._fill[name][0], copy=False)
        return out

    def restore(self, state: dict[str, np.ndarray], to_device: Any) -> Any:
        """Load a :meth:`snapshot` (taken on any backend); returns each snapshot row's slot."""
        n = int(state["hashes"].shape[0])
        capacity = _pow2_at_least(int(n / MAX_LOAD) + 1)
        self.arrays = new_table(capacity, self.key_words, self.xp)
        keys = self.xp.ascontiguousarray(to_device(state["keys"]))
        slots, _ = upsert(self.arrays, to_device(state["hashes"]), keys,
                          self.xp.arange(n, dtype=np.int64), self.backend)
        fresh = self._fresh_columns(capacity)
        for name, col in fresh.items():
            col[slots] = to_device(state[f"col.{name}"])
        self.columns = fresh
        self.capacity = capacity
        self.used = self.live_count = n
        return slots
