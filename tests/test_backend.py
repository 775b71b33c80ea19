"""Backend selection (DESIGN.md section 4): explicit, automatic, overridden, never silent."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

import gpustream as gs
from gpustream import backend as backend_mod
from gpustream.backend import select_backend
from gpustream.errors import BackendError
from gpustream.probe import GpuInfo, ProbeResult, _probe, probe_gpu

NO_GPU = ProbeResult((), "no NVIDIA driver: libcuda.so.1 could not be loaded")
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 85_000_000_000, (9, 0), "12.8")


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUSTREAM_ENGINE", raising=False)


def test_cpu_when_asked() -> None:
    b = select_backend("cpu")
    assert (b.name, b.fallback, b.requested) == ("cpu", None, "cpu")


def test_auto_falls_back_to_cpu_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: NO_GPU)
    b = select_backend("auto")
    assert b.name == "cpu"
    assert b.fallback == NO_GPU.reason
    assert "GPU not used: no NVIDIA driver" in b.describe()


def test_auto_falls_back_when_gpu_found_but_stack_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: ProbeResult((H100,)))
    monkeypatch.setattr(backend_mod, "_cuda_stack_problem", lambda: "cupy is not installed")
    b = select_backend("auto")
    assert b.name == "cpu" and b.fallback == "cupy is not installed"


def test_auto_picks_cuda_when_everything_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: ProbeResult((H100,)))
    monkeypatch.setattr(backend_mod, "_cuda_stack_problem", lambda: None)
    b = select_backend("auto")
    assert b.name == "cuda" and b.device == H100
    assert "NVIDIA H100" in b.reason and "sm_90" in b.reason


def test_choosing_cuda_silences_only_small_grid_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's small last batch is a small grid, not a mistake; implicit copies still warn."""
    from numba.core import config as core_config

    cuda_config = pytest.importorskip("numba.cuda.core.config")
    for cfg in (core_config, cuda_config):
        monkeypatch.setattr(cfg, "CUDA_LOW_OCCUPANCY_WARNINGS", 1, raising=False)
        monkeypatch.setattr(cfg, "CUDA_WARN_ON_IMPLICIT_COPY", 1, raising=False)
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: NO_GPU)
    select_backend("auto")  # falling back to the CPU changes nothing
    assert cuda_config.CUDA_LOW_OCCUPANCY_WARNINGS == 1
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: ProbeResult((H100,)))
    monkeypatch.setattr(backend_mod, "_cuda_stack_problem", lambda: None)
    assert select_backend("auto").name == "cuda"
    for cfg in (core_config, cuda_config):
        assert cfg.CUDA_LOW_OCCUPANCY_WARNINGS == 0
        assert cfg.CUDA_WARN_ON_IMPLICIT_COPY == 1


def test_cuda_without_gpu_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "probe_gpu", lambda: NO_GPU)
    with pytest.raises(BackendError, match=r"needs a working NVIDIA GPU, but no NVIDIA driver.*"
                                           r"engine='auto' or 'cpu'"):
        select_backend("cuda")


def test_env_var_overrides_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSTREAM_ENGINE", "cpu")
    b = select_backend("cuda")
    assert b.name == "cpu"
    assert "GPUSTREAM_ENGINE=cpu (overrides engine='cuda')" in b.reason


def test_bad_env_var_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSTREAM_ENGINE", "tpu")
    with pytest.raises(BackendError, match="GPUSTREAM_ENGINE='tpu' is not an engine"):
        select_backend("auto")


def test_cudasim_needs_the_simulator_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_mod, "_cudasim_enabled", lambda: False)
    with pytest.raises(BackendError, match="NUMBA_ENABLE_CUDASIM=1"):
        select_backend("cudasim")


def test_bad_engine_in_pipeline_fails_at_construction() -> None:
    with pytest.raises(gs.PlanError, match="engine='gpu' is not one of auto, cpu, cuda"):
        gs.Pipeline("p", engine="gpu")


def test_probe_is_silent_and_explains_absence(capfd: pytest.CaptureFixture[str]) -> None:
    r = _probe(("libdefinitely-not-cuda.so.7",))
    assert not r.ok and "libcuda.so.1 could not be loaded" in r.reason
    real = probe_gpu()
    assert real.ok or real.reason
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_choice_is_made_once_and_logged(monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    calls = []
    real = backend_mod.select_backend

    def counting(engine: str) -> gs.Backend:
        calls.append(engine)
        return real(engine)

    monkeypatch.setattr("gpustream.api.pipeline.select_backend", counting)
    p = gs.Pipeline("once", engine="cpu")
    s = p.source(gs.from_arrow({"x": [1, 2]}))
    s.sink(gs.to_callback(lambda rb: None))
    with caplog.at_level(logging.INFO, logger="gpustream"):
        p.explain()
        p.run()
        s.collect()
    assert calls == ["cpu"]
    first = next(r.getMessage() for r in caplog.records)
    assert first.startswith("pipeline 'once' runs on cpu (")


def test_backend_fixture_arrays_round_trip(backend: gs.Backend) -> None:
    a = np.arange(10, dtype=np.int64)
    dev = backend.to_device(a)
    assert backend.to_host(dev).tolist() == a.tolist()
    assert type(dev).__module__.split(".")[0] == ("cupy" if backend.name == "cuda" else "numpy")


def _launch_cases(xp: Any) -> list[tuple[Any, int, tuple[Any, ...], list[int]]]:
    """(kernel pair, n, args, which args are outputs): inputs over several blocks, one
    kernel with atomics, one that returns a value on the CPU."""
    from gpustream.kernels.aggregate import COUNT
    from gpustream.kernels.hashing import HASH_ROWS
    from gpustream.kernels.windows import ASSIGN

    rng = np.random.default_rng(11)
    n = 700  # three blocks of 256
    keys = xp.asarray(rng.integers(0, 2**63, (2, n)).astype(np.uint64))
    slots = xp.asarray(rng.integers(-1, 9, n))
    ts = xp.asarray(rng.integers(-10_000, 10_000, n))
    wm = xp.asarray(rng.integers(-10_000, 10_000, n))
    i64 = np.int64
    return [
        (HASH_ROWS, n, (keys, xp.zeros(n, dtype=np.uint64)), [1]),
        (COUNT, n, (xp.zeros(9, dtype=np.int64), slots, xp.arange(n, dtype=np.int64),
                    xp.asarray(rng.random(n) < 0.8)), [0]),
        (ASSIGN, n, (ts, xp.empty(0, dtype=np.bool_), wm, i64(1000), i64(250), i64(7), i64(300),
                     i64(4), xp.zeros(4 * n, dtype=np.int64), xp.zeros(4 * n, dtype=np.int8)),
         [8, 9]),
    ]


def test_launch_runs_the_cpu_twin_and_returns_its_result() -> None:
    from gpustream.kernels.hashtable import UPSERT
    from gpustream.kernels.registry import CudaKernel, KernelPair
    from gpustream.kernels.scan import BLOCK_MAX

    cpu = select_backend("cpu")
    for kernel, n, args, outs in _launch_cases(np):
        assert cpu.launch(kernel, n, *args) is None
        assert all(int(np.count_nonzero(args[i])) for i in outs), kernel.name

    def total(a: Any, out: Any) -> int:
        return int(a.sum())

    def total_cuda(a: Any, out: Any) -> None:  # never launched here
        pass

    pair = KernelPair(total, CudaKernel(total_cuda, ("void(int64[::1], int64[::1])",),
                                        register=False), register=False)
    assert cpu.launch(pair, 4, np.arange(4), None) == 6
    for device_only in (UPSERT, BLOCK_MAX):  # no CPU twin: the wrapper runs the CPU pass
        with pytest.raises(BackendError, match=f"{device_only.name} has no CPU twin"):
            cpu.launch(device_only, 1)


def test_launch_gives_the_same_result_on_every_backend(device_backend: gs.Backend) -> None:
    cpu = select_backend("cpu")
    xp = device_backend.xp
    for (kernel, n, want, outs), (_, _, got, _) in zip(_launch_cases(np), _launch_cases(xp),
                                                        strict=True):
        cpu.launch(kernel, n, *want)
        assert device_backend.launch(kernel, n, *got) is None
        for i in outs:
            assert np.array_equal(device_backend.to_host(got[i]), want[i]), (kernel.name, i)
    empty = xp.zeros((1, 0), dtype=np.uint64)  # n == 0: nothing is launched
    from gpustream.kernels.hashing import HASH_ROWS

    assert device_backend.launch(HASH_ROWS, 0, empty, xp.zeros(0, dtype=np.uint64)) is None
