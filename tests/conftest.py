"""Shared fixtures: the ``backend`` fixture runs a test on cpu, cudasim and cuda.

- ``cpu`` always runs.
- ``cudasim`` is marked ``cudasim``: ``make test`` runs those in their own step with
  ``NUMBA_ENABLE_CUDASIM=1`` (numba reads it when it loads, so it cannot be switched on
  inside a run that has already loaded numba's CUDA target).
- ``cuda`` is marked ``cuda`` and skipped, with the probe's reason, where no GPU works.

With ``GPUSTREAM_ENGINE`` set (``GPUSTREAM_ENGINE=cuda make test`` on a GPU machine) the
fixture has that one case, and every pipeline in the suite runs on that engine.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from gpustream.backend import Backend, select_backend
from gpustream.probe import probe_gpu

settings.register_profile(
    "default", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("cudasim", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cudasim" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "default")

_MARKS = {"cudasim": [pytest.mark.cudasim], "cuda": [pytest.mark.cuda], "cpu": []}


def _engine_params() -> list[Any]:
    forced = os.environ.get("GPUSTREAM_ENGINE", "").strip().lower()
    names = [forced] if forced and forced != "auto" else ["cpu", "cudasim", "cuda"]
    return [pytest.param(n, id=n, marks=_MARKS.get(n, [])) for n in names]


def cudasim_on() -> bool:
    """True when this test process runs with numba's CUDA simulator switched on."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.fixture(params=_engine_params())
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend a test runs on: cpu, cudasim (simulator step) or cuda (real GPU)."""
    return _backend(request.param)


@pytest.fixture(params=[p for p in _engine_params() if p.id != "cpu"])
def device_backend(request: pytest.FixtureRequest) -> Backend:
    """The backends that launch CUDA kernels: cudasim (simulator step) and cuda (real GPU)."""
    return _backend(request.param)


def _backend(name: str) -> Backend:
    if name == "cuda":
        probe = probe_gpu()
        if not probe.ok:
            pytest.skip(f"cuda case needs a working NVIDIA GPU: {probe.reason}")
    if name == "cudasim" and not cudasim_on():
        pytest.skip("cudasim case needs NUMBA_ENABLE_CUDASIM=1 (make test runs it as its own step)")
    return select_backend(name)
