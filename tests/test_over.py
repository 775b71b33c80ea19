"""OVER windows (issue 17): per key, count/sum/min/max/mean over each row's RANGE or ROWS
frame, added to every row, in event time.

The reference is DuckDB's window functions over the on-time rows (those not older than
the watermark as of their arrival, computed here from the definition in DESIGN.md section
3); the late rows are checked against the same definition. Properties: the output does
not depend on batching; a crashed run resumed from its checkpoint gives what one run
gives; the YAML spec builds the same pipeline as the Python API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.ingest.source import Source
from gpustream.operators.over import OverOp
from gpustream.spec import SpecError, pipeline_from_spec
from tests.conftest import cudasim_on
from tests.test_checkpoints import _Crash
from tests.test_join_checkpoints import _check

DELAY = 150  # the watermark's delay (ms)


def _events(n: int, seed: int, ts_type: pa.DataType | None = None) -> pa.Table:
    """Out-of-order events: an arrival ``id``, a nullable int key, a string key, a
    nullable float and a nullable int value; many ties in event time."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 20 * n, n)) + rng.integers(0, 200, n)  # some come late
    ts = (ts // 7) * 7  # ties
    return pa.table({
        "id": np.arange(n, dtype=np.int64),
        "k": pa.array(rng.integers(0, 5, n), mask=rng.random(n) < 0.05),
        "s": rng.choice(["ann", "bo", "cy"], n),
        "v": pa.array(np.round(rng.normal(10, 5, n), 3), mask=rng.random(n) < 0.15),
        "i": pa.array(rng.integers(-50, 50, n), mask=rng.random(n) < 0.15),
        "ts": pa.array(ts.astype(np.int64)).cast(ts_type or pa.int64()),
    })


def _on_time(table: pa.Table, delay: int = DELAY) -> np.ndarray:
    """Rows not older than the watermark as of their arrival (the largest event time
    before them, minus ``delay``), in plain numpy."""
    ts = table["ts"].cast(pa.int64()).to_numpy()
    before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min + delay], ts]))[:-1]
    return np.asarray(ts >= before - delay)


AGGS = {  # name: (gpustream's aggregation, DuckDB's, {w} its window)
    "n": (gs.count(), "count(*) OVER {w}"),
    "nv": (gs.col("v").count(), "count(v) OVER {w}"),
    "sv": (gs.col("v").sum(), "sum(v) OVER {w}"),
    "si": (gs.col("i").sum(), "CAST(sum(i) OVER {w} AS BIGINT)"),
    "lo": (gs.col("i").min(), "min(i) OVER {w}"),
    "hi": (gs.col("v").max(), "max(v) OVER {w}"),
    "m": (gs.col("v").mean(), "avg(v) OVER {w}"),
    "m2": ((gs.col("i") * 2).mean(), "avg(i * 2) OVER {w}"),
}


def _run(table: pa.Table, keys: tuple[str, ...], frame: dict[str, Any], batch_rows: int,
         engine: str = "cpu") -> tuple[pa.Table, pa.Table, gs.RunStats]:
    p = gs.Pipeline("over", engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    framed = s.key_by(*keys).over(**frame, name="o") if keys else s.over(**frame, name="o")
    over = framed.agg(**{n: a for n, (a, _) in AGGS.items()})
    out: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    over.sink(gs.to_callback(out.append))
    over.late.sink(gs.to_callback(late.append))
    stats = p.run()
    return (pa.Table.from_batches(out, over.schema),
            pa.Table.from_batches(late, table.schema), stats)


def _duckdb(table: pa.Table, keys: tuple[str, ...], frame: str) -> pa.Table:
    con = duckdb.connect()
    con.register("t", table)
    part = f"PARTITION BY {', '.join(keys)} " if keys else ""
    order = "ts, id" if frame.startswith("ROWS") else "ts"
    w = f"({part}ORDER BY {order} {frame} AND CURRENT ROW)"
    cols = ", ".join(f"{sql.format(w=w)} AS {n}" for n, (_, sql) in AGGS.items())
    return con.sql(f"SELECT *, {cols} FROM t ORDER BY ts, id").to_arrow_table()


def _same(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got[name].to_pylist(), want[name].to_pylist()
        if name in ("sv", "hi", "m", "m2", "v"):
            assert [x is None for x in a] == [x is None for x in b], name
            np.testing.assert_allclose([x for x in a if x is not None],
                                       [x for x in b if x is not None], rtol=1e-9,
                                       atol=1e-9, err_msg=name)
        else:
            assert a == b, name


FRAMES = [({"range": 300}, "RANGE BETWEEN 300 PRECEDING"),
          ({"range": 0}, "RANGE BETWEEN 0 PRECEDING"),
          ({"rows": 3}, "ROWS BETWEEN 3 PRECEDING"),
          ({"rows": 0}, "ROWS BETWEEN 0 PRECEDING"),
          ({"rows": "unbounded"}, "ROWS BETWEEN UNBOUNDED PRECEDING")]


@pytest.mark.parametrize("keys", [("k",), ("s", "k"), ()])
@pytest.mark.parametrize(("frame", "sql"), FRAMES)
def test_over_matches_duckdb_on_the_on_time_rows(keys: tuple[str, ...], frame: dict[str, Any],
                                                 sql: str) -> None:
    table = _events(3000, seed=len(keys) * 10 + len(sql))
    got, late, stats = _run(table, keys, frame, batch_rows=257)
    on_time = _on_time(table)
    assert 0 < (~on_time).sum() < table.num_rows // 4  # the data does have late rows
    _same(got, _duckdb(table.filter(pa.array(on_time)), keys, sql))
    assert late.equals(table.filter(pa.array(~on_time)))
    assert stats.late_events == int((~on_time).sum())


def test_a_range_of_event_time_with_an_interval_matches_duckdb() -> None:
    """A timestamp event time, the range given as a duration string."""
    table = _events(2000, seed=7, ts_type=pa.timestamp("ms"))
    got, _, _ = _run(table, ("s",), {"range": "1s"}, batch_rows=100)
    want = _duckdb(table.filter(pa.array(_on_time(table))), ("s",),
                   "RANGE BETWEEN INTERVAL 1 SECOND PRECEDING")
    _same(got, want)


@settings(max_examples=25)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
       frame=st.sampled_from([{"range": 120}, {"rows": 2}, {"rows": "unbounded"}]))
def test_the_output_does_not_depend_on_batching(sizes: list[int], frame: dict[str, Any]
                                                ) -> None:
    table = _events(300, seed=3)
    one, late_one, _ = _run(table, ("k",), frame, batch_rows=300)
    for rows in sizes:
        got, late, _ = _run(table, ("k",), frame, batch_rows=rows)
        assert got.equals(one)  # rows, values and order
        assert late.equals(late_one)


def test_rows_of_the_same_event_time_range_includes_all_rows_in_arrival_order() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1] * 4, "ts": [5, 5, 9, 5], "v": [1, 2, 4, 8]}),
                 event_time="ts", watermark=gs.Watermark.bounded(10))
    keyed = s.key_by("k")
    rng = keyed.over(range=0).agg(t=gs.col("v").sum()).collect()
    rows = keyed.over(rows=1).agg(t=gs.col("v").sum()).collect()
    assert rng.to_pydict() == {"k": [1] * 4, "ts": [5, 5, 5, 9], "v": [1, 2, 8, 4],
                               "t": [11, 11, 11, 4]}
    assert rows["t"].to_pylist() == [1, 3, 10, 12]


def test_state_is_bounded_by_the_frame_and_the_pending_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long in-order stream: the operator keeps about a range's worth of rows (ROWS:
    n per key) and the rows the watermark has not passed, not the stream."""
    n = 20_000
    table = pa.table({"k": np.arange(n) % 4, "ts": np.arange(n, dtype=np.int64) * 10})
    real = OverOp.on_watermark
    for frame, bound in (({"range": 500}, 50 + 20 + 50), ({"rows": 7}, 4 * 7 + 20 + 50),
                         ({"rows": "unbounded"}, 20 + 50)):
        seen: list[tuple[int, int]] = []

        def spy(self: OverOp, w: int, seen: list[tuple[int, int]] = seen) -> list[Any]:
            out = real(self, w)
            seen.append((self.state_rows, self.state_bytes()))
            return out

        monkeypatch.setattr(OverOp, "on_watermark", spy)
        p = gs.Pipeline(engine="cpu")
        s = p.source(gs.from_arrow(table, batch_rows=50), event_time="ts",
                     watermark=gs.Watermark.bounded(200))
        s.key_by("k").over(**frame, name="o").agg(n=gs.count()).sink(
            gs.to_callback(lambda b: None))
        p.run()
        rows = [r for r, _ in seen]
        assert len(seen) >= n // 50 and max(rows) <= bound, (frame, max(rows))
        assert all(b >= 16 * r for r, b in seen)  # k, ts, arrival, each 8 bytes a row
        assert seen[-1] == (0, 0)  # the end of the input emits and frees everything


def test_a_window_over_an_over_windows_output_sees_no_late_rows() -> None:
    """The rows an OVER window emits carry the watermark it passed on before them: a
    window further down counts every one of them."""
    table = _events(2000, seed=11)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=128), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    over = s.key_by("k").over(rows=5).agg(n=gs.count())
    w = over.window(gs.Tumbling(1000)).agg(rows=gs.count(), total=gs.col("n").sum())
    out = w.collect()
    on_time = _on_time(table)
    assert sum(out["rows"].to_pylist()) == int(on_time.sum())
    assert w.late.collect().num_rows == 0


def _crash_build(table: pa.Table, frame: dict[str, Any]) -> Any:
    def build(engine: str, crash: dict[str, int]) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                          int]:
        p = gs.Pipeline("over-ck", engine=engine)
        src: Source = gs.from_arrow(table, batch_rows=64)
        if "src" in crash:
            src = _Crash(src, crash["src"])
        s = p.source(src, event_time="ts", watermark=gs.Watermark.bounded(DELAY), name="src")
        over = s.key_by("s", "k").over(**frame, name="o").agg(
            n=gs.count(), sv=gs.col("v").sum(), hi=gs.col("i").max(), m=gs.col("v").mean())
        out: list[pa.RecordBatch] = []
        over.sink(gs.to_callback(out.append))
        return p, out, table.num_rows
    return build


@pytest.mark.parametrize("frame", [{"range": 400}, {"rows": 4}, {"rows": "unbounded"}])
def test_a_crashed_run_resumes_from_its_checkpoint(backend: Backend, frame: dict[str, Any],
                                                   tmp_path: Path) -> None:
    table = _events(600 if cudasim_on() else 1500, seed=5)
    build = _crash_build(table, frame)
    p, out, _ = build("cpu", {})
    p.run()
    want = pa.Table.from_batches(out).to_pylist()
    want_rows = [tuple((k, round(v, 9) if isinstance(v, float) else v) for k, v in r.items())
                 for r in want]
    assert len(want_rows) == int(_on_time(table).sum())  # every on-time row, once
    _check(build, {"src": 7}, tmp_path / "ck", 3, (backend.name, backend.name), want_rows)


def test_the_device_backends_give_the_cpu_result(device_backend: Backend) -> None:
    table = _events(400, seed=9)
    for frame in ({"range": 200}, {"rows": 2}, {"rows": "unbounded"}):
        want, want_late, _ = _run(table, ("s",), frame, batch_rows=64)
        got, late, stats = _run(table, ("s",), frame, batch_rows=64,
                                engine=device_backend.name)
        _same(got, want)
        assert late.equals(want_late) and stats.late_events == want_late.num_rows


# -- plan-time checks ---------------------------------------------------------------------

def _stream() -> gs.Stream:
    p = gs.Pipeline(engine="cpu")
    return p.source(gs.from_arrow({"k": [1], "ts": [1], "v": [1.0], "name": ["x"]}),
                    event_time="ts")


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: s.key_by("k").over(range="1s").agg(v=gs.count()),
     r"over 'over@1'\) agg 'v': the input already has a column 'v'"),
    (lambda s: s.key_by("k").over(rows=2).agg(q=gs.col("v").std()),
     r"OVER windows compute count, sum, min, max, mean, row_number; col\('v'\).std\(\) "
     r"is not one"),
    (lambda s: s.key_by("k").over(rows=2).agg(q=gs.row_number()),
     r"row_number\(\) numbers every row of its key: use over\(rows='unbounded'\)"),
    (lambda s: s.key_by("k").window(gs.Tumbling(10)).agg(q=gs.row_number()),
     r"row_number\(\) numbers rows in an OVER window"),
    (lambda s: s.key_by("k").agg(q=gs.row_number()),
     r"row_number\(\) numbers rows in an OVER window"),
    (lambda s: s.key_by("k").over(rows=2).agg(q=gs.col("name").sum()),
     r"sum needs numbers"),
    (lambda s: s.key_by("k").over(range="1s", rows=2), r"give exactly one of range="),
    (lambda s: s.key_by("k").over(), r"give exactly one of range="),
    (lambda s: s.key_by("k").over(rows=-1).agg(n=gs.count()), r"rows must be a whole number"),
    (lambda s: s.key_by("v").over(rows=1).agg(n=gs.count()), r"key column 'v' has type double"),
    (lambda s: s.key_by("k").over(rows=1).agg(), r"agg needs at least one aggregation"),
])
def test_plan_errors_name_the_step_and_the_fix(make: Any, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make(_stream())


def test_over_needs_an_event_time() -> None:
    s = gs.Pipeline(engine="cpu").source(gs.from_arrow({"k": [1], "ts": [1]}))
    with pytest.raises(PlanError, match="windows need an event time: pass event_time="):
        s.key_by("k").over(rows=1).agg(n=gs.count())


# -- the YAML spec ------------------------------------------------------------------------

def _spec(tmp_path: Path, steps: str, late: bool = True) -> Path:
    table = _events(500, seed=2)
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "tx.parquet")
    text = f"""
name: fraud
engine: cpu
source: {{type: parquet, path: {tmp_path / 'tx.parquet'}, event_time: ts, watermark: {DELAY}ms,
          max_rows: 64}}
steps:
{steps}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""" + (f"late: {{type: jsonl, path: {tmp_path / 'late.jsonl'}}}\n" if late else "")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("steps", [
    "  - key_by: s\n  - over: {range: 300ms, as: recent}\n"
    "  - agg: {n: count(), spent: sum(v)}",
    "  - key_by: s\n  - over: {range: 300, name: recent, agg: {n: count(), spent: sum(v)}}",
])
def test_a_spec_runs_an_over_step_as_the_python_api(tmp_path: Path, steps: str) -> None:
    p = pipeline_from_spec(_spec(tmp_path, steps))
    stats = p.run()
    import pyarrow.parquet as pq

    got = pq.read_table(tmp_path / "out").sort_by([("ts", "ascending"), ("id", "ascending")])
    table = _events(500, seed=2)
    py = gs.Pipeline(engine="cpu")
    s = py.source(gs.from_arrow(table, batch_rows=64), event_time="ts",
                  watermark=gs.Watermark.bounded(DELAY))
    want = s.key_by("s").over(range=300, name="recent").agg(
        n=gs.count(), spent=gs.col("v").sum()).collect()
    assert got.select(want.column_names).equals(want)
    late = (tmp_path / "late.jsonl").read_text().splitlines()
    assert stats.late_events == len(late) == int((~_on_time(table)).sum()) > 0


@pytest.mark.parametrize(("steps", "message"), [
    ("  - key_by: s\n  - over: {range: 1s}", "steps[1].over: over needs an agg step after it"),
    ("  - over: {range: 1s, rows: 3, agg: {n: count()}}",
     "steps[0].over: give exactly one of range"),
    ("  - over: {rows: -2, agg: {n: count()}}", "steps[0].over.rows: must be >= 0"),
    ("  - over: {rows: 2, agg: {n: median(v)}}", "steps[0].over.agg.n: unknown aggregation"),
    ("  - over: {rows: 2, agg: {n: std(v)}}", "steps[0].over: step 1 (over 'over@1') agg 'n': "
                                              "OVER windows compute count, sum, min, max, mean"),
    ("  - over: {rows: 2}\n  - filter: 'v > 1'", "steps[1].filter: filter cannot come right "
                                                 "after over"),
])
def test_spec_errors_name_the_step_and_the_fix(tmp_path: Path, steps: str, message: str
                                               ) -> None:
    with pytest.raises(SpecError) as caught:
        pipeline_from_spec(_spec(tmp_path, steps, late=False))
    assert any(message in m for m in caught.value.messages), caught.value.messages


def test_a_spec_runs_an_unbounded_frame_as_row_numbers(tmp_path: Path) -> None:
    """``rows: unbounded``: row_number() is SQL's ROW_NUMBER(), the sums running totals."""
    import pyarrow.parquet as pq

    table = _events(500, seed=2)
    pq.write_table(table, tmp_path / "ev.parquet")
    spec = tmp_path / "rn.yaml"
    spec.write_text(f"""
name: rn
engine: cpu
source: {{type: parquet, path: {tmp_path / 'ev.parquet'}, event_time: ts, watermark: {DELAY}ms}}
steps:
  - key_by: s
  - over: {{rows: unbounded, agg: {{rn: row_number(), total: sum(i)}}}}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""")
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out").sort_by([("ts", "ascending"), ("id", "ascending")])
    con = duckdb.connect()
    con.register("t", table.filter(pa.array(_on_time(table))))
    want = con.sql("SELECT row_number() OVER w AS rn, CAST(sum(i) OVER w AS BIGINT) AS total "
                   "FROM t WINDOW w AS (PARTITION BY s ORDER BY ts, id ROWS UNBOUNDED "
                   "PRECEDING) ORDER BY ts, id").to_arrow_table()
    assert got["rn"].to_pylist() == want["rn"].to_pylist()
    assert got["total"].to_pylist() == want["total"].to_pylist()
