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
1/8, else ``channel-<0..9999>``).

Each kind comes from one njit pass over a range of event numbers
(:mod:`gpustream.kernels.nexmark_gen`) whose random numbers depend only on (seed,
event number, draw), so the output is the same for a seed however it is cut into
batches (tested), each stream can be generated alone, and no row is touched by Python
(``benchmarks/nexmark_gen.py`` measures the rate).
"""

from __future__ import annotations

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
                           ("date_time", pa.timestamp("ms"))])
AUCTION_SCHEMA = pa.schema([("id", pa.int64()), ("item_name", pa.string()),
                            ("description", pa.string()), ("initial_bid", pa.int64()),
                            ("reserve", pa.int64()), ("date_time", pa.timestamp("ms")),
                            ("expires", pa.timestamp("ms")), ("seller", pa.int64()),
                            ("category", pa.int64())])
BID_SCHEMA = pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                        ("channel", pa.string()), ("date_time", pa.timestamp("ms"))])


@dataclass(frozen=True)
class NexmarkConfig:
    """Generator parameters (the Nexmark defaults).

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

    @property
    def total(self) -> int:
        """Events per cycle of the three kinds."""
        return self.person_proportion + self.auction_proportion + self.bid_proportion


def _fixed(chars: np.ndarray) -> pa.Array:
    """A string array from a ``uint8[n, width]`` matrix of ASCII codes (no copies per row)."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets),
                                       pa.py_buffer(np.ascontiguousarray(chars)))


_KINDS = ("persons", "auctions", "bids")
def _bid_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The bids among generator events ``first..last`` (one njit pass)."""
    cap = last - first
    cols = [np.empty(cap, np.int64) for _ in range(3)]
    channel = np.empty(cap, np.int32)
    ts = np.empty(cap, np.int64)
    from gpustream.kernels.nexmark_gen import bids  # numba loads only when events are made

    seed = _seed(c)
    n = bids(first, last, seed, c.total, c.person_proportion, c.auction_proportion,
              c.in_flight_auctions, c.active_people, c.hot_auction_ratio, c.hot_bidders_ratio,
              1e6 / c.rate, c.base_time, cols[0], cols[1], cols[2], channel, ts)
    return pa.record_batch([
        pa.array(cols[0][:n]), pa.array(cols[1][:n]), pa.array(cols[2][:n]),
        pa.DictionaryArray.from_arrays(pa.array(channel[:n]), _channel_names()),
        pa.array(ts[:n], pa.timestamp("ms"))], schema=_BID_ARROW)


def _seed(c: NexmarkConfig) -> np.uint64:
    from gpustream.kernels.nexmark_gen import M1

    return np.uint64((c.seed * int(M1)) & 0xFFFFFFFFFFFFFFFF)  # Python ints: no overflow warning


def _person_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The people among generator events ``first..last`` (one njit pass)."""
    from gpustream.kernels.nexmark_gen import persons

    cap = (last - first) // c.total * c.person_proportion + c.person_proportion
    ints = [np.empty(cap, np.int64) for _ in range(6)]
    email, card = np.empty((cap, 17), np.uint8), np.empty((cap, 19), np.uint8)
    n = persons(first, last, _seed(c), c.total, c.person_proportion, len(_FIRST), len(_LAST),
                len(_CITIES), len(_STATES), 1e6 / c.rate, c.base_time, ints[0], ints[1],
                ints[2], ints[3], ints[4], email, card, ints[5])
    names = pc.binary_join_element_wise(pa.array(_FIRST).take(pa.array(ints[1][:n])),
                                        pa.array(_LAST).take(pa.array(ints[2][:n])), " ")
    return pa.record_batch([
        pa.array(ints[0][:n]), names, _fixed(email[:n]), _fixed(card[:n]),
        pa.array(_CITIES).take(pa.array(ints[3][:n])),
        pa.array(_STATES).take(pa.array(ints[4][:n])),
        pa.array(ints[5][:n], pa.timestamp("ms"))], schema=PERSON_SCHEMA)


def _auction_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The auctions among generator events ``first..last`` (one njit pass)."""
    from gpustream.kernels.nexmark_gen import auctions

    cap = (last - first) // c.total * c.auction_proportion + c.auction_proportion
    ints = [np.empty(cap, np.int64) for _ in range(7)]
    name, desc = np.empty((cap, 20), np.uint8), np.empty((cap, 18), np.uint8)
    ahead = (c.in_flight_auctions * c.total) // c.auction_proportion
    n = auctions(first, last, _seed(c), c.total, c.person_proportion, c.auction_proportion,
                 c.active_people, c.hot_sellers_ratio, ahead, 1e6 / c.rate, c.base_time,
                 ints[0], name, desc, ints[1], ints[2], ints[3], ints[4], ints[5], ints[6])
    return pa.record_batch([
        pa.array(ints[0][:n]), _fixed(name[:n]), _fixed(desc[:n]), pa.array(ints[1][:n]),
        pa.array(ints[2][:n]), pa.array(ints[3][:n], pa.timestamp("ms")),
        pa.array(ints[4][:n], pa.timestamp("ms")), pa.array(ints[5][:n]),
        pa.array(ints[6][:n])], schema=AUCTION_SCHEMA)


_BID_ARROW = BID_SCHEMA.set(3, pa.field("channel", pa.dictionary(pa.int32(), pa.string())))
_CHANNEL_NAMES: pa.Array | None = None


def _channel_names() -> pa.Array:
    global _CHANNEL_NAMES
    if _CHANNEL_NAMES is None:
        from gpustream.kernels.nexmark_gen import NUM_CHANNELS  # the kernel's channel ids

        _CHANNEL_NAMES = pa.array([*CHANNELS, *(f"channel-{i}" for i in range(NUM_CHANNELS))])
    return _CHANNEL_NAMES


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
