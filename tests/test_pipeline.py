"""Pipelines of filter / with_columns / select against pandas, on every backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import gpustream as gs
from gpustream.errors import PlanError
from tests.reference import assert_same, to_pandas


def events(seed: int, n: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user": pa.array(rng.integers(0, 50, n).astype(np.int32)),
        "price": pa.array(rng.integers(0, 500, n), mask=rng.random(n) < 0.1),
        "qty": pa.array(rng.integers(0, 5, n).astype(np.int16), mask=rng.random(n) < 0.1),
        "rate": pa.array(rng.uniform(0.5, 1.5, n), mask=rng.random(n) < 0.1),
        "promo": pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.1),
        "channel": pa.array(rng.choice(["web", "app", "shop"], n), mask=rng.random(n) < 0.05),
        "ts": pa.array(np.sort(rng.integers(0, 10**6, n)), type=pa.timestamp("ms")),
    })


def query(p: gs.Pipeline, table: pa.Table, batch_rows: int) -> gs.Stream:
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts")
    return (
        s.filter(((gs.col("price") > 100) | gs.col("promo")) & (gs.col("channel") != "shop"))
        .with_columns(
            total=gs.col("price") * gs.col("qty"),
            usd=gs.col("price") * gs.col("rate"),
            per_item=gs.col("price") / gs.col("qty"),
            big=gs.col("price") >= 400,
        )
        .select("user", "channel", "total", "usd", "per_item", "big", "ts")
    )


def reference(table: pa.Table) -> pd.DataFrame:
    df = to_pandas(table)
    keep = ((df.price > 100) | df.promo) & (df.channel != "shop")
    df = df[keep.fillna(False).astype(bool)].copy()
    df["total"] = df.price * df.qty
    df["usd"] = df.price * df.rate
    df["per_item"] = (df.price / df.qty).mask(df.qty == 0)
    df["big"] = df.price >= 400
    return df[["user", "channel", "total", "usd", "per_item", "big", "ts"]]


@pytest.mark.parametrize("seed", [11, 12])
def test_filter_with_columns_select_match_pandas(backend: gs.Backend, seed: int) -> None:
    n = 3000 if backend.name == "cudasim" else 20_000
    table = events(seed, n)
    got = query(gs.Pipeline(engine=backend.name), table, 1024).collect()
    assert got.schema.field("total").type == pa.int64()
    assert got.schema.field("usd").type == pa.float64()
    assert got.schema.field("ts").type == pa.timestamp("ms")
    assert got.schema.field("channel").type == pa.string()
    assert_same(got, reference(table))


@given(
    st.lists(st.tuples(st.one_of(st.none(), st.integers(-1000, 1000)),
                       st.one_of(st.none(), st.integers(-3, 3)),
                       st.sampled_from(["web", "app", "shop", None])), max_size=60),
    st.integers(1, 70),
)
def test_results_do_not_depend_on_batch_boundaries(rows: list, batch_rows: int) -> None:
    table = pa.table({
        "price": pa.array([r[0] for r in rows], pa.int64()),
        "qty": pa.array([r[1] for r in rows], pa.int16()),
        "channel": pa.array([r[2] for r in rows], pa.string()),
    })

    def run(size: int) -> pa.Table:
        p = gs.Pipeline(engine="cpu")
        s = p.source(gs.from_arrow(table, batch_rows=size))
        return (s.filter((gs.col("price") > 0) | (gs.col("channel") == "app"))
                .with_columns(r=gs.col("price") // gs.col("qty"), c=gs.col("channel"))
                .select("c", "r", "price").collect())

    whole = run(max(1, len(rows)))
    assert run(batch_rows).equals(whole)
    df = to_pandas(table)
    keep = ((df.price > 0) | (df.channel == "app")).fillna(False).astype(bool)
    ref = df[keep].copy()
    ref["c"] = ref.channel
    ref["r"] = (ref.price // ref.qty).mask(ref.qty == 0)
    assert_same(whole, ref[["c", "r", "price"]])


@pytest.mark.cudasim
def test_cpu_equals_cudasim() -> None:
    from tests.conftest import cudasim_on

    if not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1")
    table = events(5, 2000)
    cpu = query(gs.Pipeline(engine="cpu"), table, 333).collect()
    sim = query(gs.Pipeline(engine="cudasim"), table, 333).collect()
    assert cpu.equals(sim)


def test_plan_errors_name_step_and_columns() -> None:
    p = gs.Pipeline("errors", engine="cpu")
    s = p.source(gs.from_arrow({"price": [1], "bidder": [2], "ts": [3]}), event_time="ts")
    f = s.filter(gs.col("price") > 0)
    with pytest.raises(PlanError, match=r"step 2 \(with_columns\) column 'usd': unknown column "
                                        r"'prise'; did you mean 'price'\? The columns are: "
                                        r"price, bidder, ts"):
        f.with_columns(usd=gs.col("prise") * 0.9)
    with pytest.raises(PlanError, match=r"step 1 \(filter\).*gives int64, not a bool"):
        s.filter(gs.col("price") + 1)
    with pytest.raises(PlanError, match=r"step 1 \(select\).*unknown column 'nope'"):
        s.select("nope")
    with pytest.raises(PlanError, match=r"step 1 \(select\): column name\(s\) price given twice"):
        s.select("price", price=gs.col("bidder"))
    with pytest.raises(PlanError, match="event_time column 'time' is not in the source"):
        p.source(gs.from_arrow({"x": [1]}), event_time="time", name="other")
    with pytest.raises(PlanError, match="event_time column 'x' has type double"):
        p.source(gs.from_arrow({"x": [1.0]}), event_time="x", name="third")
    with pytest.raises(PlanError, match="a source named 'source' exists already"):
        p.source(gs.from_arrow({"x": [1]}), name="source")
    with pytest.raises(PlanError, match="no sinks"):
        p.run()


def test_run_stats_sinks_and_explain() -> None:
    got: list[pa.RecordBatch] = []
    con = Console(width=120, record=True, color_system=None)
    p = gs.Pipeline("stats", engine="cpu")
    s = p.source(gs.from_arrow({"x": list(range(10))}, batch_rows=4), name="nums")
    odd = s.filter(gs.col("x") % 2 == 1)
    odd.sink(gs.to_callback(got.append))
    odd.with_columns(y=gs.col("x") * 10).sink(gs.to_console(max_rows=2, console=con))
    text = p.explain()
    assert "backend: cpu (engine='cpu' was asked for)" in text
    assert "step 1 (filter) ((col('x') % 2) == 1)  [x: int64]" in text
    assert "step 2 (with_columns) y=(col('x') * 10)  [x: int64, y: int64]" in text
    stats = p.run()
    assert (stats.events_in, stats.batches_in, stats.events_out) == (10, 3, 10)
    assert sum(rb.num_rows for rb in got) == 5
    assert pa.Table.from_batches(got)["x"].to_pylist() == [1, 3, 5, 7, 9]
    printed = con.export_text()
    assert "2 of 2 rows" not in printed and "1 rows" in printed and "┃ y" in printed


def test_max_events_stops_early() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"x": list(range(100))}, batch_rows=30))
    seen: list[int] = []
    s.sink(gs.to_callback(lambda rb: seen.extend(rb["x"].to_pylist())))
    stats = p.run(max_events=45)
    assert seen == list(range(45)) and stats.events_in == 45 and stats.stopped_early


def test_collect_on_empty_result_keeps_schema() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"x": [1, 2], "s": ["a", "b"]}))
    out = s.filter(gs.col("x") > 5).with_columns(y=gs.col("x") * 2.0).collect()
    assert out.num_rows == 0
    assert out.schema == pa.schema({"x": pa.int64(), "s": pa.string(), "y": pa.float64()})


def test_literal_columns_and_replacement() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"x": pa.array([1, 2], pa.int32())}))
    out = s.with_columns(one=1, x=gs.col("x") + 1, half=gs.lit(0.5)).collect()
    assert out.to_pydict() == {"x": [2, 3], "one": [1, 1], "half": [0.5, 0.5]}
    assert out.schema.field("x").type == pa.int32()
    with pytest.raises(PlanError, match="string literal can only be compared"):
        s.with_columns(tag="hello")
