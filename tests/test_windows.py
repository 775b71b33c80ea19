"""Keyed event-time windows against the plain reference (tests/window_reference.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
from gpustream.errors import PlanError
from tests.reference import to_pandas
from tests.window_reference import assert_windows_equal, reference_windows, sort_output

ALL_AGGS: dict[str, tuple[str, str | None]] = {
    "n": ("count", None),
    "nv": ("count_valid", "v"),
    "total": ("sum", "v"),
    "itotal": ("sum", "q"),
    "lo": ("min", "q"),
    "hi": ("max", "v"),
    "avg": ("mean", "v"),
    "var": ("var", "v"),
    "sd": ("std", "q"),
    "first_v": ("first", "v"),
    "last_c": ("last", "c"),
    "distinct": ("count_distinct", "q"),
    "approx": ("approx_count_distinct", "q"),
}


def to_agg(kind: str, column: str | None) -> gs.Agg:
    if kind == "count":
        return gs.count()
    assert column is not None
    c = gs.col(column)
    agg: gs.Agg = getattr(c, "count" if kind == "count_valid" else kind)()
    return agg


def events(seed: int, n: int, keys: int = 5, disorder: int = 3000, span: int = 60_000) -> pa.Table:
    """Out-of-order events: ts roughly increasing with random lateness; nulls in values."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.integers(0, span, n))
    ts = base - rng.integers(0, disorder, n) * (rng.random(n) < 0.3)
    return pa.table({
        "k": pa.array(rng.choice([f"key{i}" for i in range(keys)], n)),
        "g": pa.array(rng.integers(0, 3, n).astype(np.int16)),
        "ts": pa.array(ts.astype(np.int64)),
        "v": pa.array(rng.normal(100, 20, n), mask=rng.random(n) < 0.1),
        "q": pa.array(rng.integers(-50, 50, n).astype(np.int32), mask=rng.random(n) < 0.1),
        "c": pa.array(rng.choice(["x", "y", "z"], n), mask=rng.random(n) < 0.1),
    })


def run_windows(table: pa.Table, engine: str, assigner: gs.WindowAssigner, keys: tuple[str, ...],
                aggs: dict[str, tuple[str, str | None]], delay: int = 1000, lateness: int = 0,
                batch_rows: int = 500) -> tuple[pd.DataFrame, pa.Table]:
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(delay))
    ks = s.key_by(*keys) if keys else s
    w = ks.window(assigner, name="w", allowed_lateness=lateness).agg(
        **{name: to_agg(kind, col) for name, (kind, col) in aggs.items()})
    out: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    w.late.sink(gs.to_callback(late.append))
    stats = p.run()
    got = pa.Table.from_batches(out) if out else w.schema.empty_table()
    late_t = pa.Table.from_batches(late) if late else table.schema.empty_table()
    assert stats.late_events == late_t.num_rows
    return sort_output(to_pandas(got), keys), late_t


def firings(got: pd.DataFrame) -> pd.DataFrame:
    """A session changelog's new rows (``+I``, ``+U``), without the ``op`` column."""
    return got[got["op"].isin(["+I", "+U"])].drop(columns="op").reset_index(drop=True)


def windows_of(assigner: gs.WindowAssigner) -> tuple[int, int, int]:
    if isinstance(assigner, gs.Tumbling):
        return assigner.size_ms, assigner.size_ms, assigner.offset_ms
    assert isinstance(assigner, gs.Sliding)
    return assigner.size_ms, assigner.slide_ms, assigner.offset_ms % assigner.slide_ms


ASSIGNERS = [gs.Tumbling(5000), gs.Tumbling(4000, offset=1500), gs.Sliding(6000, 2000),
             gs.Sliding(9000, 3000, offset=-1000)]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=lambda a: a.describe())
def test_every_aggregation_matches_reference(backend: gs.Backend, assigner: gs.WindowAssigner) -> None:
    n = 400 if backend.name == "cudasim" else 6000
    table = events(1, n)
    got, late = run_windows(table, backend.name, assigner, ("k",), ALL_AGGS)
    size, slide, offset = windows_of(assigner)
    want, late_rows = reference_windows(table, ("k",), "ts", size, slide, offset, 1000, 0,
                                        ALL_AGGS)
    assert_windows_equal(got, want, approx=("var", "sd"), hll=("approx",))
    assert late.equals(table.take(pa.array(late_rows, pa.int64())))
    if isinstance(assigner, gs.Tumbling):
        assert len(late_rows) > 0, "the data should contain late events"


@pytest.mark.parametrize("lateness", [0, 2500, 10_000])
def test_late_events_and_revisions(backend: gs.Backend, lateness: int) -> None:
    n = 300 if backend.name == "cudasim" else 4000
    table = events(2, n, disorder=8000)
    aggs = {"n": ALL_AGGS["n"], "total": ALL_AGGS["total"], "last_c": ALL_AGGS["last_c"]}
    assigner = gs.Sliding(4000, 2000)
    got, late = run_windows(table, backend.name, assigner, ("k", "g"), aggs, delay=500,
                            lateness=lateness)
    want, late_rows = reference_windows(table, ("k", "g"), "ts", 4000, 2000, 0, 500, lateness,
                                        aggs)
    assert_windows_equal(got, want)
    assert late.equals(table.take(pa.array(late_rows, pa.int64())))
    if lateness:
        assert (got["revision"] > 0).any(), "late events within the lateness must re-fire"
    else:
        assert "revision" not in got


def test_explicit_lateness_scenario() -> None:
    # tumbling 10 ms windows, no delay; arrival order matters
    table = pa.table({"ts": [1, 12, 3, 25, 5, 14], "v": [1, 2, 3, 4, 5, 6]})
    got, late = run_windows(table, "cpu", gs.Tumbling(10), (), {"s": ("sum", "v")}, delay=0,
                            lateness=0, batch_rows=2)
    # ts=3 arrives after wm 12 -> window [0,10) fired: late; same for 5; 14 arrives at wm 25
    assert got.to_dict("list") == {"window_start": [0, 10, 20], "window_end": [10, 20, 30],
                                   "s": [1, 2, 4]}
    assert late["ts"].to_pylist() == [3, 5, 14]
    got2, late2 = run_windows(table, "cpu", gs.Tumbling(10), (), {"s": ("sum", "v")}, delay=0,
                              lateness=12, batch_rows=4)
    # with 12 ms of lateness, [0,10) keeps its state until wm >= 22: 3 re-fires it;
    # 5 arrives at wm 25 (dropped); 14 re-fires [10,20) (kept until 32)
    assert got2.to_dict("list") == {
        "window_start": [0, 0, 10, 10, 20], "window_end": [10, 10, 20, 20, 30],
        "s": [1, 4, 2, 8, 4], "revision": [0, 1, 0, 1, 0]}
    assert late2["ts"].to_pylist() == [5]


@pytest.mark.parametrize("batch_rows", [1, 7, 1000, 65536])
def test_batching_does_not_change_results(batch_rows: int) -> None:
    table = events(3, 1200, disorder=4000)
    args = (gs.Sliding(6000, 3000), ("k",), ALL_AGGS)
    ref, ref_late = run_windows(table, "cpu", *args, lateness=3000, batch_rows=1200)
    got, late = run_windows(table, "cpu", *args, lateness=3000, batch_rows=batch_rows)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-9)
    assert late.equals(ref_late)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(-5, 5)),
                min_size=0, max_size=40),
       st.integers(1, 45), st.integers(0, 30), st.integers(0, 40))
def test_batch_boundaries_property(rows: list[tuple[int, int, int]], batch_rows: int,
                                   delay: int, lateness: int) -> None:
    table = pa.table({"k": pa.array([r[0] for r in rows], pa.int64()),
                      "ts": pa.array([r[1] for r in rows], pa.int64()),
                      "v": pa.array([r[2] for r in rows], pa.int64())})
    aggs = {"n": ("count", None), "s": ("sum", "v"), "f": ("first", "v"),
            "d": ("count_distinct", "v")}
    whole, whole_late = run_windows(table, "cpu", gs.Sliding(40, 20), ("k",), aggs, delay=delay,
                                    lateness=lateness, batch_rows=max(1, len(rows)))
    cut, cut_late = run_windows(table, "cpu", gs.Sliding(40, 20), ("k",), aggs, delay=delay,
                                lateness=lateness, batch_rows=batch_rows)
    pd.testing.assert_frame_equal(cut, whole)
    assert cut_late.equals(whole_late)
    want, late_rows = reference_windows(table, ("k",), "ts", 40, 20, 0, delay, lateness, aggs)
    assert_windows_equal(whole, want)
    assert whole_late.equals(table.take(pa.array(late_rows, pa.int64())))


def test_string_multi_column_and_null_keys() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    table = pa.table({
        "k": pa.array(rng.choice(["a", "b", "c"], n), mask=rng.random(n) < 0.1),
        "g": pa.array(rng.integers(0, 4, n), mask=rng.random(n) < 0.1),
        "ts": pa.array(np.sort(rng.integers(0, 20_000, n))),
        "v": rng.normal(size=n),
    })
    aggs = {"n": ("count", None), "m": ("mean", "v")}
    got, _ = run_windows(table, "cpu", gs.Tumbling(3000), ("k", "g"), aggs)
    want, _ = reference_windows(table, ("k", "g"), "ts", 3000, 3000, 0, 1000, 0, aggs)
    assert_windows_equal(got, want)
    assert got["k"].isna().any() and got["g"].isna().any()


def test_single_event_empty_batches_and_windows_of_one_row() -> None:
    one = pa.table({"ts": [42], "v": [1.5]})
    got, late = run_windows(one, "cpu", gs.Tumbling(10), (), {"n": ("count", None),
                                                             "sd": ("std", "v"),
                                                             "m": ("min", "v")})
    assert got.to_dict("list") == {"window_start": [40], "window_end": [50], "n": [1],
                                   "sd": [None], "m": [1.5]}
    assert late.num_rows == 0
    empty = pa.table({"ts": pa.array([], pa.int64()), "v": pa.array([], pa.float64())})
    got, late = run_windows(empty, "cpu", gs.Tumbling(10), (), {"n": ("count", None)})
    assert len(got) == 0 and late.num_rows == 0
    # a filter that empties some batches
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"ts": list(range(0, 100, 5)), "v": list(range(20))},
                               batch_rows=3), event_time="ts")
    out = (s.filter(gs.col("v") >= 15).window(gs.Tumbling(50), name="w")
           .agg(n=gs.count(), s=gs.col("v").sum()).collect())
    assert out.to_pydict() == {"window_start": [50], "window_end": [100], "n": [5], "s": [85]}


def test_all_null_values_and_null_event_times(tmp_path: Path) -> None:
    table = pa.table({"ts": pa.array([1, None, 3, 11], pa.int64()),
                      "v": pa.array([None, 5, None, 2], pa.int64())})
    p = gs.Pipeline(engine="cpu", dead_letter=tmp_path / "dead.jsonl")
    s = p.source(gs.from_arrow(table), event_time="ts")
    w = s.window(gs.Tumbling(10), name="w").agg(
        n=gs.count(), nv=gs.col("v").count(), s=gs.col("v").sum(), lo=gs.col("v").min(),
        f=gs.col("v").first(), m=gs.col("v").mean())
    late: list[pa.RecordBatch] = []
    w.late.sink(gs.to_callback(late.append))
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    stats = p.run()
    assert pa.Table.from_batches(out).to_pydict() == {
        "window_start": [0, 10], "window_end": [10, 20], "n": [2, 1], "nv": [0, 1],
        "s": [None, 2], "lo": [None, 2], "f": [None, 2], "m": [None, 2.0]}
    # the row without an event time cannot be placed: it is a dead letter, counted as bad
    assert late == []
    assert stats.bad_records == 1 and stats.late_events == 0
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(json.loads(d["raw"]), d["reason"]) for d in dead] == [
        ({"ts": None, "v": 5}, "missing event time 'ts'")]
    assert stats.dead_letters == str(tmp_path / "dead.jsonl")


def test_timestamp_event_time_in_microseconds() -> None:
    us = np.array([1_000, 2_500_000, 2_600_000, 9_999_999], dtype=np.int64)
    table = pa.table({"ts": pa.array(us, pa.timestamp("us")), "v": [1, 2, 3, 4]})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table), event_time="ts", watermark=gs.Watermark.bounded("1s"))
    out = s.window(gs.Tumbling("5s"), name="w").agg(s=gs.col("v").sum(),
                                                   t=gs.col("ts").max()).collect()
    assert out.schema.field("window_start").type == pa.timestamp("us")
    assert out["window_end"].cast(pa.int64()).to_pylist() == [5_000_000, 10_000_000]
    assert out["s"].to_pylist() == [6, 4]
    assert out["t"].cast(pa.int64()).to_pylist() == [2_600_000, 9_999_999]


def test_output_schema_and_order() -> None:
    table = events(8, 500)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table), event_time="ts")
    w = s.key_by("g", "k").window(gs.Tumbling(10_000), name="w").agg(
        hi=gs.col("q").max(), n=gs.count(), c=gs.col("c").first())
    assert w.schema == pa.schema({"g": pa.int16(), "k": pa.string(), "window_start": pa.int64(),
                                  "window_end": pa.int64(), "hi": pa.int32(), "n": pa.int64(),
                                  "c": pa.string()})
    out = w.collect()
    ends = out["window_end"].to_pylist()
    assert ends == sorted(ends)


@pytest.mark.parametrize(("build", "message"), [
    (lambda s: s.window(gs.Tumbling(0)), r"Tumbling: size must be > 0"),
    (lambda s: s.window(gs.Sliding("10s", "3s")),
     r"size \(10000 ms\) must be a multiple of slide \(3000 ms\); e.g. Sliding\('9s', '3s'\)"),
    (lambda s: s.window(gs.Tumbling("1s", offset="-1s")), r"\|offset\| \(1000 ms\) must be smaller"),
    (lambda s: s.window(gs.Tumbling(10), name="hot").agg(total=gs.col("k").sum()),
     r"step 1 \(window 'hot'\) agg 'total': sum needs numbers, but col\('k'\) is string"),
    (lambda s: s.window(gs.Tumbling(10)).agg(x=gs.Agg("avgg", gs.col("v"))),
     r"unknown aggregation 'avgg'"),
    (lambda s: s.window(gs.Tumbling(10)).agg(x=gs.col("k").max()),
     r"max needs numbers or timestamps, but col\('k'\) is string; use first\(\) or last\(\)"),
    (lambda s: s.key_by("v").window(gs.Tumbling(10)).agg(n=gs.count()),
     r"key column 'v' has type double; keys must be integers, strings"),
    (lambda s: s.key_by("kk").window(gs.Tumbling(10)).agg(n=gs.count()),
     r"unknown column 'kk'; did you mean 'k'\?"),
    (lambda s: s.window(gs.Tumbling(10)).agg(window_end=gs.count()),
     r"output column\(s\) window_end appear twice"),
    (lambda s: s.select("k", "v").window(gs.Tumbling(10)).agg(n=gs.count()),
     r"step 1 \(select\) drops the event-time column 'ts'"),
    (lambda s: s.window(gs.Tumbling(10)).agg(),
     r"agg needs at least one aggregation"),
])
def test_invalid_windows_fail_at_plan_time(build: Callable[[gs.Stream], object],
                                           message: str) -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": ["a"], "v": [1.0], "ts": [1]}), event_time="ts")
    with pytest.raises(PlanError, match=message):
        build(s)


def test_window_needs_an_event_time() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"v": [1]}), name="nums")
    with pytest.raises(PlanError, match=r"windows need an event time: pass event_time='<column>' "
                                        r"to Pipeline.source for 'nums'"):
        s.window(gs.Tumbling(10)).agg(n=gs.count())


def test_approx_count_distinct_error_is_as_documented() -> None:
    rng = np.random.default_rng(9)
    for true in (50, 3_000, 200_000):
        values = rng.permutation(np.arange(true) * 7919)
        table = pa.table({"ts": np.zeros(true, np.int64), "u": values})
        p = gs.Pipeline(engine="cpu")
        s = p.source(gs.from_arrow(table, batch_rows=50_000), event_time="ts")
        out = s.window(gs.Tumbling(10)).agg(a=gs.col("u").approx_count_distinct(),
                                            a14=gs.col("u").approx_count_distinct(14)).collect()
        for name, p_ in (("a", 12), ("a14", 14)):
            est = out[name][0].as_py()
            assert abs(est - true) / true <= 3 * 1.04 / np.sqrt(2**p_), (name, true, est)


@pytest.mark.parametrize("distinct", [False, True], ids=["pane-store", "table-store"])
def test_state_is_freed_after_windows_fire(distinct: bool) -> None:
    from gpustream.operators.window import WindowAggOp
    from gpustream.plan.physical import build_physical
    from gpustream.runtime import execute
    from gpustream.sinks import CollectSink
    from gpustream.state.store_cpu_panes import CpuPaneStore
    from gpustream.state.store_table import TableStore

    n = 50_000
    table = pa.table({"k": np.arange(n) % 100, "ts": np.arange(n, dtype=np.int64)})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=1000), event_time="ts")
    agg = gs.col("k").count_distinct() if distinct else gs.count()
    w = s.key_by("k").window(gs.Tumbling(1000), name="w").agg(n=agg)
    plan = build_physical([(w._node, CollectSink())], p.backend)
    execute(plan, "freed")
    (op,) = [pn.op for src in plan.sources for pn in src.children]
    assert isinstance(op, WindowAggOp)
    # 50 windows x 100 keys were opened; every one fired and was freed
    assert op.state_rows == 0
    store = op.store
    if distinct:
        assert isinstance(store, TableStore)
        capacities = [store.table.capacity]
    else:
        assert isinstance(store, CpuPaneStore)
        capacities = [sh.pages.capacity for sh in store.shards]
        assert all(sh.pages.pages <= 4 for sh in store.shards)
    assert max(capacities) <= 4096, "capacity must track open windows, not all windows ever"


@pytest.mark.parametrize("gap", [700, 2500])
def test_sessions_match_reference(backend: gs.Backend, gap: int) -> None:
    n = 300 if backend.name == "cudasim" else 5000
    table = events(4, n, keys=6, disorder=2000, span=80_000 if backend.name != "cudasim" else 8000)
    got, late = run_windows(table, backend.name, gs.Session(gap), ("k",), ALL_AGGS, delay=800)
    from tests.window_reference import reference_sessions

    want, late_rows = reference_sessions(table, ("k",), "ts", gap, 800, ALL_AGGS)
    assert_windows_equal(got, want, approx=("var", "sd"), hll=("approx",))
    assert late.equals(table.take(pa.array(late_rows, pa.int64())))
    assert len(got) >= 6  # at least one session per key
    if gap < 1000:
        assert len(late_rows) > 0, "the data should contain late events"


def test_session_bridging_event_merges_sessions() -> None:
    table = pa.table({"k": [1, 1, 1, 1, 2], "ts": [10, 30, 20, 70, 12], "v": [1, 2, 3, 4, 5]})
    got, late = run_windows(table, "cpu", gs.Session(12), ("k",),
                            {"n": ("count", None), "s": ("sum", "v")}, delay=100, batch_rows=2)
    assert got.to_dict("list") == {"k": [2, 1, 1], "window_start": [12, 10, 70],
                                   "window_end": [24, 42, 82], "n": [1, 3, 1], "s": [5, 6, 4]}
    assert late.num_rows == 0


@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_sessions_do_not_depend_on_batching(batch_rows: int) -> None:
    table = events(6, 1500, keys=4, disorder=3000, span=40_000)
    aggs = {k: ALL_AGGS[k] for k in ("n", "total", "first_v", "distinct")}
    whole, whole_late = run_windows(table, "cpu", gs.Session(600), ("k",), aggs, delay=500,
                                    batch_rows=1500)
    cut, cut_late = run_windows(table, "cpu", gs.Session(600), ("k",), aggs, delay=500,
                                batch_rows=batch_rows)
    pd.testing.assert_frame_equal(cut, whole, check_exact=False, rtol=1e-12)
    assert cut_late.equals(whole_late)


@pytest.mark.parametrize(("lateness", "batch_rows"), [(1500, 1), (1500, 250), (6000, 5000),
                                                     (400, 37)])
def test_session_lateness_matches_reference(backend: gs.Backend, lateness: int,
                                            batch_rows: int) -> None:
    from tests.window_reference import reference_sessions

    n = 2500
    if backend.name == "cudasim":  # the simulator runs a few thousand threads a second
        n, batch_rows = 150, max(batch_rows, 25)
    table = events(11, n, keys=4, disorder=6000, span=30 * n)
    aggs = {k: ALL_AGGS[k] for k in ("n", "total", "hi", "avg", "first_v", "last_c",
                                     "distinct")}
    got, late = run_windows(table, backend.name, gs.Session(300), ("k",), aggs, delay=200,
                            lateness=lateness, batch_rows=batch_rows)
    want, late_rows = reference_sessions(table, ("k",), "ts", 300, 200, aggs, lateness)
    assert_windows_equal(firings(got), want)  # the changelog: tests/test_session_lateness.py
    assert late.equals(table.take(pa.array(late_rows, pa.int64())))
    assert (got["revision"] > 0).any(), "late events must re-fire sessions"


def test_session_late_event_refires_and_extension_fires_again() -> None:
    # gap 10, no delay, lateness 30; one key
    table = pa.table({"ts": [0, 5, 40, 8, 12, 100, 3], "v": [1, 2, 3, 4, 5, 6, 7]})
    got, late = run_windows(table, "cpu", gs.Session(10), (), {"n": ("count", None),
                                                              "s": ("sum", "v")},
                            delay=0, lateness=30, batch_rows=2)
    # [0, 15) fires at wm 40 (rev 0: 0 and 5); 8 arrives late and re-fires it (rev 1);
    # 12 extends it to [0, 22) -- still at or before wm 40, so it re-fires again (rev 2);
    # 3 arrives at wm 100 > 22 + 30: too late. [40, 50) and [100, 110) fire at the end.
    assert firings(got).to_dict("list") == {
        "window_start": [0, 0, 0, 40, 100], "window_end": [15, 18, 22, 50, 110],
        "n": [2, 3, 4, 1, 1], "s": [3, 7, 12, 3, 6], "revision": [0, 1, 2, 0, 0]}
    assert late["ts"].to_pylist() == [3]


def test_a_window_over_a_window_with_an_aggregate_named_like_the_event_time() -> None:
    """Regression: an aggregate named like the event-time column let a window over a
    window's output through planning, and the run died with a bare AssertionError. A
    window's rows have the event time ``window_end - 1`` whatever their columns are
    named: the second window counts them by that (test_multi_stage.py has the rest)."""
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1, 2, 1], "ts": [1, 2, 3000]}), event_time="ts",
                 name="e")
    w = s.key_by("k").window(gs.Tumbling(1000), name="w").agg(ts=gs.col("ts").max())
    coarse = w.key_by("k").window(gs.Tumbling(5000), name="w2").agg(n=gs.count())
    rows = sorted((r["k"], r["window_start"], r["n"]) for r in coarse.collect().to_pylist())
    assert rows == [(1, 0, 2), (2, 0, 1)]
