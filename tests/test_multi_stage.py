"""Windows over a window's output, as one streaming job (issue 17, DESIGN.md section 11).

A window's row has the event time ``window_end - 1`` and the per-row watermark the window
passed on before firing it, and the window forwards the watermark that fired it. So a
second window over the first one's rows must give exactly what the same window gives
over those rows in batch (pandas, with ``window_end - 1`` as their time): no row of the
first stage is late for the second, whatever the batching, on every backend, and across
a crash and restart.
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


def _events(seed: int, n: int, keys: int = 6, span: int = 120_000,
            disorder: int = 2_500) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span, n)) - rng.integers(0, disorder, n) * (rng.random(n) < 0.3)
    return pa.table({"k": rng.integers(0, keys, n), "ts": ts.astype(np.int64),
                     "v": rng.integers(0, 100, n).astype(np.int64),
                     "user": rng.choice(["ann", "bo", "cy"], n)})


def _two_stages(source: Any, engine: str, second: gs.WindowAssigner, session: bool = False
                ) -> tuple[gs.Pipeline, list[pa.RecordBatch], list[pa.RecordBatch],
                           list[pa.RecordBatch]]:
    """Per (k, user): 1 s tumbling count and sum (or 700 ms sessions), then per k the
    ``second`` window over those rows: their count, sum of counts, max of sums."""
    p = gs.Pipeline("two-stages", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(1000), name="ev")
    first = s.key_by("k", "user").window(gs.Session(700) if session else gs.Tumbling(1000),
                                         name="first").agg(n=gs.count(), total=gs.col("v").sum())
    second_w = first.key_by("k").window(second, name="second").agg(
        rows=gs.count(), n=gs.col("n").sum(), top=gs.col("total").max())
    one: list[pa.RecordBatch] = []
    two: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    first.sink(gs.to_callback(one.append))
    second_w.sink(gs.to_callback(two.append))
    second_w.late.sink(gs.to_callback(late.append))
    return p, one, two, late


def _frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    return pa.Table.from_batches(batches).to_pandas() if batches else pd.DataFrame()


def _reference(first: pd.DataFrame, size: int, slide: int) -> pd.DataFrame:
    """The second stage in batch: windows of ``size`` every ``slide`` over the first
    stage's rows at ``window_end - 1``, per k."""
    t = first["window_end"] - 1
    parts = []
    for j in range(size // slide):
        start = (t // slide - j) * slide
        parts.append(first.assign(window_start=start, window_end=start + size))
    rows = pd.concat(parts)
    out = rows.groupby(["k", "window_start", "window_end"], as_index=False).agg(
        rows=("n", "size"), n=("n", "sum"), top=("total", "max"))
    return out.sort_values(["window_end", "k"]).reset_index(drop=True)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return (df[["k", "window_start", "window_end", "rows", "n", "top"]]
            .sort_values(["window_end", "k"]).reset_index(drop=True))


@pytest.mark.parametrize("second", [gs.Tumbling(10_000), gs.Sliding(6_000, 2_000)],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize("session", [False, True], ids=["over-tumbling", "over-sessions"])
def test_a_window_over_a_window_equals_the_same_window_over_its_rows_in_batch(
        backend: gs.Backend, second: gs.WindowAssigner, session: bool) -> None:
    n = 600 if backend.name == "cudasim" else 6000
    table = _events(seed=3, n=n)
    p, one, two, late = _two_stages(gs.from_arrow(table, batch_rows=n // 7), backend.name,
                                    second, session)
    stats = p.run()
    first = _frame(one)
    if isinstance(second, gs.Sliding):
        size, slide = second.size_ms, second.slide_ms
    else:
        assert isinstance(second, gs.Tumbling)
        size = slide = second.size_ms
    want = _reference(first, size, slide)
    assert len(first) > 50 and len(want) > 10
    assert not late, "no row of a window is late for a window over it"
    assert stats.late_events > 0  # the first stage had late events (not the second)
    pd.testing.assert_frame_equal(_sorted(_frame(two)), want, check_dtype=False)


@settings(max_examples=12, deadline=None)
@given(batch_rows=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_the_second_stage_does_not_depend_on_batching(batch_rows: int, seed: int) -> None:
    table = _events(seed=seed, n=2500, span=40_000)
    p, one, two, late = _two_stages(gs.from_arrow(table, batch_rows=batch_rows), "cpu",
                                    gs.Sliding(4_000, 2_000))
    p.run()
    whole, _, two_whole, _ = _two_stages(gs.from_arrow(table, batch_rows=len(table)), "cpu",
                                         gs.Sliding(4_000, 2_000))
    whole.run()
    assert not late
    pd.testing.assert_frame_equal(_sorted(_frame(two)), _sorted(_frame(two_whole)))
    pd.testing.assert_frame_equal(_sorted(_frame(two)), _reference(_frame(one), 4_000, 2_000),
                                  check_dtype=False)


def test_window_outputs_carry_the_watermark_passed_on_before_them() -> None:
    """The rows a window fires on watermark ``w`` carry the watermark before ``w`` (as a
    source's rows carry the watermark as of their arrival), so they are on time for any
    window they belong to downstream; the window then passes ``w`` on."""
    from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec

    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "n": pa.int64()})
    spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("n", gs.count(), None, pa.int64()),), schema, False)
    op = WindowAggOp(spec, gs.select_backend("cpu"))
    b = gs.Batch.from_arrow(pa.record_batch({"k": [1, 2, 1], "ts": [3, 12, 25]}))
    b.watermarks = np.full(3, np.iinfo(np.int64).min)
    assert op.process(b) == []
    (fired,) = op.on_watermark(12)
    assert fired.watermarks is not None
    assert fired.watermarks.tolist() == [np.iinfo(np.int64).min]
    (fired,) = op.on_watermark(30)
    assert fired.to_arrow().column("window_end").to_pylist() == [20, 30]
    assert fired.watermarks is not None
    assert fired.watermarks.tolist() == [12, 12]  # before 30, after 12
    assert int(op.snapshot()["forwarded"][0]) == 30


def test_a_crashed_two_stage_job_resumes_with_the_same_rows(tmp_path: Path) -> None:
    table = _events(seed=5, n=5000)
    whole, _, two, _ = _two_stages(gs.from_arrow(table, batch_rows=200), "cpu",
                                   gs.Sliding(6_000, 2_000))
    whole.run()
    want = _sorted(_frame(two))
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, _, two1, _ = _two_stages(_Crash(gs.from_arrow(table, batch_rows=200), 13), "cpu",
                                    gs.Sliding(6_000, 2_000))
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, _, two2, late = _two_stages(gs.from_arrow(table, batch_rows=200), "cpu",
                                        gs.Sliding(6_000, 2_000))
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None and not late
    got = _sorted(_frame(two1 + two2)).drop_duplicates()  # rows after the checkpoint: again
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)


def _over(first: Any) -> Any:
    return first.key_by("k").window(gs.Tumbling(10_000), name="second").agg(n=gs.count())


def test_a_window_over_revised_rows_is_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(1, 10)), event_time="ts", name="ev")
    first = s.key_by("k").window(gs.Tumbling(1000), name="first",
                                 allowed_lateness=500).agg(n=gs.count())
    with pytest.raises(PlanError, match="without allowed_lateness"):
        _over(first).collect()


def test_a_window_over_map_batches_of_a_window_is_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(1, 10)), event_time="ts", name="ev")
    first = s.key_by("k").window(gs.Tumbling(1000), name="first").agg(n=gs.count())
    mapped = first.map_batches(lambda b: b, schema=first.schema)
    with pytest.raises(PlanError, match=r"map_batches .*\) of a window's output"):
        _over(mapped).collect()


def test_a_window_over_late_rows_reads_the_events_time() -> None:
    """``.late`` holds the window's input rows: a window over them reads the source's
    event time, not a window end."""
    from gpustream.plan import stream_time, time_shift

    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(1, 10)), event_time="ts", name="ev")
    first = s.key_by("k").window(gs.Tumbling(1000), name="first").agg(n=gs.count())
    late = first.late
    assert stream_time(late._node, "here")[0] == "ts"  # type: ignore[index]
    assert time_shift(late._node, "here") == 0 and time_shift(first._node, "here") == -1
