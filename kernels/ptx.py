"""Compile every registered CUDA kernel to PTX, with or without a GPU.

``python -m gpustream.kernels.ptx 80 90`` prints one line per kernel, signature and
compute capability. Without a GPU, numba still needs a "current device" to compile the
device functions a kernel calls; this module stands in the target compute capability
for it, and only while compiling to PTX.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
from collections.abc import Iterator

from gpustream.kernels.registry import KERNELS, CudaKernel

__all__ = ["compile_kernel", "load_all_kernels"]


def load_all_kernels() -> list[CudaKernel]:
    """Import every module of ``gpustream.kernels`` so that all kernels register."""
    import gpustream.kernels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "ptx":
            importlib.import_module(f"gpustream.kernels.{info.name}")
    return list(KERNELS)


@contextlib.contextmanager
def _target_device(cc: tuple[int, int]) -> Iterator[None]:
    import numba.cuda.dispatcher as dispatcher

    from gpustream.probe import probe_gpu

    if probe_gpu().ok:
        yield
        return

    class _Target:
        compute_capability = cc

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Target()
    try:
        yield
    finally:
        dispatcher.get_current_device = original


def compile_kernel(kernel: CudaKernel, signature: str, cc: tuple[int, int]) -> str:
    """PTX text of ``kernel`` for ``signature`` on compute capability ``cc``."""
    from numba import cuda
    from numba.core import sigutils

    args, _ = sigutils.normalize_signature(signature)
    with _target_device(cc):
        ptx, _ = cuda.compile_ptx(kernel.bind(), args, cc=cc)
    return str(ptx)


def main(argv: list[str]) -> int:
    ccs = [(int(a[:-1]), int(a[-1])) for a in (argv or ["80", "90"])]
    for kernel in load_all_kernels():
        for sig in kernel.signatures:
            for cc in ccs:
                ptx = compile_kernel(kernel, sig, cc)
                print(f"sm_{cc[0]}{cc[1]}  {kernel.name}  {sig}  {len(ptx)} bytes of PTX")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
