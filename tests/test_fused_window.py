"""The fused CPU loop (the CPU pane store) for tumbling and sliding windows against the
separate kernels (the table store).

The separate kernels are themselves checked against pandas in test_windows.py; here the
fused loop must give exactly their answers (same rows, same bits), whatever the batching,
with windows firing inside large batches, tables rebuilt mid-batch, and checkpoints
handed from one path to the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
import gpustream.kernels.fused_dense as fused_dense
import gpustream.operators.window as window_mod
import gpustream.state.store_cpu_panes as fused_mod
import gpustream.state.window_pages as pages_mod
from gpustream.backend import select_backend
from gpustream.expr import count
from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec
from gpustream.state.store_cpu_panes import CpuPaneStore
from gpustream.state.store_table import TableStore
from gpustream.state.window_store import Events, make_store
from tests.test_checkpoints import _Crash, _rows
from tests.test_windows import events, run_windows

AGGS = {"n": ("count", None), "nv": ("count_valid", "v"), "sv": ("sum", "v"),
        "sq": ("sum", "q"), "lo": ("min", "v"), "hq": ("max", "q"), "m": ("mean", "v"),
        "var": ("var", "q"), "sd": ("std", "v"), "tmin": ("min", "ts")}


def _both(monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[tuple[pd.DataFrame, pa.Table],
                                                                  tuple[pd.DataFrame, pa.Table]]:
    fused = run_windows(**kw)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(window_mod, "make_store", TableStore)  # separate kernels
        sep = run_windows(**kw)  # type: ignore[arg-type]
    return fused, sep


def _spec(lateness: int = 0, kind: str = "count") -> WindowSpec:
    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "n": pa.int64()})
    agg = count() if kind == "count" else getattr(gs.col("v"), kind)()
    return WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, lateness,
                      (AggSpec("n", agg, None if kind == "count" else pa.float64(), pa.int64()),),
                      schema, False)


def test_the_fused_loop_is_used_where_it_applies_and_only_there() -> None:
    cpu = select_backend("cpu")
    assert type(WindowAggOp(_spec(), cpu).store) is CpuPaneStore
    # revisions, and aggregations the loop does not fold: the separate kernels
    assert type(make_store(_spec(lateness=5), cpu)) is TableStore
    assert type(make_store(_spec(kind="first"), cpu)) is TableStore
    with pytest.raises(ValueError, match="no allowed lateness"):
        CpuPaneStore(_spec(lateness=5), cpu)


@pytest.mark.parametrize("assigner", [gs.Tumbling(5000), gs.Tumbling(4000, offset=1500),
                                      gs.Sliding(6000, 2000), gs.Sliding(9000, 3000, offset=-1000)],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize("keys", [("k",), ("k", "g"), ("c",)])
@pytest.mark.parametrize(("batch_rows", "threads"), [(7, "1"), (500, "2"), (10_000, "4")])
def test_fused_equals_separate_kernels(monkeypatch: pytest.MonkeyPatch,
                                       assigner: gs.WindowAssigner, keys: tuple[str, ...],
                                       batch_rows: int, threads: str) -> None:
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", threads)  # shards of the fused state
    table = events(seed=batch_rows + len(keys), n=3000, disorder=12_000)
    (got, late), (want, want_late) = _both(
        monkeypatch, table=table, engine="cpu", assigner=assigner, keys=keys, aggs=AGGS,
        batch_rows=batch_rows)
    assert len(got) > 10 and late.num_rows > 0  # windows, and late events to route
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert late.equals(want_late)


@pytest.mark.parametrize("assigner", [gs.Tumbling(200), gs.Sliding(400, 200)],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize("threads", ["1", "2"])
def test_too_many_open_windows_move_the_state_from_pages_to_the_table(
        monkeypatch: pytest.MonkeyPatch, threads: str, assigner: gs.WindowAssigner) -> None:
    """200 ms windows under a 3 s watermark delay: ~15 windows open at once, more pages
    than the (here tiny) memory bound allows, so the operator moves its state to the
    (key, window) table mid-stream, and goes on from the event where a shard stopped."""
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", threads)
    monkeypatch.setattr(pages_mod, "MAX_BYTES", 1)
    moved: list[bool] = []
    real = WindowAggOp._move_to_table

    def spy(self: WindowAggOp, state: dict[str, Any]) -> None:
        assert isinstance(self.store, CpuPaneStore)
        real(self, state)
        moved.append(isinstance(self.store, TableStore))

    monkeypatch.setattr(WindowAggOp, "_move_to_table", spy)
    table = events(seed=8, n=4000, disorder=4500)
    (got, late), (want, want_late) = _both(
        monkeypatch, table=table, engine="cpu", assigner=assigner, keys=("k",),
        aggs=AGGS, delay=3000, batch_rows=700)
    assert moved == [True]  # once, and for good
    assert len(got) > 100 and late.num_rows > 0
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert late.equals(want_late)


def test_state_rows_count_every_shard() -> None:
    """The open-windows gauge reads ``state_rows``: the (key, window) pairs with state in
    all shards, until the watermark fires them."""
    spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("n", count(), None, pa.int64()),),
                      pa.schema({"k": pa.int64(), "window_start": pa.int64(),
                                 "window_end": pa.int64(), "n": pa.int64()}), False)
    cpu = select_backend("cpu")
    op = WindowAggOp(spec, cpu, store=CpuPaneStore(spec, cpu, shards=4))
    k = np.arange(200) % 50
    ts = np.arange(200) // 10  # windows [0, 10) and [10, 20), every key in both
    b = gs.Batch.from_arrow(pa.record_batch({"k": k, "ts": ts}))
    b.watermarks = np.full(200, np.iinfo(np.int64).min)
    assert op.process(b) == [] and op.state_rows == 100
    assert isinstance(op.store, CpuPaneStore)
    per_shard = [int(sh.pages.p_count[sh.pages.p_live != 0].sum()) for sh in op.store.shards]
    assert min(per_shard) > 0 and sum(per_shard) == 100  # not the first shard's alone
    fired = op.on_watermark(10)
    assert sum(x.num_rows for x in fired) == 50 and op.state_rows == 50


def _raw_rows(table: pa.Table, assigner: gs.WindowAssigner, keys: tuple[str, ...],
              batch_rows: int) -> pd.DataFrame:
    """The output rows in the order the pipeline emits them (not sorted afterwards)."""
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(1000))
    w = s.key_by(*keys).window(assigner, name="w").agg(n=gs.count(), sv=gs.col("v").sum(),
                                                       mv=gs.col("v").mean())
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    p.run()
    return pa.Table.from_batches(out).to_pandas()


@pytest.mark.parametrize("threads", ["1", "2", "4"])
@pytest.mark.parametrize(("assigner", "keys"), [(gs.Tumbling(3000), ("k",)),
                                                (gs.Sliding(6000, 2000), ("k", "g"))],
                         ids=["tumbling-1key", "sliding-2keys"])
def test_fused_rows_come_out_in_window_then_key_order(monkeypatch: pytest.MonkeyPatch,
                                                      threads: str, assigner: gs.WindowAssigner,
                                                      keys: tuple[str, ...]) -> None:
    """Each shard sorts its popped rows and the shards' runs are merged: rows come out by
    (window end, window start, keys) as from the separate kernels, whatever the number of
    shards (integer keys without nulls: every row has its own place)."""
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", threads)
    monkeypatch.setattr(fused_mod, "FUSED_CHUNK", 256)  # several firings per batch
    rng = np.random.default_rng(11)
    n = 6000
    ts = np.sort(rng.integers(0, 60_000, n)) - rng.integers(0, 900, n) * (rng.random(n) < 0.2)
    table = pa.table({"k": rng.integers(-40, 40, n), "g": rng.integers(0, 3, n), "ts": ts,
                      "v": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1)})
    got = _raw_rows(table, assigner, keys, batch_rows=2500)
    with monkeypatch.context() as m:
        m.setattr(window_mod, "make_store", TableStore)
        want = _raw_rows(table, assigner, keys, batch_rows=2500)
    assert len(got) > 500
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    order = got.assign(**{k: got[k].astype(np.uint64) for k in keys})
    assert order.equals(order.sort_values(["window_end", "window_start", *keys]))


def _one_batch(n: int, span: int, disorder: int, late_share: float, keys: int,
               seed: int) -> pa.Table:
    """``n`` events over ``span`` ms, ``late_share`` of them up to ``disorder`` ms back,
    ``keys`` keys, 5 % null ``v``: fed as one batch, so that the state grows inside it."""
    rng = np.random.default_rng(seed)
    ts = (np.sort(rng.integers(0, span, n))
          - rng.integers(0, disorder, n) * (rng.random(n) < late_share))
    return pa.table({"k": rng.integers(0, keys, n), "ts": ts,
                     "v": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.05),
                     "q": rng.integers(0, 9, n).astype(np.int32)})


def test_windows_fire_inside_a_batch_and_the_table_grows_mid_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch of 20,000 events over 2,000 keys and 20 windows: firing windows as soon as
    a chunk of 64 events moved the watermark past them, and growing the state (the key
    table and pages, rows moved to new key slots) changes nothing."""
    monkeypatch.setattr(fused_mod, "FUSED_CHUNK", 64)
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", "2")
    n = 20_000
    table = _one_batch(n, span=20_000, disorder=800, late_share=0.2, keys=2000, seed=5)
    aggs = {"n": ("count", None), "sv": ("sum", "v"), "hq": ("max", "q"), "sd": ("std", "v")}
    rebuilds: list[int] = []
    real = CpuPaneStore._emit_popped

    def spy(self: CpuPaneStore, popped: list[Any]) -> list[Any]:
        assert len(self.shards) == 2
        rebuilds.append(sum(s.pages.relayouts for s in self.shards))
        return real(self, popped)

    monkeypatch.setattr(CpuPaneStore, "_emit_popped", spy)
    (got, late), (want, want_late) = _both(
        monkeypatch, table=table, engine="cpu", assigner=gs.Tumbling(1000), keys=("k",),
        aggs=aggs, delay=500, batch_rows=n)
    assert len(rebuilds) >= 19 and max(rebuilds) > 0  # fired within the batch, grew in it
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert late.equals(want_late) and late.num_rows > 0


@pytest.mark.parametrize("assigner", [gs.Tumbling(100), gs.Sliding(300, 100)],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_paged_loop_stops_mid_block_and_resumes_at_that_event(
        monkeypatch: pytest.MonkeyPatch, threads: str, assigner: gs.WindowAssigner) -> None:
    """The paged loop works in blocks of a shard's events (hashes, rows, folds); where its
    key table fills or a new window finds no free page inside a block, it folds the events
    before that one only, and the next call starts at it: nothing is lost or folded
    twice."""
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", threads)
    calls: list[tuple[int, int, int, int]] = []
    real = fused_mod.dense_window_kernel

    def spy(*key: Any) -> Any:
        kernel = real(*key)

        def call(*args: Any) -> int:
            j0, j1, out = args[8], args[9], args[-1]
            nxt = int(kernel(*args))
            calls.append((j0, j1, nxt, int(out[3])))
            return nxt
        return call

    monkeypatch.setattr(fused_mod, "dense_window_kernel", spy)
    n = 12_000
    table = _one_batch(n, span=1500, disorder=700, late_share=0.3, keys=9000, seed=17)
    (got, late), (want, want_late) = _both(
        monkeypatch, table=table, engine="cpu", assigner=assigner, keys=("k",),
        aggs=AGGS, delay=200, batch_rows=n)
    block = fused_dense.BLOCK
    mid = [(j0, j1, nxt, page) for j0, j1, nxt, page in calls
           if nxt < j1 and (nxt - j0) % block != 0]
    assert any(page == 0 for *_, page in mid), calls  # the key table filled mid-block
    assert any(page == 1 for *_, page in mid), calls  # a window found no free page
    assert len(got) > 1000 and late.num_rows > 0
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert late.equals(want_late)


def _pipeline(source: Any, sliding: bool) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("ck", engine="cpu")
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(500), name="events")
    out: list[pa.RecordBatch] = []
    (s.key_by("user", "k")
     .window(gs.Sliding(4_000, 1_000) if sliding else gs.Tumbling(5_000), name="w")
     .agg(n=gs.count(), total=gs.col("v").sum(), hi=gs.col("v").max(), m=gs.col("v").mean())
     .sink(gs.to_callback(out.append)))
    return p, out


@pytest.mark.parametrize("fused_first", [True, False])
@pytest.mark.parametrize("sliding", [False, True])
def test_checkpoints_pass_between_the_fused_loop_and_the_separate_kernels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused_first: bool,
        sliding: bool) -> None:
    rng = np.random.default_rng(9)
    n = 5000
    ts = np.sort(rng.integers(0, 60_000, n)) + rng.integers(0, 400, n)
    table = pa.table({"ts": ts, "user": rng.choice(["ann", "bo", "cy"], n),
                      "k": rng.integers(0, 7, n), "v": rng.normal(size=n)})
    whole, out = _pipeline(gs.from_arrow(table, batch_rows=200), sliding)
    whole.run()
    want = _rows(out)

    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    with monkeypatch.context() as m:
        m.setenv("GPUSTREAM_CPU_THREADS", "4")  # a 4-shard fused state, split and merged
        if not fused_first:
            m.setattr(window_mod, "make_store", TableStore)
        first, out1 = _pipeline(_Crash(gs.from_arrow(table, batch_rows=200), 11), sliding)
        with pytest.raises(OSError, match="lost power"):
            first.run(checkpoint=ck)
    with monkeypatch.context() as m:
        m.setenv("GPUSTREAM_CPU_THREADS", "2")
        if fused_first:
            m.setattr(window_mod, "make_store", TableStore)
        second, out2 = _pipeline(gs.from_arrow(table, batch_rows=200), sliding)
        stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None and stats.events_in < n
    assert set(_rows(out1) + _rows(out2)) == set(want)


def test_shared_non_null_counts() -> None:
    """sum, max and mean of one column keep one non-null count; a snapshot still has
    each state's own (equal) column, which the separate kernels restore as theirs."""
    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "s": pa.float64(), "h": pa.float64(), "m": pa.float64(),
                        "c": pa.int64()})
    v, f = gs.col("v"), pa.float64()
    spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("s", v.sum(), f, f), AggSpec("h", v.max(), f, f),
                       AggSpec("m", v.mean(), f, f), AggSpec("c", gs.col("u").count(), f,
                                                              pa.int64())), schema, False)
    cpu = select_backend("cpu")
    store = CpuPaneStore(spec, cpu, shards=1)
    op = WindowAggOp(spec, cpu, store=store)
    assert store.shards[0].table.aliases == {"h.nn": "s.nn", "m.nn": "s.nn"}
    b = gs.Batch.from_arrow(pa.record_batch({"k": [1, 1, 2], "ts": [3, 4, 5],
                                             "v": pa.array([1.0, None, 2.0]),
                                             "u": pa.array([1.0, 2.0, None])}))
    b.watermarks = np.array([np.iinfo(np.int64).min, 3, 4])
    op.process(b)
    snap = op.snapshot()
    assert [sorted(snap[f"table.col.{c}"].tolist()) for c in ("s.nn", "h.nn", "m.nn", "c.n")] \
        == [[1, 1], [1, 1], [1, 1], [0, 2]]
    other = WindowAggOp(spec, cpu, store=TableStore(spec, cpu))
    other.restore(snap)
    rows = other.on_watermark(100)[0].to_arrow().to_pydict()
    assert rows["s"] == [1.0, 2.0] and rows["h"] == [1.0, 2.0] and rows["c"] == [2, 0]


def test_a_packed_table_snapshots_its_declared_dtypes() -> None:
    op = WindowAggOp(_spec(), select_backend("cpu"))
    assert isinstance(op.store, CpuPaneStore)
    b = gs.Batch.from_arrow(pa.record_batch({"k": [1, 2, 1], "ts": [3, 4, 5]}))
    b.watermarks = np.array([np.iinfo(np.int64).min, 3, 4])
    op.process(b)
    snap = op.snapshot()
    assert snap["table.col.__rev"].dtype == np.int32
    assert snap["table.col.__ontime"].dtype == np.int8
    assert sorted(snap["table.col.n.n"].tolist()) == [1, 2]


def _keyed_events(seed: int, n: int, keys: int, null_keys: float, span: int,
                  disorder: int) -> pa.Table:
    """``n`` events of ``keys`` int64 keys (a share ``null_keys`` of them null) and a
    second key column, ``disorder`` ms out of order for 30 % of them, 10 % null values."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(disorder, disorder + span, n)) - rng.integers(
        0, disorder + 1, n) * (rng.random(n) < 0.3)  # >= 0: see the test below
    return pa.table({
        "k": pa.array(rng.integers(-keys, keys, n), mask=rng.random(n) < null_keys),
        "g": pa.array(rng.integers(0, 3, n).astype(np.int16)),
        "ts": ts.astype(np.int64),
        "v": pa.array(rng.normal(100, 20, n), mask=rng.random(n) < 0.1),
        "q": pa.array(rng.integers(-50, 50, n).astype(np.int32), mask=rng.random(n) < 0.1)})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 1500), keys=st.sampled_from([1, 7, 400]),
       null_keys=st.sampled_from([0.0, 0.2]), disorder=st.sampled_from([0, 300, 5000]),
       batch_rows=st.integers(1, 1600), chunk=st.sampled_from([16, 100, 1 << 16]),
       threads=st.sampled_from(["1", "2", "4"]), sliding=st.booleans(),
       two_keys=st.booleans())
def test_any_batching_and_chunking_gives_the_separate_kernels_rows(
        seed: int, n: int, keys: int, null_keys: float, disorder: int, batch_rows: int,
        chunk: int, threads: str, sliding: bool, two_keys: bool) -> None:
    """Whatever the batches, the chunks the loop fires between and the shards: the same
    rows, in the same order (but for null keys, which may come before or after the key 0),
    with the same bits, and the same late events, as the separate kernels (which
    test_windows.py checks against pandas).

    Event times are not negative: a firing emits its windows by their ends compared
    unsigned, so a window ending before 0 comes after the others of its firing, and the
    fused loop (which fires inside batches) and the separate kernels (after each batch)
    then order it differently."""
    table = _keyed_events(seed, n, keys, null_keys, span=20_000, disorder=disorder)
    assigner = gs.Sliding(3000, 1000) if sliding else gs.Tumbling(2000, offset=500)
    key_cols = ("k", "g") if two_keys else ("k",)
    aggs = {"n": count(), "sv": gs.col("v").sum(), "lo": gs.col("q").min(),
            "hi": gs.col("v").max(), "m": gs.col("v").mean(), "sd": gs.col("q").std()}

    def run(fused: bool) -> tuple[pd.DataFrame, pa.Table]:
        with pytest.MonkeyPatch.context() as m:
            m.setenv("GPUSTREAM_CPU_THREADS", threads)
            m.setattr(fused_mod, "FUSED_CHUNK", chunk)
            if not fused:
                m.setattr(window_mod, "make_store", TableStore)
            p = gs.Pipeline(engine="cpu")
            s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                         watermark=gs.Watermark.bounded(700))
            w = s.key_by(*key_cols).window(assigner, name="w").agg(**aggs)
            out: list[pa.RecordBatch] = []
            late: list[pa.RecordBatch] = []
            w.sink(gs.to_callback(out.append))
            w.late.sink(gs.to_callback(late.append))
            p.run()
        rows = (pa.Table.from_batches(out) if out else w.schema.empty_table()).to_pandas()
        return rows, (pa.Table.from_batches(late) if late
                      else table.schema.empty_table()).combine_chunks()

    (got, late), (want, want_late) = run(True), run(False)
    if not null_keys:  # the emitted order too (a null key and the key 0 in either order)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    by = ["window_end", "window_start", *key_cols]
    pd.testing.assert_frame_equal(got.sort_values(by).reset_index(drop=True),
                                  want.sort_values(by).reset_index(drop=True), check_exact=True)
    assert late.equals(want_late)



def _count_spec() -> WindowSpec:
    return WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("n", count(), None, pa.int64()),),
                      pa.schema({"k": pa.int64(), "window_start": pa.int64(),
                                 "window_end": pa.int64(), "n": pa.int64()}), False)


def test_a_fold_that_stops_for_pages_hands_over_every_window_it_opened(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard that stops mid-chunk (its pages would pass MAX_BYTES) opened windows in
    that chunk: their ends go with the state to the table, which fires all 808 rows (a
    store that lost them fired none: found by review)."""
    monkeypatch.setattr(pages_mod, "MAX_BYTES", 60_000)
    cpu = select_backend("cpu")
    spec = _count_spec()
    op = WindowAggOp(spec, cpu, store=CpuPaneStore(spec, cpu, shards=1))
    k = [kk for w in range(5) for kk in range(10)] + list(range(10, 768)) + [0] * 100
    ts = [w * 10 + 5 for w in range(5) for _ in range(10)] + [45] * 858
    b = gs.Batch.from_arrow(pa.record_batch({"k": k, "ts": ts}))
    b.watermarks = np.full(len(k), np.iinfo(np.int64).min)
    assert op.process(b) == [] and isinstance(op.store, TableStore)  # it moved
    fired = op.on_watermark(np.iinfo(np.int64).max)
    assert sum(x.num_rows for x in fired) == 50 + 758


def test_events_without_time_are_counted_once_when_the_state_moves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages_mod, "MAX_BYTES", 1)
    cpu = select_backend("cpu")
    spec = _count_spec()
    op = WindowAggOp(spec, cpu, store=CpuPaneStore(spec, cpu, shards=1))
    b = gs.Batch.from_arrow(pa.record_batch({"k": [1] * 6, "ts": pa.array(
        [5, 15, 25, 35, 45, None], pa.int64())}))
    b.watermarks = np.full(6, np.iinfo(np.int64).min)
    op.process(b)
    assert isinstance(op.store, TableStore) and op.no_time_events == 1


def test_a_failing_shard_loop_waits_for_the_other_shards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the shards' loops write the state's pages: none may still run once fold has
    # raised, or a checkpoint or the table store taking over would see them half done
    import time

    cpu = select_backend("cpu")
    store = CpuPaneStore(_spec(), cpu, shards=2)
    fold, done = store._fold, []

    def shard(k: int, *args: Any) -> Any:
        if k == 0:
            raise RuntimeError("shard 0 failed")
        time.sleep(0.2)
        done.append(k)
        return fold(k, *args)
    monkeypatch.setattr(store, "_fold", shard)
    b = gs.Batch.from_arrow(pa.record_batch({"k": np.arange(100), "ts": np.arange(100)}))
    wm = np.full(100, np.iinfo(np.int64).min)
    with pytest.raises(RuntimeError, match="shard 0 failed"):
        store.fold(Events(b, b["ts"], None, wm, {0: None}, 0))
    assert done == [1]
