"""Host-to-device staging: pinned buffers, copies on their own CUDA stream.

The runtime stages each batch on its source's thread, while the main thread computes on
the batch before: the host arrays are copied into page-locked (pinned) buffers, and from
there to fresh device arrays by asynchronous copies on a copy stream that does not
synchronise with the compute stream, so batch i+1 crosses PCIe while batch i's kernels
run. ``depth`` sets of pinned buffers are used in turn; a set is refilled only after the
copies out of it have completed (its event). :meth:`Stager.land` waits for a batch's
copies and hands its arrays over as the backend's arrays (cupy on ``cuda``).

The same code runs under numba's CUDA simulator (``cudasim``), which has pinned arrays,
streams and events; there the landed arrays are numpy again. The ``cpu`` backend skips
staging.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpustream.backend import Backend
from gpustream.batch import Batch

__all__ = ["Staged", "Stager"]


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


class Stager:
    """Stages host batches to ``backend``'s device (see the module docstring).

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
        self._cuda: Any = None
        self._stream: Any = None
        self._keep: Any = None

    def _init(self) -> None:
        from numba import cuda

        self._cuda = cuda
        if self.backend.name == "cuda":
            import cupy

            self._keep = cupy.cuda.Stream(non_blocking=True)  # no sync with compute
            self._stream = cuda.external_stream(self._keep.ptr)
        else:
            self._stream = cuda.stream()

    def stage(self, batch: Batch) -> Staged:
        """Start copying ``batch``'s host arrays to the device; returns at once."""
        if not self.active or batch.on_device:
            return Staged(batch, [], None)
        if self._cuda is None:
            self._init()
        cuda = self._cuda
        slot = self.slots[self.staged % len(self.slots)]
        self.staged += 1
        if slot.event is not None:
            slot.event.synchronize()  # the copies out of this slot's buffers are done
        arrays = _flatten(batch)
        out = []
        for i, host in enumerate(arrays):
            host = np.ascontiguousarray(host)
            if host.nbytes == 0:
                out.append(cuda.device_array(host.shape, host.dtype))
                continue
            if i == len(slot.buffers):
                slot.buffers.append(None)
            buf = slot.buffers[i]
            if buf is None or buf.nbytes < host.nbytes:
                buf = slot.buffers[i] = cuda.pinned_array(max(host.nbytes, 1 << 16), np.uint8)
            pinned = buf[: host.nbytes].view(host.dtype).reshape(host.shape)
            pinned[...] = host
            dev = cuda.device_array(host.shape, host.dtype, stream=self._stream)
            dev.copy_to_device(pinned, stream=self._stream)
            out.append(dev)
            self.bytes += host.nbytes
        event = cuda.event()
        event.record(self._stream)
        slot.event = event
        return Staged(batch, out, event)

    def land(self, staged: Staged) -> Batch:
        """Wait for a staged batch's copies; the batch with the backend's device arrays."""
        if staged.event is None:
            return staged.batch
        staged.event.synchronize()
        if self.backend.name == "cuda":
            import cupy

            arrays = [cupy.asarray(a) for a in staged.arrays]  # zero-copy; keeps `a` alive
        else:
            arrays = [a.copy_to_host() for a in staged.arrays]
        return _unflatten(staged.batch, arrays)


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
