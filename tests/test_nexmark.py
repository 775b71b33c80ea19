"""The Nexmark generator: proportions, ids, determinism, distributions, use as sources."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.ingest.nexmark import nexmark
from gpustream.ingest.source import Source


def _all(source: Source, offset: object = None) -> pa.Table:
    batches = [b.data for b in source.open(offset)]
    return pa.Table.from_batches(batches) if batches else source.schema().empty_table()


def test_proportions_and_consecutive_ids() -> None:
    nx = nexmark(events=50 * 2000, seed=3)
    persons, auctions, bids = (_all(s) for s in (nx.persons, nx.auctions, nx.bids))
    assert (persons.num_rows, auctions.num_rows, bids.num_rows) == (2000, 6000, 92000)
    assert persons["id"].to_pylist() == list(range(1000, 3000))
    assert auctions["id"].to_pylist() == list(range(1000, 7000))
    ts = bids["date_time"].cast(pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    # 10,000 events per second of event time by default: 100,000 events span 10 s
    assert ts[-1] - ts[0] == pytest.approx(10_000, abs=5)


@pytest.mark.parametrize("batch_events", [1, 777, 65_536, 200_000])
def test_same_seed_same_events_however_batched(batch_events: int) -> None:
    n = 3_000 if batch_events == 1 else 150_000
    whole = nexmark(events=n, seed=7, batch_events=n)
    cut = nexmark(events=n, seed=7, batch_events=batch_events)
    for a, b in zip((whole.persons, whole.auctions, whole.bids),
                    (cut.persons, cut.auctions, cut.bids), strict=True):
        assert _all(b).equals(_all(a))
    assert not _all(nexmark(events=n, seed=8).bids).equals(_all(whole.bids))


def test_offsets_resume() -> None:
    nx = nexmark(events=200_000, seed=1, batch_events=30_000)
    whole = _all(nx.bids)
    offsets = [b.offset for b in nx.bids.open()]
    done = sum(b.data.num_rows for b in list(nx.bids.open())[:3])
    assert _all(nx.bids, offsets[2]).equals(whole.slice(done))


def test_hot_keys_and_prices_follow_the_nexmark_model() -> None:
    nx = nexmark(events=500_000, seed=11)
    bids, auctions = _all(nx.bids), _all(nx.auctions)
    # a bid's auction is never more than 10 ids ahead of the last auction created
    max_auction = auctions["id"].to_numpy().max()
    assert bids["auction"].to_numpy().max() <= max_auction + 10
    # half the bids go to the hot auction: the first of the last block of 100 auctions
    hot = bids["auction"].to_numpy() % 100 == 0
    assert 0.5 <= hot.mean() <= 0.53  # 1/2 by choice, plus cold picks that land on one
    hot_bidder = (bids["bidder"].to_numpy() - 1000) % 100 == 1
    assert 0.75 <= hot_bidder.mean() <= 0.77
    price = bids["price"].to_numpy()
    assert price.min() >= 100 and price.max() <= 100_000_000
    decades = np.log10(price / 100.0)
    counts = np.histogram(decades, bins=6, range=(0, 6))[0] / len(decades)
    assert np.all(np.abs(counts - 1 / 6) < 0.01), counts  # log-uniform over 6 decades
    named = np.isin(bids["channel"].cast(pa.string()).to_numpy(zero_copy_only=False),
                    ["Google", "Facebook", "Baidu", "Apple"])
    assert 0.48 <= named.mean() <= 0.52
    assert set(auctions["category"].to_pylist()) == {10, 11, 12, 13, 14}


def test_nexmark_streams_feed_a_windowed_pipeline() -> None:
    nx = nexmark(events=100_000, seed=2)
    p = gs.Pipeline(engine="cpu")
    bids = p.source(nx.bids, event_time="date_time", watermark=gs.Watermark.bounded("1s"))
    hot = (bids.key_by("auction").window(gs.Tumbling("2s"), name="hot")
           .agg(n=gs.count(), top=gs.col("price").max()).collect())
    assert hot["n"].to_numpy().sum() == 92_000
    assert hot.schema.field("window_start").type == pa.timestamp("ms")


def test_bad_parameters_fail_clearly() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        nexmark(rate=-1)
    with pytest.raises(ValueError, match="hot_auction_ratio must be >= 1"):
        nexmark(hot_auction_ratio=0)
    assert not nexmark(events=None).bids.bounded

