"""The package as users install it: a wheel built from the checkout, installed into a
fresh virtual environment, runs a pipeline (README says how to install from a checkout
or a built wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_tree(dest: Path) -> Path:
    """The checkout's files that git does not ignore (symlinks kept): no build leftovers.
    Outside a git checkout (an unpacked sdist, a copied tree): what the package is built
    from, without caches."""
    try:
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], cwd=ROOT, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        for name in ("gpustream", "kernels", "ingest"):
            shutil.copytree(ROOT / name, dest / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, dest / name)
        return dest
    for name in filter(None, files):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(src.readlink())
        else:
            shutil.copy2(src, dst)
    return dest


def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    tree = _tracked_tree(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(tree)], check=True, capture_output=True)
    (wheel,) = wheels.glob("gpustream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # the kernels/ and ingest/ folders install through their symlinks; types are shipped
    for needed in ("gpustream/py.typed", "gpustream/kernels/fused_dense.py",
                   "gpustream/ingest/kafka.py", "gpustream/cli.py"):
        assert needed in names, f"{needed} is missing from {wheel.name}"
    assert not any(n.startswith(("kernels/", "ingest/", "tests/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    # the dependencies come from this environment's site-packages (a path, not its .pth
    # files: this checkout's editable install of gpustream stays out of sight)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (
        "import gpustream as gs, pathlib, sys\n"
        "assert pathlib.Path(gs.__file__).is_relative_to(sys.prefix), gs.__file__\n"
        "p = gs.Pipeline('wheel', engine='cpu')\n"
        "s = p.source(gs.from_arrow({'ts': [1, 2, 1500], 'k': ['a', 'b', 'a']}), "
        "event_time='ts')\n"
        "t = s.key_by('k').window(gs.Tumbling('1s'), name='w').agg(n=gs.count()).collect()\n"
        "print(sorted(zip(t['k'].to_pylist(), t['n'].to_pylist())))\n"
    )
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('a', 1), ('a', 1), ('b', 1)]"
    cli = subprocess.run([str(venv / "bin" / "gpustream"), "info", "--engine", "cpu"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and "backend: cpu" in cli.stdout, cli.stdout + cli.stderr
