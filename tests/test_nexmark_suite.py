"""The Nexmark suite (issue 17): every query q0-q22 as one gpustream pipeline gives DuckDB's
answer to the same query over the same generated rows, in order and out of order, cut
into small batches; a few under the CUDA simulator.

The data: 5,000 generator events at 200 events per second of event time (25 s: several
10 s windows, sessions and auctions), so the windows, joins and sessions have state to
keep between batches. Out of order: each stream's rows arrive up to 1.5 s of event time
late (below the sources' 2 s watermark delay, so no row is late and nothing is dropped).
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest

from gpustream.backend import Backend
from gpustream.bench.nexmark import QUERIES, WATERMARK, max_auction_ms
from gpustream.bench.runner import (
    NexmarkData,
    differences,
    generate,
    run_duckdb,
    run_gpustream,
    shuffled,
)
from gpustream.durations import to_millis

EVENTS, RATE, DISORDER_MS = 5_000, 200.0, 1_500


@functools.cache
def _data(order: str) -> NexmarkData:
    data = generate(EVENTS, seed=3, rate=RATE)
    return data if order == "in_order" else shuffled(data, DISORDER_MS, seed=4)


@pytest.mark.parametrize("order", ["in_order", "out_of_order"])
@pytest.mark.parametrize("name", list(QUERIES))
def test_query_matches_duckdb(name: str, order: str) -> None:
    q = QUERIES[name]
    data = _data(order)
    got = run_gpustream(q, data, "cpu", batch_rows=97 if order == "in_order" else 131)
    want = run_duckdb(q, data).table  # ties broken by arrival (q9, q18): the same rows' order
    assert want.num_rows > 0, f"{name}: the test data gives no rows"
    assert differences(got.table, want, q) == []


def test_out_of_order_data_is_out_of_order_within_the_watermark_delay() -> None:
    """The out-of-order case is one: rows arrive out of order by more than a batch, but
    never later than the watermark delay allows."""
    for kind in ("persons", "auctions", "bids"):
        ts = _data("out_of_order").table(kind)["date_time"].cast(pa.int64()).to_numpy()
        lateness = np.maximum.accumulate(ts) - ts
        assert lateness.max() > 500, kind
        assert lateness.max() < to_millis(WATERMARK), kind
        assert np.array_equal(np.sort(ts), _data("in_order").table(kind)["date_time"]
                              .cast(pa.int64()).to_numpy())


@pytest.mark.parametrize("rate", [200.0, 10_000.0])
def test_max_auction_ms_bounds_every_auction(rate: float) -> None:
    """q4, q6 and q9 join an auction with the bids of its life through an interval of
    ``max_auction_ms``: no auction may last longer."""
    data = generate(20_000, seed=5, rate=rate)
    life = (data.auctions["expires"].cast(pa.int64()).to_numpy()
            - data.auctions["date_time"].cast(pa.int64()).to_numpy())
    bound = max_auction_ms(data.config)
    assert life.max() <= bound
    assert life.max() > bound * 0.9  # and the bound is tight: the interval is not wider


def test_differences_catches_a_wrong_answer() -> None:
    """The comparison fails when one row's value differs, or a float is off."""
    q = QUERIES["q1"]
    want = run_duckdb(q, _data("in_order")).table
    i = want.column_names.index("price")
    prices = want["price"].to_numpy().copy()
    prices[7] *= 1 + 1e-6
    off = want.set_column(i, "price", pa.array(prices))
    assert differences(off, want, q) and not differences(want, want, q)
    j = want.column_names.index("bidder")
    bidders = want["bidder"].to_numpy().copy()
    bidders[3] += 1
    assert differences(want.set_column(j, "bidder", pa.array(bidders)), want, q)


@pytest.mark.parametrize("name", ["q1", "q5", "q7", "q11"])
def test_representative_queries_on_the_device(name: str, device_backend: Backend) -> None:
    """Projections, a sliding window and a window over it joined back to it, a join of a
    window with the stream, sessions: on the CUDA kernels (tiny data: cudasim runs about
    1,000 threads a second)."""
    data = generate(300, seed=3, rate=12.5)
    q = QUERIES[name]
    got = run_gpustream(q, data, device_backend.name, batch_rows=64)
    want = run_duckdb(q, data).table
    assert want.num_rows > 0
    assert differences(got.table, want, q) == []
