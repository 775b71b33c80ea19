"""Lazily compiled CUDA kernels, registered so CI can compile every one to PTX.

``@cuda_kernel(signature, ...)`` wraps a plain Python kernel function. Nothing is
compiled, and numba's CUDA target is not even imported, until the kernel is first
launched (``kernel[blocks, threads](*args)``) or compiled to PTX by
:mod:`gpustream.kernels.ptx`. The signatures are the argument types the engine launches
it with; CI compiles each of them for sm_80 and sm_90. Compiled kernels are cached on
disk, once per machine and compute capability (:mod:`~gpustream.kernels.cache`).

A :class:`KernelPair` registers a CUDA kernel with its CPU twin (an ``njit`` function
taking the same arguments) as one kernel, which
:meth:`Backend.launch <gpustream.backend.Backend.launch>` runs on whichever backend a
pipeline runs on: kernel wrappers and operators hold the backend, never an
``is this the device`` flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["KERNELS", "PAIRS", "CudaKernel", "KernelPair", "cuda_kernel", "launch_config"]

THREADS_PER_BLOCK = 256


class CudaKernel:
    """A CUDA kernel compiled on first launch.

    Examples
    --------
    >>> def _fill(out, value):
    ...     pass
    >>> k = CudaKernel(_fill, ("void(int64[:], int64)",), register=False)
    >>> k.name, k.signatures
    ('_fill', ('void(int64[:], int64)',))
    """

    def __init__(self, py_func: Callable[..., None], signatures: tuple[str, ...],
                 register: bool = True) -> None:
        self.py_func = py_func
        self.name = f"{py_func.__module__}.{py_func.__qualname__}" if register else py_func.__name__
        self.signatures = signatures
        self._dispatcher: Any = None
        if register:
            KERNELS.append(self)

    def bind(self) -> Callable[..., None]:
        """Bind ``cuda`` (numba's CUDA module, or the simulator) in the kernel's module.

        Kernel modules declare ``cuda = None`` so that importing them never loads numba's
        CUDA target; it is bound here, just before the first compile or launch.
        """
        from numba import cuda

        self.py_func.__globals__["cuda"] = cuda
        return self.py_func

    @property
    def dispatcher(self) -> Any:
        """The ``numba.cuda.jit`` dispatcher (created on first use), cached on disk where
        :func:`~gpustream.kernels.cache.cuda_cache` allows."""
        if self._dispatcher is None:
            from numba import cuda

            from gpustream.kernels.cache import cuda_cache

            self._dispatcher = cuda.jit(self.bind(), cache=cuda_cache())
        return self._dispatcher

    def __getitem__(self, config: tuple[int, int]) -> Any:
        return self.dispatcher[config]

    def __repr__(self) -> str:
        return f"CudaKernel({self.name})"


#: Every CUDA kernel of gpustream, in import order.
KERNELS: list[CudaKernel] = []


def cuda_kernel(*signatures: str) -> Callable[[Callable[..., None]], CudaKernel]:
    """Register a Python function as a lazily compiled CUDA kernel.

    Parameters
    ----------
    signatures
        numba signatures (``"void(uint64[:, ::1], uint64[::1])"``) it is launched with.
    """
    if not signatures:
        raise ValueError("cuda_kernel needs at least one signature so CI can compile it to PTX")

    def wrap(fn: Callable[..., None]) -> CudaKernel:
        return CudaKernel(fn, signatures)

    return wrap


def launch_config(n: int, threads: int = THREADS_PER_BLOCK) -> tuple[int, int]:
    """(blocks, threads) covering ``n`` items, at least one block.

    Examples
    --------
    >>> launch_config(1000), launch_config(0)
    ((4, 256), (1, 256))
    """
    return max(1, -(-n // threads)), threads


class KernelPair:
    """One kernel on every backend: a CPU twin and a CUDA kernel with the same arguments.

    :meth:`Backend.launch <gpustream.backend.Backend.launch>` calls ``cpu(*args)`` on the
    ``cpu`` backend and launches ``cuda`` over ``n`` items on ``cuda`` and ``cudasim``.

    Parameters
    ----------
    cpu
        The CPU twin (``numba.njit``), or None for a CUDA kernel whose CPU side is a
        different algorithm the wrapper calls itself (a one-pass CPU scan against a
        two-launch GPU scan): launching it on the CPU is then an error.
    cuda
        The CUDA kernel (:func:`cuda_kernel`), one thread per ``items`` items.
    items
        Items each CUDA thread covers: the grid is ``launch_config(ceil(n / items),
        threads)``.
    threads
        Threads per block.
    register
        Add it to :data:`PAIRS` (False for examples).

    Examples
    --------
    >>> def _twice_cpu(out, x):
    ...     out[:] = 2 * x
    >>> def _twice_cuda(out, x):
    ...     pass
    >>> k = KernelPair(_twice_cpu, CudaKernel(_twice_cuda, ("void(int64[::1], int64[::1])",),
    ...                                       register=False), items=4, register=False)
    >>> k.name, k.config(1000)
    ('_twice_cuda', (1, 256))
    """

    __slots__ = ("cpu", "cuda", "items", "name", "threads")

    def __init__(self, cpu: Callable[..., Any] | None, cuda: CudaKernel, *, items: int = 1,
                 threads: int = THREADS_PER_BLOCK, register: bool = True) -> None:
        self.cpu = cpu
        self.cuda = cuda
        self.items = items
        self.threads = threads
        self.name = cuda.name
        if register:
            PAIRS.append(self)

    def config(self, n: int) -> tuple[int, int]:
        """(blocks, threads) of the CUDA launch over ``n`` items."""
        return launch_config(-(-n // self.items), self.threads)

    def __repr__(self) -> str:
        return f"KernelPair({self.name})"


#: Every kernel pair of gpustream, in import order (their CUDA sides are in KERNELS).
PAIRS: list[KernelPair] = []
