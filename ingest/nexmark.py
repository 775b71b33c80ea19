"""The Nexmark generator, vectorized: people, auctions and bids of an online auction.

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

Bids (46 of every 50 events) come from one njit pass whose random numbers depend only
on (seed, event number, draw) (splitmix64). People and auctions are computed with numpy
over blocks of ``BLOCK`` events, block ``b`` drawing from a generator seeded by
``(seed, b, kind)``. So the output is the same for a seed however it is cut into
batches (tested), and each stream can be generated alone
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
FIRST_ID = 1000
FIRST_CATEGORY = 10
NUM_CATEGORIES = 5
ID_LEAD = 10
HOT_BLOCK = 100
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
NUM_CHANNELS = 10_000
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


def _last_person(c: NexmarkConfig, ev: np.ndarray) -> np.ndarray:
    epoch, offset = np.divmod(ev, c.total)
    return epoch * c.person_proportion + np.minimum(offset, c.person_proportion - 1)


def _last_auction(c: NexmarkConfig, ev: np.ndarray) -> np.ndarray:
    epoch, offset = np.divmod(ev, c.total)
    before = offset < c.person_proportion
    epoch = np.where(before, epoch - 1, epoch)
    off = np.where(before | (offset >= c.person_proportion + c.auction_proportion),
                   c.auction_proportion - 1, offset - c.person_proportion)
    return epoch * c.auction_proportion + off


def _uniform_int(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Integers in [0, n) from uniforms in [0, 1)."""
    return np.minimum((u * n).astype(np.int64), n - 1)


def _next_person(c: NexmarkConfig, ev: np.ndarray, u: np.ndarray) -> np.ndarray:
    people = _last_person(c, ev) + 1
    active = np.minimum(people, c.active_people)
    return people - active + _uniform_int(u, active + ID_LEAD)


def _price(u: np.ndarray) -> np.ndarray:
    return np.rint(np.power(10.0, u * 6.0) * 100.0).astype(np.int64)


def _timestamps(c: NexmarkConfig, ev: np.ndarray) -> np.ndarray:
    return c.base_time + (ev * (1e6 / c.rate)).astype(np.int64) // 1000


def _fixed(chars: np.ndarray) -> pa.Array:
    """A string array from a ``uint8[n, width]`` matrix of ASCII codes (no copies per row)."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets),
                                       pa.py_buffer(np.ascontiguousarray(chars)))


def _letters(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.integers(ord("a"), ord("z") + 1, (n, width), dtype=np.uint8)


def _spliced(parts: list[np.ndarray | bytes], n: int) -> np.ndarray:
    """Concatenate ``uint8[n, w]`` blocks and constant byte strings, column-wise."""
    cols = [p if isinstance(p, np.ndarray) else
            np.broadcast_to(np.frombuffer(p, np.uint8), (n, len(p))) for p in parts]
    return np.concatenate(cols, axis=1)


def _choose(rng: np.random.Generator, words: np.ndarray, n: int) -> pa.Array:
    return pa.array(words).take(pa.array(rng.integers(0, len(words), n)))


_KINDS = ("persons", "auctions", "bids")
def _bid_rows(c: NexmarkConfig, first: int, last: int) -> pa.RecordBatch:
    """The bids among generator events ``first..last`` (one njit pass)."""
    cap = last - first
    cols = [np.empty(cap, np.int64) for _ in range(3)]
    channel = np.empty(cap, np.int32)
    ts = np.empty(cap, np.int64)
    from gpustream.kernels.nexmark_gen import M1, bids  # numba loads only when bids are made

    seed = np.uint64((c.seed * int(M1)) & 0xFFFFFFFFFFFFFFFF)  # Python ints: no overflow warning
    n = bids(first, last, seed, c.total, c.person_proportion, c.auction_proportion,
              c.in_flight_auctions, c.active_people, c.hot_auction_ratio, c.hot_bidders_ratio,
              1e6 / c.rate, c.base_time, cols[0], cols[1], cols[2], channel, ts)
    return pa.record_batch([
        pa.array(cols[0][:n]), pa.array(cols[1][:n]), pa.array(cols[2][:n]),
        pa.DictionaryArray.from_arrays(pa.array(channel[:n]), _channel_names()),
        pa.array(ts[:n], pa.timestamp("ms"))], schema=_BID_ARROW)


def _block(c: NexmarkConfig, b: int, want: str) -> pa.RecordBatch | None:
    """The ``want`` events (persons, auctions or bids) of block ``b``.

    Each event's six uniforms come from the block's generator ``(seed, b)``; the extra
    draws for names and strings from ``(seed, b, kind)``, so each kind can be generated
    alone and still match a run that generates all three.
    """
    ev = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
    rng = np.random.default_rng([c.seed, b, _KINDS.index(want)])
    kind = ev % c.total
    out: dict[str, Any] = {}

    p = kind < c.person_proportion
    if want == "persons" and p.any():
        pe = ev[p]
        n = int(p.sum())
        names = pc.binary_join_element_wise(_choose(rng, _FIRST, n), _choose(rng, _LAST, n), " ")
        email = _fixed(_spliced([_letters(rng, n, 7), b"@", _letters(rng, n, 5), b".com"], n))
        digits = rng.integers(ord("0"), ord("9") + 1, (n, 16), dtype=np.uint8)
        card = _fixed(_spliced([digits[:, 0:4], b" ", digits[:, 4:8], b" ", digits[:, 8:12],
                                b" ", digits[:, 12:16]], n))
        out["persons"] = pa.record_batch([
            pa.array(_last_person(c, pe) + FIRST_ID), names, email, card,
            _choose(rng, _CITIES, n), _choose(rng, _STATES, n),
            pa.array(_timestamps(c, pe), pa.timestamp("ms"))], schema=PERSON_SCHEMA)

    a = (kind >= c.person_proportion) & (kind < c.person_proportion + c.auction_proportion)
    if want == "auctions" and a.any():
        ae = ev[a]
        n = int(a.sum())
        au = rng.random((n, 6))
        ts_a = _timestamps(c, ae)
        hot = _uniform_int(au[:, 0], np.int64(c.hot_sellers_ratio)) > 0
        seller = np.where(hot, (_last_person(c, ae) // HOT_BLOCK) * HOT_BLOCK,
                          _next_person(c, ae, au[:, 1])) + FIRST_ID
        initial = _price(au[:, 2])
        reserve = initial + _price(au[:, 3])
        events_ahead = (c.in_flight_auctions * c.total) // c.auction_proportion
        horizon = _timestamps(c, ae + events_ahead) - ts_a
        expires = ts_a + 1 + _uniform_int(au[:, 4], np.maximum(horizon * 2, 1))
        out["auctions"] = pa.record_batch([
            pa.array(_last_auction(c, ae) + FIRST_ID), _fixed(_letters(rng, n, 20)),
            _fixed(_spliced([_letters(rng, n, 10), b" auction"], n)), pa.array(initial),
            pa.array(reserve), pa.array(ts_a, pa.timestamp("ms")),
            pa.array(expires, pa.timestamp("ms")), pa.array(seller),
            pa.array(FIRST_CATEGORY + _uniform_int(au[:, 5], np.int64(NUM_CATEGORIES)))],
            schema=AUCTION_SCHEMA)

    return out.get(want)


_BID_ARROW = BID_SCHEMA.set(3, pa.field("channel", pa.dictionary(pa.int32(), pa.string())))
_CHANNEL_NAMES: pa.Array | None = None


def _channel_names() -> pa.Array:
    global _CHANNEL_NAMES
    if _CHANNEL_NAMES is None:
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
        cached: tuple[int, pa.RecordBatch | None] | None = None
        while end is None or pos < end:
            stop = pos + self.batch_events if end is None else min(pos + self.batch_events, end)
            parts = []
            p = pos
            if self.kind == "bids":
                parts.append(_bid_rows(c, pos, stop))
                p = stop
            while p < stop:
                b = p // BLOCK
                if cached is None or cached[0] != b:
                    cached = (b, _block(c, b, self.kind))
                lo, hi = p - b * BLOCK, min(stop, (b + 1) * BLOCK) - b * BLOCK
                rb = cached[1]
                if rb is not None:
                    parts.append(_rows_between(rb, c, b, lo, hi, self.kind))
                p = b * BLOCK + hi
            data = pa.Table.from_batches([x for x in parts if x.num_rows],
                                         schema=parts[0].schema if parts else None)
            if data.num_rows:
                yield SourceBatch(data.combine_chunks().to_batches()[0], stop)
            pos = stop
            if self.pace:
                ahead = (pos - first) / c.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


def _rows_between(rb: pa.RecordBatch, c: NexmarkConfig, b: int, lo: int, hi: int,
                  kind: str) -> pa.RecordBatch:
    """The rows of ``rb`` (one kind of block ``b``) made by block events ``lo..hi``."""
    ev = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64) % c.total
    if kind == "persons":
        mine = ev < c.person_proportion
    elif kind == "auctions":
        mine = (ev >= c.person_proportion) & (ev < c.person_proportion + c.auction_proportion)
    else:
        mine = ev >= c.person_proportion + c.auction_proportion
    before = np.cumsum(mine)
    start = int(before[lo - 1]) if lo else 0
    return rb.slice(start, int(before[hi - 1]) - start if hi else 0)


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
