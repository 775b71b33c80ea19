"""``DenseTable``: records addressed by position, with the column interface of SlotTable.

Session windows allocate records by position (no hashing): a batch reserves a block of
ids, a kernel fills some of them, and when the block would overflow the table is
compacted to its live records. Aggregation states register their per-record columns
exactly as they do in a :class:`~gpustream.state.table.SlotTable`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.kernels.sessions import DEAD, LIVE
from gpustream.state.table import array_bytes

__all__ = ["DenseTable"]

MIN_CAPACITY = 1024


class DenseTable:
    """Per-record columns (``columns``, reset by :meth:`init`) and metadata (``meta``), in
    arrays of ``backend``'s ``xp``; aggregation states run their kernels on ``backend``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpustream.backend import select_backend
    >>> t = DenseTable(select_backend("cpu"), meta={"state": (np.int8, 0)})
    >>> t.add_column("n", np.int64, 0)
    >>> base = t.reserve(3)
    >>> t.meta["state"][base:base + 2] = 1
    >>> t.live_slots().tolist(), t.compact(0).tolist()[:3]
    ([0, 1], [0, 1, -1])
    """

    def __init__(self, backend: Backend, meta: dict[str, tuple[Any, Any]],
                 capacity: int = MIN_CAPACITY) -> None:
        self.backend = backend
        self.xp = xp = backend.xp
        self.capacity = capacity
        self.columns: dict[str, Any] = {}
        self._fill: dict[str, tuple[Any, Any]] = {}
        self._meta_fill = dict(meta)
        self.meta = {k: xp.full(capacity, fill, dtype=dt) for k, (dt, fill) in meta.items()}
        self.top = 0

    def add_column(self, name: str, dtype: Any, fill: Any) -> None:
        """Register a per-record column. A record never used before holds ``fill`` (ids are
        handed out once; compaction starts from fresh arrays)."""
        self.columns[name] = self.xp.full(self.capacity, fill, dtype=dtype)
        self._fill[name] = (dtype, fill)

    def state_bytes(self) -> int:
        """Bytes of the arrays this table holds (host or device), at its capacity.

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> t = DenseTable(select_backend("cpu"), meta={"state": (np.int8, 0)})
        >>> t.add_column("n", np.int64, 0)
        >>> t.state_bytes() == t.capacity * (1 + 8)
        True
        """
        return array_bytes(*self.columns.values(), *self.meta.values())

    def live_slots(self) -> Any:
        """Ids of the live records, ascending."""
        return self.xp.nonzero(self.meta["state"] == LIVE)[0]

    def held_slots(self) -> Any:
        """Records whose state must be kept: live ones, and ones merged away whose state
        is still to be folded into their survivor."""
        state = self.meta["state"]
        return self.xp.nonzero((state == LIVE) | (state == DEAD))[0]

    @property
    def live_count(self) -> int:
        """Number of live records."""
        return int((self.meta["state"] == LIVE).sum())

    def reserve(self, n: int) -> int:
        """A block of ``n`` fresh ids starting at the returned base (compacting if needed)."""
        if self.top + n > self.capacity:
            self.compact(n)
        base = self.top
        self.top += n
        return base

    def compact(self, extra: int) -> Any:
        """Move live records to ids 0..L-1 (room for ``extra`` more); returns old id -> new id."""
        xp = self.xp
        live = self.live_slots()
        n_live = int(live.shape[0])
        capacity = MIN_CAPACITY
        while capacity < 2 * (n_live + extra):
            capacity *= 2
        mapping = xp.full(self.capacity, -1, dtype=np.int64)
        mapping[live] = xp.arange(n_live, dtype=np.int64)
        for store, fills in ((self.columns, self._fill), (self.meta, self._meta_fill)):
            for name, (dtype, fill) in fills.items():
                fresh = xp.full(capacity, fill, dtype=dtype)
                fresh[:n_live] = store[name][live]
                store[name] = fresh
        self.capacity = capacity
        self.top = n_live
        return mapping
