"""One device memory pool on the ``cuda`` backend, shared by cupy and numba.

cupy allocates from its memory pool; numba, left alone, calls ``cuMemAlloc``/``cuMemFree``
itself (and synchronises the device when its deferred frees run). :func:`use_one_pool`
points numba's External Memory Management (EMM) interface at the pool cupy uses, so every
device allocation of a run (operators' state, kernels' temporaries, numba arrays, staged
batches) comes from one pool and returns to it without a ``cudaFree``:

- with RAPIDS' ``rmm`` importable: RMM's own plugins, ``rmm.allocators.numba.RMMNumbaManager``
  for numba and ``rmm.allocators.cupy.rmm_cupy_allocator`` for cupy, over RMM's current
  device resource; where that is still RMM's default (plain ``cudaMalloc``, no pool), a
  ``PoolMemoryResource`` is put over it;
- otherwise cupy's default memory pool, through :func:`cupy_numba_manager`'s plugin.

``GPUSTREAM_DEVICE_POOL`` (``auto|cupy|rmm|off``) overrides the choice; ``off`` leaves
numba's and cupy's allocators as they are. A ``NUMBA_CUDA_MEMORY_MANAGER`` the user set
is respected: numba keeps that plugin.

numba binds a memory manager to a CUDA context when it creates its context object, once
per process (``numba.cuda.set_memory_manager`` changes the class used for contexts created
*later*; numba-cuda's ``Context.__init__`` instantiates it). :func:`use_one_pool` therefore
runs when the ``cuda`` backend is selected, before gpustream launches anything. Where numba
already made its context in this process (numba CUDA used before the first pipeline was
planned), numba's allocations stay with numba's own manager for the process's life: the
returned :class:`DevicePool` says so (``numba_in_pool`` False) and it is logged. Replacing
the manager would need ``numba.cuda.close()``, which invalidates every array and compiled
kernel of the context; gpustream does not do that. Call :func:`use_one_pool` first thing
to avoid it.

The EMM interface (version 1) is not stream-ordered: a numba allocation comes from the pool's
arena of the calling thread's current cupy stream and returns there when numba frees it;
the pool may hand it out again on that stream without a synchronisation, which is safe
because numba's launches (stream 0) and cupy's default stream are the same legacy default
stream. Memory used on another stream than it was allocated on must not return to the pool
before that stream is done with it (see :mod:`gpustream.ingest.staging`).

Nothing here runs at import: cupy, numba and rmm load only when :func:`use_one_pool` runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gpustream.errors import BackendError

__all__ = ["POOLS", "POOL_ENV", "DevicePool", "cupy_numba_manager", "current_pool",
           "pool_usage", "requested_pool", "use_one_pool"]

POOL_ENV = "GPUSTREAM_DEVICE_POOL"
POOLS = ("auto", "cupy", "rmm", "off")
PoolKind = Literal["cupy", "rmm", "off"]

log = logging.getLogger("gpustream")
_lock = threading.Lock()
_chosen: DevicePool | None = None


@dataclass(frozen=True)
class DevicePool:
    """The device pool a process's ``cuda`` runs allocate from.

    Parameters
    ----------
    kind
        ``"cupy"`` (cupy's default memory pool), ``"rmm"`` (RMM's current device resource)
        or ``"off"`` (numba and cupy keep their own allocators).
    numba_in_pool
        True when numba's device allocations come from that pool.
    note
        One line: what was done, and why numba stays outside the pool where it does.

    Examples
    --------
    >>> DevicePool("cupy", True, "numba allocates from cupy's pool").describe()
    "device pool: cupy (numba allocates from cupy's pool)"
    """

    kind: PoolKind
    numba_in_pool: bool
    note: str

    def describe(self) -> str:
        """One line for logs."""
        return f"device pool: {self.kind} ({self.note})"


def requested_pool() -> str:
    """The pool asked for through ``GPUSTREAM_DEVICE_POOL`` (``"auto"`` when unset).

    Examples
    --------
    >>> import os
    >>> os.environ.pop("GPUSTREAM_DEVICE_POOL", None) and None
    >>> requested_pool()
    'auto'
    """
    value = os.environ.get(POOL_ENV, "").strip().lower() or "auto"
    if value not in POOLS:
        raise BackendError(
            f"{POOL_ENV}={value!r} is not a device pool; set it to one of {', '.join(POOLS)} "
            "or unset it")
    return value


def current_pool() -> DevicePool | None:
    """The pool :func:`use_one_pool` chose in this process, or None before it ran.

    Examples
    --------
    >>> current_pool() is None or isinstance(current_pool(), DevicePool)
    True
    """
    return _chosen


def use_one_pool() -> DevicePool:
    """Point numba (EMM plugin) and cupy at one device pool; idempotent, the first call decides.

    Called by :func:`gpustream.backend.select_backend` when it selects ``cuda``, before any
    kernel launch. See the module docstring for the choice and for what happens when
    numba's CUDA context already exists.

    Returns
    -------
    DevicePool
        What was chosen; ``numba_in_pool`` is False where numba's context predates it.

    Raises
    ------
    BackendError
        ``GPUSTREAM_DEVICE_POOL`` is not one of ``auto|cupy|rmm|off``, or asks for ``rmm``
        where it cannot be imported.

    Examples
    --------
    On a GPU machine, first thing in a process that also uses numba directly:

    >>> use_one_pool().describe()  # doctest: +SKIP
    "device pool: cupy (numba allocates from cupy's memory pool; rmm is not installed)"
    """
    global _chosen
    with _lock:
        if _chosen is None:
            _chosen = _choose(requested_pool())
            log.info("%s", _chosen.describe())
        return _chosen


def _choose(requested: str) -> DevicePool:
    if requested == "off":
        return DevicePool("off", False, f"{POOL_ENV}=off: numba and cupy keep their allocators")
    rmm_modules = None
    why_not_rmm = "rmm is not installed"
    if requested in ("auto", "rmm"):
        try:
            rmm_modules = (importlib.import_module("rmm.mr"),
                           importlib.import_module("rmm.allocators.numba"),
                           importlib.import_module("rmm.allocators.cupy"))
        except ImportError as exc:
            if requested == "rmm":
                raise BackendError(
                    f"{POOL_ENV}=rmm but rmm cannot be imported ({exc}); install RAPIDS' "
                    f"rmm for this CUDA version, or set {POOL_ENV}=cupy") from exc
            if getattr(exc, "name", None) not in ("rmm", None):
                why_not_rmm = f"rmm is installed but does not import ({exc})"
    import cupy

    if rmm_modules is not None:
        mr, rmm_numba, rmm_cupy = rmm_modules
        if type(mr.get_current_device_resource()) is mr.CudaMemoryResource:  # no pool yet
            mr.set_current_device_resource(mr.PoolMemoryResource(mr.get_current_device_resource()))
        cupy.cuda.set_allocator(rmm_cupy.rmm_cupy_allocator)
        inside, note = _point_numba_at(rmm_numba.RMMNumbaManager)
        return DevicePool("rmm", inside, note or "cupy and numba allocate from RMM's resource")
    inside, note = _point_numba_at(_cupy_default_manager())
    return DevicePool("cupy", inside, note or (
        f"numba allocates from cupy's memory pool{'' if requested == 'cupy' else '; ' + why_not_rmm}"))


def _point_numba_at(manager: type) -> tuple[bool, str | None]:
    """Set numba's EMM plugin; (numba in the pool, why not or None)."""
    from numba import cuda
    from numba.cuda.cudadrv import driver

    configured = getattr(driver.config, "CUDA_MEMORY_MANAGER", "default")
    if configured != "default":
        return False, (f"NUMBA_CUDA_MEMORY_MANAGER={configured} was set: numba keeps that "
                       "plugin")
    cuda.set_memory_manager(manager)
    stale = _contexts_outside(driver.driver.list_devices(), manager)  # those numba opened
    if stale:
        why = (f"numba's CUDA context already existed on {', '.join(stale)} (numba CUDA was "
               "used before gpustream selected the cuda backend), so numba's allocations stay "
               "with its own manager in this process; call gpustream.devicepool.use_one_pool() "
               "before any numba.cuda call")
        log.warning("%s", why)
        return False, why
    return True, None


def _contexts_outside(devices: Any, manager: type) -> list[str]:
    """The devices whose numba context exists with another memory manager than ``manager``.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> class Ours: ...
    >>> devices = [NS(id=0, primary_context=None),
    ...         NS(id=1, primary_context=NS(memory_manager=Ours())),
    ...         NS(id=2, primary_context=NS(memory_manager=object()))]
    >>> _contexts_outside(devices, Ours)
    ['GPU 2']
    """
    return [f"GPU {dev.id}" for dev in devices
            if dev.primary_context is not None
            and not isinstance(dev.primary_context.memory_manager, manager)]


def pool_usage() -> tuple[int, int] | None:
    """(bytes in use, bytes held) of the device pool, or None where it cannot tell.

    cupy's pool: ``used_bytes()`` and ``total_bytes()``. RMM: the current bytes of
    ``rmm.statistics`` (None unless statistics were enabled) and the pool's size where the
    resource is a ``PoolMemoryResource`` (else the bytes in use). Only meaningful on the
    ``cuda`` backend: it imports cupy.

    Examples
    --------
    >>> pool_usage()  # doctest: +SKIP
    (4194304, 8388608)
    """
    if _chosen is not None and _chosen.kind == "rmm":
        stats = importlib.import_module("rmm.statistics").get_statistics()
        if stats is None:
            return None
        mr = importlib.import_module("rmm.mr").get_current_device_resource()
        while not hasattr(mr, "pool_size") and hasattr(mr, "get_upstream"):
            mr = mr.get_upstream()
        used = int(stats.current_bytes)
        return used, int(mr.pool_size()) if hasattr(mr, "pool_size") else used
    import cupy

    pool = cupy.get_default_memory_pool()
    return int(pool.used_bytes()), int(pool.total_bytes())


@functools.cache
def _cupy_default_manager() -> type:
    return cupy_numba_manager()


def cupy_numba_manager(pool: Any = None,
                       mem_info: Callable[[], tuple[int, int]] | None = None) -> type:
    """A numba EMM plugin class whose device allocations come from a cupy memory pool.

    Parameters
    ----------
    pool
        An object with cupy ``MemoryPool``'s ``malloc(size)`` (returning a block with
        ``.ptr``, given back to the pool when dropped) and ``free_bytes()``; cupy's default
        pool when None (resolved when numba first uses the plugin). Tests pass a fake.
    mem_info
        ``() -> (free, total)`` device bytes; ``cupy.cuda.runtime.memGetInfo`` when None.

    Returns
    -------
    type
        A subclass of numba's ``HostOnlyCUDAMemoryManager`` (pinned and mapped host memory
        as numba does it) and ``GetIpcHandleMixin`` (IPC handles of pool sub-allocations
        carry their offset), for ``numba.cuda.set_memory_manager``.

    Notes
    -----
    ``memalloc`` keeps the pool's block until numba's finalizer for the returned
    ``MemoryPointer`` runs, then drops it: the block returns to the pool (cupy's pool never
    frees it to the driver unless asked). ``get_memory_info`` reports the device's free
    bytes plus the pool's cached free bytes (both available to numba's next allocation).
    ``defer_cleanup`` defers host-memory cleanup only: device blocks return to the pool at
    once, which is safe on the stream they were allocated on (module docstring).
    ``reset`` returns every outstanding block to the pool.

    Examples
    --------
    >>> cls = cupy_numba_manager(pool=object(), mem_info=lambda: (0, 0))
    >>> cls(context=None).interface_version    # what numba.cuda.set_memory_manager checks
    1
    """
    from numba import cuda

    class CupyPoolNumbaManager(cuda.GetIpcHandleMixin, cuda.HostOnlyCUDAMemoryManager):
        """numba's device allocations from a cupy memory pool (see cupy_numba_manager)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._blocks: dict[int, Any] = {}
            self._keys = itertools.count()
            self._pool = pool

        def _the_pool(self) -> Any:
            if self._pool is None:
                import cupy

                self._pool = cupy.get_default_memory_pool()
            return self._pool

        def initialize(self) -> None:
            self._the_pool()

        def memalloc(self, size: int) -> Any:
            # never a null pointer: numba does not ask for 0 bytes, but cupy would answer 0
            block = self._the_pool().malloc(max(int(size), 1))
            key = next(self._keys)
            self._blocks[key] = block
            return cuda.MemoryPointer(weakref.proxy(self.context), ctypes.c_void_p(block.ptr),
                                      size, finalizer=functools.partial(_give_back,
                                                                        self._blocks, key))

        def get_memory_info(self) -> Any:
            if mem_info is not None:
                free, total = mem_info()
            else:
                import cupy

                free, total = cupy.cuda.runtime.memGetInfo()
            return cuda.MemoryInfo(free=int(free) + int(self._the_pool().free_bytes()),
                                   total=int(total))

        def reset(self) -> None:
            super().reset()
            self._blocks.clear()

        @property
        def interface_version(self) -> int:
            return 1

    return CupyPoolNumbaManager


def _give_back(blocks: dict[int, Any], key: int) -> None:
    """numba's finalizer of one allocation: drop the block, so it returns to the pool
    (already gone after a ``reset``)."""
    blocks.pop(key, None)
