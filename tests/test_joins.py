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
