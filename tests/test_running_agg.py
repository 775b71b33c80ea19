"""Running aggregations: ``key_by(...).agg(...)`` without a window, a changelog (issue 17
"Unwindowed operators with retention").

Checked against pandas' group-by over all the rows in batch: the table the changelog
describes (``gs.materialize`` by the keys) equals it, on every backend, whatever the
batching (hypothesis), across a crash and restart; the raw changelog is consistent (each
``-U`` repeats the row last emitted for its key, ``+U`` follows it, ``+I`` only for a key
not shown); retention is checked against a row-by-row reference of its rule.
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


def _events(seed: int, n: int, keys: int = 30) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 100_000, n)) - rng.integers(0, 2000, n) * (rng.random(n) < 0.3)
    return pa.table({
        "user": rng.integers(0, keys, n),
        "channel": rng.choice(["web", "app", "api"], n),
        "ts": ts.astype(np.int64),
        "price": pa.array(rng.integers(1, 1000, n).astype(np.int64), mask=rng.random(n) < 0.05),
        "score": rng.random(n),
    })


AGGS = {"n": gs.count(), "total": gs.col("price").sum(), "hi": gs.col("price").max(),
        "lo": gs.col("score").min(), "avg": gs.col("score").mean()}


def _job(source: Any, engine: str, retention: Any = None
         ) -> tuple[gs.Pipeline, list[pa.RecordBatch], list[pa.RecordBatch]]:
    p = gs.Pipeline("running", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(1000), name="tx")
    keyed = s.key_by("user", "channel")
    if retention is not None:
        keyed = keyed.with_retention(retention)
    out = keyed.agg(**AGGS)
    rows: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    out.sink(gs.to_callback(rows.append))
    out.late.sink(gs.to_callback(late.append))
    return p, rows, late


def _table(batches: list[pa.RecordBatch], schema: pa.Schema | None = None) -> pa.Table:
    if not batches:
        assert schema is not None
        return schema.empty_table()
    return pa.Table.from_batches(batches)


def _reference(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    g = df.groupby(["user", "channel"], sort=False)
    return pd.DataFrame({"n": g.size(), "total": g["price"].sum(min_count=1),
                         "hi": g["price"].max(), "lo": g["score"].min(),
                         "avg": g["score"].mean()}).reset_index()


def _rows(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    cols = ["user", "channel", "n", "total", "hi", "lo", "avg"]
    return sorted((int(r[0]), r[1], int(r[2]), None if pd.isna(r[3]) else int(r[3]),
                   None if pd.isna(r[4]) else int(r[4]), round(float(r[5]), 9),
                   round(float(r[6]), 9)) for r in df[cols].itertuples(index=False))


def _check_changelog(log: pa.Table, keys: list[str]) -> None:
    """Replay the changelog: every row's op is consistent with what was shown before."""
    shown: dict[tuple[Any, ...], dict[str, Any]] = {}
    pending: tuple[Any, ...] | None = None
    for row in log.to_pylist():
        op = row.pop("op")
        key = tuple(row[k] for k in keys)
        if op == "+I":
            assert pending is None
            shown[key] = row
        elif op == "-U":
            assert pending is None and shown.get(key) == row, (key, row, shown.get(key))
            pending = key
        elif op == "+U":
            assert pending == key and shown[key] != row
            shown[key], pending = row, None
        else:
            raise AssertionError(f"unexpected op {op!r}")
    assert pending is None


def test_running_aggregation_equals_pandas_group_by(backend: gs.Backend) -> None:
    size = 600 if backend.name == "cudasim" else 6000
    table = _events(seed=3, n=size)
    p, rows, late = _job(gs.from_arrow(table, batch_rows=size // 7), backend.name)
    p.run()
    log = _table(rows)
    assert log.column_names == ["user", "channel", *AGGS, "op"]
    assert not late
    _check_changelog(log, ["user", "channel"])
    assert set(log["op"].to_pylist()) == {"+I", "-U", "+U"}
    got = gs.materialize(log, key=["user", "channel"]).to_pandas()
    assert _rows(got) == _rows(_reference(table))


@settings(max_examples=12, deadline=None)
@given(batch_rows=st.integers(1, 1500), seed=st.integers(0, 2**16))
def test_the_result_table_does_not_depend_on_batching(batch_rows: int, seed: int) -> None:
    table = _events(seed=seed, n=1500, keys=12)
    p, rows, _ = _job(gs.from_arrow(table, batch_rows=batch_rows), "cpu")
    p.run()
    log = _table(rows)
    _check_changelog(log, ["user", "channel"])
    got = gs.materialize(log, key=["user", "channel"]).to_pandas()
    assert _rows(got) == _rows(_reference(table))


def test_unchanged_aggregates_emit_nothing() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1, 1, 1], "v": [5, 3, 7]}, batch_rows=1))
    got = s.key_by("k").agg(hi=gs.col("v").max()).collect().to_pydict()
    assert got == {"k": [1, 1, 1], "hi": [5, 5, 7], "op": ["+I", "-U", "+U"]}


def _retention_reference(table: pa.Table, delay: int, retention: int
                         ) -> tuple[dict[int, int], int]:
    """Row by row, as the rule says: each row's watermark is the largest time before it
    minus the delay; a row at or below watermark - retention is late; a row restarts its
    key when the key's latest time so far is at or below watermark - retention."""
    state: dict[int, tuple[int, int]] = {}  # key -> (count, latest time)
    top = None
    late = 0
    for k, t in zip(table["k"].to_pylist(), table["ts"].to_pylist(), strict=True):
        wm = None if top is None else top - delay
        if wm is not None and t <= wm - retention:
            late += 1
        else:
            n, latest = state.get(k, (0, None))
            if wm is not None and latest is not None and latest <= wm - retention:
                n = 0
            state[k] = (n + 1, t if latest is None or n == 0 else max(latest, t))
        top = t if top is None else max(top, t)
    return {k: n for k, (n, _) in state.items()}, late


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 5000])
def test_retention_restarts_idle_keys_row_by_row(batch_rows: int) -> None:
    rng = np.random.default_rng(5)
    n = 1200
    ts = np.cumsum(rng.integers(0, 40, n)) - rng.integers(0, 900, n) * (rng.random(n) < 0.2)
    table = pa.table({"k": rng.integers(0, 8, n) ** 2, "ts": ts.astype(np.int64)})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(100))
    out = s.key_by("k").with_retention(500).agg(n=gs.count())
    rows: list[pa.RecordBatch] = []
    late: list[pa.RecordBatch] = []
    out.sink(gs.to_callback(rows.append))
    out.late.sink(gs.to_callback(late.append))
    p.run()
    got = gs.materialize(_table(rows), key="k").to_pydict()
    want, n_late = _retention_reference(table, 100, 500)
    assert dict(zip(got["k"], got["n"], strict=True)) == want
    assert sum(b.num_rows for b in late) == n_late > 0
    assert any(v < int((table["k"].to_numpy() == k).sum()) for k, v in want.items())


@pytest.mark.parametrize("batch_rows", [1, 2, 4])
def test_retention_boundaries(batch_rows: int) -> None:
    """Watermark 500 (600 - delay 100), retention 500: a key last seen at 0 starts anew, a
    row at 0 is late, a row at 1 is not."""
    table = pa.table({"k": [1, 2, 1, 3], "ts": [0, 600, 1, 0]})
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded(100))
    out = s.key_by("k").with_retention(500).agg(n=gs.count())
    late: list[pa.RecordBatch] = []
    out.late.sink(gs.to_callback(late.append))
    rows: list[pa.RecordBatch] = []
    out.sink(gs.to_callback(rows.append))
    p.run()
    assert gs.materialize(_table(rows), key="k").to_pydict() == {"k": [1, 2], "n": [1, 1]}
    assert _table(late).to_pydict() == {"k": [3], "ts": [0]}


def test_retention_bounds_the_state() -> None:
    from gpustream.backend import select_backend
    from gpustream.batch import Batch
    from gpustream.operators.running import RunningAggOp, RunningSpec
    from gpustream.operators.window import AggSpec

    n = 20_000
    table = pa.table({"k": np.arange(n) // 10, "ts": np.arange(n, dtype=np.int64)})
    schema = pa.schema({"k": pa.int64(), "n": pa.int64(), "op": pa.string()})
    spec = RunningSpec("a", ("k",), (AggSpec("n", gs.count(), None, pa.int64()),), schema,
                       "ts", 100)
    op = RunningAggOp(spec, select_backend("cpu"))
    emitted = 0
    for start in range(0, n, 1000):
        b = Batch.from_arrow(table.slice(start, 1000).to_batches()[0])
        b.watermarks = np.asarray(b["ts"]) - 1  # each row's watermark: the time before it
        emitted += sum(o.num_rows for o in op.process(b))
        op.on_watermark(start + 999)
        assert op.state_rows <= 11  # keys of the last 100 ms (10 rows each)
    assert emitted == n // 10  # each key's rows come in one batch: one +I each


def test_a_crashed_running_aggregation_resumes(tmp_path: Path) -> None:
    table = _events(seed=6, n=5000)
    whole, rows, _ = _job(gs.from_arrow(table, batch_rows=200), "cpu")
    whole.run()
    want = _rows(gs.materialize(_table(rows), key=["user", "channel"]).to_pandas())
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, rows1, _ = _job(_Crash(gs.from_arrow(table, batch_rows=200), 11), "cpu")
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, rows2, _ = _job(gs.from_arrow(table, batch_rows=200), "cpu")
    assert second.run(checkpoint=ck).restored_checkpoint is not None
    assert rows2
    got = gs.materialize(_table(rows1 + rows2), key=["user", "channel"]).to_pandas()
    assert _rows(got) == want == _rows(_reference(table))


def test_plan_errors_name_the_step_and_the_fix() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1], "ts": [1], "v": [1]}))
    with pytest.raises(PlanError, match=r"retention is measured in event time.*event_time="):
        s.key_by("k").with_retention("1m").agg(n=gs.count())
    with pytest.raises(PlanError, match=r"op.*appear twice"):
        s.key_by("k").agg(op=gs.count())
    with pytest.raises(PlanError, match="at least one aggregation"):
        s.key_by("k").agg()


def test_running_aggregation_in_a_spec_equals_the_python_api(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from gpustream.spec import pipeline_from_spec

    table = _events(seed=12, n=3000)
    pq.write_table(table, tmp_path / "tx.parquet")
    spec = tmp_path / "running.yaml"
    spec.write_text(f"""
name: running
engine: cpu
source: {{type: parquet, path: {tmp_path / 'tx.parquet'}, event_time: ts, watermark: 1s}}
steps:
  - key_by: {{columns: [user, channel], retention: 1h}}
  - agg: {{n: count(), total: sum(price), hi: max(price), lo: min(score), avg: mean(score)}}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""")
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out")
    assert got.column_names[-1] == "op"
    assert _rows(gs.materialize(got, key=["user", "channel"]).to_pandas()) == \
        _rows(_reference(table))


def _bids(seed: int, n: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    auction = rng.integers(0, 40, n)
    return pa.table({"auction": auction, "category": auction % 4,
                     "bidder": rng.integers(0, 9, n), "ts": np.arange(n, dtype=np.int64),
                     "price": rng.integers(1, 500, n).astype(np.int64)})


@pytest.mark.parametrize("batch_rows", [20, 5000])
def test_an_aggregation_over_a_changelog_takes_rows_back(backend: gs.Backend,
                                                         batch_rows: int) -> None:
    """Nexmark q4's shape: each auction's top price (a changelog), averaged per category:
    every -U takes the auction's old top back out of its category's sums."""
    n = 120 if backend.name == "cudasim" else 3000
    table = _bids(seed=9, n=n)
    p = gs.Pipeline(engine=backend.name)
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts")
    top = s.key_by("auction", "category").agg(top=gs.col("price").max())
    per = top.key_by("category").agg(avg=gs.col("top").mean(), n=gs.count(),
                                     total=gs.col("top").sum(), tops=gs.col("top").count())
    got = gs.materialize(per.collect(), key="category").to_pandas().sort_values("category")
    df = table.to_pandas().groupby(["auction", "category"])["price"].max().reset_index()
    want = df.groupby("category")["price"].agg(["mean", "size", "sum"]).reset_index()
    assert got["category"].tolist() == want["category"].tolist()
    assert got["n"].tolist() == want["size"].tolist() == got["tops"].tolist()
    assert got["total"].tolist() == want["sum"].tolist()
    assert np.allclose(got["avg"], want["mean"])


@settings(max_examples=10, deadline=None)
@given(batch_rows=st.integers(1, 2000), seed=st.integers(0, 2**16))
def test_an_aggregation_over_a_changelog_does_not_depend_on_batching(batch_rows: int,
                                                                     seed: int) -> None:
    table = _bids(seed=seed, n=2000)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts")
    top = s.key_by("auction", "category").agg(top=gs.col("price").max())
    per = top.key_by("category").agg(total=gs.col("top").sum(), n=gs.count())
    got = gs.materialize(per.collect(), key="category").to_pandas().sort_values("category")
    df = table.to_pandas().groupby(["auction", "category"])["price"].max().reset_index()
    want = df.groupby("category")["price"].agg(["sum", "size"]).reset_index()
    assert got["total"].tolist() == want["sum"].tolist()
    assert got["n"].tolist() == want["size"].tolist()


def test_a_key_whose_rows_are_all_taken_back_is_deleted() -> None:
    """How many auctions each bidder leads (top_k over the stream: +I/-D): a bidder
    who loses every lead is deleted (-D)."""
    table = _bids(seed=2, n=2000)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=50), event_time="ts")
    leads = s.top_k(1, by="price", per="auction").key_by("bidder").agg(n=gs.count())
    log = leads.collect()
    _check_deletes(log)
    got = gs.materialize(log, key="bidder").to_pydict()
    df = table.to_pandas()
    best = df.loc[df.sort_values(["price", "ts"], ascending=[False, True])
                  .groupby("auction").head(1).index]
    want = best.groupby("bidder").size()
    assert dict(zip(got["bidder"], got["n"], strict=True)) == want.to_dict()
    assert "-D" in log["op"].to_pylist()


def _check_deletes(log: pa.Table) -> None:
    shown: dict[Any, Any] = {}
    for row in log.to_pylist():
        op, key = row.pop("op"), row["bidder"]
        if op in ("-U", "-D"):
            assert shown.pop(key) == row
        else:
            assert key not in shown
            shown[key] = row


def test_only_aggregations_that_take_rows_back_run_over_a_changelog() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_bids(1, 10)), event_time="ts")
    top = s.key_by("auction").agg(top=gs.col("price").max())
    with pytest.raises(PlanError, match=r"its input is a changelog.*count\(\), count, sum "
                                        r"or mean"):
        top.key_by("top").agg(hi=gs.col("auction").max())


def test_steps_that_need_an_append_only_stream_refuse_a_changelog() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_bids(1, 10)), event_time="ts")
    totals = s.key_by("auction").agg(n=gs.count())
    with pytest.raises(PlanError, match=r"step 2 \(window 'w'\): its input is a changelog "
                                        r"\(op column\) from step 1 \(agg 'agg@1'\); windows "
                                        r"need an append-only stream: aggregate the events"):
        totals.window(gs.Tumbling(10), name="w").agg(m=gs.count())
    leaders = s.top_k(1, by="price", per="auction")
    # an OVER window over a changelog is the OVER of its table: it needs the column that
    # orders that table's rows (tests/test_over_changelog.py)
    with pytest.raises(PlanError, match=r"an OVER window over a changelog \(op column\) "
                                        r"orders the rows .* give order_by="):
        leaders.key_by("auction").over(rows=1).agg(m=gs.count())
    with pytest.raises(PlanError, match="drops the op column of the changelog"):
        totals.select("auction", "n")


def test_a_crashed_aggregation_over_a_changelog_resumes(tmp_path: Path) -> None:
    """The retracting states restore (a review found they could not)."""
    table = _bids(seed=5, n=3000)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)

    def job(source: Any) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
        p = gs.Pipeline("two-levels", engine="cpu")
        s = p.source(source, event_time="ts", name="bids")
        top = s.key_by("auction", "category").agg(top=gs.col("price").max())
        per = top.key_by("category").agg(total=gs.col("top").sum(), n=gs.count())
        out: list[pa.RecordBatch] = []
        per.sink(gs.to_callback(out.append))
        return p, out

    first, out1 = job(_Crash(gs.from_arrow(table, batch_rows=100), 12))
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2 = job(gs.from_arrow(table, batch_rows=100))
    assert second.run(checkpoint=ck).restored_checkpoint is not None
    got = gs.materialize(_table(out1 + out2), key="category").to_pandas()
    df = table.to_pandas().groupby(["auction", "category"])["price"].max().reset_index()
    want = df.groupby("category")["price"].agg(["sum", "size"])
    assert dict(zip(got["category"], got["total"], strict=True)) == want["sum"].to_dict()
    assert dict(zip(got["category"], got["n"], strict=True)) == want["size"].to_dict()


def test_a_changelog_keeps_its_retractions_through_map_batches_and_union() -> None:
    table = _bids(seed=3, n=1500)
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow(table.slice(0, 700), batch_rows=60), event_time="ts",
                 name="a")
    b = p.source(gs.from_arrow(table.slice(700), batch_rows=60), event_time="ts", name="b")

    def counts(s: gs.Stream) -> gs.Stream:
        return s.key_by("auction").agg(n=gs.count())

    both = counts(a).union(counts(b))
    both = both.map_batches(lambda batch: batch, schema=both.schema)
    # how many auctions (per source) have each count: -U rows take the old count back
    got = gs.materialize(both.key_by("n").agg(keys=gs.count()).collect(), key="n").to_pydict()
    df = table.to_pandas()
    want: dict[int, int] = {}
    for part in (df.iloc[:700], df.iloc[700:]):
        for n, c in part.groupby("auction").size().value_counts().items():
            want[n] = want.get(n, 0) + c
    assert dict(zip(got["n"], got["keys"], strict=True)) == want
    with pytest.raises(PlanError, match="drops the op column"):
        counts(a).map_batches(lambda batch: batch.drop_columns(["op"]),
                              schema=pa.schema({"auction": pa.int64(), "n": pa.int64()}))


def test_first_and_last_follow_event_time_with_and_without_retention() -> None:
    for retention in (None, "1h"):
        p = gs.Pipeline(engine="cpu")
        s = p.source(gs.from_arrow({"k": [1, 1, 1], "ts": [100, 50, 60], "v": [1, 2, 3]}),
                     event_time="ts", watermark=gs.Watermark.bounded(1000))
        keyed = s.key_by("k") if retention is None else s.key_by("k").with_retention(retention)
        out = keyed.agg(f=gs.col("v").first(), last=gs.col("v").last())
        assert gs.materialize(out.collect(), key="k").to_pydict() == \
            {"k": [1], "f": [2], "last": [1]}, retention


def test_retention_before_a_window_is_refused_and_joins_refuse_a_changelog() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_bids(1, 10)), event_time="ts", name="bids")
    with pytest.raises(PlanError, match="with_retention bounds an aggregation without a "
                                        "window"):
        s.key_by("auction").with_retention("1h").window(gs.Tumbling(10))
    totals = s.key_by("auction").agg(n=gs.count())
    other = p.source(gs.from_arrow(_bids(2, 10)), event_time="ts", name="other")
    with pytest.raises(PlanError, match="joins need an append-only stream"):
        totals.join(other, on="auction")
