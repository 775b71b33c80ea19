"""A fast, silent probe for a working NVIDIA GPU through the CUDA driver API.

It loads ``libcuda.so.1`` with ctypes and asks ``cuInit``/``cuDeviceGetCount``; it
imports neither numba.cuda nor cupy, prints nothing, and caches its answer. It runs only
when asked (planning with ``engine="auto"|"cuda"``, ``gpustream info``), never at import.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

__all__ = ["GpuInfo", "ProbeResult", "probe_gpu"]

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


@dataclass(frozen=True)
class GpuInfo:
    """What the driver says about one GPU.

    Examples
    --------
    >>> g = GpuInfo(0, "NVIDIA H100 80GB HBM3", 85_520_809_984, (9, 0), "12.8")
    >>> g.describe()
    'NVIDIA H100 80GB HBM3 (sm_90, 79.6 GiB, driver CUDA 12.8)'
    """

    index: int
    name: str
    total_memory: int
    compute_capability: tuple[int, int]
    driver_version: str

    def describe(self) -> str:
        """One line: name, compute capability, memory and driver."""
        major, minor = self.compute_capability
        gib = self.total_memory / 2**30
        return f"{self.name} (sm_{major}{minor}, {gib:.1f} GiB, driver CUDA {self.driver_version})"


@dataclass(frozen=True)
class ProbeResult:
    """The probe's answer: the GPUs found, or why there are none.

    Examples
    --------
    >>> ProbeResult(devices=(), reason="libcuda.so.1 not found").ok
    False
    """

    devices: tuple[GpuInfo, ...]
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when at least one GPU answered the driver."""
        return bool(self.devices)


def _load_libcuda(names: tuple[str, ...]) -> ctypes.CDLL | None:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _error_text(lib: ctypes.CDLL, rc: int) -> str:
    msg = ctypes.c_char_p()
    try:
        if lib.cuGetErrorString(rc, ctypes.byref(msg)) == 0 and msg.value:
            return f"{msg.value.decode(errors='replace')} (CUresult {rc})"
    except AttributeError:  # very old drivers
        pass
    return f"CUresult {rc}"


def _probe(names: tuple[str, ...] = _LIBCUDA_NAMES) -> ProbeResult:
    lib = _load_libcuda(names)
    if lib is None:
        return ProbeResult((), "no NVIDIA driver: libcuda.so.1 could not be loaded")
    rc = lib.cuInit(0)
    if rc != 0:
        return ProbeResult((), f"the NVIDIA driver did not initialise: {_error_text(lib, rc)}")
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return ProbeResult((), f"cuDeviceGetCount failed: {_error_text(lib, rc)}")
    if count.value == 0:
        return ProbeResult((), "the NVIDIA driver reports no GPU")
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    driver = f"{version.value // 1000}.{(version.value % 1000) // 10}"
    devices = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        mem = ctypes.c_size_t(0)
        lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(
            ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev
        )
        lib.cuDeviceGetAttribute(
            ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev
        )
        devices.append(
            GpuInfo(i, name.value.decode(errors="replace"), mem.value,
                    (major.value, minor.value), driver)
        )
    if not devices:
        return ProbeResult((), "the NVIDIA driver lists GPUs but none could be opened")
    return ProbeResult(tuple(devices))


@functools.lru_cache(maxsize=1)
def probe_gpu() -> ProbeResult:
    """Ask the CUDA driver for GPUs, once per process, without printing anything.

    Returns
    -------
    ProbeResult
        ``.devices`` lists the GPUs; where there are none, ``.reason`` says why.

    Examples
    --------
    >>> r = probe_gpu()
    >>> r.ok == bool(r.devices) and (r.ok or bool(r.reason))
    True
    """
    try:
        return _probe()
    except Exception as exc:  # a broken driver must not break planning
        return ProbeResult((), f"probing the NVIDIA driver failed: {exc!r}")
