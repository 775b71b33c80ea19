"""Joins in multi-stage streaming jobs (issue 17, DESIGN.md section 11).

A join reads a window's rows at event time ``window_end - 1`` with the per-row watermarks
the window gave them (Nexmark q7: each window's top price joined with the bids of that
window). A join's rows carry the later of their two rows' event times (a window join's:
``window_end - 1``, like a window's; a one-sided interval join's: the later input's
column) and the watermark the join passed on before emitting them, so a window after the
join sees none of them late: results equal pandas computing the same query in batch,
whatever the batching, on every backend, and across a crash and restart.
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
from gpustream.errors import PlanError
from tests.test_checkpoints import _Crash

#: the sources' watermark delay: above their disorder, so no event is late and the
#: batch reference needs no watermarks (the stages after the first must not add any)
DELAY = 3_000


def _events(seed: int, n: int, keys: int = 5, span: int = 60_000,
            disorder: int = 2_500, grain: int = 1) -> pa.Table:
    """Seeded, out of order (30% of rows up to ``disorder`` ms early), times multiples
    of ``grain`` ms."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span, n)) - rng.integers(0, disorder, n) * (rng.random(n) < 0.3)
    return pa.table({"k": rng.integers(0, keys, n), "ts": (ts // grain * grain).astype(np.int64),
                     "v": rng.integers(0, 1000, n).astype(np.int64)})


def _source(p: gs.Pipeline, src: Any, name: str) -> gs.Stream:
    return p.source(src, event_time="ts", watermark=gs.Watermark.bounded(DELAY), name=name)


def _frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    return pa.Table.from_batches(batches).to_pandas() if batches else pd.DataFrame()


def _sorted(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[cols].sort_values(cols).reset_index(drop=True).astype("int64")


# -- a join of a window's output: Nexmark q7 per key ----------------------------------------
def _q7(src: Any, engine: str) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    """Per key and 1 s window, the bids at the window's highest price: the window's max
    joined with the bids of that window (their ts in [window_end - 1000, window_end - 1],
    i.e. the window row's time - 999 .. its time)."""
    p = gs.Pipeline("q7", engine=engine)
    bids = _source(p, src, "bids")
    top = bids.key_by("k").window(gs.Tumbling(1000), name="top").agg(top=gs.col("v").max())
    out: list[pa.RecordBatch] = []
    (top.interval_join(bids, on="k", lower=-999, upper=0)
        .filter(gs.col("v") == gs.col("top")).sink(gs.to_callback(out.append)))
    return p, out


def _q7_reference(t: pa.Table) -> pd.DataFrame:
    df = t.to_pandas()
    df["window_end"] = (df["ts"] // 1000 + 1) * 1000
    top = df.groupby(["k", "window_end"], as_index=False)["v"].max().rename(columns={"v": "top"})
    return df.merge(top, on=["k", "window_end"]).query("v == top")


Q7 = ["k", "window_end", "top", "ts", "v"]


def test_a_join_of_a_window_reads_its_rows_at_window_end_minus_one(backend: gs.Backend) -> None:
    n = 500 if backend.name == "cudasim" else 5000
    t = _events(seed=7, n=n, grain=100)  # (many bids on windows' first and last ms)
    p, out = _q7(gs.from_arrow(t, batch_rows=n // 9), backend.name)
    stats = p.run()
    want = _sorted(_q7_reference(t), Q7)
    assert stats.late_events == 0 and len(want) > n // 20
    pd.testing.assert_frame_equal(_sorted(_frame(out), Q7), want)


def test_a_window_join_of_a_window_says_how_to_pair_windows() -> None:
    p = gs.Pipeline(engine="cpu")
    ev = _source(p, gs.from_arrow(_events(1, 20)), "ev")
    first = ev.key_by("k").window(gs.Tumbling(1000), name="w").agg(n=gs.count())
    with pytest.raises(PlanError, match=r"interval_join\(on=\[key, .window_end.\]"):
        first.window_join(ev, on="k", window=gs.Tumbling(1000)).collect()


def test_a_join_of_a_window_with_allowed_lateness_is_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    ev = _source(p, gs.from_arrow(_events(1, 20)), "ev")
    first = ev.key_by("k").window(gs.Tumbling(1000), name="w",
                                  allowed_lateness=500).agg(n=gs.count())
    with pytest.raises(PlanError, match="without allowed_lateness"):
        first.interval_join(ev, on="k", lower=-999, upper=0).collect()


def test_two_windows_joined_on_key_and_window() -> None:
    """Two windows' rows of the same key and window (q7's other form: each window's
    max beside its count, as two window outputs joined on k and window_end)."""
    t = _events(seed=2, n=3000)
    p = gs.Pipeline(engine="cpu")
    ev = _source(p, gs.from_arrow(t, batch_rows=211), "ev")
    top = ev.key_by("k").window(gs.Tumbling(1000), name="top").agg(top=gs.col("v").max())
    cnt = ev.key_by("k").window(gs.Tumbling(1000), name="cnt").agg(n=gs.count())
    got = top.interval_join(cnt, on=["k", "window_end"], lower=0, upper=0).collect()
    df = t.to_pandas()
    df["window_end"] = (df["ts"] // 1000 + 1) * 1000
    want = df.groupby(["k", "window_end"], as_index=False).agg(top=("v", "max"),
                                                              n=("v", "size"))
    cols = ["k", "window_end", "top", "n"]
    pd.testing.assert_frame_equal(_sorted(got.to_pandas(), cols), _sorted(want, cols))


# -- windows over joins -----------------------------------------------------------------------
def _over_window_join(a: Any, b: Any, engine: str) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                              list[pa.RecordBatch]]:
    """Pairs of a's and b's rows of a key in the same 1 s window, then per key and 5 s
    window their number and the sum of a's values."""
    p = gs.Pipeline("wj", engine=engine)
    pairs = _source(p, a, "a").window_join(_source(p, b, "b"), on="k",
                                           window=gs.Tumbling(1000))
    w = pairs.key_by("k").window(gs.Tumbling(5000), name="over").agg(
        pairs=gs.count(), total=gs.col("v").sum())
    return (p, *_sunk(w))


def _sunk(w: gs.AggStream) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
    """The window's rows and its late input rows, as they come."""
    out: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    w.late.sink(gs.to_callback(late.append))
    return out, late


def _window_join_reference(a: pa.Table, b: pa.Table) -> pd.DataFrame:
    x, y = a.to_pandas(), b.to_pandas()
    for d in (x, y):
        d["w"] = d["ts"] // 1000
    pairs = x.merge(y, on=["k", "w"])
    pairs["window_start"] = ((pairs["w"] * 1000 + 999) // 5000) * 5000  # at window_end - 1
    pairs["window_end"] = pairs["window_start"] + 5000
    return pairs.groupby(["k", "window_start", "window_end"], as_index=False).agg(
        pairs=("v_x", "size"), total=("v_x", "sum"))


WJ = ["k", "window_start", "window_end", "pairs", "total"]


def test_a_window_over_a_window_join_equals_batch(backend: gs.Backend) -> None:
    n = 300 if backend.name == "cudasim" else 3000
    a, b = _events(seed=11, n=n), _events(seed=12, n=n)
    p, out, late = _over_window_join(gs.from_arrow(a, batch_rows=n // 7),
                                     gs.from_arrow(b, batch_rows=n // 5), backend.name)
    p.run()
    want = _window_join_reference(a, b)
    assert not late and len(want) > 10
    pd.testing.assert_frame_equal(_sorted(_frame(out), WJ), _sorted(want, WJ))


def _over_interval_join(a: Any, b: Any) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                list[pa.RecordBatch]]:
    """Pairs with b's row 0 .. 400 ms after a's (the pair's time: b's), then per key and
    2 s window their number."""
    p = gs.Pipeline("ij", engine="cpu")
    pairs = _source(p, a, "a").interval_join(_source(p, b, "b"), on="k", lower=0, upper=400)
    w = pairs.key_by("k").window(gs.Tumbling(2000), name="over").agg(
        pairs=gs.count(), total=gs.col("v_right").sum())
    return (p, *_sunk(w))


def _interval_reference(a: pa.Table, b: pa.Table) -> pd.DataFrame:
    pairs = a.to_pandas().merge(b.to_pandas(), on="k", suffixes=("", "_right"))
    pairs = pairs[(pairs["ts_right"] >= pairs["ts"]) & (pairs["ts_right"] <= pairs["ts"] + 400)]
    t = pairs[["ts", "ts_right"]].max(axis=1)
    pairs = pairs.assign(window_start=t // 2000 * 2000, window_end=t // 2000 * 2000 + 2000)
    return pairs.groupby(["k", "window_start", "window_end"], as_index=False).agg(
        pairs=("v", "size"), total=("v_right", "sum"))


def test_a_window_over_an_interval_join_windows_pairs_by_their_later_time() -> None:
    a, b = _events(seed=21, n=2000), _events(seed=22, n=2000)
    p, out, late = _over_interval_join(gs.from_arrow(a, batch_rows=97),
                                       gs.from_arrow(b, batch_rows=313))
    p.run()
    want = _interval_reference(a, b)
    assert not late and len(want) > 10
    pd.testing.assert_frame_equal(_sorted(_frame(out), WJ), _sorted(want, WJ))


def test_a_window_over_a_two_sided_interval_join_is_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    a = _source(p, gs.from_arrow(_events(1, 20)), "a")
    b = _source(p, gs.from_arrow(_events(2, 20)), "b")
    pairs = a.interval_join(b, on="k", lower=-100, upper=100)
    with pytest.raises(PlanError, match=r"lower < 0 < upper.*one-sided"):
        pairs.key_by("k").window(gs.Tumbling(1000)).agg(n=gs.count()).collect()


@settings(max_examples=10, deadline=None)
@given(rows_a=st.integers(1, 1500), rows_b=st.integers(1, 1500), seed=st.integers(0, 2**16))
def test_windows_over_joins_do_not_depend_on_batching(rows_a: int, rows_b: int,
                                                      seed: int) -> None:
    a, b = _events(seed=seed, n=1500, span=30_000), _events(seed=seed + 1, n=1500, span=30_000)
    p, out, late = _over_window_join(gs.from_arrow(a, batch_rows=rows_a),
                                     gs.from_arrow(b, batch_rows=rows_b), "cpu")
    p.run()
    assert not late
    pd.testing.assert_frame_equal(_sorted(_frame(out), WJ),
                                  _sorted(_window_join_reference(a, b), WJ))
    p, out, late = _over_interval_join(gs.from_arrow(a, batch_rows=rows_a),
                                       gs.from_arrow(b, batch_rows=rows_b))
    p.run()
    assert not late
    pd.testing.assert_frame_equal(_sorted(_frame(out), WJ),
                                  _sorted(_interval_reference(a, b), WJ))


def _wms(b: gs.Batch) -> list[int]:
    assert b.watermarks is not None, "a join's rows carry per-row watermarks"
    return list(b.watermarks.tolist())


def test_window_join_rows_carry_the_watermark_passed_on_before_them() -> None:
    """The pairs a window join fires on watermark ``w`` carry the watermark it passed on
    before ``w``; an interval join's pairs, the one it passed on last."""
    from gpustream.operators.join import IntervalJoinOp, JoinSpec, WindowJoinOp

    schema = pa.schema({"k": pa.int64(), "ts": pa.int64(), "ts_right": pa.int64(),
                        "window_start": pa.int64(), "window_end": pa.int64()})
    spec = JoinSpec(("k",), ("k",), "ts", "ts", (("ts", "ts_right"),), schema, (False,))
    op = WindowJoinOp(spec, 10, 10, 0, 0, gs.select_backend("cpu"))
    b = gs.Batch.from_arrow(pa.record_batch({"k": [1, 1], "ts": [3, 14]}))
    b.watermarks = np.full(2, 2)
    assert op.process_port(0, b) == [] and op.process_port(1, b) == []
    assert op.input_watermark(0, 12) == ([], None)
    out, combined = op.input_watermark(1, 12)
    assert combined == 12 and [_wms(o) for o in out] == [[np.iinfo(np.int64).min]]
    out, _ = op.input_watermark(0, 30)
    assert out == []
    out, _ = op.input_watermark(1, 30)
    assert [_wms(o) for o in out] == [[12]]
    ispec = JoinSpec(("k",), ("k",), "ts", "ts", (("ts", "ts_right"),), schema.remove(4).remove(3),
                     (False,))
    ij = IntervalJoinOp(ispec, 0, 5, gs.select_backend("cpu"))
    ij.input_watermark(0, 7), ij.input_watermark(1, 9)
    c = gs.Batch.from_arrow(pa.record_batch({"k": [1], "ts": [8]}))
    c.watermarks = np.full(1, 7)
    assert ij.process_port(0, c) == []
    c2 = gs.Batch.from_arrow(pa.record_batch({"k": [1], "ts": [10]}))
    c2.watermarks = np.full(1, 9)
    (pair,) = ij.process_port(1, c2)
    assert _wms(pair) == [7]


def test_a_join_shifts_a_windows_ends_to_its_rows_times() -> None:
    """The join operator applies the time shift: a window's row ending at 20 is at 19,
    so it pairs with an event at 19 - 9 = 10 but not with one at 20 (interval [-9, 0])."""
    from gpustream.operators.join import IntervalJoinOp, JoinSpec

    schema = pa.schema({"k": pa.int64(), "window_end": pa.int64(), "ts": pa.int64()})
    spec = JoinSpec(("k",), ("k",), "window_end", "ts", (("ts", "ts"),), schema, (False,),
                    time_shift=(-1, 0))
    op = IntervalJoinOp(spec, -9, 0, gs.select_backend("cpu"))
    ev = gs.Batch.from_arrow(pa.record_batch({"k": [1, 1, 1], "ts": [9, 10, 20]}))
    ev.watermarks = np.full(3, 0)
    assert op.process_port(1, ev) == []
    w = gs.Batch.from_arrow(pa.record_batch({"k": [1], "window_end": [20]}))
    w.watermarks = np.full(1, 0)
    (pairs,) = op.process_port(0, w)
    assert pairs.to_arrow().column("ts").to_pylist() == [10]


def test_a_crashed_window_over_join_resumes_with_the_same_rows(tmp_path: Path) -> None:
    a, b = _events(seed=31, n=3000), _events(seed=32, n=3000)
    whole, out, _ = _over_window_join(gs.from_arrow(a, batch_rows=150),
                                      gs.from_arrow(b, batch_rows=150), "cpu")
    whole.run()
    want = _sorted(_frame(out), WJ)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=4)
    first, out1, _ = _over_window_join(_Crash(gs.from_arrow(a, batch_rows=150), 11),
                                       gs.from_arrow(b, batch_rows=150), "cpu")
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2, late = _over_window_join(gs.from_arrow(a, batch_rows=150),
                                           gs.from_arrow(b, batch_rows=150), "cpu")
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None and not late
    got = _sorted(_frame(out1 + out2), WJ).drop_duplicates().reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
