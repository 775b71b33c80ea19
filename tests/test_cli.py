"""The command line: info, demo, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _cli(*args: str, env_engine: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    if env_engine:
        env["GPUSTREAM_ENGINE"] = env_engine
    return subprocess.run([sys.executable, "-m", "gpustream.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_info_reports_backend_versions_and_fallback() -> None:
    from gpustream.probe import probe_gpu

    out = _cli("info")
    assert out.returncode == 0, out.stderr
    for key in ("backend:", "numba:", "numba-cuda:", "cupy:", "pyarrow:", "cudf:"):
        assert key in out.stdout
    probe = probe_gpu()
    if probe.ok:
        assert "GPU 0:" in out.stdout and "sm_" in out.stdout
    else:
        assert "backend: cpu" in out.stdout
        assert f"GPU not used: {probe.reason}" in out.stdout.replace("\n", " ")


def test_info_with_cuda_engine_on_cpu_machine_says_why() -> None:
    from gpustream.probe import probe_gpu

    if probe_gpu().ok:
        pytest.skip("this machine has a GPU")
    out = _cli("info", "--engine", "cuda")
    assert out.returncode == 0
    assert "backend: none" in out.stdout and "needs a working NVIDIA GPU" in out.stdout


def test_demo_runs_and_reports() -> None:
    out = _cli("demo", "--events", "20000", "--engine", "cpu")
    assert out.returncode == 0, out.stderr
    assert "backend: cpu" in out.stdout
    assert "hottest auctions" in out.stdout
    assert "18400 events in" in out.stdout  # the bids among 20,000 Nexmark events


def test_exit_codes() -> None:
    assert _cli("no-such-command").returncode == 2
    bad = _cli("demo", "--engine", "tpu")
    assert bad.returncode == 2 and "engine='tpu' is not one of" in bad.stderr
    from gpustream.probe import probe_gpu

    forced = _cli("demo", "--events", "10", "--no-live", env_engine="cuda")
    if probe_gpu().ok:
        assert forced.returncode == 0, forced.stderr
    else:  # a runtime failure (no GPU), not a bad argument
        assert forced.returncode == 1 and "GPU" in forced.stderr, forced.stderr
