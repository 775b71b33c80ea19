"""Top-N per group over a whole stream, a changelog (issue 17 "Ranking"; Nexmark q18,
q19): ``stream.top_k(n, by=, per=)`` on a stream that is not a window's output.

Checked against pandas in batch: the rows the changelog describes (``gs.materialize``)
are each group's ``n`` best rows of all the input (ties: the earlier row; nulls last),
on every backend, whatever the batching, across a crash and restart; the changelog only
deletes rows it inserted.
"""

from __future__ import annotations

from collections import Counter
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


def _bids(seed: int, n: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "auction": rng.integers(0, 25, n),
        "bidder": rng.integers(0, 6, n),
        "ts": np.arange(n, dtype=np.int64) * 10,
        "price": pa.array(rng.integers(1, 60, n).astype(np.int64), mask=rng.random(n) < 0.05),
    })


def _job(source: Any, engine: str, n: int, per: tuple[str, ...], by: str = "price",
         descending: bool = True) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("topn", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(100), name="bids")
    out: list[pa.RecordBatch] = []
    s.top_k(n, by=by, per=per, descending=descending).sink(gs.to_callback(out.append))
    return p, out


def _reference(table: pa.Table, n: int, per: tuple[str, ...], by: str,
               descending: bool) -> list[tuple[Any, ...]]:
    df = table.to_pandas().assign(_null=lambda d: d[by].isna(), _arrival=np.arange(len(table)))
    df = df.sort_values(["_null", by, "_arrival"], ascending=[True, not descending, True],
                        kind="stable")
    best = df.groupby(list(per), sort=False).head(n) if per else df.head(n)
    return _key(best.drop(columns=["_null", "_arrival"]))


def _key(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    return sorted(tuple(None if pd.isna(v) else int(v) for v in r)
                  for r in df[["auction", "bidder", "ts", "price"]].itertuples(index=False))


def _held(batches: list[pa.RecordBatch]) -> list[tuple[Any, ...]]:
    log = pa.Table.from_batches(batches)
    counts: Counter[tuple[Any, ...]] = Counter()
    for row in log.to_pylist():  # -D only removes a row inserted before
        key = (row["auction"], row["bidder"], row["ts"], row["price"])
        if row["op"] == "+I":
            counts[key] += 1
        else:
            assert row["op"] == "-D" and counts[key] > 0, row
            counts[key] -= 1
    got = _key(gs.materialize(log).to_pandas())
    assert got == sorted(k for k, c in counts.items() for _ in range(c))
    return got


@pytest.mark.parametrize(("n", "per", "descending"), [(3, ("auction",), True),
                                                      (1, ("auction", "bidder"), True),
                                                      (2, (), False)])
def test_top_n_over_a_stream_equals_pandas(backend: gs.Backend, n: int, per: tuple[str, ...],
                                           descending: bool) -> None:
    size = 400 if backend.name == "cudasim" else 4000
    table = _bids(seed=2, n=size)
    p, out = _job(gs.from_arrow(table, batch_rows=size // 9), backend.name, n, per,
                  descending=descending)
    p.run()
    assert pa.Table.from_batches(out).column_names == [*table.column_names, "op"]
    assert _held(out) == _reference(table, n, per, "price", descending)
    if descending:  # (the smallest prices of all show up in the first batch)
        assert "-D" in pa.Table.from_batches(out)["op"].to_pylist()


@settings(max_examples=12, deadline=None)
@given(batch_rows=st.integers(1, 1200), seed=st.integers(0, 2**16))
def test_top_n_does_not_depend_on_batching(batch_rows: int, seed: int) -> None:
    table = _bids(seed=seed, n=1200)
    p, out = _job(gs.from_arrow(table, batch_rows=batch_rows), "cpu", 2, ("auction",))
    p.run()
    assert _held(out) == _reference(table, 2, ("auction",), "price", True)


def test_latest_row_per_key_deduplicates() -> None:
    """Nexmark q18: each (bidder, auction)'s last bid."""
    table = _bids(seed=4, n=3000)
    p, out = _job(gs.from_arrow(table, batch_rows=250), "cpu", 1, ("bidder", "auction"),
                  by="ts")
    p.run()
    df = table.to_pandas()
    want = df.loc[df.groupby(["bidder", "auction"])["ts"].idxmax()]
    assert _held(out) == _key(want)


def test_a_crashed_top_n_resumes_exactly_once(tmp_path: Path) -> None:
    """The changelog is a multiset: a replayed -D would remove a row twice, so the rows
    go to a sink that commits with checkpoints (parquet), and nothing is written twice."""
    import pyarrow.parquet as pq

    table = _bids(seed=6, n=4000)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)

    def job(source: Any) -> gs.Pipeline:
        p = gs.Pipeline("topn", engine="cpu")
        s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(100),
                     name="bids")
        s.top_k(2, by="price", per="auction").sink(gs.to_parquet(tmp_path / "out"))
        return p

    with pytest.raises(OSError, match="lost power"):
        job(_Crash(gs.from_arrow(table, batch_rows=200), 11)).run(checkpoint=ck)
    assert job(gs.from_arrow(table, batch_rows=200)).run(checkpoint=ck).restored_checkpoint
    files = sorted((tmp_path / "out").glob("*.parquet"))
    log = pa.concat_tables([pq.read_table(f) for f in files])
    assert _held(log.to_batches()) == _reference(table, 2, ("auction",), "price", True)


def test_a_stream_with_an_op_column_is_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"k": [1], "op": ["x"]}))
    with pytest.raises(PlanError, match="already have a column 'op'"):
        s.top_k(1, by="k")


def test_top_n_in_a_spec_equals_the_python_api(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from gpustream.spec import pipeline_from_spec

    table = _bids(seed=12, n=3000)
    pq.write_table(table, tmp_path / "bids.parquet")
    spec = tmp_path / "topn.yaml"
    spec.write_text(f"""
name: topn
engine: cpu
source: {{type: parquet, path: {tmp_path / 'bids.parquet'}, event_time: ts, watermark: 1s}}
steps:
  - top_k: {{n: 3, by: price, per: auction}}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""")
    pipeline_from_spec(spec).run()
    got = pq.read_table(tmp_path / "out")
    assert _held(got.to_batches()) == _reference(table, 3, ("auction",), "price", True)


@pytest.mark.parametrize("descending", [True, False])
def test_null_values_rank_last_in_arrival_order(descending: bool) -> None:
    """Whatever a null slot holds underneath (here 5, 1, 3), null rows tie: the earlier
    one is kept."""
    values = pa.array(np.array([5, 1, 3], dtype=np.int64), mask=np.ones(3, dtype=bool))
    rb = pa.record_batch({"g": [1, 1, 1], "v": values, "ts": [0, 1, 2]})
    assert np.frombuffer(values.buffers()[1], dtype=np.int64).tolist() == [5, 1, 3]
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(pa.Table.from_batches([rb])), event_time="ts")
    got = gs.materialize(s.top_k(2, by="v", per="g", descending=descending).collect())
    assert got["ts"].to_pylist() == [0, 1]


@pytest.mark.parametrize("batch_rows", [1, 2, 5])
def test_ties_last_keeps_the_later_row(batch_rows: int) -> None:
    """Deduplicating to each key's last row (Nexmark q18): rows of one time tie; with
    ties='last' the later one stays, with the default the earlier."""
    table = pa.table({"k": [1, 1, 2, 1, 2], "ts": [5, 5, 3, 4, 3], "v": [10, 11, 20, 12, 21]})
    for ties, want in (("last", {1: 11, 2: 21}), ("first", {1: 10, 2: 20})):
        p = gs.Pipeline(engine="cpu")
        s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts",
                     watermark=gs.Watermark.bounded(10))
        got = gs.materialize(s.top_k(1, by="ts", per="k", ties=ties).collect()).to_pydict()
        assert dict(zip(got["k"], got["v"], strict=True)) == want, ties
    with pytest.raises(PlanError, match="ties='middle'"):
        s.top_k(1, by="ts", ties="middle")


@pytest.mark.parametrize("batch_rows", [7, 3000])
def test_several_order_columns_rank_as_pandas_sorts(tmp_path: Path, batch_rows: int) -> None:
    """by=[price, bidder], descending=[True, False]: the highest price, then the lowest
    bidder; in the API and in a spec (``by: [price, bidder]``), as pandas sorts."""
    import pyarrow.parquet as pq

    from gpustream.spec import pipeline_from_spec

    table = _bids(seed=21, n=3000)
    df = table.to_pandas().assign(_null=lambda d: d["price"].isna(),
                                  _arrival=np.arange(len(table)))
    df = df.sort_values(["_null", "price", "bidder", "_arrival"],
                        ascending=[True, False, True, True], kind="stable")
    want = _key(df.groupby("auction", sort=False).head(2).drop(columns=["_null", "_arrival"]))
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(table, batch_rows=batch_rows), event_time="ts")
    out = s.top_k(2, by=["price", "bidder"], per="auction", descending=[True, False])
    assert "then bidder asc" in p.explain()
    assert _held(out.collect().to_batches()) == want
    pq.write_table(table, tmp_path / "bids.parquet")
    spec = tmp_path / "topn.yaml"
    spec.write_text(f"""
name: topn2
engine: cpu
source: {{type: parquet, path: {tmp_path / 'bids.parquet'}, event_time: ts, watermark: 1s}}
steps:
  - top_k: {{n: 2, by: [price, bidder], descending: [true, false], per: auction}}
sink: {{type: parquet, path: {tmp_path / 'out'}}}
""")
    pipeline_from_spec(spec).run()
    assert _held(pq.read_table(tmp_path / "out").to_batches()) == want
