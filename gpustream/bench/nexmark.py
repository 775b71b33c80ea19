"""The Nexmark queries q0-q22, each as one gpustream pipeline beside its DuckDB SQL.

Each :class:`Query` builds one streaming pipeline over the generator's three streams
(``persons``, ``auctions``, ``bids``; event time ``date_time``, a bounded watermark) and
holds the SQL of the same query for DuckDB over the same rows as batch tables, with how
to compare the two results (the columns, the float tolerance). The queries follow the
text of Flink's Nexmark suite (nexmark/nexmark, ``nexmark-flink/.../queries/qN.sql``);
regular joins (q3, q4, q6, q9, q20), unwindowed GROUP BY (q4), ROW_NUMBER over the
whole stream (q6, q9, q18, q19) and an OVER window over its changelog (q6) run as
gpustream's changelog operators (``Stream.join``, ``key_by(...).agg(...)``, ``top_k``,
``over(..., order_by=)``): their result is the table the changelog describes
(:attr:`Query.changelog`, :func:`gpustream.materialize`). Where the text still needs
what gpustream does not do, a stand-in gives the same final result on bounded input,
named in :attr:`Query.stand_in`:

- q12: processing-time windows (``gs.ProcessingTime.tumbling``) give results that depend
  on arrival time, which no reference can check: an event-time window of the same size;
- q15-q17: GROUP BY a day: a 1-day tumbling window (a row per day when the day ends).

The DuckDB tables are ``persons``, ``auctions``, ``bids`` (the generator's columns; bids
also ``seq``, their arrival order, which breaks ties as gpustream does) and
``side_input`` (q13). Times come back from DuckDB as epoch milliseconds; the comparison
reads gpustream's timestamps the same way.

Examples
--------
>>> sorted(QUERIES)[:3]
['q0', 'q1', 'q10']
>>> QUERIES["q5"].title
'Hot items'
>>> [q.name for q in QUERIES.values() if q.stand_in]
['q12', 'q15', 'q16', 'q17']
>>> [q.name for q in QUERIES.values() if q.changelog is not None]
['q4', 'q6', 'q9', 'q18', 'q19']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import gpustream as gs
from gpustream.ingest.nexmark import NexmarkConfig
from gpustream.ingest.source import Source

__all__ = ["QUERIES", "WATERMARK", "Inputs", "Query", "max_auction_ms",
           "query_names", "side_input"]

#: the sources' watermark delay (rows may arrive this much later than the latest seen)
WATERMARK = "2s"
_CHANNEL_ID = r"(&|^)channel_id=([^&]*)"


def max_auction_ms(config: NexmarkConfig) -> int:
    """The longest an auction of ``config``'s generator lasts, in ms of event time: it
    expires within twice the time the generator takes to make ``in_flight_auctions``
    more auctions. Bounds the auction-bid joins of q4, q6 and q9.

    Examples
    --------
    >>> max_auction_ms(NexmarkConfig())      # 0.33 s at 10,000 events/s
    335
    >>> max_auction_ms(NexmarkConfig(rate=100))
    33322
    """
    ahead = config.in_flight_auctions * config.total // config.auction_proportion
    return int(2 * ahead * 1000 / config.rate) + 2


@dataclass
class Inputs:
    """The three Nexmark streams of one pipeline, each added on first use.

    Examples
    --------
    >>> p = gs.Pipeline(engine="cpu")
    >>> nx = gs.nexmark(events=100, seed=1)
    >>> inp = Inputs(p, {"bids": nx.bids, "auctions": nx.auctions, "persons": nx.persons})
    >>> inp.bids.schema.names[:3]
    ['auction', 'bidder', 'price']
    """

    pipeline: gs.Pipeline
    sources: Mapping[str, Source]
    watermark: str = WATERMARK
    #: :func:`max_auction_ms` of the generator that made the rows
    max_auction_ms: int = 335
    _streams: dict[str, gs.Stream] = field(default_factory=dict)

    def _stream(self, kind: str) -> gs.Stream:
        if kind not in self._streams:
            self._streams[kind] = self.pipeline.source(
                self.sources[kind], event_time="date_time",
                watermark=gs.Watermark.bounded(self.watermark), name=kind)
        return self._streams[kind]

    @property
    def persons(self) -> gs.Stream:
        """The persons stream."""
        return self._stream("persons")

    @property
    def auctions(self) -> gs.Stream:
        """The auctions stream."""
        return self._stream("auctions")

    @property
    def bids(self) -> gs.Stream:
        """The bids stream."""
        return self._stream("bids")


@dataclass(frozen=True)
class Query:
    """One Nexmark query: its pipeline, its DuckDB SQL, and how to compare them.

    ``compare``: the columns compared, sorted on in this order (a query whose rows tie
    on what the text orders by compares the columns that do not depend on how ties
    break); ``rtol``: relative tolerance of float columns; ``stand_in``: what this query
    uses in place of an operator gpustream does not have yet (empty when none);
    ``ties``: why the answer may differ between engines on some data (empty: it never
    does).

    Examples
    --------
    >>> QUERIES["q2"].compare
    ('auction', 'price')
    """

    name: str
    title: str
    build: Callable[[Inputs], gs.Stream]
    sql: str
    compare: tuple[str, ...]
    streams: tuple[str, ...] = ("bids",)
    rtol: float = 1e-9
    stand_in: str = ""
    ties: str = ""
    #: the pipeline's rows are a changelog (an ``op`` column): the result is the table it
    #: describes, :func:`gpustream.materialize` by these key columns (``()``: a multiset)
    changelog: tuple[str, ...] | None = None


def side_input(keys: int = 10_000) -> pa.Table:
    """q13's side input: ``key`` 0..keys-1 and a string ``value`` per key.

    Examples
    --------
    >>> side_input(3).to_pydict()
    {'key': [0, 1, 2], 'value': ['side-0', 'side-1', 'side-2']}
    """
    key = pa.array(np.arange(keys, dtype=np.int64))
    return pa.table({"key": key, "value": pc.binary_join_element_wise(
        "side-", pc.cast(key, pa.string()), "")})


def _col(name: str) -> gs.Expr:
    return gs.col(name)


# -- the queries -----------------------------------------------------------------------------
def _q0(i: Inputs) -> gs.Stream:
    return i.bids.select("auction", "bidder", "price", "date_time", "extra")


def _q1(i: Inputs) -> gs.Stream:
    return i.bids.select("auction", "bidder", price=_col("price") * 0.908,
                         date_time=_col("date_time"), extra=_col("extra"))


def _q2(i: Inputs) -> gs.Stream:
    return i.bids.filter(_col("auction") % 123 == 0).select("auction", "price")


def _q3(i: Inputs) -> gs.Stream:
    auctions = i.auctions.filter(_col("category") == 10)
    persons = i.persons.filter(_col("state").is_in(["OR", "ID", "CA"]))
    joined = auctions.join(persons, on=("seller", "id"), name="sellers")  # every pair
    return joined.select("name", "city", "state", "id")


def _auction_bids(i: Inputs) -> gs.Stream:
    """Each auction with its bids between its ``date_time`` and ``expires`` (the bid's
    columns named ``date_time_right`` and ``extra_right``): a regular join whose state
    is kept for the longest an auction lasts (the pairs of bids within an auction's life
    all join: the sources' rows are at most 1.5 s out of order, under the 2 s delay)."""
    joined = i.auctions.join(i.bids, on=("id", "auction"), retention=i.max_auction_ms,
                             name="auction_bids")
    return joined.filter((_col("date_time_right") >= _col("date_time"))
                         & (_col("date_time_right") <= _col("expires")))


def _q4(i: Inputs) -> gs.Stream:
    final = _auction_bids(i).key_by("id", "category").agg(final=_col("price").max())
    # over the changelog of each auction's final price: a -U takes the old one back
    return (final.key_by("category").agg(avg_final=_col("final").mean())
            .select("category", "avg_final", "op"))


def _q5(i: Inputs) -> gs.Stream:
    counts = (i.bids.key_by("auction").window(gs.Sliding("10s", "2s"), name="counts")
              .agg(num=gs.count()))
    # the rows of one sliding window share its event time (window_end - 1): a 2 s
    # tumbling window (the slide) over them holds exactly one sliding window's rows
    most = counts.window(gs.Tumbling("2s"), name="most").agg(maxn=_col("num").max())
    return (counts.interval_join(most, on="window_end", lower=0, upper=0)
            .filter(_col("num") >= _col("maxn"))
            .select("auction", "num", "window_start", "window_end"))


def _q6(i: Inputs) -> gs.Stream:
    # each auction's winning bid (the top bid, a changelog as bids come), then per seller
    # the mean of the last ten winning prices by the winning bid's time: an OVER over
    # the table the changelog describes (order_by: no event time needed)
    best = _auction_bids(i).top_k(1, by="price", per=("id", "seller"))
    return (best.key_by("seller").over(rows=10, order_by="date_time_right", name="last10")
            .agg(avg_price=_col("price").mean()).select("seller", "avg_price", "op"))


def _q7(i: Inputs) -> gs.Stream:
    top = i.bids.window(gs.Tumbling("10s"), name="top").agg(maxprice=_col("price").max())
    # the window's row is at window_end - 1; the bids in [window_end - 10 s, window_end]
    joined = top.interval_join(i.bids, on=("maxprice", "price"), lower=-9999, upper=1)
    return joined.select("auction", "price", "bidder", "date_time", "extra")


def _q8(i: Inputs) -> gs.Stream:
    people = (i.persons.key_by("id", "name").window(gs.Tumbling("10s"), name="people")
              .agg(n=gs.count()))
    sellers = (i.auctions.key_by("seller").window(gs.Tumbling("10s"), name="sellers")
               .agg(n=gs.count()))
    joined = people.interval_join(sellers, on=[("id", "seller"), ("window_end", "window_end")],
                                  lower=0, upper=0)
    return joined.select("id", "name", starttime=_col("window_start"))


_AUCTION_COLS = ("id", "item_name", "description", "initial_bid", "reserve", "date_time",
                 "expires", "seller", "category", "extra")


def _q9(i: Inputs) -> gs.Stream:
    # the highest bid, the earliest of equal ones: one number to maximise (prices are
    # below 2**27 cents, a bid comes less than 2**24 ms after its auction)
    ms = (_col("date_time_right").cast("int64") - _col("date_time").cast("int64"))
    bids = _auction_bids(i).with_columns(rank=_col("price") * (1 << 24) - ms)
    won = bids.top_k(1, by="rank", per="id")  # a changelog: +I the new best, -D the old
    return won.select(*_AUCTION_COLS, "auction", "bidder", "price",
                      bid_date_time=_col("date_time_right"), bid_extra=_col("extra_right"),
                      op=_col("op"))


def _q10(i: Inputs) -> gs.Stream:
    return i.bids.select("auction", "bidder", "price", "date_time", "extra",
                         dt=_col("date_time").dt.strftime("%Y-%m-%d"),
                         hm=_col("date_time").dt.strftime("%H:%M"))


def _q11(i: Inputs) -> gs.Stream:
    return (i.bids.key_by("bidder").window(gs.Session("10s"), name="sessions")
            .agg(bid_count=gs.count())
            .select("bidder", "bid_count", starttime=_col("window_start"),
                    endtime=_col("window_end")))


def _q12(i: Inputs) -> gs.Stream:
    return (i.bids.key_by("bidder").window(gs.Tumbling("10s"), name="per_bidder")
            .agg(bid_count=gs.count())
            .select("bidder", "bid_count", starttime=_col("window_start"),
                    endtime=_col("window_end")))


def _q13(i: Inputs) -> gs.Stream:
    side = i.pipeline.table(gs.from_arrow(side_input()), key="key", name="side_input")
    return (i.bids.with_columns(key=_col("auction") % 10_000).join_table(side, on="key")
            .select("auction", "bidder", "price", "date_time", "value"))


def _q14(i: Inputs) -> gs.Stream:
    hour = _col("date_time").dt.hour()
    euro = _col("price") * 0.908
    kind = (gs.when((hour >= 8) & (hour <= 18)).then("dayTime")
            .when((hour <= 6) | (hour >= 20)).then("nightTime").otherwise("otherTime"))
    extra = _col("extra").str
    return (i.bids.filter((euro > 1_000_000) & (euro < 50_000_000))
            .select("auction", "bidder", price=euro, bid_time_type=kind,
                    date_time=_col("date_time"), extra=_col("extra"),
                    c_counts=extra.len_chars()
                    - extra.replace_all("c", "", literal=True).str.len_chars()))


def _ranked(distinct: bool) -> dict[str, gs.Agg]:
    """q15-q17's counts: all bids, and by price rank (below $100, to $10,000, above);
    ``distinct``: also the distinct bidders and auctions of each."""
    price = _col("price")
    ranks = (price < 10_000, (price >= 10_000) & (price < 1_000_000), price >= 1_000_000)
    out: dict[str, gs.Agg] = {"total_bids": gs.count()}
    out.update({f"rank{r + 1}_bids": gs.count().filter(c) for r, c in enumerate(ranks)})
    if not distinct:
        return out
    for col in ("bidder", "auction"):
        out[f"total_{col}s"] = _col(col).count_distinct()
        out.update({f"rank{r + 1}_{col}s": _col(col).count_distinct().filter(c)
                    for r, c in enumerate(ranks)})
    return out


_DAY = "%Y-%m-%d"


def _q15(i: Inputs) -> gs.Stream:
    aggs = _ranked(distinct=True)
    names = list(aggs)
    return (i.bids.window(gs.Tumbling("1d"), name="days").agg(**aggs)
            .select(day=_col("window_start").dt.strftime(_DAY), **{n: _col(n) for n in names}))


def _q16(i: Inputs) -> gs.Stream:
    aggs = {**_ranked(distinct=True), "last": _col("date_time").max()}
    names = [n for n in aggs if n != "last"]
    return (i.bids.key_by("channel").window(gs.Tumbling("1d"), name="channel_days")
            .agg(**aggs)
            .select("channel", day=_col("window_start").dt.strftime(_DAY),
                    minute=_col("last").dt.strftime("%H:%M"), **{n: _col(n) for n in names}))


def _q17(i: Inputs) -> gs.Stream:
    price = _col("price")
    aggs = {**_ranked(distinct=False), "min_price": price.min(), "max_price": price.max(),
            "avg_price": price.mean(), "sum_price": price.sum()}
    return (i.bids.key_by("auction").window(gs.Tumbling("1d"), name="auction_days")
            .agg(**aggs)
            .select("auction", day=_col("window_start").dt.strftime(_DAY),
                    **{n: _col(n) for n in aggs}))


def _q18(i: Inputs) -> gs.Stream:
    # ROW_NUMBER() ... ORDER BY date_time DESC = 1 per (bidder, auction): a changelog
    last = i.bids.top_k(1, by="date_time", per=("bidder", "auction"), ties="last")
    return last.select("auction", "bidder", "price", "channel", "url", "date_time", "extra",
                       "op")


def _q19(i: Inputs) -> gs.Stream:
    # ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) <= 10: a changelog of
    # each auction's ten highest bids (no rank column: compared on auction and price)
    return (i.bids.top_k(10, by="price", per="auction")
            .select("auction", "bidder", "price", "channel", "url", "date_time", "extra",
                    "op"))


def _q20(i: Inputs) -> gs.Stream:
    auctions = i.auctions.filter(_col("category") == 10)
    joined = i.bids.join(auctions, on=("auction", "id"), name="bid_auctions")
    return joined.select("auction", "bidder", "price", "channel", "url", "date_time", "extra",
                         "item_name", "description", "initial_bid", "reserve",
                         auction_date_time=_col("date_time_right"),
                         expires=_col("expires"), seller=_col("seller"),
                         category=_col("category"), auction_extra=_col("extra_right"))


def _q21(i: Inputs) -> gs.Stream:
    channel = _col("channel").str.to_lowercase()
    channel_id = _col("url").str.extract(_CHANNEL_ID, 2)
    code = gs.when(channel == "apple").then("0")
    for n, name in enumerate(("google", "facebook", "baidu"), start=1):
        code = code.when(channel == name).then(str(n))
    return (i.bids.filter(channel_id.is_not_null()
                          | channel.is_in(["apple", "google", "facebook", "baidu"]))
            .select("auction", "bidder", "price", "channel",
                    channel_id=code.otherwise(channel_id)))


def _q22(i: Inputs) -> gs.Stream:
    url = _col("url").str
    return i.bids.select("auction", "bidder", "price", "channel",
                         dir1=url.split_part("/", 4), dir2=url.split_part("/", 5),
                         dir3=url.split_part("/", 6))


# -- DuckDB ----------------------------------------------------------------------------------
_AUCTION_BIDS = """
    SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time,
           B.extra AS bid_extra, B.seq
    FROM auctions A JOIN bids B
      ON A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires"""
_RANKS = ("price < 10000", "price >= 10000 AND price < 1000000", "price >= 1000000")


def _ranked_sql(distinct: bool) -> str:
    parts = ["count(*) AS total_bids"]
    parts += [f"count(*) FILTER (WHERE {c}) AS rank{r + 1}_bids" for r, c in enumerate(_RANKS)]
    if distinct:
        for col in ("bidder", "auction"):
            parts.append(f"count(DISTINCT {col}) AS total_{col}s")
            parts += [f"count(DISTINCT {col}) FILTER (WHERE {c}) AS rank{r + 1}_{col}s"
                      for r, c in enumerate(_RANKS)]
    return ", ".join(parts)


_SQL = {
    "q0": "SELECT auction, bidder, price, epoch_ms(date_time) AS date_time, extra FROM bids",
    "q1": "SELECT auction, bidder, 0.908::DOUBLE * price AS price, "
          "epoch_ms(date_time) AS date_time, extra FROM bids",
    "q2": "SELECT auction, price FROM bids WHERE auction % 123 = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id FROM auctions A JOIN persons P
             ON A.seller = P.id WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    "q4": f"""SELECT category, avg(final) AS avg_final FROM (
                SELECT id, category, max(price) AS final FROM ({_AUCTION_BIDS})
                GROUP BY id, category) GROUP BY category""",
    "q5": """WITH c AS (
                SELECT auction, s AS window_start, s + 10000 AS window_end, count(*) AS num
                FROM (SELECT auction, (epoch_ms(date_time) // 2000 - j) * 2000 AS s
                      FROM bids, range(5) t(j))
                GROUP BY ALL),
             m AS (SELECT window_end, max(num) AS maxn FROM c GROUP BY window_end)
             SELECT c.auction, c.num, c.window_start, c.window_end
             FROM c JOIN m USING (window_end) WHERE c.num >= m.maxn""",
    "q6": f"""WITH w AS (
                SELECT id, seller, price, bid_date_time, row_number() OVER (
                    PARTITION BY id, seller ORDER BY price DESC, seq) AS rn
                FROM ({_AUCTION_BIDS}))
              SELECT seller, avg(price) OVER (PARTITION BY seller ORDER BY bid_date_time
                  ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_price
              FROM w WHERE rn = 1""",
    "q7": """WITH b AS (SELECT *, epoch_ms(date_time) AS ts FROM bids),
             w AS (SELECT max(price) AS maxprice, (ts // 10000 + 1) * 10000 AS wend
                   FROM b GROUP BY ts // 10000)
             SELECT b.auction, b.price, b.bidder, b.ts AS date_time, b.extra
             FROM b JOIN w ON b.price = w.maxprice AND b.ts BETWEEN w.wend - 10000 AND w.wend""",
    "q8": """WITH p AS (SELECT DISTINCT id, name, epoch_ms(date_time) // 10000 * 10000 AS s
                        FROM persons),
             a AS (SELECT DISTINCT seller, epoch_ms(date_time) // 10000 * 10000 AS s
                   FROM auctions)
             SELECT p.id, p.name, p.s AS starttime FROM p JOIN a
             ON p.id = a.seller AND p.s = a.s""",
    "q9": f"""SELECT id, item_name, description, initial_bid, reserve,
                     epoch_ms(date_time) AS date_time, epoch_ms(expires) AS expires, seller,
                     category, extra, auction, bidder, price,
                     epoch_ms(bid_date_time) AS bid_date_time, bid_extra
              FROM (SELECT *, row_number() OVER (PARTITION BY id
                        ORDER BY price DESC, bid_date_time, seq) AS rn
                    FROM ({_AUCTION_BIDS})) WHERE rn = 1""",
    "q10": """SELECT auction, bidder, price, epoch_ms(date_time) AS date_time, extra,
                     strftime(date_time, '%Y-%m-%d') AS dt, strftime(date_time, '%H:%M') AS hm
              FROM bids""",
    # gpustream's sessions merge events closer than the gap (Flink's also merge at exactly
    # the gap)
    "q11": """WITH b AS (SELECT bidder, epoch_ms(date_time) AS ts FROM bids),
              s AS (SELECT bidder, ts, CASE WHEN ts - lag(ts) OVER (PARTITION BY bidder
                        ORDER BY ts) < 10000 THEN 0 ELSE 1 END AS new FROM b),
              g AS (SELECT bidder, ts, sum(new) OVER (PARTITION BY bidder ORDER BY ts
                        ROWS UNBOUNDED PRECEDING) AS sid FROM s)
              SELECT bidder, count(*) AS bid_count, min(ts) AS starttime,
                     max(ts) + 10000 AS endtime FROM g GROUP BY bidder, sid""",
    "q12": """SELECT bidder, count(*) AS bid_count,
                     epoch_ms(date_time) // 10000 * 10000 AS starttime,
                     epoch_ms(date_time) // 10000 * 10000 + 10000 AS endtime
              FROM bids GROUP BY ALL""",
    "q13": """SELECT B.auction, B.bidder, B.price, epoch_ms(B.date_time) AS date_time, S.value
              FROM bids B JOIN side_input S ON B.auction % 10000 = S.key""",
    "q14": """SELECT auction, bidder, 0.908::DOUBLE * price AS price,
                     CASE WHEN hour(date_time) >= 8 AND hour(date_time) <= 18 THEN 'dayTime'
                          WHEN hour(date_time) <= 6 OR hour(date_time) >= 20 THEN 'nightTime'
                          ELSE 'otherTime' END AS bid_time_type,
                     epoch_ms(date_time) AS date_time, extra,
                     length(extra) - length(replace(extra, 'c', '')) AS c_counts
              FROM bids WHERE 0.908::DOUBLE * price > 1000000
                          AND 0.908::DOUBLE * price < 50000000""",
    "q15": f"""SELECT strftime(date_time, '%Y-%m-%d') AS day, {_ranked_sql(True)}
               FROM bids GROUP BY 1""",
    "q16": f"""SELECT channel, strftime(date_time, '%Y-%m-%d') AS day,
                      strftime(max(date_time), '%H:%M') AS minute, {_ranked_sql(True)}
               FROM bids GROUP BY 1, 2""",
    "q17": f"""SELECT auction, strftime(date_time, '%Y-%m-%d') AS day, {_ranked_sql(False)},
                      min(price) AS min_price, max(price) AS max_price,
                      avg(price) AS avg_price, sum(price) AS sum_price
               FROM bids GROUP BY 1, 2""",
    "q18": """SELECT auction, bidder, price, channel, url, epoch_ms(date_time) AS date_time,
                     extra
              FROM (SELECT *, row_number() OVER (PARTITION BY bidder, auction
                        ORDER BY date_time DESC, seq DESC) AS rn FROM bids) WHERE rn = 1""",
    "q19": """SELECT auction, bidder, price, channel, url, epoch_ms(date_time) AS date_time,
                     extra, rank_number
              FROM (SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC)
                        AS rank_number FROM bids) WHERE rank_number <= 10""",
    "q20": """SELECT B.auction, B.bidder, B.price, B.channel, B.url,
                     epoch_ms(B.date_time) AS date_time, B.extra, A.item_name,
                     A.description, A.initial_bid, A.reserve,
                     epoch_ms(A.date_time) AS auction_date_time,
                     epoch_ms(A.expires) AS expires, A.seller, A.category,
                     A.extra AS auction_extra
              FROM bids B JOIN auctions A ON B.auction = A.id WHERE A.category = 10""",
    "q21": f"""SELECT auction, bidder, price, channel,
                      CASE WHEN lower(channel) = 'apple' THEN '0'
                           WHEN lower(channel) = 'google' THEN '1'
                           WHEN lower(channel) = 'facebook' THEN '2'
                           WHEN lower(channel) = 'baidu' THEN '3'
                           WHEN regexp_matches(url, '{_CHANNEL_ID}')
                           THEN regexp_extract(url, '{_CHANNEL_ID}', 2) END AS channel_id
               FROM bids WHERE regexp_matches(url, '{_CHANNEL_ID}')
                            OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1,
                     split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3
              FROM bids""",
}

_BID5 = ("auction", "bidder", "price", "date_time", "extra")
_RANKED = ("total_bids", "rank1_bids", "rank2_bids", "rank3_bids")
_DISTINCT = tuple(f"{p}_{c}s" for c in ("bidder", "auction")
                  for p in ("total", "rank1", "rank2", "rank3"))
_ALL_BID = ("auction", "bidder", "price", "channel", "url", "date_time", "extra")
_GROUP = ("GROUP BY day: a 1-day tumbling window (a row per day when it ends, not "
          "Flink's changelog of each day so far)")
QUERIES: dict[str, Query] = {q.name: q for q in (
    Query("q0", "Pass through", _q0, _SQL["q0"], _BID5),
    Query("q1", "Currency conversion", _q1, _SQL["q1"], _BID5),
    Query("q2", "Selection", _q2, _SQL["q2"], ("auction", "price")),
    Query("q3", "Local item suggestion", _q3, _SQL["q3"], ("id", "name", "city", "state"),
          streams=("auctions", "persons")),
    Query("q4", "Average price for a category", _q4, _SQL["q4"], ("category", "avg_final"),
          streams=("auctions", "bids"), changelog=("category",)),
    Query("q5", "Hot items", _q5, _SQL["q5"],
          ("window_end", "auction", "num", "window_start")),
    Query("q6", "Average selling price by seller", _q6, _SQL["q6"], ("seller", "avg_price"),
          streams=("auctions", "bids"), changelog=(),
          ties="winning bids of one seller at the same millisecond are peers of the OVER "
               "window's order: ROWS frames over peers depend on their order, which SQL "
               "leaves open (gpustream: as the winners came). Where event times are "
               "distinct (the tests' 200 events/s) the answers are equal"),
    Query("q7", "Highest bid", _q7, _SQL["q7"], _BID5),
    Query("q8", "Monitor new users", _q8, _SQL["q8"], ("id", "name", "starttime"),
          streams=("persons", "auctions")),
    Query("q9", "Winning bids", _q9, _SQL["q9"],
          (*_AUCTION_COLS, "auction", "bidder", "price", "bid_date_time", "bid_extra"),
          streams=("auctions", "bids"), changelog=()),
    Query("q10", "Log to file system", _q10, _SQL["q10"], (*_BID5, "dt", "hm")),
    Query("q11", "User sessions", _q11, _SQL["q11"],
          ("bidder", "starttime", "endtime", "bid_count")),
    Query("q12", "Processing-time windows", _q12, _SQL["q12"],
          ("bidder", "starttime", "endtime", "bid_count"),
          stand_in="processing-time tumbling window: an event-time one of the same size"),
    Query("q13", "Bounded side input join", _q13, _SQL["q13"],
          ("auction", "bidder", "price", "date_time", "value")),
    Query("q14", "Calculation", _q14, _SQL["q14"],
          ("auction", "bidder", "price", "bid_time_type", "date_time", "extra", "c_counts")),
    Query("q15", "Bidding statistics report", _q15, _SQL["q15"],
          ("day", *_RANKED, *_DISTINCT), stand_in=_GROUP),
    Query("q16", "Channel statistics report", _q16, _SQL["q16"],
          ("channel", "day", "minute", *_RANKED, *_DISTINCT),
          stand_in=_GROUP),
    Query("q17", "Auction statistics report", _q17, _SQL["q17"],
          ("auction", "day", *_RANKED, "min_price", "max_price", "avg_price", "sum_price"),
          stand_in=_GROUP),
    Query("q18", "Find last bid", _q18, _SQL["q18"], _ALL_BID, changelog=()),
    # ties in price rank in any order: compare the prices, not which tied bid
    Query("q19", "Auction TOP-10 price", _q19, _SQL["q19"], ("auction", "price"),
          changelog=()),
    Query("q20", "Expand bid with auction", _q20, _SQL["q20"],
          (*_ALL_BID, "item_name", "description", "initial_bid", "reserve",
           "auction_date_time", "expires", "seller", "category", "auction_extra"),
          streams=("auctions", "bids")),
    Query("q21", "Add channel id", _q21, _SQL["q21"],
          ("auction", "bidder", "price", "channel", "channel_id")),
    Query("q22", "Get URL directories", _q22, _SQL["q22"],
          ("auction", "bidder", "price", "channel", "dir1", "dir2", "dir3")),
)}


def query_names(spec: str) -> list[str]:
    """The queries ``spec`` names: ``qN``, ``all``, or a comma-separated list.

    Examples
    --------
    >>> query_names("q1,q5")
    ['q1', 'q5']
    >>> len(query_names("all"))
    23
    >>> query_names("q99")
    Traceback (most recent call last):
    ...
    ValueError: unknown Nexmark query 'q99': use all or q0 .. q22 (e.g. q5, or q1,q5)
    """
    if spec.strip().lower() == "all":
        return list(QUERIES)
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    for n in names or [spec]:
        if n not in QUERIES:
            raise ValueError(f"unknown Nexmark query {n!r}: use all or q0 .. q22 "
                             "(e.g. q5, or q1,q5)")
    return names
