"""DataFrames in and out: pandas, Polars, DuckDB and anything with the Arrow PyCapsule
interface as sources and tables; results as pandas and Polars without copies where the
libraries allow."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.errors import PlanError


def _events(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = pd.array(rng.integers(0, 9, n), dtype="Int64")
    user[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame({
        "ts": np.arange(n, dtype=np.int64) * 7,
        "user": user,
        "page": pd.Categorical(rng.choice(["home", "cart", "pay"], n)),
        "ms": rng.exponential(100, n),
    })


def _per_page(df: pd.DataFrame) -> pd.DataFrame:
    """The reference: views and total time per page per 1 s window."""
    return (df.assign(page=df.page.astype(str), window_start=df.ts // 1000 * 1000)
            .groupby(["page", "window_start"], as_index=False)
            .agg(views=("ms", "size"), total=("ms", "sum"))
            .sort_values(["page", "window_start"]).reset_index(drop=True))


def _query(p: gs.Pipeline, data: Any) -> gs.Stream:
    return (p.source(data, event_time="ts").key_by("page").window(gs.Tumbling("1s"), name="w")
            .agg(views=gs.count(), total=gs.col("ms").sum()))


def _frame(got: pd.DataFrame) -> pd.DataFrame:
    return (got.drop(columns=["window_end"]).sort_values(["page", "window_start"])
            .reset_index(drop=True))


class _OnlyTheInterface:
    """Exports a table through ``__arrow_c_stream__`` and nothing else (as nanoarrow or
    a database driver's result would)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._table.__arrow_c_stream__(requested_schema)


def test_dataframes_of_every_kind_as_sources() -> None:
    df = _events()
    ref = _per_page(df)
    arrow = pa.Table.from_pandas(df, preserve_index=False)
    con = duckdb.connect()
    con.register("events", arrow)
    sources = {
        "pandas": df,
        "polars": pl.from_pandas(df),
        "duckdb": con.sql("select * from events order by ts"),
        "interface": _OnlyTheInterface(arrow),
        "reader": pa.RecordBatchReader.from_batches(arrow.schema, arrow.to_batches(100)),
        "from_arrow": gs.from_arrow(pl.from_pandas(df), batch_rows=64),
    }
    for name, data in sources.items():
        got = _query(gs.Pipeline(engine="cpu"), data).to_pandas()
        pd.testing.assert_frame_equal(_frame(got), ref, check_dtype=False, obj=name)


def test_dataframe_as_a_lookup_table() -> None:
    events = _events()
    pages = pl.DataFrame({"page": ["home", "cart"], "weight": [1.5, 2.0]})
    p = gs.Pipeline(engine="cpu")
    t = p.table(pages, key="page")
    got = p.source(events, event_time="ts").join_table(t, on="page").to_polars()
    ref = events.assign(page=events.page.astype(str)).merge(pages.to_pandas(), on="page")
    assert got.height == len(ref) > 0
    assert got["weight"].sum() == pytest.approx(ref["weight"].sum())


def test_what_is_not_a_dataframe_is_refused_with_the_fix() -> None:
    with pytest.raises(PlanError, match=r"Pipeline.source takes a source .* or a DataFrame; "
                                        r"got list"):
        gs.Pipeline(engine="cpu").source([1, 2, 3])


def test_results_as_pandas_and_polars_share_the_arrow_buffers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    df = _events()
    p = gs.Pipeline(engine="cpu")
    s = p.source(df, event_time="ts")
    arrow = s.collect()
    addresses = {n: arrow[n].chunks[0].buffers()[1].address for n in ("ts", "ms")}
    # each collect() builds new buffers: hand the conversions this result, to follow it
    monkeypatch.setattr(s, "collect", lambda: arrow)
    with_arrow = s.to_pandas(arrow_dtypes=True)
    for n, addr in addresses.items():
        assert with_arrow[n].array._pa_array.chunks[0].buffers()[1].address == addr
    assert with_arrow["user"].isna().sum() == df["user"].isna().sum() > 0  # nulls stay nulls
    polars = s.to_polars()
    for n, addr in addresses.items():
        assert polars[n].to_arrow().buffers()[1].address == addr
    assert polars["page"].to_list() == df["page"].astype(str).tolist()


def test_to_pandas_gives_pandas_dtypes() -> None:
    df = _events()
    got = gs.Pipeline(engine="cpu").source(df, event_time="ts").to_pandas()
    assert got["ms"].dtype == np.float64 and got["ts"].dtype == np.int64
    pd.testing.assert_series_equal(got["ms"], df["ms"])
    assert got["page"].tolist() == df["page"].astype(str).tolist()
