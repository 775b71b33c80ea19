"""``gpustream sql`` (a query over ``--source name=path`` files, its rows to ``--out``)
and ``gpustream bench nexmark --sql`` (the Nexmark queries from their SQL text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.bench.nexmark import QUERIES, Inputs
from gpustream.bench.runner import differences, generate, run_gpustream
from tests.test_bench_cli import _bench
from tests.test_cli import _cli

WINDOWED = """\
CREATE TABLE ev (k BIGINT, v BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND);
SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY k, window_start, window_end"""


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``gpustream ARGS`` in its own process, as test_cli runs it (stdin: what it reads)."""
    if stdin is None:
        return _cli(*args)
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    return subprocess.run([sys.executable, "-m", "gpustream.cli", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """ev.parquet: 3 keys over a minute of event time, each row up to 1.5 s out of
    order (under the 2 s watermark delay: no row is late)."""
    rng = np.random.default_rng(7)
    n = 600
    ts = np.sort(rng.integers(0, 60_000, n))
    order = np.argsort(ts + rng.integers(0, 1_500, n), kind="stable")
    t = pa.table({"k": rng.integers(0, 3, n)[order], "v": rng.integers(0, 100, n)[order],
                  "ts": pa.array(ts[order]).cast(pa.timestamp("ms"))})
    assert (np.diff(ts[order]) < 0).any()
    path = tmp_path / "ev.parquet"
    pq.write_table(t, path, row_group_size=50)
    return path


def test_tumble_with_a_create_table_watermark_gives_duckdbs_rows(
        events: Path, tmp_path: Path) -> None:
    import duckdb

    out = tmp_path / "windows.parquet"
    ran = cli("sql", WINDOWED, "--source", f"ev={events}", "--out", str(out),
              "--engine", "cpu", "--no-live")
    assert ran.returncode == 0, ran.stderr
    assert "600 events in" in ran.stdout
    got = pq.read_table(out)
    rel = duckdb.sql(f"""
        SELECT k, time_bucket(INTERVAL '10 seconds', ts) AS window_start,
               time_bucket(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end,
               COUNT(*) AS n, SUM(v) AS total
        FROM '{events}' GROUP BY ALL""")
    assert rel is not None
    want = sorted(rel.fetchall())
    assert got.column_names == ["k", "window_start", "window_end", "n", "total"]
    assert len(want) == 18
    assert sorted(tuple(r.values()) for r in got.to_pylist()) == want


def test_sql_from_a_file_with_a_view_to_csv_and_explain(events: Path, tmp_path: Path) -> None:
    q = tmp_path / "q.sql"
    q.write_text("CREATE VIEW big AS SELECT k, v * 2 AS w FROM ev WHERE v >= 90;\n"
                 "SELECT k, w FROM big WHERE k = 1\n")
    out = tmp_path / "big.csv"
    ran = cli("sql", "--file", str(q), "-s", f"ev={events}", "--out", str(out),
              "--engine", "cpu")
    assert ran.returncode == 0, ran.stderr
    t = pq.read_table(events).to_pydict()
    want = sorted((k, v * 2) for k, v in zip(t["k"], t["v"], strict=True) if v >= 90 and k == 1)
    assert want
    written = pacsv.read_csv(out)
    assert written.column_names == ["k", "w"]
    assert sorted(zip(*written.to_pydict().values(), strict=True)) == want
    # --overwrite replaces the file; without it the run refuses
    again = cli("sql", "--file", str(q), "-s", f"ev={events}", "--out", str(out),
                "--engine", "cpu")
    assert again.returncode == 2
    assert f"--out: {out} exists: give --overwrite" in " ".join(again.stderr.split())
    assert cli("sql", "--file", str(q), "-s", f"ev={events}", "--out", str(out), "--engine",
               "cpu", "--overwrite").returncode == 0
    piped = cli("sql", "--file", "-", "-s", f"ev={events}", "--out", str(tmp_path / "p.jsonl"),
                "--engine", "cpu", stdin="SELECT k, v FROM ev WHERE v >= 90")
    assert piped.returncode == 0, piped.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == \
        sum(v >= 90 for v in t["v"]) > 0
    plan = cli("sql", "--file", str(q), "-s", f"ev={events}", "--explain", "--engine", "cpu")
    assert plan.returncode == 0, plan.stderr
    assert "'ev': read_parquet" in plan.stdout and "events in" not in plan.stdout
    shown = cli("sql", "SELECT k, v FROM ev WHERE v = 99", "-s", f"ev={events}",
                "--engine", "cpu", "--max-rows", "2")
    assert shown.returncode == 0, shown.stderr
    assert "2 of " in shown.stdout and "rows" in shown.stdout


def test_a_sql_error_names_its_line_and_column_and_exits_2(events: Path) -> None:
    ran = cli("sql", "SELECT k,\n       vv FROM ev", "--source", f"ev={events}")
    assert ran.returncode == 2
    assert ran.stderr.startswith("error: SQL line 2, column 8 ('vv'): unknown column 'vv' "
                              "(did you mean 'v'?)"), ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout
    unknown = cli("sql", "SELECT k FROM evs", "--source", f"ev={events}")
    assert unknown.returncode == 2 and "SQL line 1, column 15 ('evs')" in unknown.stderr


def test_bad_arguments_exit_2_naming_the_option(events: Path, tmp_path: Path) -> None:
    def fails(*args: str) -> str:
        ran = cli("sql", *args)
        assert ran.returncode == 2, ran
        return " ".join(ran.stderr.split())

    assert "--source: ev=nope.parquet: no file matches 'nope.parquet'" in \
        fails("SELECT 1 FROM ev", "-s", "ev=nope.parquet")
    bad = tmp_path / "ev.txt"
    bad.write_text("x")
    assert f"cannot tell the format of '{bad}' from its suffix" in \
        fails("SELECT 1 FROM ev", "-s", f"ev={bad}")
    assert "'ev': give NAME=PATH" in fails("SELECT 1 FROM ev", "-s", "ev")
    assert "'ev' is given twice" in fails("SELECT 1 FROM ev", "-s", f"ev={events}",
                                          "-s", f"ev={events}")
    assert "QUERY: give the SQL text as the argument or --file" in fails("-s", f"ev={events}")
    assert "--file: cannot read" in fails("--file", str(tmp_path / "none.sql"))
    assert "QUERY: to read the SQL text from a file, give --file q.sql" in fails("@q.sql")
    assert "--max-rows: must be >= 1" in fails("SELECT k FROM ev", "-s", f"ev={events}",
                                               "--max-rows", "0")


def test_bench_nexmark_sql_runs_q0_q1_q2_from_their_sql_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gpustream.bench.nexmark_sql as nexmark_sql

    built: list[str] = []
    real = nexmark_sql.build_sql

    def build_sql(inputs: Inputs, name: str) -> gs.Stream:
        built.append(name)
        return real(inputs, name)

    monkeypatch.setattr(nexmark_sql, "build_sql", build_sql)  # the real one, watched
    ran = _bench(capsys, monkeypatch, "--query", "q0,q1,q2", "--sql", "--events", "3000",
                 "--seed", "2", "--engine", "cpu", "--no-warmup", "--out", str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    assert "from SQL text" in ran.stdout
    assert built == ["q0", "q1", "q2"]
    summary = json.loads((tmp_path / "timing.json").read_text())
    assert summary["sql"] is True and [q["query"] for q in summary["queries"]] == \
        ["q0", "q1", "q2"]
    data = generate(3000, seed=2)
    for name in ("q0", "q1", "q2"):
        timing = json.loads((tmp_path / name / "timing.json").read_text())
        assert timing["sql"] is True and timing["query"] == name
        got = pq.read_table(tmp_path / name / "result.parquet")
        want = run_gpustream(QUERIES[name], data, "cpu").table  # the Python API's pipeline
        assert got.num_rows == timing["rows_out"] == want.num_rows > 0
        assert differences(got, want, QUERIES[name]) == []
    duck = _bench(capsys, monkeypatch, "--query", "q0", "--sql", "--engine", "duckdb",
                  "--out", str(tmp_path / "d"))
    assert duck.returncode == 2 and "--sql builds gpustream's pipeline" in " ".join(duck.stderr.split())



def test_bench_nexmark_sql_names_the_queries_without_sql(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gpustream.bench.nexmark_sql as nexmark_sql

    monkeypatch.setattr(nexmark_sql, "QUERIES_SQL", ("q0", "q1"))
    missing = _bench(capsys, monkeypatch, "--query", "q1,q6", "--sql", "--out", str(tmp_path))
    assert missing.returncode == 2
    assert "q6 does not run from SQL (--sql): the ones that do are q0, q1" in \
        " ".join(missing.stderr.split())
    every = _bench(capsys, monkeypatch, "--query", "all", "--sql", "--events", "500",
                   "--engine", "cpu", "--no-warmup", "--out", str(tmp_path))
    assert every.returncode == 0, every.stderr
    assert [q["query"] for q in json.loads((tmp_path / "timing.json").read_text())[
        "queries"]] == ["q0", "q1"]
