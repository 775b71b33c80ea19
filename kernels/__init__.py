"""numba kernels (``gpustream.kernels``): CUDA kernels and CPU twins side by side.

Kernels are pure functions over arrays; they know nothing about plans, streams or I/O.
Scalar helpers are written once with ``numba.extending.register_jitable`` so the same
code runs in ``numba.njit`` CPU kernels, ``numba.cuda.jit`` kernels and the simulator.
Importing this package compiles nothing and touches no GPU. Compiled kernels are cached
on disk by numba, once per machine (:mod:`gpustream.kernels.cache`).
"""

from gpustream.kernels.registry import KERNELS, CudaKernel, cuda_kernel, launch_config

__all__ = ["KERNELS", "CudaKernel", "cuda_kernel", "launch_config"]
