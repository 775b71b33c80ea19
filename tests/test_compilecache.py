"""Kernels compiled once per machine: numba's on-disk cache across processes.

Each pipeline runs in a fresh Python process whose cache folder
(``GPUSTREAM_CACHE_DIR``) is a temporary one, and reports numba's own statistics for
every gpustream kernel: cache misses (compiled in that process) and hits (loaded from
the disk cache), and what the live view's ``phase`` was set to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpustream.compilecache import NOTICE, NOTICE_NO_CACHE
from tests.conftest import cudasim_on

#: runs a windowed query twice in one process; prints its results and numba's statistics
_SCRIPT = r"""
import json, sys
import gpustream as gs
from gpustream.metrics import Metrics

AGGS = {
    "a": dict(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(),
              hi=gs.col("v").max(), avg=gs.col("v").mean()),
    "b": dict(n=gs.count(), spread=gs.col("v").std()),
}[sys.argv[1]]


class Recording(Metrics):
    def __setattr__(self, name, value):
        if name == "phase":
            PHASES.append(value)
        super().__setattr__(name, value)


def run():
    n = 20_000
    data = {"ts": list(range(0, 2 * n, 2)), "k": [i % 37 for i in range(n)],
            "v": [float(i % 101) for i in range(n)]}
    p = gs.Pipeline("cache-test", engine="cpu")
    s = p.source(gs.from_arrow(data, batch_rows=4096), event_time="ts",
                 watermark=gs.Watermark.bounded("10ms"))
    out = []

    def collect(rb):  # runs on the pipeline thread, as the first batch fires windows
        if not out:
            AT_FIRST_OUTPUT.append(metrics.phase)
        out.append(rb)

    s.key_by("k").window(gs.Tumbling("1s"), name="w").agg(**AGGS).sink(gs.to_callback(collect))
    metrics = Recording("cache-test", "cpu")
    PHASES.clear()  # what the run sets, not the field's default
    p.run(metrics=metrics)
    rows = sorted(tuple(r.values()) for b in out for r in b.to_pylist())
    return rows


from gpustream.kernels import cache

report = {}
for attempt in ("first", "again"):
    PHASES = []
    AT_FIRST_OUTPUT = []
    rows = run()
    report[attempt] = {"phases": PHASES, "rows": rows, "at_first_output": AT_FIRST_OUTPUT}
stats = {}
for d in cache.kernel_dispatchers():
    if getattr(d, "overloads", None):
        f = d.py_func
        stats[f"{f.__module__}.{f.__qualname__}"] = [sum(d.stats.cache_hits.values()),
                                                     sum(d.stats.cache_misses.values())]
report["stats"] = stats
report["cache"] = cache.CACHE
print(json.dumps(report))
"""


def _run(cache_dir: Path, query: str = "a") -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "NUMBA_ENABLE_CUDASIM", "GPUSTREAM_ENGINE")}
    env["GPUSTREAM_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, query], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _totals(report: dict[str, Any], generated: bool | None = None) -> tuple[int, int]:
    picked = [v for k, v in report["stats"].items()
              if generated is None or k.startswith("_gpustream_") == generated]
    return sum(h for h, _ in picked), sum(m for _, m in picked)


def _files(root: Path, pattern: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob(f"*/{pattern}")}


@pytest.mark.skipif(cudasim_on(), reason="CPU kernels in fresh processes; the CPU step runs it")
def test_a_second_process_loads_every_kernel_from_the_cache(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["cache"] is True
    hits, misses = _totals(first)
    # the fused loop, its hash-and-shard pass, emit, pops, scans (the loop hashes no more)
    assert hits == 0 and misses >= 7, first["stats"]
    assert _totals(first, generated=True)[1] >= 2  # the query's generated loops compiled
    assert first["first"]["phases"][0] == NOTICE
    # still said while the first batch fires its windows (the emit loop compiles then)
    assert first["first"]["at_first_output"] == [NOTICE]
    assert set(first["first"]["phases"][1:]) == {None}, "cleared once the first batch went through"
    assert set(first["again"]["phases"]) == {None}, "a plan run before in this process is compiled"
    indexes = _files(tmp_path, "cpu/*.nbi")
    data = _files(tmp_path, "cpu/*.nbc")
    sources = _files(tmp_path, "generated/*.py")
    assert len(sources) >= 2 and len(data) == len(indexes) == len(first["stats"]) == misses

    second = _run(tmp_path)
    hits2, misses2 = _totals(second)
    assert misses2 == 0, f"compiled again: {second['stats']}"
    # every kernel called from Python is loaded (the ones only called by other kernels
    # come inside their callers' cached code)
    assert hits2 == len(second["stats"]) >= misses - 2
    assert set(second["stats"]) <= set(first["stats"])
    assert second["first"]["phases"][0] is None, "the second run says nothing about compiling"
    assert second["first"]["rows"] == first["first"]["rows"] == first["again"]["rows"]
    # reused, not rewritten: the same files, untouched
    assert _files(tmp_path, "cpu/*.nbi") == indexes
    assert _files(tmp_path, "cpu/*.nbc") == data
    assert _files(tmp_path, "generated/*.py") == sources


@pytest.mark.skipif(cudasim_on(), reason="CPU kernels in fresh processes; the CPU step runs it")
def test_another_query_gets_its_own_generated_loops(tmp_path: Path) -> None:
    _run(tmp_path, "a")
    sources = set(_files(tmp_path, "generated/*.py"))
    other = _run(tmp_path, "b")
    assert other["first"]["phases"][0] == NOTICE, "a new query shape is a first run"
    new = set(_files(tmp_path, "generated/*.py")) - sources
    assert len(new) >= 2, "the other query's loops get files of their own"
    assert _totals(other, generated=True)[1] >= 2  # compiled: nothing cached for them
    assert _totals(other, generated=True)[0] == 0
    shared_hits, _ = _totals(other, generated=False)
    assert shared_hits > 0, "the kernels both queries use are loaded from the cache"
    again = _run(tmp_path, "b")
    assert _totals(again)[1] == 0 and _totals(again)[0] == len(again["stats"])
    assert again["first"]["phases"][0] is None


@pytest.mark.skipif(cudasim_on(), reason="CPU kernels in fresh processes; the CPU step runs it")
def test_an_unwritable_cache_folder_compiles_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    report = _run(blocker / "cache")  # cannot be created, not even by root
    assert report["cache"] is False
    hits, misses = _totals(report)
    assert hits == 0 and misses >= 7  # as in the test above
    assert report["first"]["phases"][0] == NOTICE_NO_CACHE
    assert report["first"]["rows"] == report["again"]["rows"]
    assert len(report["first"]["rows"]) == 37 * 40  # 37 keys, 40 s of 1 s windows
    assert blocker.read_text() == "not a folder"
    reference = _run(tmp_path / "cache")
    assert reference["first"]["rows"] == report["first"]["rows"]


@pytest.mark.skipif(cudasim_on(), reason="CPU kernels in fresh processes; the CPU step runs it")
def test_a_kernel_file_imported_under_another_name_caches_apart(tmp_path: Path) -> None:
    # ``kernels/`` is the repository's symlink to ``gpustream/kernels/``: importing a kernel
    # file through it (a doctest run by path does) must not leave cached code that a
    # process which cannot import ``kernels`` then fails to load
    repo = Path(__file__).resolve().parent.parent
    call = ("import numpy as np\n"
            "from {m}.join_index import _key_hashes\n"
            "print(int(_key_hashes(np.array([[7]], dtype=np.uint64))[0]))\n")
    env = {**os.environ, "GPUSTREAM_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    outs = []
    for module, cwd in (("kernels", repo), ("gpustream.kernels", tmp_path)):
        out = subprocess.run([sys.executable, "-c", call.format(m=module)], cwd=cwd, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        outs.append(out.stdout)
    assert outs[0] == outs[1]
    names = {p.name for p in (tmp_path / "cache").glob("*/cpu/join_index._hashes-*.nbi")}
    assert len(names) == 2 and any("kernels.join_index" in n for n in names), names


def test_a_kernel_edit_moves_the_cache_to_a_new_folder(tmp_path: Path) -> None:
    from gpustream.kernels.cachedir import _source_key

    (tmp_path / "windows.py").write_text("def window_start(ts, slide, offset):\n    return 0\n")
    before = _source_key.__wrapped__(tmp_path)
    assert _source_key.__wrapped__(tmp_path) == before
    (tmp_path / "windows.py").write_text("def window_start(ts, slide, offset):\n    return 1\n")
    assert _source_key.__wrapped__(tmp_path) != before


def test_a_generated_file_always_holds_the_text_its_name_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpustream.kernels.cache import generated_kernel

    monkeypatch.setenv("GPUSTREAM_CACHE_DIR", str(tmp_path))
    source = "def triple(x):\n    return 3 * x\n"
    assert generated_kernel(source, "triple", "test")(np.int64(5)) == 15
    [path] = tmp_path.glob("*/generated/gpustream_test_*.py")
    assert path.read_text() == source
    path.write_text("def triple(x):\n    return 4 * x\n")  # tampered with
    for name in [m for m in sys.modules if m.startswith("_gpustream_test_")]:
        monkeypatch.delitem(sys.modules, name)
    assert generated_kernel(source, "triple", "test")(np.int64(5)) == 15
    assert path.read_text() == source


@pytest.mark.skipif(cudasim_on(), reason="numba's real CUDA target (no GPU needed)")
def test_cuda_kernels_are_cached_in_the_same_folder() -> None:
    pytest.importorskip("numba.cuda.dispatcher")
    from gpustream.kernels.cache import CACHE, cuda_cache
    from gpustream.kernels.cachedir import cache_dir
    from gpustream.kernels.hashing import _hash_rows_cuda

    root = cache_dir()
    if not CACHE or root is None:
        pytest.skip("no writable cache folder on this machine")
    assert cuda_cache()
    dispatcher = _hash_rows_cuda.dispatcher
    assert Path(dispatcher._cache.cache_path) == root / "cuda"


@pytest.mark.cudasim
def test_cudasim_runs_cuda_kernels_uncached() -> None:
    from gpustream.backend import select_backend
    from gpustream.kernels.cache import cuda_cache
    from gpustream.kernels.hashing import hash_rows, widen_keys

    assert cuda_cache() is False
    keys = widen_keys([np.arange(50) % 7, np.arange(50) % 3], np)
    assert (hash_rows(keys, select_backend("cudasim"))
            == hash_rows(keys, select_backend("cpu"))).all()
