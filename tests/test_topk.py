"""Top-N per window over a window's output (Nexmark q5, q19; issue 17 "Ranking").

Checked against pandas over the window's rows in batch: in each window (and group of
``per`` columns) the ``n`` rows with the largest value, ties in the order the window
emitted them, nulls last, ranked 1..n; whatever the batching, on every backend, and
across a crash and restart.
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


def _events(seed: int, n: int, span: int = 60_000) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span, n)) - rng.integers(0, 1500, n) * (rng.random(n) < 0.2)
    return pa.table({"auction": rng.integers(0, 40, n), "ts": ts.astype(np.int64),
                     "category": rng.choice(["books", "cars", "toys"], n),
                     "price": pa.array(rng.integers(1, 30, n).astype(np.int64),
                                       mask=rng.random(n) < 0.05)})


def _job(source: Any, engine: str, n: int, per: tuple[str, ...], descending: bool = True
         ) -> tuple[gs.Pipeline, list[pa.RecordBatch], list[pa.RecordBatch]]:
    p = gs.Pipeline("top", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(1000), name="bids")
    w = s.key_by("auction", "category").window(gs.Tumbling(10_000), name="w").agg(
        bids=gs.count(), top=gs.col("price").max())
    ranked = w.top_k(n, by="top", per=per, descending=descending)
    rows: list[pa.RecordBatch] = []
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(rows.append))
    ranked.sink(gs.to_callback(out.append))
    return p, rows, out


def _frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    return pa.Table.from_batches(batches).to_pandas()


def _reference(rows: pd.DataFrame, n: int, per: tuple[str, ...], by: str,
               descending: bool) -> pd.DataFrame:
    groups = ["window_end", "window_start", *per]
    ranked = rows.assign(_null=rows[by].isna(), _arrival=np.arange(len(rows)))
    ranked = ranked.sort_values([*groups, "_null", by, "_arrival"],
                                ascending=[True] * len(groups) + [True, not descending, True],
                                kind="stable")
    ranked["rank"] = ranked.groupby(groups, sort=False).cumcount() + 1
    return ranked[ranked["rank"] <= n].drop(columns=["_null", "_arrival"])


def _key(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    return sorted(tuple(None if pd.isna(v) else v for v in r)
                  for r in df[["window_end", "auction", "category", "top", "rank"]]
                  .itertuples(index=False))


@pytest.mark.parametrize(("n", "per", "descending"), [(3, (), True), (2, ("category",), True),
                                                      (1, ("category",), False)])
def test_top_k_per_window_equals_pandas_over_the_window_rows(
        backend: gs.Backend, n: int, per: tuple[str, ...], descending: bool) -> None:
    size = 500 if backend.name == "cudasim" else 5000
    table = _events(seed=4, n=size)
    p, rows, out = _job(gs.from_arrow(table, batch_rows=size // 6), backend.name, n, per,
                        descending)
    p.run()
    got, want = _frame(out), _reference(_frame(rows), n, per, "top", descending)
    assert len(want) >= 6 * n
    assert _key(got) == _key(want)
    assert list(got.columns) == [*_frame(rows).columns, "rank"]


@settings(max_examples=10, deadline=None)
@given(batch_rows=st.integers(1, 2500), seed=st.integers(0, 2**16))
def test_top_k_does_not_depend_on_batching(batch_rows: int, seed: int) -> None:
    table = _events(seed=seed, n=2500, span=30_000)
    p, rows, out = _job(gs.from_arrow(table, batch_rows=batch_rows), "cpu", 2, ("category",))
    p.run()
    assert _key(_frame(out)) == _key(_reference(_frame(rows), 2, ("category",), "top", True))


def test_a_window_over_the_top_rows() -> None:
    """The ranked rows keep the window's event time: a window over them counts them."""
    table = _events(seed=8, n=4000)
    p, _, _ = _job(gs.from_arrow(table, batch_rows=300), "cpu", 2, ("category",))
    s = p.source(gs.from_arrow(table, batch_rows=300), event_time="ts",
                 watermark=gs.Watermark.bounded(1000), name="again")
    top = (s.key_by("auction", "category").window(gs.Tumbling(10_000), name="w2")
           .agg(top=gs.col("price").max()).top_k(2, by="top", per=("category",)))
    counted = top.key_by("category").window(gs.Tumbling(20_000), name="c").agg(n=gs.count())
    late: list[pa.RecordBatch] = []
    counted.late.sink(gs.to_callback(late.append))
    got = counted.collect().to_pandas()
    assert not late and (got["n"] <= 4).all() and (got["n"] >= 1).all()


def test_a_crashed_top_k_job_resumes(tmp_path: Path) -> None:
    table = _events(seed=6, n=5000)
    whole, _, out = _job(gs.from_arrow(table, batch_rows=200), "cpu", 2, ("category",))
    whole.run()
    want = _key(_frame(out))
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, _, out1 = _job(_Crash(gs.from_arrow(table, batch_rows=200), 11), "cpu", 2,
                          ("category",))
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, _, out2 = _job(gs.from_arrow(table, batch_rows=200), "cpu", 2, ("category",))
    assert second.run(checkpoint=ck).restored_checkpoint is not None
    assert sorted(set(_key(_frame(out1 + out2)))) == sorted(set(want))


def test_top_k_names_a_missing_column_and_a_bad_n() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_events(1, 10)), event_time="ts", name="bids")
    assert s.top_k(3, by="price").schema.names[-1] == "op"  # a whole stream: a changelog
    w = s.key_by("auction").window(gs.Tumbling(1000), name="w").agg(n=gs.count())
    with pytest.raises(PlanError, match="'nope'"):
        w.top_k(3, by="nope").collect()
    with pytest.raises(PlanError, match="n must be"):
        w.top_k(0, by="n").collect()


def test_top_k_in_a_spec_equals_the_python_api(tmp_path: Path) -> None:
    from gpustream.spec import pipeline_from_spec

    table = _events(seed=12, n=3000)
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "bids.parquet")
    spec = tmp_path / "top.yaml"
    spec.write_text(f"""
name: top
engine: cpu
source: {{type: parquet, path: {tmp_path / 'bids.parquet'}, event_time: ts, watermark: 1s}}
steps:
  - key_by: [auction, category]
  - window: {{tumbling: 10s, name: w}}
  - agg: {{bids: count(), top: max(price)}}
  - top_k: {{n: 2, by: top, per: category}}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""")
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out").to_pandas()
    p, _, out = _job(gs.from_arrow(table, batch_rows=500), "cpu", 2, ("category",))
    p.run()
    assert _key(got) == _key(_frame(out)) and len(got) > 10
