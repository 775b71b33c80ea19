"""The command line: info, demo, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


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


def test_info_with_cuda_engine_exits_1_with_the_reason_where_no_gpu_works() -> None:
    from gpustream.probe import probe_gpu

    out = _cli("info", "--engine", "cuda")
    if probe_gpu().ok:
        assert out.returncode == 0, out.stderr
        assert "backend: cuda" in out.stdout
        return
    assert out.returncode == 1, out.stdout + out.stderr
    assert "backend: none" in out.stdout  # the report is still printed
    assert out.stderr.startswith("error: engine 'cuda' cannot run on this machine: ")
    assert "needs a working NVIDIA GPU" in out.stderr
    # a CPU engine works everywhere; an engine that does not exist is a bad argument
    assert _cli("info", "--engine", "cpu").returncode == 0
    bad = _cli("info", "--engine", "tpu")
    assert bad.returncode == 2 and "'tpu' is not one of" in bad.stderr


def test_version_names_the_package_and_its_engines() -> None:
    import importlib.metadata as md

    out = _cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"gpustream {md.version('gpustream')} (numba {md.version('numba')}, pyarrow "
        f"{md.version('pyarrow')}, python {sys.version.split()[0]})")


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


def test_sigterm_stops_a_run_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import time

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(
        json.dumps({"ts": i * 10, "v": i}) + "\n" for i in range(300)))
    spec = tmp_path / "follow.yaml"
    spec.write_text(
        "engine: cpu\n"
        "source: {type: jsonl, path: in, follow: true, poll_interval: 20ms,\n"
        "         schema: {ts: int64, v: int64}, event_time: ts}\n"
        "steps:\n  - filter: \"v >= 0\"\n"
        "sink: [{type: jsonl, path: out.jsonl}, {type: parquet, path: out.parquet}]\n")
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    proc = subprocess.Popen([sys.executable, "-m", "gpustream.cli", "run", str(spec),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not list(tmp_path.glob(".out.jsonl.*inprogress")):
        time.sleep(0.1)  # the sinks write under a hidden in-progress name until they close
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # what docker stop and Kubernetes send
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    text = out.replace("\n", " ")
    assert "300 events in" in text and "(stopped by SIGTERM)" in text \
        and "stopped by SIGTERM" in text
    # both sinks were closed: whole files under their own names, every row read in them
    assert not list(tmp_path.glob(".*inprogress"))
    rows = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(r)["v"] for r in rows] == list(range(300))
    assert pq.read_table(tmp_path / "out.parquet").column("v").to_pylist() == list(range(300))
