"""The state store of a tumbling or sliding window, and what passes between it and the
window operator.

:class:`~gpustream.operators.window.WindowAggOp` is the one tumbling/sliding window
operator: it reads a batch's event times, watermarks and aggregation inputs, counts and
forwards late events, builds the output rows and owns the snapshot format (DESIGN.md
sections 3 and 7). What differs between backends is where the state lives and how a
batch is folded into it, which is a :class:`WindowStore`:

- :class:`~gpustream.state.store_cpu_panes.CpuPaneStore`: the CPU's generated fused loop
  over pages of packed rows (one page per open window, shards on threads);
- :class:`~gpustream.state.store_gpu_panes.GpuPaneStore`: the GPU's fused pane kernel
  (one launch per batch, a page per open pane, windows combine their panes);
- :class:`~gpustream.state.store_table.TableStore`: the separate kernels over a
  (key, window) table, on every backend: allowed lateness (revisions), the aggregations
  the fused loops do not fold, and the state of a pane store that outgrew its memory
  bound (the operator moves it there through a snapshot, as a restart would).

A store folds a batch (:meth:`WindowStore.fold`: which events were late, how many
(event, window) memberships were dropped, the windows it had to fire mid-batch, and the
events it could not take), fires the windows a watermark reached (:meth:`WindowStore.fire`)
and snapshots/restores its state in the one table format every store reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpustream.backend import Backend
    from gpustream.batch import Batch
    from gpustream.operators.window import WindowSpec

__all__ = ["Events", "Fired", "Folded", "WindowStore", "ends_of", "make_store"]


@dataclass
class Events:
    """One batch's events, as the window operator hands them to its store."""

    batch: Batch
    ts: Any  #: event times
    ts_valid: Any | None  #: their validity (None: all valid)
    wm: Any  #: each event's watermark (DESIGN.md section 3)
    inputs: dict[int, Any]  #: each aggregation's input column (values, valid), or None
    seq: int  #: the sequence number of the batch's first event (first/last break ties)


@dataclass
class Fired:
    """Output rows of fired windows, before the operator builds them into a batch."""

    keys: Any  #: ``uint64[K + 1, m]``: the key columns' words, then their null bits
    starts: Any  #: window starts
    ends: Any  #: window ends
    values: list[tuple[Any, Any | None]]  #: per aggregation: values and validity
    revision: Any | None = None  #: firings before this one (allowed lateness)
    ordered: bool = False  #: already in output order (window end, start, keys)


@dataclass
class Folded:
    """What folding one batch gave."""

    late: Any  #: bool per event: too late for every window (to ``.late``)
    dropped: Any  #: (event, window) memberships dropped (an int, or a device scalar)
    fired: list[Fired] = field(default_factory=list)  #: windows fired during the batch
    n_late: int | None = None  #: ``late``'s count where the store read it already
    #: events of the batch the store could not take (it would pass its memory bound), in
    #: batch order, or None: the operator moves the state to a table store and folds them
    rest: Any | None = None


class WindowStore(ABC):
    """Keyed state of a tumbling or sliding window (see the module docstring).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("n", count(), None, pa.int64()),), pa.schema([]), False)
    >>> store = make_store(spec, select_backend("cpu"))
    >>> type(store).__name__, store.state_rows
    ('CpuPaneStore', 0)
    """

    @abstractmethod
    def fold(self, ev: Events) -> Folded:
        """Fold a batch's events into the state (windows that must fire before some of
        its events can be folded fire here, in :attr:`Folded.fired`)."""

    @abstractmethod
    def fire(self, watermark: int) -> list[Fired]:
        """Fire the windows ``watermark`` reached and free what no window needs."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The state in the table format: ``table.*`` (a row per (key, window) not fired),
        ``agg.*`` (states' extra arrays), ``pending_ends``, ``open_ends``, and any
        store-specific entries the other stores ignore."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> bool:
        """Restore a :meth:`snapshot` (of any store); False where this store cannot hold
        it (the operator then restores it into a table store)."""

    @abstractmethod
    def state_bytes(self) -> int:
        """Bytes of the arrays holding the state."""

    @property
    @abstractmethod
    def state_rows(self) -> int:
        """(key, window) or (key, pane) rows holding state (the open-windows gauge)."""

    def close(self) -> None:  # noqa: B027 (a store with nothing to give back keeps this)
        """Give back what the state holds once it moved to another store."""


def ends_of(state: dict[str, Any]) -> tuple[set[int], set[int]]:
    """The ends of the windows a snapshot holds rows of: those with rows not fired yet
    (revision 0) and all of them, read from the rows themselves (with the snapshot's
    ``pending_ends`` and ``open_ends``, which a store may have saved short).

    Examples
    --------
    >>> import numpy as np
    >>> ends_of({"table.col.__wend": np.array([10, 20, 20]),
    ...          "table.col.__rev": np.array([1, 0, 0], dtype=np.int32),
    ...          "pending_ends": np.array([30]), "open_ends": np.array([30])})
    ({20, 30}, {10, 20, 30})
    """
    import numpy as np

    wend = np.asarray(state["table.col.__wend"])
    rev = np.asarray(state["table.col.__rev"])
    pending = {int(e) for e in np.unique(wend[rev == 0])}
    opened = {int(e) for e in np.unique(wend)}
    pending.update(int(e) for e in state.get("pending_ends", ()))
    opened.update(int(e) for e in state.get("open_ends", ()))
    return pending, opened


def make_store(spec: WindowSpec, backend: Backend) -> WindowStore:
    """The store for a window: the CPU's fused loop or the GPU's pane kernel where the
    window has no allowed lateness and only aggregations they fold, else the table.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import count
    >>> from gpustream.backend import select_backend
    >>> from gpustream.expr import col
    >>> from gpustream.operators.window import AggSpec, WindowSpec
    >>> spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
    ...                   (AggSpec("u", col("v").count_distinct(), pa.int64(), pa.int64()),),
    ...                   pa.schema([]), False)
    >>> type(make_store(spec, select_backend("cpu"))).__name__
    'TableStore'
    """
    from gpustream.kernels.fused_window import FUSED_KINDS

    fused = (spec.lateness == 0 and not spec.revision
             and all(a.agg.kind in FUSED_KINDS for a in spec.aggs))
    if fused and backend.is_device:
        from gpustream.state.store_gpu_panes import GpuPaneStore

        return GpuPaneStore(spec, backend)
    if fused:
        from gpustream.state.store_cpu_panes import CpuPaneStore

        return CpuPaneStore(spec, backend)
    from gpustream.state.store_table import TableStore

    return TableStore(spec, backend)
