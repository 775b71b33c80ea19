"""Nothing dropped without a count: ``dropped_memberships`` of the window operators.

An event of a sliding window belongs to ``size / slide`` windows; when it arrives after
some of them have fired (and passed their allowed lateness) it still updates the open
ones, and each fired one loses it. Every such (event, window) membership is counted in
the operator's ``dropped_memberships``, as are those of the events that are late for
every window (which go to ``.late`` and are counted in ``late_events`` too). Here the
count must equal a pandas reference over the exploded (event, window) memberships, on
every store: the fused CPU loop (1 and 2 shards, and moved to the table), the separate
kernels (with and without allowed lateness), the CUDA simulator, and session windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
import gpustream.operators.window as window_mod
import gpustream.state.store_cpu_panes as fused_mod
from gpustream.operators.session import SessionAggOp
from gpustream.operators.window import AggOpBase, WindowAggOp
from gpustream.state.store_cpu_panes import CpuPaneStore
from gpustream.state.store_table import TableStore

DELAY = 500


def _late_input(seed: int, n: int, late_share: float = 0.05, keys: int = 40,
                disorder: int = 16_000) -> pa.Table:
    """Events in rough time order; ``late_share`` of them up to ``disorder`` ms back."""
    rng = np.random.default_rng(seed)
    ts = (np.sort(rng.integers(0, 60 * n, n))
          - rng.integers(0, disorder, n) * (rng.random(n) < late_share))
    return pa.table({"k": rng.integers(0, keys, n), "ts": ts.astype(np.int64),
                     "v": rng.normal(size=n)})


def reference_dropped(table: pa.Table, size: int, slide: int, offset: int, delay: int,
                      lateness: int) -> tuple[int, int]:
    """(memberships dropped, events late for every window), from the (event, window)
    memberships: a membership is dropped when its window's end + lateness is at or before
    the watermark as of the event (the largest earlier event time - delay)."""
    df = table.to_pandas()
    df["wm"] = df["ts"].cummax().shift(1) - delay  # NaN for the first event: no watermark
    nwin = size // slide
    m = df.loc[df.index.repeat(nwin)].copy()
    m["j"] = np.tile(np.arange(nwin), len(df))
    m["start"] = m["ts"] - (m["ts"] - offset) % slide - m["j"] * slide
    m["dropped"] = m["start"] + size + lateness <= m["wm"]
    per_event = m.groupby(level=0)["dropped"].all()
    return int(m["dropped"].sum()), int(per_event.sum())


def _run(table: pa.Table, engine: str, assigner: gs.WindowAssigner, batch_rows: int,
         lateness: int = 0, agg: gs.Agg | None = None) -> tuple[AggOpBase, gs.RunStats]:
    """Run a keyed window over ``table``; the window operator and the run's stats."""
    ops: list[AggOpBase] = []
    real = AggOpBase.__init__

    def spy(self: AggOpBase, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        ops.append(self)

    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    w = s.key_by("k").window(assigner, name="w", allowed_lateness=lateness).agg(
        n=gs.count(), x=agg if agg is not None else gs.col("v").sum())
    w.sink(gs.to_callback(lambda rb: None))
    w.late.sink(gs.to_callback(lambda rb: None))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(AggOpBase, "__init__", spy)
        stats = p.run()
    assert len(ops) == 1
    return ops[0], stats


def _windows(assigner: gs.WindowAssigner) -> tuple[int, int, int]:
    if isinstance(assigner, gs.Tumbling):
        return assigner.size_ms, assigner.size_ms, assigner.offset_ms
    assert isinstance(assigner, gs.Sliding)
    return assigner.size_ms, assigner.slide_ms, assigner.offset_ms % assigner.slide_ms


def _check(op: AggOpBase, stats: gs.RunStats, table: pa.Table,
           assigner: gs.WindowAssigner, lateness: int = 0) -> None:
    size, slide, offset = _windows(assigner)
    dropped, late = reference_dropped(table, size, slide, offset, DELAY, lateness)
    assert late > 0, "the data should hold events late for every window"
    assert (op.late_events, stats.late_events) == (late, late)
    assert op.dropped_memberships == dropped
    if slide < size:  # memberships of events still on time for another window
        assert dropped > late * (size // slide)


SLIDING = gs.Sliding(10_000, 2_000)


@pytest.mark.parametrize("assigner", [gs.Tumbling(5_000), SLIDING,
                                      gs.Sliding(9_000, 3_000, offset=-1_000)],
                         ids=lambda a: a.describe())
@pytest.mark.parametrize(("batch_rows", "threads"), [(7, "1"), (333, "2"), (20_000, "2")])
def test_the_fused_loop_counts_dropped_memberships(
        monkeypatch: pytest.MonkeyPatch, assigner: gs.WindowAssigner,
        batch_rows: int, threads: str) -> None:
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", threads)
    monkeypatch.setattr(fused_mod, "FUSED_CHUNK", 256)  # windows fire inside big batches
    table = _late_input(seed=batch_rows, n=6000 if batch_rows > 7 else 2000)
    op, stats = _run(table, "cpu", assigner, batch_rows)
    assert isinstance(op, WindowAggOp) and isinstance(op.store, CpuPaneStore)
    _check(op, stats, table, assigner)


def test_the_count_survives_moving_from_pages_to_the_table(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards counted before the state moves out of pages are not forgotten with them."""
    import gpustream.state.window_pages as pages_mod

    monkeypatch.setattr(pages_mod, "MAX_BYTES", 1)
    monkeypatch.setenv("GPUSTREAM_CPU_THREADS", "2")
    table = _late_input(seed=3, n=5000)
    assigner = gs.Sliding(400, 200)
    op, stats = _run(table, "cpu", assigner, 700)
    assert isinstance(op, WindowAggOp) and isinstance(op.store, TableStore)  # it moved
    _check(op, stats, table, assigner)


@pytest.mark.parametrize("lateness", [0, 3_000])
@pytest.mark.parametrize("batch_rows", [9, 500])
def test_the_separate_kernels_count_dropped_memberships(lateness: int, batch_rows: int) -> None:
    # ``first`` is not folded by the fused loop: the separate kernels run, with revisions
    # where there is allowed lateness (a membership late within it is not dropped)
    table = _late_input(seed=40 + batch_rows, n=3000)
    op, stats = _run(table, "cpu", SLIDING, batch_rows, lateness, gs.col("v").first())
    assert isinstance(op, WindowAggOp) and isinstance(op.store, TableStore)
    _check(op, stats, table, SLIDING, lateness)


@pytest.mark.parametrize("lateness", [0, 3_000])
def test_every_backend_counts_dropped_memberships(backend: gs.Backend, lateness: int) -> None:
    n = 250 if backend.name == "cudasim" else 3000
    table = _late_input(seed=7, n=n, late_share=0.1, keys=5)
    for batch_rows in (n, 40):
        op, stats = _run(table, backend.name, SLIDING, batch_rows, lateness)
        _check(op, stats, table, SLIDING, lateness)


def test_a_session_event_drops_its_one_membership(backend: gs.Backend) -> None:
    """A session event belongs to one (merged) window: when it is late, that membership
    is dropped; events that join a session are not."""
    n = 200 if backend.name == "cudasim" else 3000
    table = _late_input(seed=11, n=n, late_share=0.1, keys=5)
    op, stats = _run(table, backend.name, gs.Session(300), 50)
    assert isinstance(op, SessionAggOp)
    assert op.late_events > 0 and op.dropped_memberships == op.late_events == stats.late_events


@pytest.mark.parametrize("fused", [True, False])
def test_a_partly_late_event(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    # 10 s windows every 2 s: ts 9_000 is in [0, 10_000) .. [8_000, 18_000); at watermark
    # 12_000 - 500 the first window has fired, the other four are open; 1_000 arrives
    # after every window it is in has fired
    if not fused:
        monkeypatch.setattr(window_mod, "make_store", TableStore)
    table = pa.table({"k": [1, 1, 1], "ts": [12_000, 9_000, 1_000], "v": [1.0, 2.0, 3.0]})
    assert reference_dropped(table, 10_000, 2_000, 0, DELAY, 0) == (1 + 5, 1)
    assert reference_dropped(table, 10_000, 2_000, 0, DELAY, 2_000) == (4, 0)
    op, _ = _run(table, "cpu", SLIDING, 1)
    assert isinstance(op, WindowAggOp) and isinstance(op.store, CpuPaneStore) == fused
    assert (op.dropped_memberships, op.late_events) == (6, 1)


def test_the_run_summary_and_the_metrics_report_dropped_pairs() -> None:
    from gpustream.metrics import Metrics, _families

    # 20 s moves the watermark to 20 s; then 15 s is late for its windows ending at 16,
    # 18 and 20 s (fired) and still counts in those ending at 22 and 24 s
    p = gs.Pipeline("drops", engine="cpu")
    s = p.source(gs.from_arrow({"k": [1, 1], "ts": [20_000, 15_000]}, batch_rows=1),
                 event_time="ts", watermark=gs.Watermark.bounded(0), name="e")
    got: list[pa.RecordBatch] = []
    (s.key_by("k").window(gs.Sliding(10_000, 2_000), name="w").agg(n=gs.count())
     .sink(gs.to_callback(got.append)))
    metrics = Metrics("drops", "cpu")
    stats = p.run(metrics=metrics)
    assert (stats.late_events, stats.dropped_memberships) == (0, 3)
    assert "0 late (3 (event, window) pairs dropped)" in stats.summary()
    family = {f.name: f for f in _families(metrics)}["gpustream_dropped_memberships"]
    assert [s.value for s in family.samples] == [3]
    counts = {r["window_end"]: r["n"] for r in pa.Table.from_batches(got).to_pylist()}
    assert counts[22_000] == counts[24_000] == 2
