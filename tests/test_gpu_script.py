"""The GPU machine's script works before a GPU is lent: benchmarks/gpu/stress.py runs under
the simulator and finds no difference from the CPU twin, its comparisons see planted
differences, and benchmarks/gpu/device_run.sh exits non-zero when any step fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STRESS = ROOT / "benchmarks" / "gpu" / "stress.py"
DEVICE_RUN = ROOT / "benchmarks" / "gpu" / "device_run.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="device_run.sh needs bash and coreutils' timeout")


@pytest.mark.cudasim
def test_stress_script_finds_no_difference_under_cudasim() -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    env.pop("GPUSTREAM_ENGINE", None)
    cases = ["hash-hot", "hash-distinct", "tumbling-hot", "session-keys"]
    out = subprocess.run(
        [sys.executable, str(STRESS), "--engine", "cudasim", "--preset", "tiny",
         "--hot-rows", "600", "--distinct-keys", "600", "--window-rows", "300",
         "--distinct-rows", "300", "--only", ",".join(cases)],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for case in cases:
        (line,) = [ln for ln in lines if ln.startswith(case + " ")]
        assert line.endswith("OK"), line
    assert "dup=0" in out.stdout and "diff=0" in out.stdout
    assert lines[-1] == "stress: no difference from the CPU twin"


def test_stress_comparisons_see_planted_differences() -> None:
    """The doctests of stress.py plant a duplicate key in a table and differing rows in a
    window output, and check that they are counted (run apart: stress.py unsets
    GPUSTREAM_ENGINE in the process that imports it)."""
    out = subprocess.run([sys.executable, "-m", "doctest", str(STRESS)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_bash
def test_device_run_sh_parses_and_refuses_an_unknown_part(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(DEVICE_RUN)]).returncode == 0
    out = subprocess.run(["bash", str(DEVICE_RUN), "warp"], capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path)})
    assert out.returncode == 2 and "usage" in out.stderr


STUB_PYTHON = """#!/bin/sh
# pytest and stress.py answer with the status the test asks for; the rest is real python
case " $* " in
  *" -m pytest "*) echo "stub pytest"; exit "$STUB_SUITE_RC" ;;
  *stress.py*) echo "stub stress"; exit "$STUB_STRESS_RC" ;;
esac
exec {python} "$@"
"""


@needs_bash
@pytest.mark.parametrize(("suite_rc", "stress_rc"), [(0, 0), (1, 0), (0, 3)])
def test_device_run_exits_with_the_worst_step_status(tmp_path: Path, suite_rc: int,
                                                     stress_rc: int) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "python3").write_text(STUB_PYTHON.format(python=sys.executable))
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho 'name, driver_version'\n"
                                      "echo 'Stub GPU, 0.0'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
           "OUT": str(tmp_path / "out"), "ENGINE": "cpu", "WHL_DIR": str(tmp_path / "none"),
           "STUB_SUITE_RC": str(suite_rc), "STUB_STRESS_RC": str(stress_rc)}
    env.pop("PYTHON", None)
    env.pop("GPUSTREAM_ENGINE", None)
    out = subprocess.run(["bash", str(DEVICE_RUN), "suite,stress"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == max(suite_rc, stress_rc), out.stdout + out.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "env        ok" in summary, summary
    for step, rc in (("suite", suite_rc), ("stress", stress_rc)):
        assert f"{step:10s} {'ok' if rc == 0 else 'FAIL':7s} rc={rc}" in summary, summary
    assert "stub pytest" in (tmp_path / "out" / "suite.log").read_text()
