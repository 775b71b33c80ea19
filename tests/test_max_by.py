"""``max_by`` / ``min_by`` (arg-max / arg-min) against DuckDB's ``arg_max`` / ``arg_min``.

DuckDB breaks ties among equal "by" values arbitrarily; gpustream takes the first row in
arrival order, so the reference orders by ``{p: by, s: -seq}`` (``seq``: arrival number)
to ask DuckDB for exactly that row. Rows whose value or "by" is null are skipped by both.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import select_backend
from gpustream.errors import PlanError
from gpustream.expr.text import parse_agg
from gpustream.kernels.aggregate import update_argbest
from tests.conftest import cudasim_on

I64_MIN, I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
DISORDER = 400


def bids(seed: int, n: int, keys: int = 4, span: int = 20_000) -> pa.Table:
    """Out-of-order bids with many ties in ``price``/``fp`` and nulls in every column
    but the key and the time; ``seq`` is the arrival number."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.integers(0, span, n))
    ts = base - rng.integers(0, DISORDER, n) * (rng.random(n) < 0.3)

    def nulls() -> Any:
        return rng.random(n) < 0.1

    return pa.table({
        "k": pa.array(rng.choice([f"k{i}" for i in range(keys)], n)),
        "ts": pa.array(np.maximum(ts, 0).astype(np.int64)),
        "price": pa.array(rng.integers(0, 12, n), mask=nulls()),
        "fp": pa.array(rng.choice([-1.5, -0.0, 0.0, 2.25, 7.0, np.inf], n), mask=nulls()),
        "bidder": pa.array(rng.integers(0, 1000, n), mask=nulls()),
        "name": pa.array(rng.choice(["ann", "bo", "cy", "dee"], n), mask=nulls()),
        "channel": pa.array(rng.choice(["apple", "google", "other"], n), mask=nulls()),
        "seq": pa.array(np.arange(n, dtype=np.int64)),
    })


#: output column -> (gpustream aggregation, DuckDB aggregate)
MAX_BY: dict[str, tuple[gs.Agg, str]] = {
    "hi": (gs.col("bidder").max_by("price"),
           "arg_max(bidder, {'p': price, 's': -seq}) FILTER (WHERE price IS NOT NULL)"),
    "lo": (gs.col("bidder").min_by(gs.col("price")),
           "arg_min(bidder, {'p': price, 's': seq}) FILTER (WHERE price IS NOT NULL)"),
    "nm": (gs.col("name").max_by("fp"),
           "arg_max(name, {'p': fp, 's': -seq}) FILTER (WHERE fp IS NOT NULL)"),
    "fl": (gs.col("fp").min_by("price"),
           "arg_min(fp, {'p': price, 's': seq}) FILTER (WHERE price IS NOT NULL)"),
    "hf": (gs.col("bidder").max_by("price").filter(gs.col("channel") == "apple"),
           "arg_max(bidder, {'p': price, 's': -seq}) "
           "FILTER (WHERE price IS NOT NULL AND channel = 'apple')"),
    "et": (gs.col("name").min_by("ts"),
           "arg_min(name, {'p': ts, 's': seq})"),
}


def run(table: pa.Table, engine: str, assigner: gs.WindowAssigner,
        aggs: dict[str, gs.Agg], batch_rows: int = 300, lateness: int = 0) -> list[tuple[Any, ...]]:
    """The window's rows (keys, start, end, aggregates) sorted; asserts none was late."""
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(DISORDER + 1))
    w = s.key_by("k").window(assigner, allowed_lateness=lateness).agg(**aggs)
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    stats = p.run()
    assert stats.late_events == 0  # the reference has no notion of lateness
    got = pa.Table.from_batches(out) if out else w.schema.empty_table()
    names = ["k", "window_start", "window_end", *aggs]
    return sorted(zip(*(got.column(c).to_pylist() for c in names), strict=True),
                  key=lambda r: (r[0], r[1]))


def duckdb_windows(table: pa.Table, assigner: gs.WindowAssigner,
                   aggs: dict[str, str]) -> list[tuple[Any, ...]]:
    """The same windows as DuckDB batch SQL (tumbling, sliding and session windows)."""
    select = ", ".join(f"{sql} AS {name}" for name, sql in aggs.items())
    if isinstance(assigner, gs.Session):
        gap = assigner.gap_ms
        query = f"""
            WITH o AS (SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY k ORDER BY ts, seq)
                                      < {gap} THEN 0 ELSE 1 END AS brk FROM t),
                 s AS (SELECT *, sum(brk) OVER (PARTITION BY k ORDER BY ts, seq
                                                ROWS UNBOUNDED PRECEDING) AS sid FROM o)
            SELECT k, min(ts) AS window_start, max(ts) + {gap} AS window_end, {select}
            FROM s GROUP BY k, sid"""
    else:
        assert isinstance(assigner, gs.Tumbling | gs.Sliding)
        size = assigner.size_ms
        slide = assigner.slide_ms if isinstance(assigner, gs.Sliding) else size
        query = f"""
            WITH w AS (SELECT t.*, ts - ts % {slide} - j * {slide} AS window_start
                       FROM t, range({size // slide}) AS r(j))
            SELECT k, window_start, window_start + {size} AS window_end, {select}
            FROM w GROUP BY k, window_start"""
    return sorted(sql(table, query), key=lambda r: (r[0], r[1]))


def sql(table: pa.Table, query: str) -> list[tuple[Any, ...]]:
    """DuckDB's rows for ``query`` over ``table`` (named ``t``)."""
    con = duckdb.connect()
    con.register("t", table)
    return con.execute(query).fetchall()


ASSIGNERS = [gs.Tumbling(2000), gs.Sliding(3000, 1000), gs.Session(40)]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=lambda a: a.describe())
def test_max_by_matches_duckdb(backend: gs.Backend, assigner: gs.WindowAssigner) -> None:
    n = 400 if backend.name == "cudasim" else 4000
    table = bids(1, n)
    got = run(table, backend.name, assigner, {k: a for k, (a, _) in MAX_BY.items()})
    want = duckdb_windows(table, assigner, {k: sql for k, (_, sql) in MAX_BY.items()})
    assert got == want
    assert len(got) > 8
    # the data hold what the test is about: ties on the winning price (1 in 12 prices)
    ties = sql(table, "SELECT count(*) FROM (SELECT k, ts // 2000, price FROM t WHERE "
                      "bidder IS NOT NULL GROUP BY ALL HAVING count(*) > 1)")[0][0]
    assert len({r[3] for r in got}) > 4 and ties > 8


def test_with_allowed_lateness_revisions_follow_the_late_rows(backend: gs.Backend) -> None:
    """A late row that beats the stored winner re-fires the window with its value; a
    late row that only ties it does not replace it (the first arrival wins)."""
    table = pa.table({"k": [1, 1, 1, 1, 1], "ts": [10, 20, 500, 30, 40],
                      "price": [5, 7, 1, 7, 9], "bidder": [100, 200, 300, 400, 500]})
    p = gs.Pipeline(engine=backend.name)
    s = p.source(gs.from_arrow(table, batch_rows=1), event_time="ts",
                 watermark=gs.Watermark.bounded(0))
    w = s.key_by("k").window(gs.Tumbling(100), allowed_lateness=1000).agg(
        hi=gs.col("bidder").max_by("price"), lo=gs.col("bidder").min_by("price"))
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    p.run()
    rows = pa.Table.from_batches(out).to_pylist()
    first = [(r["revision"], r["hi"], r["lo"]) for r in rows if r["window_start"] == 0]
    assert first == [(0, 200, 100), (1, 200, 100), (2, 500, 100)]


@pytest.mark.parametrize("engine", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
@pytest.mark.parametrize("assigner", [gs.Tumbling(20), gs.Session(6)], ids=lambda a: a.describe())
@given(rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 80), st.integers(0, 3),
                               st.booleans()), min_size=1, max_size=50),
       batch_rows=st.integers(1, 13))
def test_results_do_not_depend_on_batching(engine: str, assigner: gs.WindowAssigner,
                                           rows: list[tuple[int, int, int, bool]],
                                           batch_rows: int) -> None:
    if engine == "cudasim" and not cudasim_on():
        pytest.skip("cudasim case needs NUMBA_ENABLE_CUDASIM=1 (make test runs it as its own step)")
    table = pa.table({"k": [r[0] for r in rows], "ts": [r[1] for r in rows],
                      "price": pa.array([r[2] for r in rows], pa.int64(), mask=[r[3] for r in rows]),
                      "bidder": list(range(len(rows)))})
    aggs = {"hi": gs.col("bidder").max_by("price"), "lo": gs.col("bidder").min_by("price")}
    p_rows: list[list[tuple[Any, ...]]] = []
    for size in (batch_rows, len(rows)):
        p = gs.Pipeline(engine=engine)
        s = p.source(gs.from_arrow(table, batch_rows=size), event_time="ts",
                     watermark=gs.Watermark.bounded(5))
        w = s.key_by("k").window(assigner).agg(**aggs)
        out: list[pa.RecordBatch] = []
        w.sink(gs.to_callback(out.append))
        p.run()
        got = pa.Table.from_batches(out) if out else w.schema.empty_table()
        p_rows.append(sorted(map(tuple, (r.values() for r in got.to_pylist()))))
    assert p_rows[0] == p_rows[1]


def test_the_kernel_passes_agree_with_a_plain_loop(backend: gs.Backend) -> None:
    """:func:`update_argbest` over two batches (ties, slot -1, skipped rows) equals a
    Python fold of the same rows in arrival order."""
    rng = np.random.default_rng(7)
    xp = backend.xp
    n, m = 3000 if backend.name == "cpu" else 300, 37
    best = np.full(m, I64_MIN, dtype=np.int64)
    bseq, value = np.full(m, I64_MAX, dtype=np.int64), np.zeros(m, dtype=np.int64)
    want = {s: (I64_MIN, I64_MAX, 0) for s in range(m)}
    dev = [xp.asarray(a) for a in (best, bseq, value)]
    for batch in range(2):
        slots = rng.integers(-1, m, n)
        # few distinct ranks, I64_MIN (the empty slot's) among them; higher ones in batch 2
        rank = rng.integers(-2, 1 + batch, n) * (2 ** 62)
        seq = np.arange(batch * n, (batch + 1) * n, dtype=np.int64)
        bits = rng.integers(0, 10 ** 9, n)
        valid = rng.random(n) < 0.9
        update_argbest(dev[0], dev[1], dev[2], xp.asarray(slots), xp.arange(n, dtype=np.int64),
                       xp.asarray(rank), xp.asarray(seq), xp.asarray(bits), xp.asarray(valid),
                       backend)
        for a in range(n):
            s = int(slots[a])
            if s >= 0 and valid[a] and int(rank[a]) > want[s][0]:
                want[s] = (int(rank[a]), int(seq[a]), int(bits[a]))
    got = [backend.to_host(a).tolist() for a in dev]
    assert list(zip(*got, strict=True)) == [want[s] for s in range(m)]


def test_sessions_merge_keeps_the_first_of_equal_winners() -> None:
    """A bridging event merges two sessions: the winner of the merged session is the
    best of both, a tie going to the row that arrived first, in either order of merge."""
    table = pa.table({"k": [1, 1, 1, 1], "ts": [0, 20, 10, 100],
                      "price": [9, 9, 1, 1], "bidder": [1, 2, 3, 4]})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=1), event_time="ts",
                 watermark=gs.Watermark.bounded(50))
    w = s.key_by("k").window(gs.Session(12)).agg(hi=gs.col("bidder").max_by("price"),
                                                 lo=gs.col("bidder").min_by("price"))
    assert [(r["window_start"], r["hi"], r["lo"]) for r in w.collect().to_pylist()] == [
        (0, 1, 3), (100, 4, 4)]


def test_plan_errors_name_the_step_the_aggregate_and_the_fix() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1], "ts": [1], "name": ["a"], "v": [1.0]}),
                 event_time="ts")
    with pytest.raises(PlanError, match=r"agg 'top': max_by orders by numbers.*col\('name'\) "
                                        r"is string; order by a number column"):
        s.key_by("k").window(gs.Tumbling(10)).agg(top=gs.col("v").max_by("name"))
    with pytest.raises(PlanError, match=r"max_by\(\) takes a column name or an expression"):
        gs.col("v").max_by(3)  # type: ignore[arg-type]


def test_the_text_forms() -> None:
    assert repr(parse_agg("max_by(bidder, price)")) == "col('bidder').max_by(col('price'))"
    assert repr(parse_agg("arg_max(bidder, price)")) == "col('bidder').max_by(col('price'))"
    assert repr(parse_agg("min_by(bidder, price * 2)")) == \
        "col('bidder').min_by((col('price') * 2))"
    assert repr(parse_agg("arg_min(bidder, price, where=channel == 'apple')")) == \
        "col('bidder').min_by(col('price')).filter((col('channel') == 'apple'))"
    with pytest.raises(PlanError, match=r"steps\[2\].agg.x: max_by\(\) takes two expressions"):
        parse_agg("max_by(bidder)", "steps[2].agg.x")


def test_snapshot_and_restore_continue_the_state(backend: gs.Backend) -> None:
    """A window checkpointed mid-stream and restored into a new operator (the table store,
    which max_by runs on) ends as the uninterrupted one, on every backend and across."""
    from gpustream.batch import Batch
    from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec

    schema = pa.schema({"k": pa.int64(), "window_start": pa.int64(),
                        "window_end": pa.int64(), "hi": pa.string()})
    spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("hi", gs.col("name").max_by("p"), pa.string(), pa.string()),),
                      schema, False)
    table = pa.record_batch({"k": [1, 1, 2, 1, 2], "ts": [1, 2, 3, 4, 5],
                             "p": [3.0, 8.0, None, 8.0, -1.0],
                             "name": ["a", "b", "c", "d", "e"]})

    whole_batch = Batch.from_arrow(table)  # one dictionary for names, as a source keeps

    def part(lo: int, hi: int) -> Batch:
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[lo:hi] = True
        b = whole_batch.filter(mask)
        b.watermarks = np.full(hi - lo, I64_MIN, dtype=np.int64)
        return b

    whole = WindowAggOp(spec, backend)
    whole.process(part(0, 5))
    want = whole.on_watermark(100)[0].to_arrow().to_pydict()
    first = WindowAggOp(spec, select_backend("cpu"))
    first.process(part(0, 2))
    resumed = WindowAggOp(spec, backend)
    resumed.restore(first.snapshot())
    assert type(resumed.store).__name__ == "TableStore"
    resumed.process(part(2, 5))
    got = resumed.on_watermark(100)[0].to_arrow().to_pydict()
    assert got == want == {"k": [1, 2], "window_start": [0, 0], "window_end": [10, 10],
                           "hi": ["b", "e"]}


parts_st = st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 3)), st.integers(0, 99)),
                    max_size=30)


@pytest.mark.parametrize("kind", ["max_by", "min_by"])
@given(parts=st.lists(parts_st, min_size=1, max_size=4))
def test_merge_equals_update_of_concatenation(kind: str,
                                              parts: list[list[tuple[int | None, int]]]) -> None:
    """Session merges: the parts folded into slots of their own and merged equal the rows
    folded into one slot (ties of the by value across parts go to the earliest row)."""
    from gpustream.expr import ByInput, order_key
    from gpustream.state.aggstate import UpdateContext, make_state
    from gpustream.state.table import SlotTable

    def fold(merge: bool) -> tuple[Any, Any]:
        table = SlotTable(1, np, select_backend("cpu"))
        agg = getattr(gs.col("v"), kind)("p")
        state = make_state("a", agg, pa.int64(), pa.int64(), table)
        n = len(parts) if merge else 1
        slots, _ = table.upsert(np.arange(n, dtype=np.uint64).reshape(1, -1), np.arange(n))
        seq = 0
        for i, part in enumerate(parts):
            by = np.array([0 if p is None else p for p, _ in part], dtype=np.int64)
            rank = order_key(by, np) if kind == "max_by" else ~order_key(by, np)
            values = ByInput(np.array([v for _, v in part], dtype=np.int64), rank)
            valid = np.array([p is not None for p, _ in part], dtype=bool)
            rows = np.arange(len(part), dtype=np.int64)
            ctx = UpdateContext(rows, np.arange(seq, seq + len(part), dtype=np.int64))
            seq += len(part)
            slot = slots[i if merge else 0]
            state.update(np.full(len(part), slot, dtype=np.int64), rows, values, valid, ctx)
        for i in range(len(parts) - 1, 0, -1) if merge else ():  # late parts first: seq counts
            state.merge(slots[:1], slots[i:i + 1])
        values, ok = state.finalize(slots[:1])
        assert ok is not None
        return int(values[0]) if ok[0] else None, bool(ok[0])

    assert fold(True) == fold(False)
