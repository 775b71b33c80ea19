"""``map_batches(fn, schema=...)``: a Python function of each Arrow batch, typed by its
declared schema, its output's watermarks computed from its event times as a source's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.ingest.source import Source
from gpustream.operators.map import MapBatchesError
from tests.test_checkpoints import _Crash

DELAY = 40
SCHEMA = {"ts": "int64", "tier": "string", "cents": "int64"}


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(0, 20, n)) + rng.integers(0, DELAY + 1, n)
    return pa.table({"ts": ts, "price": rng.uniform(0, 100, n).round(2),
                     "user": rng.choice(["ann", "bo", "cy"], n)})


def _tiers(rb: pa.RecordBatch) -> pa.RecordBatch:
    """Row-wise: drop cheap rows, name a tier by price, price in cents (pyarrow)."""
    rb = rb.filter(pc.greater_equal(rb["price"], 10.0))
    tier = pc.if_else(pc.greater(rb["price"], 60.0), "high", "mid")
    cents = pc.cast(pc.round(pc.multiply(rb["price"], 100)), pa.int64())
    return pa.record_batch([rb["ts"], tier, cents], names=["ts", "tier", "cents"])


def _reference(table: pa.Table, size: int) -> list[tuple[Any, ...]]:
    """The same rows and windows in pandas, from the source rows."""
    df = table.to_pandas()
    df = df[df["price"] >= 10.0].copy()
    df["tier"] = np.where(df["price"] > 60.0, "high", "mid")
    df["cents"] = (df["price"] * 100).round().astype("int64")
    df["window_start"] = df["ts"] - df["ts"] % size
    g = df.groupby(["tier", "window_start"])["cents"].agg(["count", "sum", "max"])
    return sorted((t, int(w), int(c), int(s), int(m)) for (t, w), (c, s, m) in
                  zip(g.index, g.to_numpy(), strict=True))


def _windows(stream: gs.Stream, size: int) -> list[tuple[Any, ...]]:
    out = (stream.key_by("tier").window(gs.Tumbling(size), name="w")
           .agg(n=gs.count(), total=gs.col("cents").sum(), hi=gs.col("cents").max())
           .collect())
    return sorted((r["tier"], r["window_start"], r["n"], r["total"], r["hi"])
                  for r in out.to_pylist())


@settings(max_examples=25)
@given(n=st.integers(0, 400), batch_rows=st.integers(1, 90), seed=st.integers(0, 2**16),
       size=st.sampled_from([30, 100, 500]))
def test_a_row_wise_function_then_windows_equals_pandas(n: int, batch_rows: int, seed: int,
                                                        size: int) -> None:
    table = _events(n, seed)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    mapped = s.map_batches(_tiers, schema=SCHEMA)
    assert mapped.schema == pa.schema(SCHEMA)
    assert _windows(mapped, size) == _reference(table, size)


def _late_run(fn: Any, table: pa.Table, batch_rows: int) -> tuple[list[Any], list[Any]]:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(5))
    w = s.map_batches(fn, schema={"ts": "int64"}).window(gs.Tumbling(10), name="w").agg(
        n=gs.count())
    return (sorted((r["window_start"], r["n"]) for r in w.collect().to_pylist()),
            w.late.collect()["ts"].to_pylist())


@pytest.mark.parametrize("batch_rows", [1, 2, 4])
def test_watermarks_come_from_the_functions_output(batch_rows: int) -> None:
    """The rows fn returns are the stream: 8 follows 12 and 25 at the source (its
    watermark there: 25 - 5, so [0, 10) has fired for it), but fn drops 25, and after
    the step 8 follows 12 only (watermark 7): it counts."""
    table = pa.table({"ts": [12, 25, 8, 30]})
    kept = _late_run(lambda rb: rb.filter(pc.not_equal(rb["ts"], 25)), table, batch_rows)
    assert kept == ([(0, 1), (10, 1), (30, 1)], [])
    # the same rows through unchanged: 8 is late, as at the source
    same = _late_run(lambda rb: rb, table, batch_rows)
    assert same == ([(10, 1), (20, 1), (30, 1)], [8])
    # event times the function moves: windows of the new times
    moved = _late_run(lambda rb: pa.record_batch([pc.add(rb["ts"], 100)], names=["ts"]),
                      pa.table({"ts": [1, 2, 15]}), batch_rows)
    assert moved == ([(100, 2), (110, 1)], [])
    # moved back: the step's watermark is its output's, not the source's (which would
    # fire windows of the moved rows before they came, and again after)
    back = _late_run(lambda rb: pa.record_batch([pc.subtract(rb["ts"], 100)], names=["ts"]),
                     pa.table({"ts": [105, 112, 118, 125]}), batch_rows)
    assert back == ([(0, 1), (10, 2), (20, 1)], [])


def test_string_columns_the_function_makes_are_keys_and_values() -> None:
    table = _events(2000, 3)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=128), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))

    def initials(rb: pa.RecordBatch) -> pa.Table:  # a Table is taken too
        return pa.table({"ts": rb["ts"], "who": pc.utf8_upper(pc.utf8_slice_codeunits(
            rb["user"], 0, 1)), "user": rb["user"]})

    m = s.map_batches(initials, schema={"ts": "int64", "who": "string", "user": "string"},
                      name="initials")
    out = m.filter(gs.col("who") != "B").collect().to_pandas()
    df = table.to_pandas()
    want = df[df["user"] != "bo"]
    assert sorted(zip(out["ts"], out["user"], strict=True)) == sorted(
        zip(want["ts"], want["user"], strict=True))
    assert set(out["who"]) == {"A", "C"}


def test_columns_after_the_step_are_typed_by_its_schema() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(10, 1)), event_time="ts")
    m = s.map_batches(_tiers, schema=SCHEMA, name="tiers")
    with pytest.raises(PlanError, match=r"unknown column 'price'"):
        m.filter(gs.col("price") > 3)
    assert "step 1 (map_batches 'tiers')" in p.explain()
    assert "test_map_batches._tiers" in p.explain()


@pytest.mark.parametrize("fn, schema, message", [
    (_tiers, {"tier": "string", "cents": "int64"},
     r"step 1 \(map_batches '_tiers'\): schema= drops the event-time column 'ts' \(int64\); "
     r"the function must keep it"),
    (_tiers, {"ts": "double", "tier": "string"},
     r"schema= declares double for the event-time column 'ts' \(int64\)"),
    (_tiers, {"ts": "int64", "x": "int"}, r"'int' is not an Arrow type name"),
    (_tiers, {"ts": "int64", "x": pa.list_(pa.int8())}, r"which gpustream cannot hold"),
    (_tiers, {}, r"schema= must declare at least one column"),
    ("not a function", {"ts": "int64"}, r"map_batches takes a function"),
])
def test_invalid_steps_fail_at_plan_time(fn: Any, schema: Any, message: str) -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(10, 1)), event_time="ts")
    with pytest.raises(PlanError, match=message):
        s.map_batches(fn, schema=schema)


def _boom(rb: pa.RecordBatch) -> pa.RecordBatch:
    raise ZeroDivisionError("no rows to divide")


@pytest.mark.parametrize("fn, message", [
    (_boom, r"step 2 \(map_batches '_boom'\): the function raised ZeroDivisionError: no rows "
            r"to divide"),
    (lambda rb: rb.to_pydict(), r"the function returned dict, not a pyarrow.RecordBatch"),
    (lambda rb: rb.select(["ts"]),
     r"has columns \['ts'\], but schema= declares \['ts', 'tier', 'cents'\]; missing: tier, "
     r"cents"),
    (lambda rb: pa.record_batch([rb["ts"], rb["user"], rb["user"]],
                                names=["ts", "tier", "cents"]),
     r"column 'cents' of the function's batch is string, which does not cast to the "
     r"declared int64"),
])
def test_what_goes_wrong_in_the_function_names_the_step(fn: Any, message: str) -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(50, 1)), event_time="ts").filter(gs.col("ts") >= 0)
    with pytest.raises(MapBatchesError, match=message) as info:
        s.map_batches(fn, schema=SCHEMA).collect()
    if fn is _boom:
        assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_functions_columns_are_cast_to_the_declared_types() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"ts": [1, 2], "x": [1, 2]}), event_time="ts")
    out = s.map_batches(lambda rb: rb, schema={"x": "double", "ts": "int64"}).collect()
    assert out.schema == pa.schema({"x": pa.float64(), "ts": pa.int64()})
    assert out.to_pydict() == {"x": [1.0, 2.0], "ts": [1, 2]}


def test_a_spec_cannot_hold_a_function(tmp_path: Path) -> None:
    from gpustream.spec import SpecError, pipeline_from_spec

    (tmp_path / "s.yaml").write_text("""
source: {type: nexmark, events: 10}
steps:
  - map_batches: my_module.fn
sink: {type: console}
""")
    with pytest.raises(SpecError, match=r"s.yaml:4: steps\[0\]: map_batches runs a Python "
                                        r"function, which a YAML spec cannot hold: build this "
                                        r"pipeline in Python"):
        pipeline_from_spec(tmp_path / "s.yaml")


def test_the_step_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    """Its dictionaries and watermark are checkpointed: string keys it made come out
    right after a restart."""
    table = _events(4000, 8)

    def run(src: Source, out: list[pa.RecordBatch]) -> gs.RunStats:
        p = gs.Pipeline("ck-map", engine="cpu")
        s = p.source(src, event_time="ts", watermark=gs.Watermark.bounded(DELAY), name="e")
        (s.map_batches(_tiers, schema=SCHEMA).key_by("tier").window(gs.Tumbling(100), name="w")
         .agg(n=gs.count(), total=gs.col("cents").sum(), hi=gs.col("cents").max())
         .sink(gs.to_callback(out.append)))
        return p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=3))

    first: list[pa.RecordBatch] = []
    with pytest.raises(OSError, match="lost power"):
        run(_Crash(gs.from_arrow(table, batch_rows=100), 17), first)
    second: list[pa.RecordBatch] = []
    stats = run(gs.from_arrow(table, batch_rows=100), second)
    assert stats.restored_checkpoint is not None and stats.events_in < table.num_rows

    def rows(batches: list[pa.RecordBatch]) -> set[tuple[Any, ...]]:
        return {(r["tier"], r["window_start"], r["n"], r["total"], r["hi"])
                for r in pa.Table.from_batches(batches).to_pylist()} if batches else set()

    want = set(_reference(table, 100))
    assert rows(first) | rows(second) == want and rows(second) <= want


@pytest.mark.cudasim
def test_the_step_on_the_device_backends(device_backend: Backend) -> None:
    table = _events(150, 5)
    p = gs.Pipeline(engine=device_backend.name)
    s = p.source(gs.from_arrow(table, batch_rows=40), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    assert _windows(s.map_batches(_tiers, schema=SCHEMA), 100) == _reference(table, 100)


def test_pandas_inside_the_function() -> None:
    """A function may use any library: here pandas, on the batch's rows."""
    table = _events(300, 2)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=64), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))

    def ranked(rb: pa.RecordBatch) -> pa.RecordBatch:
        df: pd.DataFrame = rb.to_pandas()
        df["cents"] = (df["price"] * 100).round().astype("int64")
        df["tier"] = np.where(df["price"] > 60.0, "high", "mid")
        return pa.RecordBatch.from_pandas(df[df["price"] >= 10.0][["ts", "tier", "cents"]],
                                          preserve_index=False)

    assert _windows(s.map_batches(ranked, schema=SCHEMA), 100) == _reference(table, 100)
