"""The Nexmark queries from their SQL text: Flink's Nexmark suite, run by ``p.sql``.

:data:`SQL` holds each query as Flink's nexmark repository writes it
(``nexmark-flink/src/main/resources/queries/qN.sql``, Apache-2.0, nexmark/nexmark; the
``INSERT INTO`` line and the license header left out). Only the DDL is adapted
(:data:`DDL`): Flink's ``person``, ``auction`` and ``bid`` views over its generator
table become views over gpustream's generator streams (``persons``, ``auctions``,
``bids``, whose columns are snake_case and whose event time is ``date_time``); q13's
``side_input`` is the lookup table :func:`~gpustream.bench.nexmark.side_input`; q14's
``count_char`` UDF is built in (``COUNT_CHAR``). :data:`SINK_COLUMNS` names each result's
columns as the query's ``INSERT INTO`` sink table does (positionally), with the names
the Python API's version of the query uses, so both can be compared.

Every query runs from its text, q6 too: an OVER window over an updating input (each
auction's winning bid, a top-N changelog), which Flink refuses, runs as the OVER of the
table the changelog describes (:mod:`gpustream.operators.over_changelog`). Two
liberties of q6's text are read as written: the qualifiers ``A.``/``B.`` of an unnamed
subquery's columns, and ``rownum`` bounded in the WHERE of the query that defines it.

Examples
--------
>>> import gpustream as gs
>>> from gpustream.bench.nexmark import Inputs
>>> p = gs.Pipeline(engine="cpu")
>>> nx = gs.nexmark(events=200, seed=1)
>>> i = Inputs(p, {"bids": nx.bids, "auctions": nx.auctions, "persons": nx.persons})
>>> build_sql(i, "q2").schema.names
['auction', 'price']
>>> sorted(set(QUERIES_SQL) ^ set(f"q{n}" for n in range(23)))
[]
"""

from __future__ import annotations

import pyarrow as pa

import gpustream as gs
from gpustream.bench.nexmark import QUERIES, Inputs, side_input

__all__ = ["CHANGELOG_KEYS", "DDL", "QUERIES_SQL", "SINK_COLUMNS", "SQL", "build_sql",
           "table_of"]

#: Flink's views over its generator table, over gpustream's generator streams instead
DDL = {
    "persons": """CREATE VIEW person AS SELECT id, name, email_address AS emailAddress,
        credit_card AS creditCard, city, state, date_time AS `dateTime`, extra
        FROM persons""",
    "auctions": """CREATE VIEW auction AS SELECT id, item_name AS itemName, description,
        initial_bid AS initialBid, reserve, date_time AS `dateTime`, expires, seller,
        category, extra FROM auctions""",
    "bids": """CREATE VIEW bid AS SELECT auction, bidder, price, channel, url,
        date_time AS `dateTime`, extra FROM bids""",
}

#: each query's text, as Flink's Nexmark suite writes it
SQL: dict[str, str] = {
    "q0": """\
SELECT auction, bidder, price, `dateTime`, extra FROM bid""",
    "q1": """\
SELECT
    auction,
    bidder,
    0.908 * price as price, -- convert dollar to euro
    `dateTime`,
    extra
FROM bid""",
    "q2": """\
SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0""",
    "q3": """\
SELECT
    P.name, P.city, P.state, A.id
FROM
    auction AS A INNER JOIN person AS P on A.seller = P.id
WHERE
    A.category = 10 and (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')""",
    "q4": """\
SELECT
    Q.category,
    AVG(Q.final)
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category""",
    "q5": """\
SELECT AuctionBids.auction, AuctionBids.num
 FROM (
   SELECT
     auction,
     count(*) AS num,
     window_start AS starttime,
     window_end AS endtime
     FROM TABLE(
             HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
     GROUP BY auction, window_start, window_end
 ) AS AuctionBids
 JOIN (
   SELECT
     max(CountBids.num) AS maxn,
     CountBids.starttime,
     CountBids.endtime
   FROM (
     SELECT
       count(*) AS num,
       window_start AS starttime,
       window_end AS endtime
     FROM TABLE(
                HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
     GROUP BY auction, window_start, window_end
     ) AS CountBids
   GROUP BY CountBids.starttime, CountBids.endtime
 ) AS MaxBids
 ON AuctionBids.starttime = MaxBids.starttime AND
    AuctionBids.endtime = MaxBids.endtime AND
    AuctionBids.num >= MaxBids.maxn""",
    "q6": """\
SELECT
    Q.seller,
    AVG(Q.price) OVER
        (PARTITION BY Q.seller ORDER BY Q.`dateTime` ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY A.id, A.seller ORDER BY B.price DESC) AS rownum
    FROM (SELECT A.id, A.seller, B.price, B.`dateTime`
        FROM auction AS A,
            bid AS B
        WHERE A.id = B.auction
            and B.`dateTime` between A.`dateTime` and A.expires)
    WHERE rownum <= 1
) AS Q""",
    "q7": """\
SELECT B.auction, B.price, B.bidder, B.`dateTime`, B.extra
from bid B
JOIN (
  SELECT MAX(price) AS maxprice, window_end as `dateTime`
  FROM TABLE(
          TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end
) B1
ON B.price = B1.maxprice
WHERE B.`dateTime` BETWEEN B1.`dateTime`  - INTERVAL '10' SECOND AND B1.`dateTime`""",
    "q8": """\
SELECT P.id, P.name, P.starttime
FROM (
  SELECT id, name,
        window_start AS starttime,
        window_end AS endtime
  FROM TABLE(
            TUMBLE(TABLE person, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
  GROUP BY id, name, window_start, window_end
) P
JOIN (
  SELECT seller,
        window_start AS starttime,
        window_end AS endtime
  FROM TABLE(
        TUMBLE(TABLE auction, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
  GROUP BY seller, window_start, window_end
) A
ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    "q9": """\
SELECT
    id, itemName, description, initialBid, reserve, `dateTime`, expires, seller, category, extra,
    auction, bidder, price, bid_dateTime, bid_extra
FROM (
   SELECT A.*, B.auction, B.bidder, B.price, B.`dateTime` AS bid_dateTime, B.extra AS bid_extra,
     ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.`dateTime` ASC) AS rownum
   FROM auction A, bid B
   WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
)
WHERE rownum <= 1""",
    "q10": """\
SELECT auction, bidder, price, `dateTime`, extra, DATE_FORMAT(`dateTime`, 'yyyy-MM-dd'), DATE_FORMAT(`dateTime`, 'HH:mm')
FROM bid""",
    "q11": """\
SELECT
    B.bidder,
    count(*) as bid_count,
    SESSION_START(B.`dateTime`, INTERVAL '10' SECOND) as starttime,
    SESSION_END(B.`dateTime`, INTERVAL '10' SECOND) as endtime
FROM bid B
GROUP BY B.bidder, SESSION(B.`dateTime`, INTERVAL '10' SECOND)""",
    "q12": """\
CREATE VIEW B AS SELECT *, PROCTIME() as p_time FROM bid;
SELECT
    bidder,
    count(*) as bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
        TUMBLE(TABLE B, DESCRIPTOR(p_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end""",
    "q13": """\
SELECT
    B.auction,
    B.bidder,
    B.price,
    B.`dateTime`,
    S.`value`
FROM (SELECT *, PROCTIME() as p_time FROM bid) B
JOIN side_input FOR SYSTEM_TIME AS OF B.p_time AS S
ON mod(B.auction, 10000) = S.key""",
    "q14": """\
SELECT
    auction,
    bidder,
    0.908 * price as price,
    CASE
        WHEN HOUR(`dateTime`) >= 8 AND HOUR(`dateTime`) <= 18 THEN 'dayTime'
        WHEN HOUR(`dateTime`) <= 6 OR HOUR(`dateTime`) >= 20 THEN 'nightTime'
        ELSE 'otherTime'
    END AS bidTimeType,
    `dateTime`,
    extra,
    count_char(extra, 'c') AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": """\
SELECT
     DATE_FORMAT(`dateTime`, 'yyyy-MM-dd') as `day`,
     count(*) AS total_bids,
     count(*) filter (where price < 10000) AS rank1_bids,
     count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
     count(*) filter (where price >= 1000000) AS rank3_bids,
     count(distinct bidder) AS total_bidders,
     count(distinct bidder) filter (where price < 10000) AS rank1_bidders,
     count(distinct bidder) filter (where price >= 10000 and price < 1000000) AS rank2_bidders,
     count(distinct bidder) filter (where price >= 1000000) AS rank3_bidders,
     count(distinct auction) AS total_auctions,
     count(distinct auction) filter (where price < 10000) AS rank1_auctions,
     count(distinct auction) filter (where price >= 10000 and price < 1000000) AS rank2_auctions,
     count(distinct auction) filter (where price >= 1000000) AS rank3_auctions
FROM bid
GROUP BY DATE_FORMAT(`dateTime`, 'yyyy-MM-dd')""",
    "q16": """\
SELECT
    channel,
    DATE_FORMAT(`dateTime`, 'yyyy-MM-dd') as `day`,
    max(DATE_FORMAT(`dateTime`, 'HH:mm')) as `minute`,
    count(*) AS total_bids,
    count(*) filter (where price < 10000) AS rank1_bids,
    count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
    count(*) filter (where price >= 1000000) AS rank3_bids,
    count(distinct bidder) AS total_bidders,
    count(distinct bidder) filter (where price < 10000) AS rank1_bidders,
    count(distinct bidder) filter (where price >= 10000 and price < 1000000) AS rank2_bidders,
    count(distinct bidder) filter (where price >= 1000000) AS rank3_bidders,
    count(distinct auction) AS total_auctions,
    count(distinct auction) filter (where price < 10000) AS rank1_auctions,
    count(distinct auction) filter (where price >= 10000 and price < 1000000) AS rank2_auctions,
    count(distinct auction) filter (where price >= 1000000) AS rank3_auctions
FROM bid
GROUP BY channel, DATE_FORMAT(`dateTime`, 'yyyy-MM-dd')""",
    "q17": """\
SELECT
     auction,
     DATE_FORMAT(`dateTime`, 'yyyy-MM-dd') as `day`,
     count(*) AS total_bids,
     count(*) filter (where price < 10000) AS rank1_bids,
     count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
     count(*) filter (where price >= 1000000) AS rank3_bids,
     min(price) AS min_price,
     max(price) AS max_price,
     avg(price) AS avg_price,
     sum(price) AS sum_price
FROM bid
GROUP BY auction, DATE_FORMAT(`dateTime`, 'yyyy-MM-dd')""",
    "q18": """\
SELECT auction, bidder, price, channel, url, `dateTime`, extra
 FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY `dateTime` DESC) AS rank_number
       FROM bid)
 WHERE rank_number <= 1""",
    "q19": """\
SELECT * FROM
(SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
WHERE rank_number <= 10""",
    "q20": """\
SELECT
    auction, bidder, price, channel, url, B.`dateTime`, B.extra,
    itemName, description, initialBid, reserve, A.`dateTime`, expires, seller, category, A.extra
FROM
    bid AS B INNER JOIN auction AS A on B.auction = A.id
WHERE A.category = 10""",
    "q21": """\
SELECT
    auction, bidder, price, channel,
    CASE
        WHEN lower(channel) = 'apple' THEN '0'
        WHEN lower(channel) = 'google' THEN '1'
        WHEN lower(channel) = 'facebook' THEN '2'
        WHEN lower(channel) = 'baidu' THEN '3'
        ELSE REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)
        END
    AS channel_id FROM bid
    where REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2) is not null or
          lower(channel) in ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """\
SELECT
    auction, bidder, price, channel,
    SPLIT_INDEX(url, '/', 3) as dir1,
    SPLIT_INDEX(url, '/', 4) as dir2,
    SPLIT_INDEX(url, '/', 5) as dir3 FROM bid""",
}

#: the queries that run from their SQL text
QUERIES_SQL = tuple(SQL)

_BID = ("auction", "bidder", "price", "channel", "url", "date_time", "extra")
_RANKS = ("total_bids", "rank1_bids", "rank2_bids", "rank3_bids")
_DISTINCT = tuple(f"{p}_{c}s" for c in ("bidder", "auction")
                  for p in ("total", "rank1", "rank2", "rank3"))
#: the columns of each query's sink table (its INSERT INTO), by position
SINK_COLUMNS: dict[str, tuple[str, ...]] = {
    "q0": ("auction", "bidder", "price", "date_time", "extra"),
    "q1": ("auction", "bidder", "price", "date_time", "extra"),
    "q2": ("auction", "price"),
    "q3": ("name", "city", "state", "id"),
    "q4": ("category", "avg_final"),
    "q5": ("auction", "num"),
    "q6": ("seller", "avg_price"),
    "q7": ("auction", "price", "bidder", "date_time", "extra"),
    "q8": ("id", "name", "starttime"),
    "q9": ("id", "item_name", "description", "initial_bid", "reserve", "date_time", "expires",
           "seller", "category", "extra", "auction", "bidder", "price", "bid_date_time",
           "bid_extra"),
    "q10": ("auction", "bidder", "price", "date_time", "extra", "dt", "hm"),
    "q11": ("bidder", "bid_count", "starttime", "endtime"),
    "q12": ("bidder", "bid_count", "starttime", "endtime"),
    "q13": ("auction", "bidder", "price", "date_time", "value"),
    "q14": ("auction", "bidder", "price", "bid_time_type", "date_time", "extra",
            "c_counts"),
    "q15": ("day", *_RANKS, *_DISTINCT),
    "q16": ("channel", "day", "minute", *_RANKS, *_DISTINCT),
    "q17": ("auction", "day", *_RANKS, "min_price", "max_price", "avg_price", "sum_price"),
    "q18": _BID,
    "q19": _BID,
    "q20": (*_BID, "item_name", "description", "initial_bid", "reserve",
            "auction_date_time", "expires", "seller", "category", "auction_extra"),
    "q21": ("auction", "bidder", "price", "channel", "channel_id"),
    "q22": ("auction", "bidder", "price", "channel", "dir1", "dir2", "dir3"),
}

#: the queries whose SQL gives a changelog, and the key of the table it describes (``()``:
#: a multiset of rows); a GROUP BY a day (q15-q17) is a running aggregation in SQL
CHANGELOG_KEYS: dict[str, tuple[str, ...]] = {
    "q4": ("category",), "q6": (), "q9": (), "q15": ("day",), "q16": ("channel", "day"),
    "q17": ("auction", "day"), "q18": (), "q19": (),
}


def table_of(name: str, rows: pa.Table) -> pa.Table:
    """The result of query ``name``: its rows, or the table its changelog describes.

    Examples
    --------
    >>> rows = pa.table({"category": [1, 1], "avg_final": [2.0, 3.0], "op": ["+I", "+U"]})
    >>> table_of("q4", rows).to_pydict()
    {'category': [1], 'avg_final': [3.0]}
    """
    if "op" not in rows.column_names:
        return rows
    return gs.materialize(rows, key=list(CHANGELOG_KEYS[name]) or None)


def build_sql(inputs: Inputs, name: str) -> gs.Stream:
    """Query ``name`` from its SQL text over ``inputs``' streams, its columns named as its
    sink table's (a changelog keeps ``op``).

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline(engine="cpu")
    >>> nx = gs.nexmark(events=100, seed=1)
    >>> i = Inputs(p, {"bids": nx.bids, "auctions": nx.auctions, "persons": nx.persons})
    >>> build_sql(i, "q0").schema.names
    ['auction', 'bidder', 'price', 'date_time', 'extra']
    """
    if name not in SQL:
        raise ValueError(f"{name} does not run from SQL: the ones that do are "
                         f"{', '.join(QUERIES_SQL)}")
    p = inputs.pipeline
    for kind in QUERIES[name].streams:
        getattr(inputs, kind)  # the source, named as the views read it
    if name == "q13":
        p.table(gs.from_arrow(side_input()), key="key", name="side_input")
    views = ";\n".join(DDL[k] for k in QUERIES[name].streams)
    out = p.sql(f"{views};\n{SQL[name]}")
    names = [n for n in out.schema.names if n != "op"]
    want = SINK_COLUMNS[name]
    if len(names) != len(want):
        raise ValueError(f"{name}: the query gives {names}, its sink takes {list(want)}")
    pairs = {w: gs.col(n) for w, n in zip(want, names, strict=True)}
    if "op" in out.schema.names:
        pairs["op"] = gs.col("op")
    return out.select(**pairs)
