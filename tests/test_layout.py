"""The package layout: symlinked sub-packages, the wheel, and a fast silent import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_symlinks_point_at_top_level_folders() -> None:
    for name in ("kernels", "ingest"):
        link = ROOT / "gpustream" / name
        assert link.is_symlink(), f"gpustream/{name} must be a symlink"
        assert os.readlink(link) == f"../{name}"
        assert (ROOT / name / "__init__.py").is_file()


def test_wheel_holds_subpackages_as_files_and_no_top_level_ones(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("gpustream-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
    names = {i.filename for i in infos}
    assert "gpustream/kernels/hashing.py" in names
    assert "gpustream/kernels/registry.py" in names
    assert "gpustream/ingest/dictionary.py" in names
    assert not any(n.startswith(("kernels/", "ingest/")) for n in names)
    # real files, not symlinks (the high bits of external_attr hold the Unix mode)
    for i in infos:
        if i.filename.startswith(("gpustream/kernels/", "gpustream/ingest/")):
            assert (i.external_attr >> 16) & 0o170000 != 0o120000, i.filename


#: what ``import gpustream`` must not load: the GPU stack, and the libraries only some runs
#: need (connectors, scale-out, SQL, the live view, specs, the benchmarks' engines). Import
#: time is what these cost; it is not timed here (a timed test fails on a busy machine).
LAZY = ("cupy", "numba", "cudf", "dask", "distributed", "duckdb", "polars",
        "confluent_kafka", "redis", "sqlglot", "prometheus_client", "rich", "pydantic",
        "typer", "yaml", "fsspec")


def test_import_is_light_silent_and_touches_no_gpu() -> None:
    code = (
        "import json, sys\n"
        "import gpustream\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {LAZY!r}\n"
        "                or m.startswith(('cupy', 'numba', 'cudf')))\n"
        "print(json.dumps({'heavy': heavy}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stderr == ""
    report = json.loads(out.stdout)
    assert report["heavy"] == [], f"import gpustream must not load {report['heavy']}"


@pytest.mark.parametrize("name", ["Pipeline", "Stream", "col", "lit", "from_arrow",
                                  "to_console", "to_callback", "Batch", "Watermark"])
def test_public_names_are_exported(name: str) -> None:
    import gpustream as gs

    assert name in gs.__all__
    assert getattr(gs, name) is not None
