"""The Nexmark generator's columns, against nexmark's own generator (nexmark/nexmark,
``nexmark-flink``: ``BidGenerator``, ``AuctionGenerator``, ``PersonGenerator``,
``StringsGenerator``, ``NexmarkConfiguration``): every column of its ``Bid``, ``Auction``
and ``Person``, each string in its format, bid urls mapped from channels as it maps
them, and ``extra`` padding each event to its average size, computed here row by row
from nexmark's rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest

import gpustream as gs
from gpustream.ingest.nexmark import nexmark
from gpustream.ingest.source import Source


def _all(source: Source) -> pa.Table:
    return pa.Table.from_batches([b.data for b in source.open()])


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return table[name].cast(pa.string()).to_numpy(zero_copy_only=False)


def _lengths(table: pa.Table, name: str) -> np.ndarray:
    return pc.utf8_length(table[name].cast(pa.string())).to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def streams() -> tuple[pa.Table, pa.Table, pa.Table]:
    nx = nexmark(events=400_000, seed=5)
    return _all(nx.persons), _all(nx.auctions), _all(nx.bids)


def test_every_column_of_nexmarks_events(streams: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    # nexmark-flink's model classes (Bid.java ...) and its DDL, in their order, snake_case
    persons, auctions, bids = streams
    assert bids.schema.names == ["auction", "bidder", "price", "channel", "url", "date_time",
                                 "extra"]
    assert auctions.schema.names == ["id", "item_name", "description", "initial_bid",
                                     "reserve", "date_time", "expires", "seller", "category",
                                     "extra"]
    assert persons.schema.names == ["id", "name", "email_address", "credit_card", "city",
                                    "state", "date_time", "extra"]
    nx = nexmark(events=10)
    for s, t in zip((nx.persons, nx.auctions, nx.bids), streams, strict=True):
        assert s.schema().names == t.schema.names
        assert all(not pa.types.is_dictionary(f.type) for f in s.schema())  # logical
    # nothing is null, and a reserve is the initial bid plus a second price
    for t in streams:
        assert all(c.null_count == 0 for c in t.columns)
    initial, reserve = auctions["initial_bid"].to_numpy(), auctions["reserve"].to_numpy()
    assert np.all(reserve - initial >= 100) and np.all(reserve - initial <= 100_000_000)


def _java_channel_id(i: int) -> int:
    """Math.abs(Integer.reverse(i)) with Java's 32-bit ints (abs(MIN_VALUE) stays MIN)."""
    r = int(f"{i:032b}"[::-1], 2)
    r = r - 2**32 if r >= 2**31 else r
    return r if r == -(2**31) else abs(r)


def test_bid_urls_follow_their_channels_as_in_nexmark(
        streams: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    bids = streams[2]
    channel, url = _strings(bids, "channel"), _strings(bids, "url")
    pairs = dict(zip(channel.tolist(), url.tolist(), strict=True))
    # one url per channel (nexmark caches them), and different channels' differ
    assert len(set(zip(channel.tolist(), url.tolist(), strict=True))) == len(pairs)
    assert len(set(pairs.values())) == len(pairs)
    base = r"https://www\.nexmark\.com/[a-z_]{3,4}/[a-z_]{3,4}/[a-z_]{3,4}/item\.htm\?query=1"
    with_id = 0
    for ch, u in pairs.items():
        if ch in ("Google", "Facebook", "Baidu", "Apple"):
            assert re.fullmatch(base, u), u  # the hot channels' urls: no channel_id
            continue
        i = int(ch.removeprefix("channel-"))
        m = re.fullmatch(base + r"(&channel_id=(-?\d+))?", u)
        assert m is not None, u
        if m.group(1):
            with_id += 1
            assert int(m.group(2)) == _java_channel_id(i), (ch, u)
    cold = sum(not ch.startswith(("Google", "Facebook", "Baidu", "Apple")) for ch in pairs)
    assert 0.86 <= with_id / cold <= 0.94  # nexmark: nextInt(10) > 0
    # the url parts: letters, and '_' for 1 character in 13
    parts = "".join(u.split("/")[3] + u.split("/")[4] + u.split("/")[5]
                    for u in pairs.values())
    assert 0.05 <= parts.count("_") / len(parts) <= 0.11
    # and the urls depend on the seed alone, like every column
    again = _strings(_all(nexmark(events=2000, seed=5).bids), "url")
    assert set(again.tolist()) <= set(url.tolist())


def _java_round(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _assert_extra(table: pa.Table, current: np.ndarray, avg: int) -> None:
    """``extra`` as nexmark's nextExtra(current, avg) sizes it, and random letters."""
    size = _lengths(table, "extra")
    want = np.maximum(avg - current, 0)
    delta = _java_round(want * 0.2)
    lo, hi = want - delta, want + np.maximum(delta, 1)  # [want - delta, want + delta)
    assert np.all((size >= lo) & (size < hi)), np.flatnonzero((size < lo) | (size >= hi))[:5]
    assert abs((current + size).mean() - avg) < 0.01 * avg  # nexmark's average event size
    text = _strings(table, "extra")
    assert all(t.isalpha() and t.islower() for t in text[:2000])
    # several strings of each size, not one
    one = size == np.bincount(size).argmax()
    assert len(set(text[one].tolist())) > 1


def test_extra_pads_each_event_to_nexmarks_average_size(
        streams: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    persons, auctions, bids = streams
    # currentSize as nexmark's generators count it: 8 bytes a number, strings' lengths
    _assert_extra(bids, np.full(bids.num_rows, 8 + 8 + 8 + 8), 100)
    _assert_extra(auctions, 8 + _lengths(auctions, "item_name")
                  + _lengths(auctions, "description") + 8 + 8 + 8 + 8 + 8, 500)
    _assert_extra(persons, 8 + _lengths(persons, "name") + _lengths(persons, "email_address")
                  + _lengths(persons, "credit_card") + _lengths(persons, "city")
                  + _lengths(persons, "state"), 200)


def test_other_average_sizes() -> None:
    nx = nexmark(events=20_000, seed=2, avg_bid_bytes=250, avg_person_bytes=10)
    bids, persons = _all(nx.bids), _all(nx.persons)
    _assert_extra(bids, np.full(bids.num_rows, 32), 250)
    assert set(_strings(persons, "extra").tolist()) == {""}  # bigger than the average
    with pytest.raises(ValueError, match="avg_bid_bytes must be between 0 and 4096"):
        nexmark(avg_bid_bytes=5000)


def _assert_text(values: np.ndarray, max_len: int) -> None:
    """nexmark's nextString(max_len): 3..max_len-1 letters or spaces (1 in 13), trimmed."""
    assert all(re.fullmatch(r"[a-z ]*", v) and v == v.strip() for v in values)
    lengths = np.array([len(v) for v in values])
    assert lengths.max() <= max_len - 1 and lengths.max() >= max_len - 3
    # untrimmed lengths are uniform over 3..max_len-1; trimming takes ~1/13 per end
    assert abs(lengths.mean() - (max_len + 2) / 2) < 1.5
    text = "".join(values.tolist())
    assert 1 / 13 - 0.02 < text.count(" ") / len(text) < 1 / 13 + 0.005


def test_strings_have_nexmarks_formats(streams: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    persons, auctions, _ = streams
    _assert_text(_strings(auctions, "item_name"), 20)
    _assert_text(_strings(auctions, "description"), 100)
    emails = _strings(persons, "email_address")
    for e in emails:  # nextString(7) + "@" + nextString(5) + ".com"
        m = re.fullmatch(r"([a-z ]*)@([a-z ]*)\.com", e)
        assert m is not None and len(m.group(1)) <= 6 and len(m.group(2)) <= 4, e
        assert m.group(1) == m.group(1).strip() and m.group(2) == m.group(2).strip(), e
    assert all(re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", c)
               for c in _strings(persons, "credit_card"))
    first = {"Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
             "Deiter", "Walter"}
    last = {"Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
            "Noris"}
    names = [n.split(" ") for n in _strings(persons, "name")]
    assert {a for a, _ in names} == first and {b for _, b in names} == last


def test_strings_from_fixed_sets_stay_small_dictionaries(
        streams: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    """channel, url and extra are dictionary columns over fixed sets of strings: the
    stream's dictionaries (one per column for a whole run) do not grow with events."""
    bids = streams[2]
    for name in ("channel", "url", "extra"):
        chunks = bids[name].chunks
        assert all(pa.types.is_dictionary(c.type) for c in chunks)
        assert all(c.dictionary.equals(chunks[0].dictionary) for c in chunks)
    assert len(set(_strings(bids, "extra").tolist())) <= len(bids["extra"].chunks[0].dictionary)
    p = gs.Pipeline(engine="cpu")
    s = p.source(nexmark(events=200_000, seed=1).bids, event_time="date_time")
    out = s.window(gs.Tumbling("10s")).agg(pads=gs.col("extra").count_distinct(),
                                           urls=gs.col("url").count_distinct()).collect()
    assert out["pads"].to_numpy().max() <= len(bids["extra"].chunks[0].dictionary)
    assert out["urls"].to_numpy().max() <= 10_004


def test_streams_write_to_arrow_ipc_files(tmp_path: Path) -> None:
    """An IPC file takes one dictionary per column: every batch carries the same."""
    nx = nexmark(events=30_000, seed=4, batch_events=4_000)
    for s in (nx.persons, nx.auctions, nx.bids):
        batches = [b.data for b in s.open()]
        path = tmp_path / f"{s.kind}.arrow"
        with ipc.new_file(str(path), batches[0].schema) as w:
            for b in batches:
                w.write_batch(b)
        back = ipc.open_file(str(path)).read_all()
        assert back.num_rows == sum(b.num_rows for b in batches)
        assert back.cast(s.schema()).equals(pa.Table.from_batches(batches).cast(s.schema()))
