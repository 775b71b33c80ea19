"""Host-to-device staging: pinned buffers, copies on their own CUDA stream.

The runtime stages each batch on its source's thread, while the main thread computes on
the batch before: the host arrays are copied into page-locked (pinned) buffers, and from
there to device buffers by asynchronous copies on a copy stream that does not synchronise
with the compute stream, so batch i+1 crosses PCIe while batch i's kernels run. ``depth``
sets of pinned buffers are used in turn, kept for the stager's life and grown (to a power
of two) only when a batch's column is larger than its buffer: in steady state staging
allocates no pinned memory. A set is refilled only after the copies out of it have
completed (its event). :meth:`Stager.land` waits for a batch's copies and hands its arrays
over as the backend's arrays (cupy on ``cuda``).

On ``cuda`` the device buffers come from the device pool (:mod:`gpustream.devicepool`:
cupy's, or RMM's), allocated in the copy stream's arena, so staging never calls
``cudaMalloc`` once the pool holds enough. A landed array is used on the compute stream,
not the copy stream, so its block must not go back to the copy stream's arena (where the
next batch's copy could overwrite it) while kernels still read it: when the last
reference to a landed array goes, an event is recorded on the stream that computed on it,
and the block returns to the pool only once that event has completed (checked, never
waited for, at the next :meth:`Stager.stage`).

The same code runs under numba's CUDA simulator (``cudasim``), which has pinned arrays,
streams and events; there the device buffers are numpy arrays. The ``cpu`` backend skips
staging.
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch

__all__ = ["Staged", "Stager"]

#: smallest pinned buffer (bytes); larger ones are powers of two
MIN_PINNED = 1 << 16


@dataclass
class _Slot:
    buffers: list[Any] = field(default_factory=list)
    event: Any = None


@dataclass
class Staged:
    """A batch whose arrays are on their way to the device."""

    batch: Batch
    arrays: list[Any]
    event: Any
    #: the pool blocks' loans of ``arrays`` (``cuda``), told the compute stream on landing
    loans: list[_Loan] = field(default_factory=list)


@dataclass
class _Loan:
    """A pool block lent to one staged column; ``stream`` computes on it once landed."""

    block: Any
    stream: Any = None


class _Owner:
    """What a landed column's memory names as its owner: its death retires the loan."""

    __slots__ = ("__weakref__",)


class Stager:
    """Stages host batches to ``backend``'s device (see the module docstring).

    ``pinned_allocations`` counts the pinned buffers allocated so far (steady state: no
    more); ``pending_blocks`` is how many device blocks wait for their compute stream.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> stager = Stager(select_backend("cpu"))
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2]}))
    >>> stager.land(stager.stage(b)) is b      # the cpu backend computes on host arrays
    True
    """

    def __init__(self, backend: Backend, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"Stager: depth must be >= 1, got {depth}")
        self.backend = backend
        self.active = backend.is_device
        self.slots = [_Slot() for _ in range(depth)]
        self.staged = 0
        self.bytes = 0
        self.pinned_allocations = 0
        self._cuda: Any = None
        self._cupy: Any = None
        self._stream: Any = None
        #: (block, event or None) retired by landed arrays' owners, oldest first; appended
        #: on the thread that drops an array, drained on the source thread
        self._retired: deque[tuple[Any, Any]] = deque()
        self._spare_events: deque[Any] = deque()

    @property
    def pending_blocks(self) -> int:
        """Device blocks retired but not yet back in the pool (their stream is busy)."""
        return len(self._retired)

    def _init(self) -> None:
        from numba import cuda

        self._cuda = cuda
        if self.backend.name == "cuda":
            import cupy

            self._cupy = cupy
            self._stream = cupy.cuda.Stream(non_blocking=True)  # no sync with compute
        else:
            self._stream = cuda.stream()

    def _event(self) -> Any:
        if self._cupy is not None:
            return self._cupy.cuda.Event(disable_timing=True)
        return self._cuda.event()

    def _pinned(self, slot: _Slot, i: int, nbytes: int) -> np.ndarray:
        """Slot ``slot``'s pinned buffer ``i``, grown when ``nbytes`` do not fit."""
        if i == len(slot.buffers):
            slot.buffers.append(None)
        buf = slot.buffers[i]
        if buf is None or buf.nbytes < nbytes:
            size = max(MIN_PINNED, 1 << (nbytes - 1).bit_length())
            buf = slot.buffers[i] = self._cuda.pinned_array(size, np.uint8)
            self.pinned_allocations += 1
        return buf

    def _give_back(self) -> None:
        """Return the retired blocks whose compute stream has passed them to the pool."""
        retired = self._retired
        while retired and (retired[0][1] is None or retired[0][1].done):
            _, event = retired.popleft()  # the block goes back to the pool here
            if event is not None:
                self._spare_events.append(event)

    def stage(self, batch: Batch) -> Staged:
        """Start copying ``batch``'s host arrays to the device; returns at once."""
        if not self.active or batch.on_device:
            return Staged(batch, [], None)
        if self._cuda is None:
            self._init()
        self._give_back()
        slot = self.slots[self.staged % len(self.slots)]
        self.staged += 1
        if slot.event is not None:
            slot.event.synchronize()  # the copies out of this slot's buffers are done
        staged = Staged(batch, [], None)
        for i, host in enumerate(_flatten(batch)):
            host = np.ascontiguousarray(host)
            if host.nbytes == 0:
                staged.arrays.append(self.backend.xp.empty(host.shape, host.dtype))
                continue
            pinned = self._pinned(slot, i, host.nbytes)[: host.nbytes]
            pinned = pinned.view(host.dtype).reshape(host.shape)
            pinned[...] = host
            staged.arrays.append(self._copy(pinned, staged))
            self.bytes += host.nbytes
        staged.event = self._event()
        staged.event.record(self._stream)
        slot.event = staged.event
        return staged

    def _copy(self, pinned: np.ndarray, staged: Staged) -> Any:
        """A device array from the pool, filled from ``pinned`` on the copy stream."""
        cupy = self._cupy
        if cupy is None:  # cudasim: the "device" is the host
            return pinned.copy()
        with self._stream:  # the block belongs to the copy stream's arena of the pool
            block = cupy.cuda.alloc(pinned.nbytes)
        block.copy_from_host_async(pinned.ctypes.data, pinned.nbytes, self._stream)
        loan = _Loan(block)
        owner = _Owner()
        done = weakref.finalize(owner, _retire, loan, self._retired, self._spare_events, cupy)
        done.atexit = False  # at exit the pool goes too: no event to record
        lent = cupy.cuda.MemoryPointer(
            cupy.cuda.UnownedMemory(block.ptr, pinned.nbytes, owner, block.device_id), 0)
        staged.loans.append(loan)
        return cupy.ndarray(pinned.shape, pinned.dtype, memptr=lent)

    def land(self, staged: Staged) -> Batch:
        """Wait for a staged batch's copies; the batch with the backend's device arrays."""
        if staged.event is None:
            return staged.batch
        staged.event.synchronize()
        if staged.loans:
            stream = self._cupy.cuda.get_current_stream()  # the stream that computes on it
            for loan in staged.loans:
                loan.stream = stream
        return _unflatten(staged.batch, staged.arrays)


def _retire(loan: _Loan, retired: deque[tuple[Any, Any]], spare: deque[Any], cupy: Any) -> None:
    """A landed column's last reference went: mark where its compute stream is, so that
    its block goes back to the pool only after the kernels that read it."""
    event = None
    if loan.stream is not None:  # never landed: only the copy stream used it
        event = spare.pop() if spare else cupy.cuda.Event(disable_timing=True)
        event.record(loan.stream)
    retired.append((loan.block, event))
    loan.block = None


def _flatten(batch: Batch) -> list[np.ndarray]:
    arrays = [batch[n] for n in batch.column_names]
    arrays += [v for n in batch.column_names if (v := batch.validity(n)) is not None]
    if batch.watermarks is not None:
        arrays.append(batch.watermarks)
    return arrays


def _unflatten(batch: Batch, arrays: list[Any]) -> Batch:
    names = batch.column_names
    columns = dict(zip(names, arrays[: len(names)], strict=True))
    rest = iter(arrays[len(names):])
    validity = {n: next(rest) if batch.validity(n) is not None else None for n in names}
    watermarks = next(rest) if batch.watermarks is not None else None
    return Batch(columns, batch.schema, validity, batch.dictionaries, watermarks)
