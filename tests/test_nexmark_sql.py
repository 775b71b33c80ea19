"""The Nexmark queries from their SQL text (issue 21): each of q0-q22 that Flink runs,
written as Flink's nexmark repository writes it (only the DDL adapted), through
``p.sql``, gives DuckDB's answer to the same query over the same generated rows, and
the same rows as the query built with the Python API; in order and out of order, cut
into small batches. q12 windows by the wall clock (PROCTIME()): checked for what does
not depend on arrival time. A few run under the CUDA simulator.

The data: as tests/test_nexmark_suite.py's (5,000 generator events at 200 events per
second of event time; out of order by up to 1.5 s, under the sources' 2 s watermark).
"""

from __future__ import annotations

import dataclasses
import functools

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import gpustream as gs
from gpustream.bench.nexmark import QUERIES, Inputs, Query, max_auction_ms
from gpustream.bench.nexmark_sql import QUERIES_SQL, SINK_COLUMNS, build_sql, table_of
from gpustream.bench.runner import NexmarkData, differences, generate, run_duckdb, shuffled

EVENTS, RATE, DISORDER_MS = 5_000, 200.0, 1_500


@functools.cache
def _data(order: str) -> NexmarkData:
    data = generate(EVENTS, seed=3, rate=RATE)
    return data if order == "in_order" else shuffled(data, DISORDER_MS, seed=4)


def _run(data: NexmarkData, batch_rows: int, name: str, sql: bool,
         engine: str = "cpu") -> pa.Table:
    p = gs.Pipeline(f"nexmark-sql-{name}", engine=engine)
    sources = {k: gs.from_arrow(data.table(k), batch_rows=batch_rows)
               for k in ("persons", "auctions", "bids")}
    inputs = Inputs(p, sources, max_auction_ms=max_auction_ms(data.config))
    if sql:
        return table_of(name, build_sql(inputs, name).collect())
    q = QUERIES[name]
    rows = q.build(inputs).collect()
    return gs.materialize(rows, key=list(q.changelog) or None) if q.changelog is not None \
        else rows


def _compared(name: str) -> Query:
    """The query with the columns its SQL's sink has (q5's sink: auction and num)."""
    q = QUERIES[name]
    return dataclasses.replace(q, compare=tuple(c for c in q.compare
                                                if c in SINK_COLUMNS[name]))


@pytest.mark.parametrize("order", ["in_order", "out_of_order"])
@pytest.mark.parametrize("name", [n for n in QUERIES_SQL if n != "q12"])
def test_the_sql_text_gives_duckdb_s_answer_and_the_python_api_s(name: str,
                                                                 order: str) -> None:
    data = _data(order)
    batch = 97 if order == "in_order" else 131
    got = _run(data, batch, name, sql=True)
    assert got.column_names == list(SINK_COLUMNS[name])
    q = _compared(name)
    want = run_duckdb(QUERIES[name], data).table
    assert want.num_rows > 0, f"{name}: the test data gives no rows"
    assert differences(got, want, q) == []
    assert differences(got, _run(data, batch, name, sql=False), q) == []


def test_q12_counts_every_bid_once_in_processing_time_windows() -> None:
    data = _data("out_of_order")
    got = _run(data, 131, "q12", sql=True)
    assert got.column_names == list(SINK_COLUMNS["q12"])
    assert pc.sum(got["bid_count"]).as_py() == data.bids.num_rows
    per_bidder = got.group_by("bidder").aggregate([("bid_count", "sum")])
    want = data.bids.group_by("bidder").aggregate([("bidder", "count")])
    assert dict(zip(per_bidder["bidder"].to_pylist(),
                    per_bidder["bid_count_sum"].to_pylist(), strict=True)) == dict(
        zip(want["bidder"].to_pylist(), want["bidder_count"].to_pylist(), strict=True))
    ends = pc.subtract(got["endtime"].cast(pa.int64()), got["starttime"].cast(pa.int64()))
    assert set(ends.to_pylist()) == {10_000}


@pytest.mark.cudasim
@pytest.mark.parametrize("name", ["q5", "q13", "q16", "q19"])
def test_representative_sql_queries_under_the_simulator(name: str) -> None:
    data = generate(600, seed=5, rate=RATE)
    q = _compared(name)
    got = _run(data, 200, name, sql=True, engine="cudasim")
    assert differences(got, run_duckdb(QUERIES[name], data).table, q) == []
