"""README.md's code runs as written: its Python blocks and its specs, in a folder where
its "Data for the examples" commands ran."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^## (.+)$", re.M)


def _blocks(lang: str) -> list[tuple[str, str]]:
    """(section heading #n, code) of every ``lang`` block, in order."""
    out: list[tuple[str, str]] = []
    for m in _BLOCK.finditer(README):
        if m.group(1) == lang:
            heads = _HEADING.findall(README[: m.start()])
            out.append((f"{heads[-1] if heads else 'top'} #{len(out)}", m.group(2)))
    return out


def _gpustream() -> list[str]:
    return [sys.executable, "-c", "from gpustream.cli import main; main()"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the README's data commands ran, as README tells a user to."""
    where = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", where / "examples",
                    ignore=shutil.ignore_patterns("data", "out", "__pycache__"))
    (data_block,) = [code for head, code in _blocks("bash")
                     if head.startswith("Data for the examples")]
    for line in data_block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        command = {"gpustream": _gpustream(), "python": [sys.executable]}[words[0]]
        subprocess.run(command + words[1:], cwd=where, check=True, capture_output=True)
    assert (where / "data" / "bids.parquet").is_file()
    assert (where / "examples" / "data" / "sensors.csv").is_file()
    # the one line that reads an IPC file says how to make it; make it so
    subprocess.run([*_gpustream(), "generate", "nexmark", "--events", "2000", "--out",
                    "data/bids.arrow"], cwd=where, check=True, capture_output=True)
    return where


PYTHON = _blocks("python")
SPECS = _blocks("yaml")


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert len(PYTHON) >= 6 and len(SPECS) >= 1


@pytest.mark.parametrize("code", [c for _, c in PYTHON], ids=[h for h, _ in PYTHON])
def test_python_block_runs_as_written(folder: Path, code: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    out = printed.getvalue()
    if "print(" in code:
        assert out.strip(), "the block prints nothing"


@pytest.mark.parametrize("code", [c for _, c in SPECS], ids=[h for h, _ in SPECS])
def test_spec_validates_and_runs_as_written(folder: Path, code: str) -> None:
    first = code.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".yaml"), \
        "a spec block starts with its file name: # name.yaml"
    spec = folder / first[2:]
    spec.write_text(code)
    env = {**os.environ, "COLUMNS": "200"}
    checked = subprocess.run([*_gpustream(), "validate", spec.name], cwd=folder, env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = subprocess.run([*_gpustream(), "run", spec.name, "--no-live"], cwd=folder, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert " 0 events in" not in ran.stdout and "events in" in ran.stdout, ran.stdout
