"""What ``gpustream info`` reports: backend, GPU, library versions."""

from __future__ import annotations

import importlib.metadata as md
import platform
from dataclasses import dataclass, field

from gpustream.backend import Backend, select_backend
from gpustream.errors import BackendError
from gpustream.probe import GpuInfo, probe_gpu

__all__ = ["EnvironmentReport", "environment_report"]

_PACKAGES = ("gpustream", "numba", "numba-cuda", "llvmlite", "cupy-cuda12x", "cupy",
             "pyarrow", "numpy", "cudf-cu12", "cudf")


@dataclass(frozen=True)
class EnvironmentReport:
    """The backend ``engine="auto"`` would pick, the GPUs, and package versions."""

    backend: str
    reason: str
    fallback: str | None
    gpus: tuple[GpuInfo, ...]
    versions: dict[str, str | None] = field(default_factory=dict)
    python: str = ""

    def lines(self) -> list[str]:
        """The report as text lines.

        Examples
        --------
        >>> r = EnvironmentReport("cpu", "engine='auto'", "no NVIDIA driver", (), {"numba": "0.60"})
        >>> print("\\n".join(r.lines()))
        backend: cpu (engine='auto')
        GPU not used: no NVIDIA driver
        GPUs: none
        numba: 0.60
        """
        out = [f"backend: {self.backend} ({self.reason})"]
        if self.fallback:
            out.append(f"GPU not used: {self.fallback}")
        if self.gpus:
            out += [f"GPU {g.index}: {g.describe()}" for g in self.gpus]
        else:
            out.append("GPUs: none")
        if self.python:
            out.append(f"python: {self.python}")
        out += [f"{k}: {v or 'not installed'}" for k, v in self.versions.items()]
        return out


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def environment_report(engine: str = "auto") -> EnvironmentReport:
    """Probe the machine the way a pipeline with ``engine`` would, without running one.

    Examples
    --------
    >>> r = environment_report()
    >>> r.backend in ("cpu", "cuda", "cudasim") and "pyarrow" in r.versions
    True
    """
    try:
        backend: Backend | None = select_backend(engine)
        error = None
    except BackendError as exc:
        backend, error = None, str(exc)
    versions: dict[str, str | None] = {}
    for dist in _PACKAGES:
        v = _version(dist)
        name = dist.removesuffix("-cu12").removesuffix("-cuda12x")
        if v is not None or name not in versions:
            versions[name] = v
    return EnvironmentReport(
        backend=backend.name if backend else "none",
        reason=backend.reason if backend else (error or ""),
        fallback=backend.fallback if backend else None,
        gpus=probe_gpu().devices,
        versions=versions,
        python=f"{platform.python_version()} ({platform.machine()})",
    )
