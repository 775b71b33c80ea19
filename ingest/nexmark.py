"""The Nexmark generator: people, auctions and bids of an online auction.

It follows the Nexmark benchmark's generator (the Beam/Flink one) and its defaults:
event ``n`` is a person, an auction or a bid by ``n % 50`` (proportions 1:3:46); ids
count up per kind from 1000; an auction's seller and a bid's bidder are, with
probability 3/4, a "hot" person (the first or second of the last block of 100 people),
else one of the 1000 most recent people (plus 10 ids ahead); a bid's auction is, with
probability 1/2, the hot auction (the first of the last block of 100), else one of the
100 auctions in flight (plus 10 ahead); prices are log-uniform between $1 and $1M, in
cents; event times advance by ``1 / rate`` seconds per event from ``base_time``;
auctions expire within twice the time it takes to create 100 more auctions; categories
are 10..14. Bids also carry a ``channel`` (Google, Facebook, Baidu, Apple, each
1/8, else ``channel-<0..9999>``) and its ``url``, mapped as nexmark maps them (one url
per channel, ``&channel_id=...`` on 9 in 10 of the others). Strings have nexmark's
formats: item names and descriptions are random text of up to 19 and 99 characters
(letters, 1 in 13 a space, trimmed), emails ``<text>@<text>.com``, cards ``dddd dddd dddd
dddd``. Every kind ends with ``extra``, padding that brings the average event to
nexmark's size (100 bytes a bid, 500 an auction, 200 a person; numbers count 8 bytes):
the padding's size is nexmark's, its text one of a fixed set of random strings of that
size, so that it stays a dictionary column (see :func:`_extra_pool`).

Each kind comes from one njit pass over a range of event numbers
(:mod:`gpustream.kernels.nexmark_gen`) whose random numbers depend only on (seed,
event number, draw), so the output is the same for a seed however it is cut into
batches (tested), each stream can be generated alone, and no row is touched by Python
(``benchmarks/nexmark_gen.py`` measures the rate).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.ingest.source import Source, SourceBatch

__all__ = ["NexmarkConfig", "NexmarkSource", "NexmarkStreams", "nexmark"]

BLOCK = 1 << 16
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
_STATES = np.array(["AZ", "CA", "ID", "OR", "WA", "WY"])
_CITIES = np.array(["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend",
                    "Redmond", "Seattle", "Kent", "Cheyenne"])
_FIRST = np.array(["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
                   "Deiter", "Walter"])
_LAST = np.array(["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
                  "Noris"])

PERSON_SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()),
                           ("email_address", pa.string()), ("credit_card", pa.string()),
                           ("city", pa.string()), ("state", pa.string()),
                           ("date_time", pa.timestamp("ms")), ("extra", pa.string())])
AUCTION_SCHEMA = pa.schema([("id", pa.int64()), ("item_name", pa.string()),
                            ("description", pa.string()), ("initial_bid", pa.int64()),
                            ("reserve", pa.int64()), ("date_time", pa.timestamp("ms")),
                            ("expires", pa.timestamp("ms")), ("seller", pa.int64()),
                            ("category", pa.int64()), ("extra", pa.string())])
BID_SCHEMA = pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                        ("channel", pa.string()), ("url", pa.string()),
                        ("date_time", pa.timestamp("ms")), ("extra", pa.string())])
#: what the sources yield: the columns drawn from a fixed set of strings are dictionaries
_DICT = pa.dictionary(pa.int32(), pa.string())
_PERSON_ARROW = PERSON_SCHEMA.set(7, pa.field("extra", _DICT))
_AUCTION_ARROW = AUCTION_SCHEMA.set(9, pa.field("extra", _DICT))
_BID_ARROW = pa.schema([f if f.name not in ("channel", "url", "extra") else
                        pa.field(f.name, _DICT) for f in BID_SCHEMA])
#: at most this many bytes of padding strings per kind (fewer variants of each size)
_POOL_BYTES = 1 << 20
_MAX_AVG_BYTES = 4096


@dataclass(frozen=True)
class NexmarkConfig:
    """Generator parameters (the Nexmark defaults).

    ``avg_*_bytes``: nexmark's average event sizes (``avgPersonByteSize`` ...), which the
    ``extra`` padding of each event makes up (numbers count 8 bytes, strings their
    length).

    Examples
    --------
    >>> NexmarkConfig().total
    50
    >>> NexmarkConfig(rate=0)
    Traceback (most recent call last):
    ...
    ValueError: nexmark: rate must be > 0 events per second of event time, got 0
    """

    events: int | None = 1_000_000
    seed: int = 0
    rate: float = 10_000.0
    base_time: int = 1_700_000_000_000
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    active_people: int = 1000
    in_flight_auctions: int = 100
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100

    def __post_init__(self) -> None:
        if self.events is not None and self.events < 0:
            raise ValueError(f"nexmark: events must be >= 0 (or None for unbounded), got "
                             f"{self.events}")
        if self.rate <= 0:
            raise ValueError(f"nexmark: rate must be > 0 events per second of event time, "
                             f"got {self.rate}")
        for name in ("person_proportion", "auction_proportion", "bid_proportion",
                     "active_people", "in_flight_auctions", "hot_auction_ratio",
                     "hot_sellers_ratio", "hot_bidders_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"nexmark: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("avg_person_bytes", "avg_auction_bytes", "avg_bid_bytes"):
            if not 0 <= getattr(self, name) <= _MAX_AVG_BYTES:
                raise ValueError(f"nexmark: {name} must be between 0 and {_MAX_AVG_BYTES}, "
                                 f"got {getattr(self, name)}")

    @property
    def total(self) -> int:
        """Events per cycle of the three kinds."""
        return self.person_proportion + self.auction_proportion + self.bid_proportion


def _strings(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    """A string array from Arrow's int32 offsets and bytes (no copies per row)."""
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets),
                                       pa.py_buffer(data))


def _fixed(chars: np.ndarray) -> pa.Array:
    """A string array from a ``uint8[n, width]`` matrix of ASCII codes (no copies per row)."""
    n, width = chars.shape
    return _strings(np.arange(0, (n + 1) * width, width, dtype=np.int32),
                    np.ascontiguousarray(chars))


def _coded(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices), dictionary)


def _seed(c: NexmarkConfig, salt: int = 0) -> np.uint64:
    """The kernels' seed: the run's, or with ``salt`` one of its fixed tables'."""
    from gpustream.kernels.nexmark_gen import M1

    # Python ints: no overflow warning
    return np.uint64((c.seed * int(M1) + salt * 0xA24BAED4963EE407) & 0xFFFFFFFFFFFFFFFF)


def _lengths(names: np.ndarray) -> np.ndarray:
    return np.char.str_len(names).astype(np.int64)


#: the bytes of each kind that are not ``extra``, least and most (nexmark's currentSize):
#: a person's name, email (nextString(7) @ nextString(5) .com, trimmed), card, city, state
_CURRENT = {
    "bids": (32, 32),
    "persons": (8 + int(_lengths(_FIRST).min() + 1 + _lengths(_LAST).min()) + 5 + 19
                + int(_lengths(_CITIES).min()) + 2,
                8 + int(_lengths(_FIRST).max() + 1 + _lengths(_LAST).max()) + 15 + 19
                + int(_lengths(_CITIES).max()) + 2),
    "auctions": (48, 48 + 19 + 99),  # item_name: nextString(20), description: (100)
}


@functools.lru_cache(maxsize=16)
def _extra_pool(c: NexmarkConfig, kind: str) -> tuple[pa.Array, int, int, int]:
    """The padding strings ``extra`` draws from, made once per (seed, kind, average):
    every size nexmark's ``nextExtra`` can give the kind, in as many variants of each size
    as fit ``_POOL_BYTES`` (1..64); and the sizes' range and the variants.

    The padding is a dictionary column over these, not a new string per row: a stream
    dictionary-encodes its strings at ingest (one dictionary per column for the whole
    run), and a string per row would grow it by a row per event.
    """
    from gpustream.kernels.nexmark_gen import extra_pool

    avg = {"persons": c.avg_person_bytes, "auctions": c.avg_auction_bytes,
           "bids": c.avg_bid_bytes}[kind]
    cmin, cmax = _CURRENT[kind]
    want = np.maximum(avg - np.arange(cmin, cmax + 1), 0)
    delta = np.floor(want * 0.2 + 0.5).astype(np.int64)  # as Java's Math.round
    lo = int((want - delta).min())
    hi = int((want - delta + np.maximum(2 * delta - 1, 0)).max())
    variants = max(1, min(64, _POOL_BYTES // max(1, (lo + hi) * (hi - lo + 1) // 2)))
    offsets, data = extra_pool(_seed(c, 1 + _KINDS.index(kind)), lo, hi, variants)
    return _strings(offsets, data), lo, hi, variants


_KINDS = ("persons", "auctions", "bids")


def _bid_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The bids among generator events ``first..last`` (one njit pass)."""
    cap = last - first
    cols = [np.empty(cap, np.int64) for _ in range(3)]
    channel, extra = np.empty(cap, np.int32), np.empty(cap, np.int32)
    ts = np.empty(cap, np.int64)
    from gpustream.kernels.nexmark_gen import bids  # numba loads only when events are made

    pool, lo, hi, variants = _extra_pool(c, "bids")
    n = bids(first, last, _seed(c), c.total, c.person_proportion, c.auction_proportion,
             c.in_flight_auctions, c.active_people, c.hot_auction_ratio, c.hot_bidders_ratio,
             1e6 / c.rate, c.base_time, c.avg_bid_bytes, lo, hi, variants,
             cols[0], cols[1], cols[2], channel, ts, extra)
    codes = pa.array(channel[:n])  # a bid's url is its channel's: one index, two columns
    return pa.record_batch([
        pa.array(cols[0][:n]), pa.array(cols[1][:n]), pa.array(cols[2][:n]),
        pa.DictionaryArray.from_arrays(codes, _channel_names()),
        pa.DictionaryArray.from_arrays(codes, _channel_urls(c.seed)),
        pa.array(ts[:n], pa.timestamp("ms")), _coded(extra[:n], pool)], schema=_BID_ARROW)


def _person_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The people among generator events ``first..last`` (one njit pass)."""
    from gpustream.kernels.nexmark_gen import pack, persons

    cap = (last - first) // c.total * c.person_proportion + c.person_proportion
    ints = [np.empty(cap, np.int64) for _ in range(7)]
    email, card = np.empty((cap, 17), np.uint8), np.empty((cap, 19), np.uint8)
    extra = np.empty(cap, np.int32)
    pool, lo, hi, variants = _extra_pool(c, "persons")
    n = persons(first, last, _seed(c), c.total, c.person_proportion, len(_FIRST), len(_LAST),
                len(_CITIES), len(_STATES), 1e6 / c.rate, c.base_time, _lengths(_FIRST),
                _lengths(_LAST), _lengths(_CITIES), c.avg_person_bytes, lo, hi, variants,
                ints[0], ints[1], ints[2], ints[3], ints[4], email, ints[6], card, ints[5],
                extra)
    names = pc.binary_join_element_wise(pa.array(_FIRST).take(pa.array(ints[1][:n])),
                                        pa.array(_LAST).take(pa.array(ints[2][:n])), " ")
    return pa.record_batch([
        pa.array(ints[0][:n]), names, _strings(*pack(email, np.zeros(n, np.int64), ints[6], n)),
        _fixed(card[:n]), pa.array(_CITIES).take(pa.array(ints[3][:n])),
        pa.array(_STATES).take(pa.array(ints[4][:n])),
        pa.array(ints[5][:n], pa.timestamp("ms")), _coded(extra[:n], pool)],
        schema=_PERSON_ARROW)


def _auction_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The auctions among generator events ``first..last`` (one njit pass)."""
    from gpustream.kernels.nexmark_gen import auctions, pack

    cap = (last - first) // c.total * c.auction_proportion + c.auction_proportion
    ints = [np.empty(cap, np.int64) for _ in range(11)]
    name, desc = np.empty((cap, 21), np.uint8), np.empty((cap, 99), np.uint8)
    extra = np.empty(cap, np.int32)
    ahead = (c.in_flight_auctions * c.total) // c.auction_proportion
    pool, lo, hi, variants = _extra_pool(c, "auctions")
    n = auctions(first, last, _seed(c), c.total, c.person_proportion, c.auction_proportion,
                 c.active_people, c.hot_sellers_ratio, ahead, 1e6 / c.rate, c.base_time,
                 c.avg_auction_bytes, lo, hi, variants, ints[0], name, ints[7], ints[8],
                 desc, ints[9], ints[10], ints[1], ints[2], ints[3], ints[4], ints[5],
                 ints[6], extra)
    return pa.record_batch([
        pa.array(ints[0][:n]), _strings(*pack(name, ints[7], ints[8], n)),
        _strings(*pack(desc, ints[9], ints[10], n)), pa.array(ints[1][:n]),
        pa.array(ints[2][:n]), pa.array(ints[3][:n], pa.timestamp("ms")),
        pa.array(ints[4][:n], pa.timestamp("ms")), pa.array(ints[5][:n]),
        pa.array(ints[6][:n]), _coded(extra[:n], pool)], schema=_AUCTION_ARROW)


_CHANNEL_NAMES: pa.Array | None = None


def _channel_names() -> pa.Array:
    global _CHANNEL_NAMES
    if _CHANNEL_NAMES is None:
        from gpustream.kernels.nexmark_gen import NUM_CHANNELS  # the kernel's channel ids

        _CHANNEL_NAMES = pa.array([*CHANNELS, *(f"channel-{i}" for i in range(NUM_CHANNELS))])
    return _CHANNEL_NAMES


@functools.lru_cache(maxsize=16)
def _channel_urls(seed: int) -> pa.Array:
    """Each channel's url, as nexmark maps them (one per seed): the hot channels' are
    ``https://www.nexmark.com/<a>/<b>/<c>/item.htm?query=1`` (parts: 3 or 4 letters or
    ``_``); channel ``i``'s too, with ``&channel_id=<Math.abs(Integer.reverse(i))>`` after
    it for 9 channels in 10."""
    from gpustream.kernels.nexmark_gen import NUM_CHANNELS, url_dictionary

    def ascii_codes(text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), np.uint8)

    offsets, data = url_dictionary(_seed(NexmarkConfig(seed=seed), 4), len(CHANNELS),
                                   NUM_CHANNELS, ascii_codes("https://www.nexmark.com/"),
                                   ascii_codes("item.htm?query=1"),
                                   ascii_codes("&channel_id="))
    return _strings(offsets, data)


class NexmarkSource(Source):
    """One kind of Nexmark events (``persons``, ``auctions`` or ``bids``) as a source.

    The offset is the number of generator events (of all kinds) consumed.
    """

    def __init__(self, config: NexmarkConfig, kind: str, batch_events: int = BLOCK,
                 pace: bool = False) -> None:
        if kind not in ("persons", "auctions", "bids"):
            raise ValueError(f"nexmark: unknown stream {kind!r}; use persons, auctions or bids")
        if batch_events < 1:
            raise ValueError(f"nexmark: batch_events must be >= 1, got {batch_events}")
        self.config = config
        self.kind = kind
        self.batch_events = batch_events
        self.pace = pace
        self.bounded = config.events is not None
        total = "unbounded" if config.events is None else f"{config.events} events"
        self.name = f"nexmark.{kind}({total}, seed={config.seed})"

    def schema(self) -> pa.Schema:
        """The stream's Arrow schema (channel is a dictionary-encoded string)."""
        return {"persons": PERSON_SCHEMA, "auctions": AUCTION_SCHEMA,
                "bids": BID_SCHEMA}[self.kind]

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        """Yield this kind's rows of each run of ``batch_events`` generator events."""
        c = self.config
        pos = int(offset or 0)
        end = c.events
        started = time.monotonic()
        first = pos
        while end is None or pos < end:
            stop = pos + self.batch_events if end is None else min(pos + self.batch_events, end)
            make = {"persons": _person_rows, "auctions": _auction_rows,
                    "bids": _bid_rows}[self.kind]
            data = make(c, pos, stop)
            if data.num_rows:
                yield SourceBatch(data, stop)
            pos = stop
            if self.pace:
                ahead = (pos - first) / c.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


@dataclass(frozen=True)
class NexmarkStreams:
    """The three consistent Nexmark sources of one generator run."""

    persons: NexmarkSource
    auctions: NexmarkSource
    bids: NexmarkSource


def nexmark(events: int | None = 1_000_000, seed: int = 0, rate: float = 10_000.0,
            batch_events: int = BLOCK, pace: bool = False, **params: Any) -> NexmarkStreams:
    """Nexmark people, auctions and bids as three sources of one deterministic run.

    Parameters
    ----------
    events
        Generator events in all (people + auctions + bids); None for an unbounded stream.
    seed
        Same seed, same events, however the stream is cut into batches.
    rate
        Events per second of event time (event times advance by ``1/rate`` s per event).
    batch_events
        Generator events per batch (each source yields its own kind's rows of them).
    pace
        Also hold the sources to ``rate`` events per second of wall time.
    params
        Other :class:`NexmarkConfig` fields (``active_people``, ``hot_auction_ratio`` ...).

    Examples
    --------
    >>> nx = nexmark(events=5000, seed=1)
    >>> [sum(b.data.num_rows for b in s.open()) for s in (nx.persons, nx.auctions, nx.bids)]
    [100, 300, 4600]
    """
    config = NexmarkConfig(events=events, seed=seed, rate=rate, **params)
    return NexmarkStreams(*(NexmarkSource(config, k, batch_events, pace)
                            for k in ("persons", "auctions", "bids")))
