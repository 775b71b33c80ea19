"""Aggregation states: merge(a, b) == update(a + b); snapshots restore on any backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import select_backend
from gpustream.expr import AGG_KINDS, Agg
from gpustream.ingest.dictionary import StringDictionary
from gpustream.state.aggstate import UpdateContext, make_state
from gpustream.state.table import SlotTable

OUT_TYPES = {"count": pa.int64(), "count_valid": pa.int64(), "sum": pa.int64(),
             "min": pa.int64(), "max": pa.int64(), "mean": pa.float64(), "var": pa.float64(),
             "std": pa.float64(), "first": pa.int64(), "last": pa.int64(),
             "count_distinct": pa.int64(), "approx_count_distinct": pa.int64()}

values_st = st.lists(st.tuples(st.one_of(st.none(), st.integers(-1000, 1000)),
                               st.integers(0, 50)), max_size=40)


def _fold(kind: str, parts: list[list[tuple[int | None, int]]], merge: bool) -> tuple[Any, Any]:
    """Fold ``parts`` into slots; with ``merge`` each part has its own slot, merged at the end."""
    table = SlotTable(1, np, select_backend("cpu"))
    agg = Agg(kind, None if kind == "count" else gs.col("v"))
    state = make_state("a", agg, pa.int64(), OUT_TYPES[kind], table)
    keys = np.arange(len(parts), dtype=np.uint64).reshape(1, -1) if merge else \
        np.zeros((1, 1), dtype=np.uint64)
    slots, _ = table.upsert(np.ascontiguousarray(keys), np.arange(keys.shape[1]))
    seq = 0
    for p, part in enumerate(parts):
        slot = slots[p if merge else 0]
        vals = np.array([v if v is not None else 0 for v, _ in part], dtype=np.int64)
        valid = np.array([v is not None for v, _ in part], dtype=bool)
        ts = np.array([t for _, t in part], dtype=np.int64)
        rows = np.arange(len(part), dtype=np.int64)
        if len(part) and (p == 0 or merge):
            state.init(np.array([slot]), rows[:1], vals, valid)
        ctx = UpdateContext(ts, np.arange(seq, seq + len(part), dtype=np.int64))
        seq += len(part)
        state.update(np.full(len(part), slot, dtype=np.int64), rows, vals, valid, ctx)
    if merge:
        for p in range(1, len(parts)):
            state.merge(slots[:1], slots[p : p + 1])
    values, validity = state.finalize(slots[:1])
    ok = True if validity is None else bool(validity[0])
    return (values[0] if ok else None), ok


@pytest.mark.parametrize("kind", [k for k in AGG_KINDS if k != "row_number"])  # (an OVER
@given(a=values_st, b=values_st, c=values_st)                  # window's: never a state)
def test_merge_equals_update_of_concatenation(kind: str, a: list, b: list, c: list) -> None:
    merged, ok_m = _fold(kind, [a, b, c], merge=True)
    whole, ok_w = _fold(kind, [a + b + c], merge=False)
    assert ok_m == ok_w
    if merged is None:
        return
    if kind in ("var", "std", "mean"):
        assert merged == pytest.approx(whole, rel=1e-9, abs=1e-9)
    else:
        assert merged == whole


def _windowed(engine: str, table: pa.Table, assigner: gs.WindowAssigner, lateness: int,
              split: int | None) -> pd.DataFrame:
    """Run a windowed query; with ``split``, snapshot after ``split`` rows and restore into a
    fresh pipeline (on ``engine``) that processes the rest."""
    from gpustream.plan.physical import build_physical
    from gpustream.runtime import execute
    from gpustream.sinks import CollectSink

    def plan(t: pa.Table, eng: str) -> tuple[Any, CollectSink]:
        p = gs.Pipeline(engine=eng)
        s = p.source(gs.from_arrow(t, batch_rows=97), event_time="ts",
                     watermark=gs.Watermark.bounded(300))
        w = s.key_by("k").window(assigner, name="w", allowed_lateness=lateness).agg(
            n=gs.count(), s=gs.col("v").sum(), sd=gs.col("v").std(), f=gs.col("v").first(),
            d=gs.col("v").count_distinct(), a=gs.col("v").approx_count_distinct(),
            c=gs.col("c").last())
        sink = CollectSink()
        return build_physical([(w._node, sink)], p.backend), sink

    if split is None:
        phys, sink = plan(table, engine)
        execute(phys, "whole")
        return _sorted(sink.table())
    first, sink1 = plan(table.slice(0, split), "cpu")
    # run the first part without ending the stream: push batches by hand
    from gpustream.batch import Batch
    from gpustream.runtime.runner import RunStats, _Runner

    runner = _Runner(first, RunStats("a", "cpu"))
    for pn, sink in first.sinks:
        sink.open(pn.schema)
    src = first.sources[0]
    dicts: dict[str, Any] = {}
    for sb in src.node.source.open():
        runner.push(src, Batch.from_arrow(sb.data, dicts))
        runner.advance(src, src.op.current)
    states = {id(pn): pn.op.snapshot() for pn in [src, *src.children]}
    second, sink2 = plan(table.slice(split), engine)
    src2 = second.sources[0]
    for old, new in zip([src, *src.children], [src2, *src2.children], strict=True):
        new.op.restore(states[id(old)])
    # the string dictionary travels with the checkpoint too
    restored_dicts = {k: StringDictionary(v.snapshot()) for k, v in dicts.items()}
    runner2 = _Runner(second, RunStats("b", engine))
    for pn, sink in second.sinks:
        sink.open(pn.schema)
    for sb in src2.node.source.open():
        b = Batch.from_arrow(sb.data, restored_dicts).to_device(second.backend)
        runner2.push(src2, b)
        runner2.advance(src2, src2.op.current)
    runner2.end(src2)
    return _sorted(pa.concat_tables([sink1.table(), sink2.table()]))


def _sorted(t: pa.Table) -> pd.DataFrame:
    df = t.to_pandas()
    by = ["window_end", "window_start", "k"] + (["revision"] if "revision" in df else [])
    return df.sort_values(by, kind="stable").reset_index(drop=True)


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 20 * n, n)) - rng.integers(0, 800, n) * (rng.random(n) < 0.3)
    return pa.table({"k": rng.integers(0, 6, n), "ts": ts.astype(np.int64),
                     "v": pa.array(rng.integers(0, 40, n), mask=rng.random(n) < 0.1),
                     "c": pa.array(rng.choice(["p", "q", "r"], n))})


@pytest.mark.parametrize("assigner,lateness", [(gs.Tumbling(500), 0), (gs.Sliding(600, 200), 400),
                                               (gs.Session(150), 0)],
                         ids=["tumbling", "sliding+lateness", "session"])
def test_snapshot_restore_mid_stream_equals_uninterrupted(
        backend: gs.Backend, assigner: gs.WindowAssigner, lateness: int) -> None:
    n = 400 if backend.name == "cudasim" else 3000
    table = _events(n, 1)
    whole = _windowed("cpu", table, assigner, lateness, None)
    resumed = _windowed(backend.name, table, assigner, lateness, split=n // 2 + 13)
    pd.testing.assert_frame_equal(resumed, whole, check_exact=False, rtol=1e-9)


@pytest.mark.cudasim
@pytest.mark.parametrize("assigner", [gs.Tumbling(700), gs.Sliding(900, 300), gs.Session(120)],
                         ids=["tumbling", "sliding", "session"])
def test_cpu_equals_cudasim_for_windows(assigner: gs.WindowAssigner) -> None:
    from tests.conftest import cudasim_on

    if not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1")
    table = _events(500, 2)
    cpu = _windowed("cpu", table, assigner, 0, None)
    sim = _windowed("cudasim", table, assigner, 0, None)
    pd.testing.assert_frame_equal(sim, cpu, check_exact=False, rtol=1e-9)
    assert select_backend("cudasim").name == "cudasim"


def test_slot_table_grows_while_inserting_and_keeps_earlier_slots() -> None:
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 50_000, (2, 120_000)).astype(np.uint64)
    table = SlotTable(2, np, select_backend("cpu"))
    table.add_column("first_row", np.int64, -1)
    slots, is_new = table.upsert(keys, np.arange(keys.shape[1]))
    assert table.rebuilds > 0, "the insert should have grown the table several times"
    created = is_new.astype(bool)
    table.columns["first_row"][slots[created]] = np.nonzero(created)[0]
    # every row's slot holds its own key, and equal keys share a slot
    assert np.array_equal(table.t_keys[:, slots], keys)
    _, first, inverse = np.unique(keys.T, axis=0, return_index=True, return_inverse=True)
    assert int(created.sum()) == len(first) == table.live_count
    assert np.array_equal(table.columns["first_row"][slots], first[inverse.ravel()])
