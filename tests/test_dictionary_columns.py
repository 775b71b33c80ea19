"""Dictionary-encoded (categorical) string columns, as Parquet, Arrow IPC, pandas and
Polars hand them over, through every kind of step.

The property: how a string column is encoded (plain, large, view, or a dictionary of any
index width, with nulls, a different dictionary in each batch or file) never changes a
result. Each query runs on the plain strings and on every encoding; the plain run is
checked against pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.backend import Backend
from tests.conftest import cudasim_on

_WORDS = ["apple", "Apple", "kiwi", "pear", "fig", "plum", "lime"]


def _plain(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    c = rng.choice(_WORDS, n).astype(object)
    c[rng.random(n) < 0.1] = None
    return pa.table({
        "ts": pa.array(np.sort(rng.integers(0, 20 * n, n)), pa.int64()),
        "c": pa.array(c, pa.string()),
        "k": pa.array(rng.integers(0, 5, n), pa.int64()),
        "v": pa.array(rng.normal(size=n)),
    })


def _encoded(t: pa.Table, how: str, batch_rows: int) -> pa.Table:
    """``t`` with column c encoded as ``how``; 'per-batch': each batch has its own
    dictionary (its values in another order, and only those it uses)."""
    c = t.column("c").combine_chunks()
    if how == "plain":
        return t
    if how in ("large_string", "string_view"):
        return t.set_column(1, "c", c.cast(getattr(pa, how)()))
    if how == "per-batch":
        chunks = []
        for start in range(0, len(c), batch_rows):
            part = c.slice(start, batch_rows)
            values = pa.array(sorted({v for v in part.to_pylist() if v is not None},
                                     reverse=start % 2 == 1), pa.string())
            idx = pa.compute.index_in(part, value_set=values)
            chunks.append(pa.DictionaryArray.from_arrays(idx.cast(pa.int16()), values))
        return t.set_column(1, "c", pa.chunked_array(chunks))
    index, value = how.split("/")
    d = c.dictionary_encode()
    typ = pa.dictionary(getattr(pa, index)(), getattr(pa, value)())
    return t.set_column(1, "c", d.cast(typ))


ENCODINGS = ["plain", "large_string", "string_view", "int8/string", "uint8/string",
             "int16/large_string", "uint16/string", "int32/string", "uint32/large_string",
             "int64/string", "per-batch"]
#: encodings are read on the host, the same for every backend: under the simulator (slow
#: kernels) a few of them suffice to check the device path
SIMULATED = ["plain", "string_view", "uint8/string", "per-batch"]


def _n() -> int:
    return 150 if cudasim_on() else 3000


def _steps(s: gs.Stream) -> dict[str, gs.Stream]:
    """One stream per kind of step, each using the string column."""
    windowed = s.key_by("c").window(gs.Tumbling(500), name="w").agg(
        n=gs.count(), total=gs.col("v").sum())
    distinct = s.key_by("k").window(gs.Tumbling(700), name="d").agg(
        kinds=gs.col("c").count_distinct(), firsts=gs.col("c").count())
    return {
        "filter": s.filter((gs.col("c") != "Apple") & gs.col("c").is_not_null()),
        "select": s.select("c", "ts"),
        "with_columns": s.with_columns(same=gs.col("c").cast("string"),
                                       apple=gs.col("c") == "apple",
                                       missing=gs.col("c").is_null()),
        "window": windowed,
        "count_distinct": distinct,
    }


def _run(table: pa.Table, engine: str, batch_rows: int) -> dict[str, pd.DataFrame]:
    out = {}
    for name in _steps(gs.Pipeline(engine=engine).source(gs.from_arrow(table), event_time="ts")):
        p = gs.Pipeline(engine=engine)
        s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts")
        got = _steps(s)[name].collect()
        if "c" in got.schema.names:  # strings come out as strings, whatever came in
            assert got.schema.field("c").type == pa.string()
        out[name] = got.to_pandas()
    return out


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def plain_results() -> dict[str, dict[str, pd.DataFrame]]:
    return {}


@pytest.mark.parametrize("how", SIMULATED if cudasim_on() else ENCODINGS)
def test_every_step_reads_every_string_encoding(backend: Backend, how: str,
                                                plain_results: dict) -> None:
    n, rows = _n(), 97
    plain = _plain(n, seed=1)
    if backend.name not in plain_results:
        ref = _run(plain, backend.name, rows)
        df = plain.to_pandas()
        # the plain run against pandas
        kept = df[(df.c != "Apple") & df.c.notna()].reset_index(drop=True)
        pd.testing.assert_frame_equal(ref["filter"], kept)
        win = (df.assign(window_start=lambda d: d.ts // 500 * 500)  # null: a key, as in SQL
               .groupby(["c", "window_start"], as_index=False, dropna=False)
               .agg(n=("v", "size"), total=("v", "sum")))
        got = ref["window"].drop(columns=["window_end"])
        pd.testing.assert_frame_equal(_sorted(got), _sorted(win), check_dtype=False)
        kinds = (df.assign(window_start=lambda d: d.ts // 700 * 700)
                 .groupby(["k", "window_start"], as_index=False)
                 .agg(kinds=("c", "nunique"), firsts=("c", "count")))
        got = ref["count_distinct"].drop(columns=["window_end"])
        pd.testing.assert_frame_equal(_sorted(got), _sorted(kinds), check_dtype=False)
        assert ref["with_columns"]["same"].equals(df["c"])
        plain_results[backend.name] = ref
    got = _run(_encoded(plain, how, rows), backend.name, rows)
    for name, ref in plain_results[backend.name].items():
        pd.testing.assert_frame_equal(_sorted(got[name]), _sorted(ref), obj=f"{how}: {name}")


def test_the_crash_in_the_issue_select_of_a_dictionary_with_nulls() -> None:
    t = pa.table({"ts": [1, 2, 3], "c": pa.array(["a", None, "a"]).dictionary_encode()})
    p = gs.Pipeline(engine="cpu")
    got = p.source(gs.from_arrow(t), event_time="ts").select("c").collect()
    assert got.schema.field("c").type == pa.string()
    assert got["c"].to_pylist() == ["a", None, "a"]


def test_dictionaries_of_numbers_are_their_values() -> None:
    codes = pa.array([2, 0, None, 1], pa.int8())
    t = pa.table({"x": pa.DictionaryArray.from_arrays(codes, pa.array([10, 20, 30]))})
    p = gs.Pipeline(engine="cpu")
    got = p.source(gs.from_arrow(t)).with_columns(y=gs.col("x") * 2).collect()
    assert got.to_pydict() == {"x": [30, 10, None, 20], "y": [60, 20, None, 40]}


def test_joins_on_dictionary_keys(backend: Backend) -> None:
    n = _n()
    plain = _plain(n, seed=2)
    table = pa.table({"c": pa.array(_WORDS[:5]), "price": pa.array([1.0, 2.0, 3.0, 4.0, 5.0])})
    df, tf = plain.to_pandas(), table.to_pandas()
    ref_lookup = df.merge(tf, on="c", how="left")
    ref_lookup.loc[ref_lookup.c.isna(), "price"] = np.nan
    right = df.dropna(subset=["c"]).iloc[::3].rename(columns={"c": "rc", "v": "rv"})
    ref_pairs = df.dropna(subset=["c"]).merge(right[["ts", "rc", "rv"]], left_on="c",
                                              right_on="rc", suffixes=("", "_right"))
    ref_window = ref_pairs[ref_pairs.ts // 1000 == ref_pairs.ts_right // 1000]
    kinds = ("plain", "int8/string", "per-batch", "uint32/large_string")
    for how in kinds[2:] if cudasim_on() else kinds:
        left = _encoded(plain, how, 61)
        tab = _encoded(table.select(["price", "c"]), how.replace("per-batch", "int8/string"),
                       61).select(["c", "price"])
        p = gs.Pipeline(engine=backend.name)
        t = p.table(gs.from_arrow(tab), key="c")
        s = p.source(gs.from_arrow(left, batch_rows=61), event_time="ts")
        got = s.join_table(t, on="c", how="left").collect().to_pandas()
        pd.testing.assert_frame_equal(_sorted(got), _sorted(ref_lookup), obj=how)
        rtab = pa.Table.from_pandas(right[["ts", "rc", "rv"]], preserve_index=False)
        if how != "plain":
            rtab = rtab.set_column(1, "rc", rtab.column("rc").combine_chunks().dictionary_encode())
        p = gs.Pipeline(engine=backend.name)
        a = p.source(gs.from_arrow(left, batch_rows=61), event_time="ts", name="a")
        b = p.source(gs.from_arrow(rtab, batch_rows=29), event_time="ts", name="b")
        cols = ["ts", "c", "v", "ts_right", "rc", "rv"]
        got = a.window_join(b, on=("c", "rc"), window=gs.Tumbling(1000)).collect().to_pandas()
        pd.testing.assert_frame_equal(_sorted(got[cols]), _sorted(ref_window[cols]),
                                      check_dtype=False, obj=how)
        p = gs.Pipeline(engine=backend.name)
        a = p.source(gs.from_arrow(left, batch_rows=61), event_time="ts", name="a")
        b = p.source(gs.from_arrow(rtab, batch_rows=29), event_time="ts", name="b")
        got = a.interval_join(b, on=("c", "rc"), lower=-300, upper=300).collect().to_pandas()
        near = ref_pairs[(ref_pairs.ts_right - ref_pairs.ts).abs() <= 300]
        pd.testing.assert_frame_equal(_sorted(got[cols]), _sorted(near[cols]),
                                      check_dtype=False, obj=how)


def test_files_with_dictionaries_that_differ_between_files(tmp_path: Path) -> None:
    """A Parquet folder and an Arrow IPC folder whose files encode the column each in
    their own way (a dictionary, plain strings, another dictionary), read as one stream,
    filtered, windowed and written by every file sink."""
    plain = _plain(_n(), seed=3)
    parts = [plain.slice(0, 1000), plain.slice(1000, 1000), plain.slice(2000)]
    encoded = [_encoded(parts[0], "int32/string", 100), parts[1],
               _encoded(parts[2], "per-batch", 100)]
    (tmp_path / "pq").mkdir()
    (tmp_path / "ipc").mkdir()
    for i, part in enumerate(encoded):
        pq.write_table(part, tmp_path / "pq" / f"part-{i}.parquet")
        feather.write_feather(part.combine_chunks() if i != 2 else part,
                              str(tmp_path / "ipc" / f"part-{i}.arrow"))
    assert pq.read_schema(tmp_path / "pq" / "part-0.parquet").field("c").type != pa.string()
    df = plain.to_pandas()
    ref = df[df.c == "Apple"].reset_index(drop=True)
    for source in (gs.read_parquet(tmp_path / "pq", batch_rows=128),
                   gs.read_arrow_ipc(tmp_path / "ipc", batch_rows=128)):
        p = gs.Pipeline("files", engine="cpu")
        s = p.source(source, event_time="ts").filter(gs.col("c") == "Apple")
        for sink in (gs.to_parquet(tmp_path / "out.parquet"), gs.to_csv(tmp_path / "out.csv"),
                     gs.to_jsonl(tmp_path / "out.jsonl")):
            s.sink(sink)
        p.run()
        pd.testing.assert_frame_equal(pq.read_table(tmp_path / "out.parquet").to_pandas(), ref)
        from_csv = pd.read_csv(tmp_path / "out.csv")
        assert from_csv["c"].tolist() == ref["c"].tolist()
        from_jsonl = pd.read_json(tmp_path / "out.jsonl", lines=True)
        assert from_jsonl["v"].round(9).tolist() == ref["v"].round(9).tolist()
        assert s.collect().to_pandas().equals(ref)
        for f in ("out.parquet", "out.csv", "out.jsonl"):
            (tmp_path / f).unlink()


def test_pandas_category_and_polars_categorical(backend: Backend) -> None:
    plain = _plain(_n(), seed=4)
    df = plain.to_pandas()
    cat = df.assign(c=df["c"].astype("category"))
    pol = pl.from_pandas(df).with_columns(pl.col("c").cast(pl.Categorical))
    assert pa.types.is_dictionary(pa.table(pol).schema.field("c").type)
    ref = (df.assign(window_start=lambda d: d.ts // 500 * 500)
           .groupby(["c", "window_start"], as_index=False, dropna=False).agg(n=("v", "size")))
    for frame in (cat, pol):
        p = gs.Pipeline(engine=backend.name)
        s = p.source(frame, event_time="ts")
        got = (s.filter(gs.col("c") != "fig").key_by("c").window(gs.Tumbling(500), name="w")
               .agg(n=gs.count()).collect().to_pandas().drop(columns=["window_end"]))
        keep = ref[(ref.c != "fig") & ref.c.notna()]  # != is null for a null: filtered out
        pd.testing.assert_frame_equal(_sorted(got), _sorted(keep),
                                      check_dtype=False, obj=type(frame).__module__)
