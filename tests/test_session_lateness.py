"""Session windows with allowed lateness emit a changelog that never leaves overlaps.

A late event can widen a fired session or bridge several into one. The output is then a
changelog in an ``op`` column (``+I``, ``-U``, ``+U``, ``-D``, Flink's RowKind): applied
in order (add ``+I`` / ``+U`` rows, remove the row a ``-U`` / ``-D`` repeats), it must
leave, for every key, sessions that never overlap and that equal a pandas reference:
the sessions (gap-separated runs) of every event that did not go to ``.late``. And the
result must not depend on how the input is cut into batches, on the CPU and under the
CUDA simulator, nor on a snapshot and restore mid-stream.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import select_backend
from gpustream.batch import Batch
from gpustream.changelog import OPS
from gpustream.expr import count
from gpustream.operators.session import SessionAggOp
from gpustream.operators.window import AggSpec, WindowSpec

GAP, DELAY = 300, 200
AGGS = ("n", "total", "lo", "hi", "kinds")


def _late_input(seed: int, n: int, keys: int = 4, late_share: float = 0.15,
                disorder: int = 6000) -> pa.Table:
    """Events ~40 ms apart per key on average (sessions of gap 300 form and break),
    ``late_share`` of them up to ``disorder`` ms late; ``id`` numbers them."""
    rng = np.random.default_rng(seed)
    ts = (np.sort(rng.integers(0, 10 * keys * n // 1, n))
          - rng.integers(0, disorder, n) * (rng.random(n) < late_share))
    return pa.table({"id": np.arange(n), "k": rng.integers(0, keys, n),
                     "ts": ts.astype(np.int64), "v": rng.integers(-50, 50, n),
                     "c": rng.choice(["x", "y", "z"], n)})


def _run(table: pa.Table, engine: str, lateness: int, batch_rows: int,
         ) -> tuple[list[dict[str, Any]], pa.Table]:
    """The changelog rows in the order a sink receives them, and the ``.late`` rows."""
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(DELAY))
    w = s.key_by("k").window(gs.Session(GAP), name="s", allowed_lateness=lateness).agg(
        n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(), hi=gs.col("v").max(),
        kinds=gs.col("c").count_distinct())
    out: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    w.late.sink(gs.to_callback(late.append))
    stats = p.run()
    rows = pa.Table.from_batches(out, schema=w.schema).to_pylist()
    late_t = pa.Table.from_batches(late, schema=table.schema)
    assert stats.late_events == late_t.num_rows
    return rows, late_t


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["k"], r["window_start"], r["window_end"], *(r[a] for a in AGGS), r["revision"])


def apply_changelog(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """The rows standing after applying ``rows`` in order; every ``-U`` / ``-D`` must
    retract a standing row, and every ``+U`` follow a ``-U`` of its key."""
    standing: Counter[tuple[Any, ...]] = Counter()
    before: dict[Any, int] = Counter()  # per key: -U rows not yet followed by a +U
    for r in rows:
        row, op = _row(r), r["op"]
        assert op in OPS, op
        if op in ("-U", "-D"):
            assert standing[row] > 0, f"{op} retracts a row that is not standing: {r}"
            standing[row] -= 1
            if op == "-U":
                before[r["k"]] += 1
        else:
            if op == "+U":
                assert before[r["k"]] > 0, f"+U without its -U: {r}"
                before[r["k"]] -= 1
                assert r["revision"] > 0, r
            else:
                assert r["revision"] == 0, r
            standing[row] += 1
    assert not any(before.values()), "a -U without its +U"
    return +standing


def reference_sessions(table: pa.Table, late: pa.Table) -> list[tuple[Any, ...]]:
    """Per key, the sessions of the events that did not go to ``.late``, in pandas."""
    df = table.to_pandas()
    df = df[~df["id"].isin(late.column("id").to_pylist())].sort_values(["k", "ts"])
    new = (df["k"] != df["k"].shift()) | (df["ts"] - df["ts"].shift() >= GAP)
    df["sid"] = new.cumsum()
    g = df.groupby("sid")
    ref = pd.DataFrame({"k": g["k"].first(), "window_start": g["ts"].min(),
                        "window_end": g["ts"].max() + GAP, "n": g.size(),
                        "total": g["v"].sum(), "lo": g["v"].min(), "hi": g["v"].max(),
                        "kinds": g["c"].nunique()})
    return sorted(tuple(int(x) for x in r) for r in ref.itertuples(index=False))


def _final(standing: Counter[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The standing sessions without revisions, each once, checked not to overlap."""
    assert all(c == 1 for c in standing.values()), "a row stands twice"
    sessions = sorted(row[:-1] for row in standing)
    for a, b in itertools.pairwise(sessions):
        if a[0] == b[0]:
            assert a[2] <= b[1], f"sessions of key {a[0]} overlap: {a} and {b}"
    return sessions


@pytest.mark.parametrize(("lateness", "batch_rows"), [(1500, 1), (1500, 97), (4000, 1000),
                                                     (400, 37)])
def test_the_applied_changelog_is_the_sessions_of_the_kept_events(
        backend: gs.Backend, lateness: int, batch_rows: int) -> None:
    n = 2000
    if backend.name == "cudasim":  # the simulator runs a few thousand threads a second
        n, batch_rows = 150, max(batch_rows, 25)
    table = _late_input(seed=batch_rows, n=n)
    rows, late = _run(table, backend.name, lateness, batch_rows)
    ops = Counter(r["op"] for r in rows)
    assert ops["+I"] and ops["-U"] and ops["+U"], ops  # sessions re-fired
    if backend.name != "cudasim" and lateness >= 1500:
        assert ops["-D"], ops  # late events bridged fired sessions
    assert late.num_rows > 0, "the data should hold events too late for any session"
    assert _final(apply_changelog(rows)) == reference_sessions(table, late)


def _fingerprint(rows: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], Counter[Any]]:
    return sorted(apply_changelog(rows)), Counter((*_row(r), r["op"]) for r in rows)


@pytest.mark.parametrize("engine", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
@settings(max_examples=5)
@given(seed=st.integers(0, 2**16), cuts=st.lists(st.integers(1, 300), min_size=2, max_size=2))
def test_the_changelog_does_not_depend_on_batching(engine: str, seed: int,
                                                   cuts: list[int]) -> None:
    """The same standing rows and the same changelog rows (their order across keys
    aside), however the input is cut; under the simulator, the CPU's too."""
    from tests.conftest import cudasim_on

    if engine == "cudasim" and not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1")
    n = 100 if engine == "cudasim" else 800
    table = _late_input(seed=seed, n=n, keys=3)
    want_rows, want_late = _run(table, "cpu", 1500, n)
    smallest = 20 if engine == "cudasim" else 1
    for c in cuts if engine == "cpu" else cuts[:1]:  # the simulator is slow: one cut
        rows, late = _run(table, engine, 1500, max(c, smallest))
        assert late.equals(want_late)
        assert _fingerprint(rows) == _fingerprint(want_rows)


def _op(lateness: int = 50) -> SessionAggOp:
    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(), "window_end": pa.int64(),
                        "n": pa.int64(), "revision": pa.int32(), "op": pa.string()})
    spec = WindowSpec("s", ("k",), "ts", 0, 0, 0, 10, lateness,
                      (AggSpec("n", count(), None, pa.int64()),), schema, True)
    return SessionAggOp(spec, select_backend("cpu"))


def _feed(op: SessionAggOp, ks: list[int], ts: list[int], wm: list[int]) -> list[dict[str, Any]]:
    b = Batch.from_arrow(pa.record_batch({"k": ks, "ts": ts}))
    b.watermarks = np.array(wm, dtype=np.int64)
    return [r for out in op.process(b) for r in out.to_arrow().to_pylist()]


MIN = int(np.iinfo(np.int64).min)


def test_a_bridging_late_event_deletes_the_absorbed_session() -> None:
    """Gap 10, lateness 50: [0, 15) (2 events) and [20, 30) fire; 12, late, bridges them:
    the changelog deletes [20, 30), updates [0, 15) (fired once, earliest) to [0, 30)."""
    op = _op()
    assert _feed(op, [1, 1, 1], [0, 5, 20], [MIN, 0, 5]) == []
    got = _feed(op, [1], [12], [40])
    assert [(r["op"], r["window_start"], r["window_end"], r["n"], r["revision"]) for r in got] == [
        ("+I", 0, 15, 2, 0), ("+I", 20, 30, 1, 0),
        ("-D", 20, 30, 1, 0), ("-U", 0, 15, 2, 0), ("+U", 0, 30, 4, 1)]


def test_the_session_fired_most_often_lives_on() -> None:
    """When sessions of different revisions merge, the one fired most often keeps its
    revision and is updated; the other is deleted."""
    op = _op()
    _feed(op, [1, 1], [0, 20], [MIN, 0])
    first = _feed(op, [1], [2], [40])  # both fire; 2 joins [0, 10), which fires again
    assert [(r["op"], r["window_start"], r["revision"]) for r in first] == [
        ("+I", 0, 0), ("+I", 20, 0), ("-U", 0, 0), ("+U", 0, 1)]
    got = _feed(op, [1], [11], [41])  # bridges [0, 12) (rev 1) and [20, 30) (rev 0)
    assert [(r["op"], r["window_start"], r["window_end"], r["n"], r["revision"]) for r in got] == [
        ("-D", 20, 30, 1, 0), ("-U", 0, 12, 2, 1), ("+U", 0, 30, 4, 2)]


def test_an_event_over_a_gone_session_is_late() -> None:
    """[0, 10) is gone once the watermark passes 10 + 5; an event at 8 (its window [8, 18)
    still within the lateness) would overlap it: late, rather than a second session over
    the first."""
    op = _op(lateness=5)
    assert _feed(op, [1, 1], [0, 20], [MIN, 0]) == []
    op.on_watermark(16)
    got = _feed(op, [1, 1], [8, 19], [16, 16])
    assert [r["op"] for r in got] == []
    late = op.side_outputs()["late"]
    assert [b.to_arrow().column("ts").to_pylist() for b in late] == [[8]]
    assert op.dropped_memberships == op.late_events == 1


def test_a_chain_of_late_events_cannot_reach_a_forgotten_session() -> None:
    """Gap 10, lateness 5. [0, 10) is gone at watermark 15 and its key forgotten by 25.
    At watermark 30, 16 opens [16, 26) (its window within the lateness) and fires; 7 would
    join it and overlap [0, 10), which nothing remembers: the session's floor, 30 - 10 - 5
    = 15, makes 7 late."""
    op = _op(lateness=5)
    _feed(op, [1], [0], [MIN])
    assert _short(_rows(op.on_watermark(30))) == [("+I", 0, 10, 1, 0)]
    assert op.keys.live_count == 0 and op.store.live_count == 0  # all forgotten
    assert _short(_feed(op, [1, 1], [16, 7], [30, 30])) == [("+I", 16, 26, 1, 0)]
    assert [b.to_arrow().column("ts").to_pylist() for b in op.side_outputs()["late"]] == [[7]]


def _rows(batches: list[Batch]) -> list[dict[str, Any]]:
    return [r for b in batches for r in b.to_arrow().to_pylist()]


def _short(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["op"], r["window_start"], r["window_end"], r["n"], r["revision"]) for r in rows]


@pytest.mark.parametrize("restore", [False, True])
def test_a_merged_session_that_fires_later_deletes_then(restore: bool) -> None:
    """Gap 10, lateness 50. [85, 95) and [100, 110) fire; 108 extends [100, 110) to
    [100, 118) (on time: it fires again at 118); 93, late, bridges it with [85, 95). The
    merged session fires at 118: only then is [100, 110) deleted and [85, 95) updated
    (both fired once; the earliest lives on). A checkpoint in between keeps the row to
    delete."""
    op = _op()
    out = _feed(op, [1, 1], [85, 100], [MIN, 85]) + _rows(op.on_watermark(110))
    assert _short(out) == [("+I", 85, 95, 1, 0), ("+I", 100, 110, 1, 0)]
    assert _feed(op, [1, 1], [108, 93], [111, 111]) == [] and op.on_watermark(111) == []
    assert op.retired.live_count == 1
    if restore:
        state = op.snapshot()
        op = _op()
        op.restore(state)
    assert _short(_rows(op.on_watermark(118))) == [
        ("-D", 100, 110, 1, 0), ("-U", 85, 95, 1, 0), ("+U", 85, 118, 4, 1)]


def test_a_snapshot_mid_stream_restores_the_changelog() -> None:
    """Floors and the keys' gone ends survive a checkpoint: a run restored mid-stream
    emits what an uninterrupted one does."""
    rng = np.random.default_rng(5)
    n = 3000
    ts = np.sort(rng.integers(0, 4 * n, n)) - rng.integers(0, 100, n) * (rng.random(n) < 0.3)
    ks = rng.integers(0, 5, n)
    wm = np.concatenate([[MIN], np.maximum.accumulate(ts)[:-1] - 20])
    cuts = list(range(0, n + 1, 250))

    def run(restart_at: int | None) -> list[dict[str, Any]]:
        op = _op(lateness=30)
        out: list[dict[str, Any]] = []
        for a, b in itertools.pairwise(cuts):
            if a == restart_at:
                state = op.snapshot()
                op = _op(lateness=30)
                op.restore(state)
            out += _feed(op, ks[a:b].tolist(), ts[a:b].tolist(), wm[a:b].tolist())
            out += _rows(op.on_watermark(int(wm[b]) if b < n else 2**63 - 1))
        return out

    whole = run(None)
    ops = Counter(r["op"] for r in whole)
    assert ops["-D"] > 0 and ops["-U"] > 0
    for at in (750, 1500):
        assert run(at) == whole


def test_without_lateness_there_is_no_changelog() -> None:
    table = _late_input(seed=1, n=500)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table), event_time="ts", watermark=gs.Watermark.bounded(DELAY))
    w = s.key_by("k").window(gs.Session(GAP), name="s").agg(n=gs.count())
    assert w.schema.names == ["k", "window_start", "window_end", "n"]
    late_w = s.key_by("k").window(gs.Session(GAP), name="t", allowed_lateness=100).agg(
        n=gs.count())
    assert late_w.schema.names[-2:] == ["revision", "op"]
    assert late_w.schema.field("op").type == pa.string()
