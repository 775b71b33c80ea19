"""Joins against pandas merges on seeded random data, on every backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.ingest.source import Source, SourceBatch
from tests.conftest import cudasim_on


def _stream(n: int, seed: int, keys: int = 60, skew: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    card = rng.integers(0, keys, n)
    if skew:
        card = np.where(rng.random(n) < skew, 7, card)
    return pd.DataFrame({
        "ts": np.arange(n, dtype=np.int64) * 10,
        "card": pd.Series(card).astype("Int64").mask(rng.random(n) < 0.05),  # 5 % null
        "region": rng.choice(["eu", "us", "jp"], n),
        "amount": np.round(rng.uniform(1, 100, n), 2),
    })


def _table(keys: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 100)
    ids = rng.permutation(keys)[: keys * 2 // 3]  # a third of the keys have no table row
    return pd.DataFrame({
        "card": ids.astype(np.int64),
        "region": rng.choice(["eu", "us", "jp"], len(ids)),
        "limit": rng.integers(100, 1000, len(ids)),
        "holder": [f"h{i}" for i in ids],
    })


def _arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _run_lookup(stream: pd.DataFrame, table: pd.DataFrame, how: str, engine: str,
                batch_rows: int = 97, on: object = "card") -> pd.DataFrame:
    p = gs.Pipeline(engine=engine)
    cards = p.table(gs.from_arrow(_arrow(table), batch_rows=50), key=list(table.columns[:1])
                    if on == "card" else ["card", "region"])
    s = p.source(gs.from_arrow(_arrow(stream), batch_rows=batch_rows), event_time="ts")
    return s.join_table(cards, on=on, how=how).collect().to_pandas()  # type: ignore[arg-type]


def _reference(stream: pd.DataFrame, table: pd.DataFrame, how: str,
               on: list[str]) -> pd.DataFrame:
    ref = stream.reset_index().merge(table, on=on, how=how, suffixes=("", "_right"))
    # SQL: null keys match nothing (pandas would match null with null)
    ref = ref.sort_values("index").drop(columns="index").reset_index(drop=True)
    return ref


@pytest.mark.parametrize("how", ["inner", "left"])
def test_lookup_join_matches_pandas(backend: Backend, how: str) -> None:
    n = 400 if cudasim_on() else 3000
    stream, table = _stream(n, seed=1), _table(60, seed=1)
    got = _run_lookup(stream, table, how, backend.name)
    ref = _reference(stream, table, how, ["card"])
    assert list(got.columns) == ["ts", "card", "region", "amount", "region_right", "limit",
                                 "holder"]
    assert len(got) == len(ref)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)
    if how == "left":
        assert got["holder"].isna().sum() > 0  # unmatched and null-key rows kept with nulls
        assert got.loc[got["card"].isna(), "holder"].isna().all()


@pytest.mark.parametrize("how", ["inner", "left"])
def test_lookup_join_keeps_the_tables_nulls(backend: Backend, how: str) -> None:
    """A right column with nulls: a matched row gets the table's null, an unmatched one
    (left join) null in every right column; a column without nulls stays without."""
    n = 300 if cudasim_on() else 2000
    stream, table = _stream(n, seed=4), _table(60, seed=4)
    rng = np.random.default_rng(4)
    table["limit"] = pd.Series(table["limit"]).astype("Int64").mask(rng.random(len(table)) < 0.3)
    got = _run_lookup(stream, table, how, backend.name)
    ref = _reference(stream, table, how, ["card"])
    assert got["limit"].isna().sum() > 0 and len(got) == len(ref)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)


def test_lookup_join_on_several_columns_with_strings(backend: Backend) -> None:
    n = 300 if cudasim_on() else 2000
    stream, table = _stream(n, seed=2), _table(40, seed=2)
    got = _run_lookup(stream, table, "inner", backend.name, on=["card", "region"])
    ref = _reference(stream, table, "inner", ["card", "region"])
    assert len(ref) > 0
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)


def test_string_keys_new_to_the_stream_and_absent_from_the_table() -> None:
    p = gs.Pipeline(engine="cpu")
    t = p.table(gs.from_arrow({"sku": ["b", "c", "a"], "price": [2.0, 3.0, 1.0]}), key="sku")
    s = p.source(gs.from_arrow({"sku": ["zz", "a", "c", "new", "b", None, "a"]}, batch_rows=2))
    got = s.join_table(t, on="sku", how="left").collect().to_pydict()
    assert got == {"sku": ["zz", "a", "c", "new", "b", None, "a"],
                   "price": [None, 1.0, 3.0, None, 2.0, None, 1.0]}


def test_the_last_table_row_of_a_key_wins_and_empty_tables_match_nothing() -> None:
    p = gs.Pipeline(engine="cpu")
    t = p.table(gs.from_arrow({"k": [1, 2, 1], "v": ["old", "x", "new"]}, batch_rows=1), key="k")
    s = p.source(gs.from_arrow({"k": [1, 2]}))
    assert s.join_table(t, on="k").collect()["v"].to_pylist() == ["new", "x"]
    p = gs.Pipeline(engine="cpu")
    empty = pa.table({"k": pa.array([], pa.int64()), "v": pa.array([], pa.string())})
    t = p.table(gs.from_arrow(empty), key="k")
    s = p.source(gs.from_arrow({"k": [1, 2]}))
    assert s.join_table(t, on="k", how="inner").collect().num_rows == 0
    assert s.join_table(t, on="k", how="left").collect().to_pydict() == {"k": [1, 2],
                                                                        "v": [None, None]}


def test_skewed_keys(backend: Backend) -> None:
    n = 500 if cudasim_on() else 20_000
    stream, table = _stream(n, seed=3, skew=0.3), _table(60, seed=3)
    table = pd.concat([table[table.card != 7], pd.DataFrame(
        {"card": [7], "region": ["eu"], "limit": [5], "holder": ["hot"]})], ignore_index=True)
    got = _run_lookup(stream, table, "inner", backend.name)
    ref = _reference(stream, table, "inner", ["card"])
    assert (got["holder"] == "hot").mean() > 0.25
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)


@given(st.sampled_from([1, 7, 1000, 65536]))
def test_lookup_results_do_not_depend_on_batching(batch_rows: int) -> None:
    stream, table = _stream(1500, seed=4), _table(60, seed=4)
    got = _run_lookup(stream, table, "left", "cpu", batch_rows=batch_rows)
    ref = _reference(stream, table, "left", ["card"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)


def test_enriched_stream_feeds_a_window() -> None:
    stream, table = _stream(3000, seed=5), _table(60, seed=5)
    p = gs.Pipeline(engine="cpu")
    cards = p.table(gs.from_arrow(_arrow(table)), key="card")
    s = p.source(gs.from_arrow(_arrow(stream), batch_rows=256), event_time="ts",
                 watermark=gs.Watermark.bounded(50))
    out = (s.join_table(cards, on="card").key_by("holder").window(gs.Tumbling(5000), name="w")
           .agg(n=gs.count(), total=gs.col("amount").sum()).collect().to_pandas())
    ref = _reference(stream, table, "inner", ["card"])
    ref["window_start"] = ref.ts // 5000 * 5000
    want = ref.groupby(["window_start", "holder"]).agg(n=("amount", "size"),
                                                       total=("amount", "sum")).reset_index()
    got = out.sort_values(["window_start", "holder"]).reset_index(drop=True)
    want = want.sort_values(["window_start", "holder"]).reset_index(drop=True)
    assert got["n"].tolist() == want["n"].tolist()
    np.testing.assert_allclose(got["total"], want["total"])


def test_join_errors_are_clear() -> None:
    p = gs.Pipeline(engine="cpu")
    t = p.table(gs.from_arrow({"id": ["a"], "v": [1]}), key="id")
    s = p.source(gs.from_arrow({"id": [1], "x": [2]}))
    with pytest.raises(PlanError, match=r"key id \(int64\) and id \(string\) cannot be compared"):
        s.join_table(t, on="id")
    with pytest.raises(PlanError, match=r"keyed by \(id\); on= must name that key"):
        s.join_table(t, on=("x", "v"))
    with pytest.raises(PlanError, match=r"how='outer' is not 'inner' or 'left'"):
        p2 = gs.Pipeline(engine="cpu")
        t2 = p2.table(gs.from_arrow({"id": [1]}), key="id")
        p2.source(gs.from_arrow({"id": [1]})).join_table(t2, on="id", how="outer")
    with pytest.raises(PlanError, match="key column 'nope' is not in it"):
        p.table(gs.from_arrow({"id": [1]}), key="nope")
    with pytest.raises(PlanError, match="never ends"):
        p.table(gs.nexmark(events=None).persons, key="id")


# -- two streams --------------------------------------------------------------------------

def _two(n: int, seed: int, keys: int = 8, disorder: int = 300, span: int = 20_000,
         skew: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for side in range(2):
        m = n if side == 0 else n * 3 // 4
        ts = np.sort(rng.integers(0, span, m)) + rng.integers(0, disorder, m)
        k = rng.integers(0, keys, m)
        if skew:
            k = np.where(rng.random(m) < skew, 0, k)
        out.append(pd.DataFrame({
            "id": np.arange(m, dtype=np.int64),
            "k": pd.Series(k).astype("Int64").mask(rng.random(m) < 0.03),
            "s": rng.choice(["x", "y"], m),
            "ts": ts.astype(np.int64),
        }))
    return out[0], out[1]


def _own_watermarks(df: pd.DataFrame, delay: int) -> pd.Series:
    """The watermark as of each row: the largest earlier event time - delay."""
    return df["ts"].cummax().shift(1, fill_value=-(10**15)) - delay


def _sources(p: gs.Pipeline, left: pd.DataFrame, right: pd.DataFrame, delay: int,
             batch_rows: int) -> tuple[gs.Stream, gs.Stream]:
    wm = gs.Watermark.bounded(delay)
    a = p.source(gs.from_arrow(_arrow(left), batch_rows=batch_rows), event_time="ts",
                 watermark=wm, name="left")
    b = p.source(gs.from_arrow(_arrow(right), batch_rows=batch_rows), event_time="ts",
                 watermark=wm, name="right")
    return a, b


def _pairs(out: pa.Table, *extra: str) -> list[tuple[int, ...]]:
    cols = ["id", "id_right", *extra]
    return sorted(tuple(r[c] for c in cols) for r in out.to_pylist())


def _interval_reference(left: pd.DataFrame, right: pd.DataFrame, delay: int, lower: int,
                        upper: int, on: list[str]) -> list[tuple[int, ...]]:
    lok = left[left.ts >= _own_watermarks(left, delay)].dropna(subset=["k"])
    rok = right[right.ts >= _own_watermarks(right, delay)].dropna(subset=["k"])
    m = lok.merge(rok, on=on, suffixes=("", "_right"))
    m = m[(m.ts_right - m.ts >= lower) & (m.ts_right - m.ts <= upper)]
    return sorted(zip(m.id.tolist(), m.id_right.tolist(), strict=True))


@pytest.mark.parametrize(("lower", "upper"), [(-500, 500), (100, 800), (-900, -200)])
def test_interval_join_matches_pandas(backend: Backend, lower: int, upper: int) -> None:
    n = 250 if cudasim_on() else 3000
    left, right = _two(n, seed=6, span=4_000 if cudasim_on() else 40_000)
    p = gs.Pipeline(engine=backend.name)
    a, b = _sources(p, left, right, delay=200, batch_rows=64)
    out = a.interval_join(b, on="k", lower=lower, upper=upper).collect()
    assert out.schema.names == ["id", "k", "s", "ts", "id_right", "s_right", "ts_right"]
    assert _pairs(out) == _interval_reference(left, right, 200, lower, upper, ["k"])
    assert len(_pairs(out)) > 50


def test_interval_join_with_string_and_several_keys() -> None:
    left, right = _two(3000, seed=7)
    p = gs.Pipeline(engine="cpu")
    a, b = _sources(p, left, right, delay=200, batch_rows=100)
    out = a.interval_join(b, on=["k", "s"], lower=-400, upper=400).collect()
    assert _pairs(out) == _interval_reference(left, right, 200, -400, 400, ["k", "s"])


@given(st.sampled_from([1, 7, 1000, 65536]), st.sampled_from([3, 50, 4096]))
def test_interval_join_does_not_depend_on_batching(left_rows: int, right_rows: int) -> None:
    left, right = _two(600, seed=8)
    p = gs.Pipeline(engine="cpu")
    wm = gs.Watermark.bounded(200)
    a = p.source(gs.from_arrow(_arrow(left), batch_rows=left_rows), event_time="ts",
                 watermark=wm, name="l")
    b = p.source(gs.from_arrow(_arrow(right), batch_rows=right_rows), event_time="ts",
                 watermark=wm, name="r")
    out = a.interval_join(b, on="k", lower=-300, upper=300).collect()
    assert _pairs(out) == _interval_reference(left, right, 200, -300, 300, ["k"])


def test_interval_join_state_stays_bounded_by_the_watermarks() -> None:
    # the operator driven directly, both inputs in step: after each batch it holds only
    # rows that a future row of the other input could still match
    from gpustream.batch import Batch
    from gpustream.operators.join import IntervalJoinOp, JoinSpec

    left, right = _two(20_000, seed=9, span=2_000_000, disorder=100)
    p = gs.Pipeline(engine="cpu")
    a, b = _sources(p, left, right, delay=100, batch_rows=500)
    schema = a.interval_join(b, on="k", lower=-1000, upper=1000).schema
    spec = JoinSpec(("k",), ("k",), "ts", "ts", (("id", "id_right"), ("s", "s_right"),
                                                 ("ts", "ts_right")), schema, (False,))
    op = IntervalJoinOp(spec, -1000, 1000, p.backend)
    held, pairs = [], 0
    wms = [_own_watermarks(left, 100).to_numpy(), _own_watermarks(right, 100).to_numpy()]
    # both inputs advance together through event time, 20 s of it at a time
    cuts = [np.searchsorted(df.ts.cummax().to_numpy(), np.arange(0, 2_200_000, 20_000))
            for df in (left, right)]
    for step in range(len(cuts[0]) - 1):
        for port, df in enumerate((left, right)):
            lo, hi = int(cuts[port][step]), int(cuts[port][step + 1])
            if lo == hi:
                continue
            part = df.iloc[lo:hi]
            batch = Batch.from_arrow(pa.RecordBatch.from_pandas(part, preserve_index=False))
            batch.watermarks = wms[port][lo:hi]
            pairs += sum(x.num_rows for x in op.process_port(port, batch))
            op.input_watermark(port, int(df.ts.iloc[:hi].max()) - 100)
            held.append(op.buffered)
    assert pairs == len(_interval_reference(left, right, 100, -1000, 1000, ["k"]))
    # rows within 1 s of the front (+ the delay, + one 20 s step of each input): a few
    # hundred of the 35,000 rows that went through
    assert len(held) > 150 and max(held) < 1_000, max(held)
    op.input_ended(0)
    op.input_ended(1)
    assert op.buffered == 0  # both inputs ended: nothing can match any more


def _window_reference(left: pd.DataFrame, right: pd.DataFrame, delay: int, size: int,
                      slide: int, on: list[str]) -> list[tuple[int, ...]]:
    parts = []
    for df in (left, right):
        wm = _own_watermarks(df, delay)
        rows = []
        for j in range(size // slide):
            start = df.ts - df.ts % slide - j * slide
            ok = start + size > wm
            rows.append(df[ok].assign(window_start=start[ok]))
        parts.append(pd.concat(rows).dropna(subset=["k"]))
    m = parts[0].merge(parts[1], on=[*on, "window_start"], suffixes=("", "_right"))
    return sorted(zip(m.id.tolist(), m.id_right.tolist(), m.window_start.tolist(), strict=True))


def _session_reference(left: pd.DataFrame, right: pd.DataFrame, delay: int,
                       gap: int) -> list[tuple[int, ...]]:
    sides = []
    for i, df in enumerate((left, right)):
        ok = df[df.ts >= _own_watermarks(df, delay)].dropna(subset=["k"])
        sides.append(ok.assign(side=i))
    u = pd.concat(sides).sort_values(["k", "ts"], kind="stable")
    new = (u.k != u.k.shift()) | (u.ts - u.ts.shift() >= gap)
    u["sid"] = new.cumsum()
    u["first"] = u.groupby("sid").ts.transform("min")
    u["end"] = u.groupby("sid").ts.transform("max") + gap
    m = u[u.side == 0].merge(u[u.side == 1], on="sid", suffixes=("", "_right"))
    return sorted(zip(m.id.tolist(), m.id_right.tolist(), m["first"].tolist(), m["end"].tolist(),
                      strict=True))


@pytest.mark.parametrize("window", ["tumbling", "sliding", "session"])
def test_window_join_matches_pandas(backend: Backend, window: str) -> None:
    n = 200 if cudasim_on() else 3000
    left, right = _two(n, seed=10, span=3_000 if cudasim_on() else 30_000)
    p = gs.Pipeline(engine=backend.name)
    a, b = _sources(p, left, right, delay=200, batch_rows=64)
    assigner = {"tumbling": gs.Tumbling(1000), "sliding": gs.Sliding(1000, 250),
                "session": gs.Session(40)}[window]
    out = a.window_join(b, on="k", window=assigner).collect()
    assert out.schema.names[-2:] == ["window_start", "window_end"]
    if window == "session":
        want = _session_reference(left, right, 200, 40)
        got = _pairs(out, "window_start", "window_end")
    else:
        size, slide = (1000, 1000) if window == "tumbling" else (1000, 250)
        want = _window_reference(left, right, 200, size, slide, ["k"])
        got = _pairs(out, "window_start")
        assert all(r["window_end"] - r["window_start"] == size for r in out.to_pylist())
    assert len(want) > 30
    assert got == want


@given(st.sampled_from([1, 7, 1000]), st.sampled_from([5, 64, 65536]))
def test_window_join_does_not_depend_on_batching(left_rows: int, right_rows: int) -> None:
    left, right = _two(500, seed=11)
    p = gs.Pipeline(engine="cpu")
    wm = gs.Watermark.bounded(200)
    a = p.source(gs.from_arrow(_arrow(left), batch_rows=left_rows), event_time="ts",
                 watermark=wm, name="l")
    b = p.source(gs.from_arrow(_arrow(right), batch_rows=right_rows), event_time="ts",
                 watermark=wm, name="r")
    out = a.window_join(b, on="k", window=gs.Sliding(2000, 500)).collect()
    assert _pairs(out, "window_start") == _window_reference(left, right, 200, 2000, 500, ["k"])


def test_skewed_keys_in_two_stream_joins(backend: Backend) -> None:
    n = 200 if cudasim_on() else 8000
    left, right = _two(n, seed=12, skew=0.3, span=2_000 if cudasim_on() else 40_000)
    p = gs.Pipeline(engine=backend.name)
    a, b = _sources(p, left, right, delay=200, batch_rows=256)
    out = a.interval_join(b, on="k", lower=-300, upper=300).collect()
    assert _pairs(out) == _interval_reference(left, right, 200, -300, 300, ["k"])


def test_a_join_waits_for_the_slower_input() -> None:
    # the right input's watermark holds the join back: nothing fires before it moves
    from gpustream.operators.base import TwoInputOperator

    op = TwoInputOperator()
    assert op.input_watermark(0, 5_000) == ([], None)
    assert op.input_watermark(1, 1_000) == ([], 1_000)
    assert op.input_watermark(0, 9_000) == ([], None)  # still 1,000: the right is behind
    assert op.input_watermark(1, 7_000) == ([], 7_000)


def test_an_idle_input_stops_holding_the_watermark_back() -> None:
    import time

    from gpustream.operators.base import TwoInputOperator

    op = TwoInputOperator(idleness_s=(None, 0.05))
    op.input_watermark(1, 1_000)
    assert op.input_watermark(0, 5_000) == ([], 1_000)  # held back by the right input
    time.sleep(0.1)  # the right input sent nothing for longer than its idleness
    assert op.input_watermark(0, 6_000) == ([], 6_000)
    assert op.input_watermark(1, 2_000) == ([], None)  # active again, but behind: no regress


def test_two_stream_join_errors_are_clear() -> None:
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow({"k": [1], "ts": [1]}), event_time="ts", name="a")
    b = p.source(gs.from_arrow({"k": ["x"], "ts": [1]}), event_time="ts", name="b")
    c = p.source(gs.from_arrow({"k": [1], "t": [1]}), name="c")
    with pytest.raises(PlanError, match="cannot be compared"):
        a.interval_join(b, on="k", lower=0, upper=1)
    with pytest.raises(PlanError, match="both inputs need an event time"):
        a.window_join(c, on="k", window=gs.Tumbling(10))
    with pytest.raises(PlanError, match=r"lower .* is above upper"):
        d = p.source(gs.from_arrow({"k": [1], "ts": [1]}), event_time="ts", name="d")
        a.interval_join(d, on="k", lower=5, upper=-5)
    with pytest.raises(PlanError, match="with itself"):
        a.interval_join(a, on="k", lower=0, upper=1)
    with pytest.raises(PlanError, match="window joins are inner joins"):
        a.window_join(c, on="k", window=gs.Tumbling(10), how="left")


class _Stepped(Source):
    """Yields its batches one by one, each after ``wait[i]`` is set; sets ``done[i]`` once
    the batch is queued (the runtime takes queued batches in order)."""

    def __init__(self, batches: list[pa.RecordBatch], wait: list[object], done: list[object]):
        self.batches, self.wait, self.done = batches, wait, done
        self.name = "stepped"

    def schema(self) -> pa.Schema:
        return self.batches[0].schema

    def open(self, offset: object = None):
        for i, rb in enumerate(self.batches):
            if self.wait[i] is not None:
                assert self.wait[i].wait(30)  # type: ignore[attr-defined]
            yield SourceBatch(rb, i)
            if self.done[i] is not None:
                self.done[i].set()  # type: ignore[attr-defined]


def test_a_changelog_keeps_the_table_current_for_later_events() -> None:
    import threading

    first_out, logged = threading.Event(), threading.Event()
    p = gs.Pipeline(engine="cpu")
    table = pa.table({"card": [1, 2, 3], "limit": [100, 200, 300]})
    log = pa.record_batch({"card": [2, 4, 3, 2], "limit": [250, 400, 0, 260],
                           "deleted": [False, False, True, False]})
    cards = p.table(gs.from_arrow(table), key="card",
                    changelog=_Stepped([log], [first_out], [logged]), delete_column="deleted")
    stream = _Stepped([pa.record_batch({"card": [1, 2, 3, 4]}),
                       pa.record_batch({"card": [1, 2, 3, 4]})], [None, logged], [None, None])
    out: list[pa.RecordBatch] = []

    def seen(rb: pa.RecordBatch) -> None:
        out.append(rb)
        first_out.set()  # the first batch went through: now the changelog may arrive
    p.source(stream).join_table(cards, on="card", how="left").sink(gs.to_callback(seen))
    p.run()
    got = [rb.to_pydict()["limit"] for rb in out]
    # before the changelog: the loaded table; after: 2 updated (last change wins),
    # 4 added, 3 deleted
    assert got == [[100, 200, 300, None], [100, 260, None, 400]]
