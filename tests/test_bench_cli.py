"""``gpustream bench nexmark``: result.parquet and timing.json for one query and for all,
DuckDB as an engine, and clear errors for a bad query or a missing DuckDB."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpustream.bench.nexmark import QUERIES
from gpustream.bench.runner import differences, generate, run_duckdb
from gpustream.cli import main

TIMING = {"query", "engine", "backend", "events", "seconds", "events_per_s", "rows_out",
          "seed", "generate_seconds"}


class _Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _bench(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           *args: str) -> _Run:
    """``gpustream bench nexmark ARGS`` in this process (as the console script runs it)."""
    monkeypatch.delenv("GPUSTREAM_ENGINE", raising=False)
    monkeypatch.setattr(sys, "argv", ["gpustream", "bench", "nexmark", *args])
    before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, before)
    out = capsys.readouterr()
    return _Run(code, out.out, out.err)


def test_one_query_writes_its_result_and_timing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for engine in ("cpu", "duckdb"):
        out = _bench(capsys, monkeypatch, "--query", "q5", "--events", "3000", "--seed", "2",
                     "--engine", engine, "--no-warmup", "--out", str(tmp_path / engine))
        assert out.returncode == 0, out.stderr
        timing = json.loads((tmp_path / engine / "timing.json").read_text())
        assert set(timing) == TIMING
        assert (timing["query"], timing["engine"], timing["events"], timing["seed"]) == \
            ("q5", engine, 3000, 2)
        assert timing["seconds"] > 0
        assert abs(timing["events_per_s"] - 3000 / timing["seconds"]) <= 0.01 * 3000 / \
            timing["seconds"]
        result = pq.read_table(tmp_path / engine / "result.parquet")
        assert result.num_rows == timing["rows_out"] > 0
    want = run_duckdb(QUERIES["q5"], generate(3000, seed=2)).table
    for engine in ("cpu", "duckdb"):
        got = pq.read_table(tmp_path / engine / "result.parquet")
        assert differences(got, want, QUERIES["q5"]) == []


def test_all_queries_on_tiny_data(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = _bench(capsys, monkeypatch, "--query", "all", "--events", "1000", "--engine", "cpu",
                 "--no-warmup", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "timing.json").read_text())
    assert [q["query"] for q in summary["queries"]] == list(QUERIES)
    assert summary["events"] == 1000 and summary["engine"] == "cpu"
    for name in QUERIES:
        timing = json.loads((tmp_path / name / "timing.json").read_text())
        assert set(timing) == TIMING and timing["query"] == name
        assert pq.read_table(tmp_path / name / "result.parquet").num_rows == timing["rows_out"]
    assert "q22" in out.stdout


def test_a_bad_query_or_engine_is_a_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = _bench(capsys, monkeypatch, "--query", "q23", "--out", str(tmp_path))
    assert out.returncode == 2
    assert "unknown Nexmark query 'q23': use all or q0 .. q22" in out.stderr
    out = _bench(capsys, monkeypatch, "--query", "q1", "--engine", "spark", "--out", str(tmp_path))
    assert out.returncode == 2 and "'spark' is not one of cpu, cuda, auto, duckdb" in out.stderr
    assert not any(tmp_path.iterdir())


def test_duckdb_missing_names_the_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without DuckDB installed (here: ``import duckdb`` fails), --engine duckdb says what
    to install, before generating anything."""
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb -> ImportError
    out = _bench(capsys, monkeypatch, "--query", "q1", "--engine", "duckdb", "--out",
                 str(tmp_path / "out"))
    assert out.returncode == 1, out.stderr
    assert "pip install 'gpustream[bench]'" in out.stderr
    assert not (tmp_path / "out").exists()
