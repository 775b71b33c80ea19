"""The GPU's fused pane kernel for tumbling windows against the CPU's fused loop.

The CPU loop is itself checked against pandas (test_windows.py, test_fused_window.py);
here the device store (:class:`GpuPaneStore`, under the simulator or on a GPU) must
give its answers: the same rows (integers exactly, floats to 1e-9: atomics add in any
order), the same late events and dropped memberships, whatever the batching, with the
key map and the pages grown mid-batch, and checkpoints handed from one to the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
import gpustream.state.device_panes as panes_mod
from gpustream.backend import Backend, select_backend
from gpustream.expr import count
from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec
from gpustream.state.store_cpu_panes import CpuPaneStore
from gpustream.state.store_gpu_panes import GpuPaneStore
from gpustream.state.store_table import TableStore
from gpustream.state.window_store import make_store
from tests.conftest import cudasim_on
from tests.test_checkpoints import _Crash
from tests.test_windows import events, run_windows, to_agg

#: every aggregation the pane kernel folds, over int, float and timestamp inputs
AGGS = {"n": ("count", None), "nv": ("count_valid", "v"), "sv": ("sum", "v"),
        "sq": ("sum", "q"), "lo": ("min", "v"), "hi": ("max", "v"), "lq": ("min", "q"),
        "hq": ("max", "q"), "m": ("mean", "v"), "var": ("var", "q"), "sd": ("std", "v"),
        "tmin": ("min", "ts"), "tmax": ("max", "ts")}
#: aggregations whose columns fit the kernel's shared-memory slots (7 int64, 4 float64)
AGGS_SHARED = {"n": ("count", None), "sq": ("sum", "q"), "lo": ("min", "v"),
               "hq": ("max", "q"), "m": ("mean", "v")}


def _spec(size: int = 10, slide: int = 10, lateness: int = 0, kind: str = "count") -> WindowSpec:
    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "n": pa.int64()})
    agg = count() if kind == "count" else getattr(gs.col("v"), kind)()
    return WindowSpec("w", ("k",), "ts", size, slide, 0, 0, lateness,
                      (AggSpec("n", agg, None if kind == "count" else pa.float64(), pa.int64()),),
                      schema, lateness > 0)


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal rows: integer columns exactly, float columns to 1e-9 relative."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True),
                                  check_exact=False, rtol=1e-9, atol=1e-9)


def test_the_pane_kernel_runs_tumbling_windows_on_the_device_only(
        device_backend: Backend) -> None:
    assert type(WindowAggOp(_spec(), device_backend).store) is GpuPaneStore
    assert type(make_store(_spec(slide=5), device_backend)) is GpuPaneStore
    # revisions, and aggregations the kernel does not fold: the separate kernels; the
    # CPU keeps its own fused loop
    assert type(make_store(_spec(lateness=5), device_backend)) is TableStore
    assert type(make_store(_spec(kind="first"), device_backend)) is TableStore
    assert type(make_store(_spec(), select_backend("cpu"))) is CpuPaneStore
    with pytest.raises(ValueError, match="windows without allowed lateness"):
        GpuPaneStore(_spec(lateness=5), device_backend)


@pytest.mark.parametrize("preagg", [True, False], ids=["shared-memory", "global-atomics"])
@pytest.mark.parametrize("assigner", [gs.Tumbling(5000), gs.Tumbling(4000, offset=1500),
                                      gs.Sliding(6000, 2000),
                                      gs.Sliding(9000, 3000, offset=-1000)],
                         ids=lambda a: a.describe())
def test_pane_windows_equal_the_cpu_loop(device_backend: Backend, assigner: gs.WindowAssigner,
                                         preagg: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(panes_mod, "PREAGG", preagg)  # both ways of folding a tile
    aggs = AGGS_SHARED if preagg else AGGS
    seen = []
    fold = panes_mod.DevicePanes.fold

    deferred = []

    def spy(self: panes_mod.DevicePanes, *args: Any, **kw: Any) -> Any:
        seen.append(self.can_preagg)  # the state's columns fit the shared-memory slots
        result = fold(self, *args, **kw)
        deferred.append(int(result[3].shape[0]))
        return result

    monkeypatch.setattr(panes_mod.DevicePanes, "fold", spy)
    table = events(3, 500, keys=6, disorder=12_000, span=40_000)
    got, late = run_windows(table, device_backend.name, assigner, ("k", "g"), aggs, delay=800,
                            batch_rows=120)
    assert seen and all(seen) == preagg
    if isinstance(assigner, gs.Sliding):  # events waited for windows to fire mid-batch
        assert sum(deferred) > 0
    want, want_late = run_windows(table, "cpu", assigner, ("k", "g"), aggs, delay=800,
                                  batch_rows=120)
    assert len(want) > 40 and want_late.num_rows > 10  # late events and many windows
    _same(got, want)
    assert late.equals(want_late)


def test_null_keys_null_times_and_all_null_values(device_backend: Backend) -> None:
    rng = np.random.default_rng(4)
    n = 300
    table = pa.table({
        "k": pa.array(rng.integers(0, 4, n), mask=rng.random(n) < 0.2),
        "s": pa.array(rng.choice(["a", "b"], n), mask=rng.random(n) < 0.2),
        "ts": pa.array(np.sort(rng.integers(0, 20_000, n)), mask=rng.random(n) < 0.05),
        "v": pa.array(np.where(rng.random(n) < 0.5, np.nan, rng.normal(size=n)),
                      mask=rng.random(n) < 0.3),
        "q": pa.array(rng.integers(-9, 9, n).astype(np.int32), mask=rng.random(n) < 0.95),
    })
    aggs = {"n": ("count", None), "sq": ("sum", "q"), "hq": ("max", "q"), "m": ("mean", "v"),
            "nv": ("count_valid", "v")}
    got, late = run_windows(table, device_backend.name, gs.Tumbling(2000), ("k", "s"), aggs,
                            delay=0, batch_rows=64)
    want, want_late = run_windows(table, "cpu", gs.Tumbling(2000), ("k", "s"), aggs, delay=0,
                                  batch_rows=64)
    assert got["k"].isna().any() and got["hq"].isna().any()  # null keys, all-null groups
    _same(got, want)
    assert late.equals(want_late)


@pytest.mark.parametrize("assigner", [gs.Tumbling(1000), gs.Sliding(2000, 1000)],
                         ids=lambda a: a.describe())
def test_var_and_std_of_large_values_keep_their_precision(device_backend: Backend,
                                                          assigner: gs.WindowAssigner) -> None:
    """Epoch times, prices in small units: the sums are shifted by a pivot per key (its
    first value), as the CPU's are; unshifted, 1.7e12 +- 1000 loses every digit of var."""
    rng = np.random.default_rng(6)
    n = 400
    table = pa.table({"k": rng.integers(0, 3, n), "ts": np.sort(rng.integers(0, 8000, n)),
                      "v": 1.7e12 + rng.normal(0.0, 1000.0, n)})
    aggs: dict[str, tuple[str, str | None]] = {"var": ("var", "v"), "sd": ("std", "v"),
                                               "m": ("mean", "v")}
    got, _ = run_windows(table, device_backend.name, assigner, ("k",), aggs, delay=0,
                         batch_rows=97)
    want, _ = run_windows(table, "cpu", assigner, ("k",), aggs, delay=0, batch_rows=97)
    assert float(want["sd"].min()) > 500
    _same(got, want)


def _late_counts(engine: str, table: pa.Table) -> tuple[int, int]:
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=50), event_time="ts",
                 watermark=gs.Watermark.bounded(100))
    s.key_by("k").window(gs.Tumbling(1000), name="w").agg(n=gs.count()).sink(
        gs.to_callback(lambda rb: None))
    stats = p.run()
    return stats.late_events, stats.dropped_memberships


def test_late_events_and_dropped_memberships_are_counted_as_on_the_cpu(
        device_backend: Backend) -> None:
    table = events(8, 400, keys=3, disorder=4000, span=20_000)
    got = _late_counts(device_backend.name, table)
    assert got == _late_counts("cpu", table) and got[0] > 0


def test_the_map_and_the_pages_grow_mid_batch(device_backend: Backend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16-slot map and one page: the kernel runs out of both inside a batch, the host
    grows them (and rebuilds the map as freed keys pile up) and launches again for the
    events it could not place."""
    calls = {"pages": 0, "rebuild": 0}
    grow, rebuild = panes_mod.DevicePanes._grow_pages, panes_mod.DevicePanes._rebuild

    def spy_grow(self: panes_mod.DevicePanes, pages: int) -> None:
        calls["pages"] += 1
        grow(self, pages)

    def spy_rebuild(self: panes_mod.DevicePanes) -> None:
        calls["rebuild"] += 1
        rebuild(self)

    monkeypatch.setattr(panes_mod, "FIRST_CAPACITY", 16)
    monkeypatch.setattr(panes_mod, "FIRST_PAGES", 1)
    monkeypatch.setattr(panes_mod.DevicePanes, "_grow_pages", spy_grow)
    monkeypatch.setattr(panes_mod.DevicePanes, "_rebuild", spy_rebuild)
    rng = np.random.default_rng(5)
    n = 600
    table = pa.table({"k": rng.integers(0, 40, n), "g": rng.integers(0, 2, n),
                      "ts": np.sort(rng.integers(0, 12_000, n)) - rng.integers(0, 3000, n),
                      "v": rng.normal(size=n)})
    aggs = {"n": ("count", None), "s": ("sum", "v"), "hi": ("max", "v"), "lo": ("min", "k")}
    got, late = run_windows(table, device_backend.name, gs.Tumbling(1000), ("k", "g"), aggs,
                            delay=3000, batch_rows=300)
    monkeypatch.undo()
    want, want_late = run_windows(table, "cpu", gs.Tumbling(1000), ("k", "g"), aggs,
                                  delay=3000, batch_rows=300)
    assert calls["pages"] >= 2 and calls["rebuild"] >= 2, calls
    _same(got, want)
    assert late.equals(want_late)


@pytest.mark.parametrize("assigner", [gs.Tumbling(1000), gs.Sliding(3000, 1000)],
                         ids=lambda a: a.describe())
def test_past_its_memory_bound_the_state_moves_to_the_separate_kernels(
        device_backend: Backend, monkeypatch: pytest.MonkeyPatch,
        assigner: gs.WindowAssigner) -> None:
    """One batch holding far more open windows than pages fit in MAX_BYTES: mid-batch the
    state moves (through a snapshot) to the (key, window) table of the separate kernels,
    which fold the rest; the answer is the CPU's."""
    moved = []
    switch = WindowAggOp._to_table

    def spy(self: WindowAggOp, batch: Any, remaining: Any) -> Any:
        assert isinstance(self.store, GpuPaneStore)
        moved.append(int(remaining.shape[0]))
        out = switch(self, batch, remaining)
        assert isinstance(self.store, TableStore)
        return out

    monkeypatch.setattr(WindowAggOp, "_to_table", spy)
    monkeypatch.setattr(panes_mod, "MAX_BYTES", 600_000)  # 4 pages of 1,024 rows, not 8
    rng = np.random.default_rng(12)
    n = 400
    table = pa.table({"k": rng.integers(0, 5, n), "ts": rng.integers(0, 30_000, n),
                      "v": rng.normal(size=n)})
    aggs = {"n": ("count", None), "s": ("sum", "v"), "hi": ("max", "v"), "m": ("mean", "v")}
    got, late = run_windows(table, device_backend.name, assigner, ("k",), aggs, delay=40_000,
                            batch_rows=200)
    monkeypatch.undo()
    want, want_late = run_windows(table, "cpu", assigner, ("k",), aggs, delay=40_000,
                                  batch_rows=200)
    assert len(moved) == 1 and moved[0] > 0, moved
    _same(got, want)
    assert late.equals(want_late)


def _pipeline(source: Any, engine: str, sliding: bool = False
              ) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("ck", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(500), name="events")
    out: list[pa.RecordBatch] = []
    (s.key_by("user", "k")
     .window(gs.Sliding(6_000, 2_000) if sliding else gs.Tumbling(5_000), name="w")
     .agg(n=gs.count(), total=gs.col("v").sum(), hi=gs.col("q").max(), m=gs.col("v").mean(),
          sd=gs.col("v").std())
     .sink(gs.to_callback(out.append)))
    return p, out


def _frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    df = pa.Table.from_batches(batches).to_pandas()
    return df.sort_values(["window_start", "user", "k"]).reset_index(drop=True)


@pytest.mark.parametrize(("first_engine", "second_engine", "sliding"), [
    ("device", "cpu", False), ("cpu", "device", False), ("device", "cpu", True),
    ("device", "device", True), ("cpu", "device", True)])
def test_checkpoints_move_between_the_device_and_the_cpu(
        tmp_path: Path, device_backend: Backend, first_engine: str, second_engine: str,
        sliding: bool) -> None:
    rng = np.random.default_rng(9)
    n = 900
    ts = np.sort(rng.integers(0, 40_000, n)) + rng.integers(0, 400, n)
    table = pa.table({"ts": ts, "user": rng.choice(["ann", "bo", "cy"], n),
                      "k": rng.integers(0, 4, n), "v": rng.normal(5.0, 2.0, n),
                      "q": rng.integers(0, 100, n)})
    whole, out = _pipeline(gs.from_arrow(table, batch_rows=100), "cpu", sliding)
    whole.run()
    engines = {"cpu": "cpu", "device": device_backend.name}
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, out1 = _pipeline(_Crash(gs.from_arrow(table, batch_rows=100), 5),
                            engines[first_engine], sliding)
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2 = _pipeline(gs.from_arrow(table, batch_rows=100), engines[second_engine],
                             sliding)
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None and 0 < stats.events_in < n
    assert out1 and out2
    # the windows fired before the crash and after the restart (those after the last
    # checkpoint twice: a callback sink does not commit) are the uninterrupted run's
    both = _frame(out1 + out2).drop_duplicates(["window_start", "user", "k"])
    _same(both.reset_index(drop=True), _frame(out))


@pytest.mark.cudasim
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60), st.integers(-5, 5)),
                     min_size=1, max_size=40),
       batch_rows=st.integers(1, 17),
       assigner=st.sampled_from([gs.Tumbling(10), gs.Sliding(12, 4)]))
def test_batching_does_not_change_pane_results(rows: list[tuple[int, int, int]],
                                               batch_rows: int,
                                               assigner: gs.WindowAssigner) -> None:
    if not cudasim_on():
        pytest.skip("cudasim case needs NUMBA_ENABLE_CUDASIM=1 (make test runs it as its own step)")
    table = pa.table({"k": [r[0] for r in rows], "ts": [r[1] for r in rows],
                      "q": pa.array([r[2] for r in rows], type=pa.int32()),
                      "v": [float(r[2]) / 3 for r in rows]})
    aggs = {"n": ("count", None), "s": ("sum", "q"), "lo": ("min", "v"), "m": ("mean", "v")}
    got, late = run_windows(table, "cudasim", assigner, ("k",), aggs, delay=5,
                            batch_rows=batch_rows)
    want, want_late = run_windows(table, "cpu", assigner, ("k",), aggs, delay=5,
                                  batch_rows=len(rows))
    _same(got, want)
    assert late.num_rows == want_late.num_rows


@pytest.mark.cudasim
def test_aggregation_names_map_to_the_kernel_program() -> None:
    """Every kind the pane kernel folds has a program entry (a missing one would make the
    planner build an operator that fails on its first batch)."""
    backend = select_backend("cudasim") if cudasim_on() else None
    if backend is None:
        pytest.skip("cudasim case needs NUMBA_ENABLE_CUDASIM=1 (make test runs it as its own step)")
    for kind, column in AGGS.values():
        agg = to_agg(kind, column)
        in_type = None if column is None else (pa.float64() if column == "v" else pa.int64())
        spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                          (AggSpec("x", agg, in_type, pa.float64()),),
                          pa.schema({"k": pa.int64()}), False)
        store = GpuPaneStore(spec, backend)
        assert store.prog.shape == (1, 7)
