"""Aggregate FILTER (``agg.filter(cond)``, SQL's ``agg(x) FILTER (WHERE cond)``) against
DuckDB, on every state store: the CPU's fused loop, the (key, window) table store (with
allowed lateness), the GPU pane kernel (under the simulator), and session windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.expr.text import parse_agg
from gpustream.kernels.fused_window import FUSED_KINDS
from gpustream.operators.window import AggSpec, WindowSpec
from gpustream.state.window_store import make_store
from tests.test_max_by import bids, duckdb_windows, run, sql

APPLE = gs.col("channel") == "apple"

#: output column -> (gpustream aggregation, DuckDB aggregate); all fold in the fused loops
FUSED: dict[str, tuple[gs.Agg, str]] = {
    "s_apple": (gs.col("price").sum().filter(APPLE), "sum(price) FILTER (WHERE channel = 'apple')"),
    "s_all": (gs.col("price").sum(), "sum(price)"),  # the same input, unfiltered
    "n_apple": (gs.count().filter(APPLE), "count(*) FILTER (WHERE channel = 'apple')"),
    "n_all": (gs.count(), "count(*)"),
    "nv": (gs.col("price").count().filter(gs.col("fp") > 0),
           "count(price) FILTER (WHERE fp > 0)"),
    "hi": (gs.col("price").max().filter(gs.col("channel") != "apple"),
           "max(price) FILTER (WHERE channel <> 'apple')"),
    "m": (gs.col("price").mean().filter((gs.col("fp") >= 0) & APPLE),
          "avg(price) FILTER (WHERE fp >= 0 AND channel = 'apple')"),
    "never": (gs.col("price").sum().filter(gs.lit(False)), "sum(price) FILTER (WHERE false)"),
}
#: aggregations only the table store folds
TABLE_ONLY: dict[str, tuple[gs.Agg, str]] = {
    "f": (gs.col("name").first().filter(APPLE),
          "first(name ORDER BY ts, seq) FILTER (WHERE channel = 'apple' AND name IS NOT NULL)"),
    "u": (gs.col("bidder").count_distinct().filter(APPLE),
          "count(DISTINCT bidder) FILTER (WHERE channel = 'apple')"),
}


def _store(aggs: dict[str, tuple[gs.Agg, str]], lateness: int, backend: Backend) -> str:
    """The store a window of ``aggs`` runs on (the rule the pipeline's window uses)."""
    schema = pa.schema([("k", pa.string()), ("window_start", pa.int64()),
                        ("window_end", pa.int64()), *((n, pa.float64()) for n in aggs)])
    spec = WindowSpec("w", ("k",), "ts", 2000, 2000, 0, 0, lateness,
                      tuple(AggSpec(n, a, pa.float64(), pa.float64()) for n, (a, _) in aggs.items()),
                      schema, lateness > 0)
    return type(make_store(spec, backend)).__name__


def _check(table: pa.Table, engine: str, assigner: gs.WindowAssigner,
           aggs: dict[str, tuple[gs.Agg, str]], lateness: int = 0) -> list[tuple[Any, ...]]:
    got = run(table, engine, assigner, {k: a for k, (a, _) in aggs.items()},
              lateness=lateness)
    want = duckdb_windows(table, assigner, {k: sql for k, (_, sql) in aggs.items()})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):  # means to the last bits, the rest exactly
        assert [pytest.approx(x, rel=1e-12) if isinstance(x, float) else x for x in g] == list(w)
    return got


def test_filter_on_the_fused_loop_and_the_pane_kernel(backend: Backend) -> None:
    n = 400 if backend.name == "cudasim" else 4000
    assert {a.kind for a, _ in FUSED.values()} <= FUSED_KINDS
    assert _store(FUSED, 0, backend) == ("CpuPaneStore" if backend.name == "cpu"
                                         else "GpuPaneStore")
    got = _check(bids(2, n), backend.name, gs.Tumbling(2000), FUSED)
    s_apple, s_all, n_apple, n_all = (list(c) for c in list(zip(*got, strict=True))[3:7])
    assert all(a < b for a, b in zip(n_apple, n_all, strict=True))  # the filter bites
    assert s_apple != s_all


@pytest.mark.parametrize("assigner", [gs.Tumbling(2000), gs.Sliding(3000, 1000)],
                         ids=lambda a: a.describe())
def test_filter_on_the_table_store(backend: Backend, assigner: gs.WindowAssigner) -> None:
    aggs = {**FUSED, **TABLE_ONLY}
    assert _store(aggs, 0, backend) == "TableStore"
    assert _store(FUSED, 5000, backend) == "TableStore"
    n = 400 if backend.name == "cudasim" else 4000
    _check(bids(3, n), backend.name, assigner, aggs, lateness=5000)


def test_filter_in_session_windows(backend: Backend) -> None:
    n = 400 if backend.name == "cudasim" else 4000
    _check(bids(4, n), backend.name, gs.Session(40), {**FUSED, **TABLE_ONLY})


def test_a_condition_that_is_not_boolean_fails_at_plan_time() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1], "ts": [1], "v": [1.0]}), event_time="ts")
    with pytest.raises(PlanError, match=r"step 1 \(window 'w'\) agg 'total': filter\(\) needs "
                                        r"a true/false condition, but col\('v'\) is double; "
                                        r"compare it"):
        s.key_by("k").window(gs.Tumbling(10), name="w").agg(
            total=gs.col("v").sum().filter(gs.col("v")))
    with pytest.raises(PlanError, match=r"agg 'n': .*unknown column 'chanel'"):
        s.key_by("k").window(gs.Tumbling(10)).agg(n=gs.count().filter(gs.col("chanel") == 1))


def test_repr_and_chained_filters() -> None:
    a = gs.col("price").sum().filter(APPLE).filter(gs.col("price") > 3)
    assert repr(a) == ("col('price').sum().filter(((col('channel') == 'apple') & "
                       "(col('price') > 3)))")
    assert repr(gs.count().filter(APPLE)) == "count().filter((col('channel') == 'apple'))"
    assert repr(parse_agg("count(where=channel == 'apple')")) == repr(gs.count().filter(APPLE))
    with pytest.raises(PlanError, match=r"takes where=<condition> as its only keyword"):
        parse_agg("sum(price, filter=channel == 'apple')")


def test_a_spec_with_filters_runs_like_the_python_api(tmp_path: Path) -> None:
    from gpustream.spec import pipeline_from_spec

    pq.write_table(bids(5, 2000), tmp_path / "bids.parquet")
    (tmp_path / "p.yaml").write_text(
        "name: f\n"
        f"source: {{type: parquet, path: {tmp_path / 'bids.parquet'}, event_time: ts,\n"
        "         watermark: 401ms}\n"
        "steps:\n  - key_by: k\n  - window: {tumbling: 2s}\n"
        "  - agg:\n"
        "      apple: \"sum(price, where=channel == 'apple')\"\n"
        "      n: \"count(where=channel == 'apple' and price > 3)\"\n"
        "      top: \"arg_max(bidder, price, where=channel == 'apple')\"\n"
        f"sink: {{type: parquet, path: {tmp_path / 'out'}}}\n")
    pipeline_from_spec(tmp_path / "p.yaml").run()
    got = pq.read_table(tmp_path / "out").sort_by([("k", "ascending"),
                                                   ("window_start", "ascending")])
    cond = APPLE & (gs.col("price") > 3)
    want = run(bids(5, 2000), "cpu", gs.Tumbling(2000),
               {"apple": gs.col("price").sum().filter(APPLE), "n": gs.count().filter(cond),
                "top": gs.col("bidder").max_by("price").filter(APPLE)})
    names = ["k", "window_start", "window_end", "apple", "n", "top"]
    assert list(zip(*(got.column(c).to_pylist() for c in names), strict=True)) == want


def test_duckdb_filter_reference_is_what_it_says() -> None:
    """The reference itself: DuckDB's FILTER drops the rows whose condition is null."""
    t = pa.table({"v": [1, 2, 4], "c": ["apple", None, "x"]})
    assert sql(t, "SELECT sum(v) FILTER (WHERE c = 'apple'), "
                  "count(*) FILTER (WHERE c <> 'apple') FROM t") == [(1, 1)]
