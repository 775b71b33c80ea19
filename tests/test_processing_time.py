"""Processing-time windows (``gs.ProcessingTime``): rows are assigned by the wall clock at
which their batch reaches the window, windows fire when the clock passes their end and
at the end of the input, no row is ever late. The clock is injected
(:func:`gpustream.operators.proctime.clock` replaced), so every test is deterministic;
the reference is pandas over the times the clock gave each batch."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.backend import Backend, select_backend
from gpustream.errors import PlanError
from gpustream.ingest.source import Source
from gpustream.operators import proctime
from gpustream.spec import SpecError, pipeline_from_spec
from gpustream.windows import PROCESSING_TIME_TYPE
from tests.test_checkpoints import _Crash

T0 = 1_764_000_000_000  # 2025-11-24, in ms since the epoch


class _Clock:
    """The readings a run's window takes, in order; counts the reads."""

    def __init__(self, readings: list[int]) -> None:
        self.readings = readings
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.readings[self.calls - 1]


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[int]], _Clock]:
    def install(readings: list[int]) -> _Clock:
        c = _Clock(readings)
        monkeypatch.setattr(proctime, "clock", c)
        return c

    return install


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=n)
    return pa.table({
        "user": rng.choice(["ann", "bo", "cy"], n),
        "k": rng.integers(0, 4, n),
        "v": pa.array(v, mask=rng.random(n) < 0.1),
        # event times far in the future and out of order: a processing-time window
        # must neither fire by their watermark nor call any row late
        "ts": rng.integers(0, 50_000, n) + 4_000_000_000_000,
    })


def _readings(batches: int, seed: int) -> list[int]:
    """Non-decreasing clock readings, some equal, gaps up to 7 s."""
    rng = np.random.default_rng(seed)
    return (T0 + np.cumsum(rng.choice([0, 900, 2_600, 7_000], batches))).tolist()


def _windows(t: int, size: int, slide: int, offset: int) -> list[int]:
    last = t - (t - offset) % slide
    return [last - j * slide for j in range(size // slide)]


def _reference(table: pa.Table, stamps: np.ndarray, size: int, slide: int,
               offset: int) -> pd.DataFrame:
    """Per (user, k, window) of the stamped times: count, sum, max and mean of v."""
    df = table.to_pandas()
    df["start"] = [_windows(int(t), size, slide, offset) for t in stamps]
    df = df.explode("start")
    df["start"] = df["start"].astype("int64")
    g = df.groupby(["user", "k", "start"], sort=True)["v"]
    out = pd.DataFrame({"n": g.size(), "total": g.sum(min_count=1), "hi": g.max(),
                        "avg": g.mean()}).reset_index()
    out["end"] = out["start"] + size
    return out


def _got(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    t = pa.Table.from_batches(batches)
    assert t.schema.field("window_start").type == pa.timestamp("ms")
    assert t.schema.field("window_end").type == pa.timestamp("ms")
    df = t.to_pandas()
    df["start"] = t["window_start"].cast(pa.int64()).to_numpy()
    df["end"] = t["window_end"].cast(pa.int64()).to_numpy()
    return (df.drop(columns=["window_start", "window_end"])
            .sort_values(["user", "k", "start"]).reset_index(drop=True))


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got[["user", "k", "start", "end", "n", "total", "hi", "avg"]]
    want = want[["user", "k", "start", "end", "n", "total", "hi", "avg"]]
    assert got[["user", "k", "start", "end", "n"]].values.tolist() == \
        want[["user", "k", "start", "end", "n"]].values.tolist()
    for c in ("total", "hi", "avg"):
        np.testing.assert_allclose(got[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float),
                                   rtol=1e-9, equal_nan=True, err_msg=c)


ASSIGNERS = [gs.ProcessingTime.tumbling("10s"), gs.ProcessingTime.tumbling(10_000, offset=-3_000),
             gs.ProcessingTime.sliding("10s", "2500ms")]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=["tumbling", "offset", "sliding"])
@pytest.mark.parametrize("event_time", [False, True], ids=["no-event-time", "event-time"])
def test_rows_land_where_the_clock_says_and_fire_when_it_passes(
        backend: Backend, fake_clock: Callable[[list[int]], _Clock],
        assigner: gs.ProcessingTime, event_time: bool) -> None:
    n, rows = (90, 9) if backend.name == "cudasim" else (1_500, 37)
    table = _events(n, seed=3)
    batches = -(-n // rows)
    clock = fake_clock(_readings(batches, seed=4))
    p = gs.Pipeline(engine=backend.name)
    s = p.source(gs.from_arrow(table, batch_rows=rows),
                 event_time="ts" if event_time else None,
                 watermark=gs.Watermark.bounded(0) if event_time else None)
    out: list[tuple[pa.RecordBatch, int]] = []
    w = s.key_by("user", "k").window(assigner, name="w").agg(
        n=gs.count(), total=gs.col("v").sum(), hi=gs.col("v").max(), avg=gs.col("v").mean())
    w.sink(gs.to_callback(lambda b: out.append((b, clock.calls))))
    late: list[pa.RecordBatch] = []
    w.late.sink(gs.to_callback(late.append))
    stats = p.run()
    assert clock.calls == batches  # one reading per batch
    assert stats.late_events == 0 and late == [] and stats.dropped_memberships == 0

    g = assigner.geometry(PROCESSING_TIME_TYPE, "test")
    stamps = np.repeat(clock.readings, rows)[:n]
    _same(_got([b for b, _ in out]), _reference(table, stamps, g.size, g.slide, g.offset))
    # each window came out at the first batch whose clock reached its end, else at the
    # end of the input (after the last reading)
    for b, calls in out:
        for end in pa.Table.from_batches([b])["window_end"].cast(pa.int64()).to_pylist():
            due = [j + 1 for j, r in enumerate(clock.readings) if r >= end]
            assert calls == (due[0] if due else batches), (end, calls)
    assert any(calls < batches for _, calls in out)  # some fired before the end


def test_the_clock_never_goes_back(fake_clock: Callable[[list[int]], _Clock]) -> None:
    fake_clock([T0 + 5_000, T0 + 12_000, T0 + 3_000, T0 + 25_000])
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"x": [1, 2, 3, 4, 5, 6, 7, 8]}, batch_rows=2))
    w = s.window(gs.ProcessingTime.tumbling("10s")).agg(n=gs.count(), xs=gs.col("x").sum())
    stats_out = w.collect()
    got = list(zip(stats_out["window_start"].cast(pa.int64()).to_pylist(),
                   stats_out["n"].to_pylist(), stats_out["xs"].to_pylist(), strict=True))
    # the third batch read 3 s but counts as 12 s: in [10 s, 20 s), never late
    assert got == [(T0, 2, 3), (T0 + 10_000, 4, 3 + 4 + 5 + 6), (T0 + 20_000, 2, 15)]


def _op(readings: Iterator[int]) -> proctime.ProcessingTimeWindowOp:
    from gpustream.operators.window import AggSpec, WindowSpec

    ms = pa.timestamp("ms")
    spec = WindowSpec("w", ("k",), "", 10, 10, 0, 0, 0,
                      (AggSpec("n", gs.count(), None, pa.int64()),),
                      pa.schema({"k": pa.int64(), "window_start": ms, "window_end": ms,
                                 "n": pa.int64()}), False)
    return proctime.ProcessingTimeWindowOp(spec, select_backend("cpu"),
                                           clock=lambda: next(readings))


def _rows(batches: list[Any]) -> list[tuple[int, int, int]]:
    out = []
    for b in batches:
        d = b.to_arrow().to_pydict()
        out += [(k, int(e.timestamp() * 1000) if not isinstance(e, int) else e, c)
                for k, e, c in zip(d["k"], d["window_end"], d["n"], strict=True)]
    return out


def test_only_the_end_of_input_fires_without_a_batch_and_state_restores() -> None:
    from gpustream.batch import Batch

    b = Batch.from_arrow(pa.record_batch({"k": [1, 2, 1]}))
    op = _op(iter([3, 7]))
    assert op.process(b) == [] and op.process(b) == []
    assert op.on_watermark(10**9) == []  # an event-time watermark fires nothing
    state = op.snapshot()
    assert int(state["clock"][0]) == 7

    again = _op(iter([5, 14]))  # after a restart the wall clock reads 5: it stays at 7
    again.restore(state)
    assert again.process(b) == []  # the rows at 7 join the restored window [0, 10)
    fired = _rows(again.process(b))  # 14 passes its end: it fires
    assert sorted(fired) == [(1, 10, 6), (2, 10, 3)]
    assert sorted(_rows(again.on_watermark(2**63 - 1))) == [(1, 20, 2), (2, 20, 1)]
    assert again.late_events == 0


def test_a_restart_fires_restored_windows_by_the_new_clock(
        tmp_path: Path, fake_clock: Callable[[list[int]], _Clock]) -> None:
    """Checkpoints every 3 batches; the first run dies reading its 8th batch. The second
    restores the open window (batches 4-6, by the first run's clock), fires it at its first
    batch (the clock is past its end), and stamps the replayed batches 7.. anew."""
    table = pa.table({"k": np.arange(40) % 3, "v": np.arange(40)})
    rows, batches = 4, 10

    def pipeline(source: Source) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
        p = gs.Pipeline("pt", engine="cpu")
        out: list[pa.RecordBatch] = []
        (p.source(source, name="events").key_by("k")
         .window(gs.ProcessingTime.tumbling("10s"), name="w")
         .agg(n=gs.count(), total=gs.col("v").sum()).sink(gs.to_callback(out.append)))
        return p, out

    first_clock = [T0 + 2_500 * (i + 1) for i in range(batches)]
    fake_clock(first_clock)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, out1 = pipeline(_Crash(gs.from_arrow(table, batch_rows=rows), 7))
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second_clock = [T0 + 100_000 + 2_500 * i for i in range(batches)]
    clock = fake_clock(second_clock)
    second, out2 = pipeline(gs.from_arrow(table, batch_rows=rows))
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None
    assert clock.calls == batches - 6  # batches 7..10 again, after the checkpoint at 6

    stamps = np.repeat(first_clock[:6] + second_clock[:batches - 6], rows)
    df = table.to_pandas()
    df["start"] = stamps - stamps % 10_000
    want = df.groupby(["k", "start"]).agg(n=("v", "size"), total=("v", "sum")).reset_index()
    got = pa.Table.from_batches(out1 + out2)
    got_rows = sorted(zip(got["k"].to_pylist(), got["window_start"].cast(pa.int64()).to_pylist(),
                          got["n"].to_pylist(), got["total"].to_pylist(), strict=True))
    assert got_rows == sorted(map(tuple, want.values.tolist()))


def test_yaml_processing_time_windows(tmp_path: Path,
                                      fake_clock: Callable[[list[int]], _Clock]) -> None:
    table = pa.table({"user": ["a", "b", "a", "a", "b", "a"], "v": [1, 2, 3, 4, 5, 6]})
    pq.write_table(table, tmp_path / "in.parquet")
    spec = tmp_path / "p.yaml"
    spec.write_text(textwrap.dedent("""\
        name: pt
        engine: cpu
        source: {type: parquet, path: in.parquet, max_rows: 2}
        steps:
          - key_by: user
          - window: {sliding: 10s, slide: 5s, time: processing}
          - agg: {n: count(), total: sum(v)}
        sink: {type: parquet, path: out.parquet}
        """))
    clock = fake_clock([T0 + 1_000, T0 + 6_000, T0 + 12_000])
    p = pipeline_from_spec(spec)
    assert "processing-time sliding(10000ms every 5000ms)" in p.explain()
    p.run()
    assert clock.calls == 3
    got = pq.read_table(tmp_path / "out.parquet")
    rows = sorted(zip(got["user"].to_pylist(), got["window_start"].cast(pa.int64()).to_pylist(),
                      got["n"].to_pylist(), got["total"].to_pylist(), strict=True))
    # batch 1 (1 s): a1 b2; batch 2 (6 s): a3 a4; batch 3 (12 s): b5 a6
    assert rows == [("a", T0 - 5_000, 1, 1), ("a", T0, 3, 8), ("a", T0 + 5_000, 3, 13),
                    ("a", T0 + 10_000, 1, 6), ("b", T0 - 5_000, 1, 2), ("b", T0, 1, 2),
                    ("b", T0 + 5_000, 1, 5), ("b", T0 + 10_000, 1, 5)]


def _two() -> tuple[gs.Stream, gs.Stream]:
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow({"k": [1], "ts": [1], "v": [1.0]}), event_time="ts", name="a")
    b = p.source(gs.from_arrow({"k": [1], "ts": [1]}), event_time="ts", name="b")
    return a, b


def _pt(s: gs.Stream) -> gs.AggStream:
    return s.key_by("k").window(gs.ProcessingTime.tumbling("10s"), name="pt").agg(
        n=gs.count())


NO_TIME = (r"the rows of step \d \(window '[^']+'\), a processing-time tumbling\(\d+ms\) "
           r"window, have no event time .*aggregate the source's events in one "
           r"processing-time window, or use event-time windows")


@pytest.mark.parametrize(("build", "match"), [
    (lambda a, b: a.key_by("k").window(gs.ProcessingTime.tumbling("10s"),
                                       allowed_lateness="5s").agg(n=gs.count()),
     r"step 1 \(window 'window@1'\): allowed_lateness does not apply to processing-time "
     r"tumbling\(10000ms\) windows: no row is late by the wall clock; drop allowed_lateness"),
    (lambda a, b: _pt(a).key_by("k").window(gs.Tumbling("1m")).agg(m=gs.count()), NO_TIME),
    (lambda a, b: _pt(a).key_by("k").window(gs.ProcessingTime.tumbling("1m")).agg(
        m=gs.col("n").sum()).key_by("k").window(gs.Tumbling("1m")).agg(x=gs.count()),
     NO_TIME),
    (lambda a, b: _pt(a).key_by("k").over(rows=2).agg(m=gs.count()), NO_TIME),
    (lambda a, b: _pt(a).interval_join(b, on="k", lower=0, upper=0), NO_TIME),
    (lambda a, b: a.window_join(b, on="k", window=gs.ProcessingTime.tumbling("10s")),
     r"window joins pair rows by event time; processing-time tumbling\(10000ms\) is not "
     r"supported there: use an event-time window"),
], ids=["allowed-lateness", "window-over", "window-over-a-second", "over",
        "interval-join", "window-join"])
def test_plan_errors_name_the_step_and_the_fix(build: Callable[[gs.Stream, gs.Stream], Any],
                                               match: str) -> None:
    a, b = _two()
    with pytest.raises(PlanError, match=match):
        build(a, b)


def test_a_processing_time_window_needs_no_event_time_but_an_event_time_one_says_so() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"v": [1]}), name="nums")
    with pytest.raises(PlanError, match=r"windows need an event time: pass event_time="
                                        r"'<column>' to Pipeline.source for 'nums' \(or window "
                                        r"by the wall clock: gs.ProcessingTime.tumbling"):
        s.window(gs.Tumbling(10)).agg(n=gs.count())
    assert s.window(gs.ProcessingTime.tumbling(10)).agg(n=gs.count()).collect()["n"].to_pylist() == [1]


def test_only_tumbling_or_sliding_windows_go_by_processing_time() -> None:
    with pytest.raises(PlanError, match=r"ProcessingTime: windows by processing time are "
                                        r"tumbling or sliding, got Session\(gap_ms=5000\); use "
                                        r"gs.ProcessingTime.tumbling\(size\)"):
        gs.ProcessingTime(gs.Session("5s"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("window", "match"), [
    ("{session: 5s, time: processing}",
     r"p.yaml:5: steps\[1\].window.time: processing-time windows are tumbling or sliding; "
     r"use time: event for a session"),
    ("{tumbling: 5s, time: processing, allowed_lateness: 1s}",
     r"allowed_lateness does not apply to processing-time tumbling\(5000ms\) windows"),
    ("{tumbling: 5s, time: wall}", r"steps\[1\].window.time"),
])
def test_yaml_errors(tmp_path: Path, window: str, match: str) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(textwrap.dedent(f"""\
        source: {{type: nexmark, events: 10}}
        engine: cpu
        steps:
          - key_by: auction
          - window: {window}
          - agg: {{n: count()}}
        sink: {{type: console}}
        """))
    with pytest.raises(SpecError, match=match):
        pipeline_from_spec(spec)
