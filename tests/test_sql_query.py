"""SQL queries (issue 21): each construct of ``p.sql`` against DuckDB running the batch
equivalent over the same seeded rows (windows, group windows, running GROUP BY, joins,
OVER, top-N, CTEs, views, UNION ALL, DDL), where results may not depend on batching
(hypothesis), a few under the CUDA simulator, and the errors (line, column, fix).

Times are int64 milliseconds; the streams arrive out of order within the watermark
delay, so no row is late and a batch query over the same rows is the reference.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.sql import SqlError

DELAY = 3_000


def _events(seed: int, n: int = 600) -> pa.Table:
    """Clicks: user (int), page (string), amount (float), ts (ms), shuffled within 2 s."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.choice(60_000, n, replace=False))  # distinct: ROWS frames are exact
    late = ts - rng.integers(0, 2_000, n)
    order = np.argsort(late, kind="stable")
    return pa.table({
        "user": rng.integers(0, 12, n)[order],
        "page": pa.array([f"p{i}" for i in rng.integers(0, 5, n)[order]]),
        "amount": np.round(rng.random(n) * 100, 2)[order],
        "ts": ts[order],
    })


def _users(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed + 100)
    ids = np.arange(0, 15)
    return pa.table({"id": ids, "country": [["de", "fr", "us"][i % 3] for i in ids],
                     "ts": np.sort(rng.integers(0, 60_000, len(ids)))})


def _pipeline(engine: str = "cpu", batch_rows: int = 64, seed: int = 1) -> gs.Pipeline:
    p = gs.Pipeline(engine=engine)
    p.source(gs.from_arrow(_events(seed), batch_rows=batch_rows), event_time="ts",
             watermark=gs.Watermark.bounded(DELAY), name="clicks")
    p.source(gs.from_arrow(_users(seed), batch_rows=batch_rows), event_time="ts",
             watermark=gs.Watermark.bounded(DELAY), name="users")
    return p


def _duck(sql: str, seed: int = 1) -> pa.Table:
    con = duckdb.connect()
    con.register("clicks", _events(seed))
    con.register("users", _users(seed))
    out: pa.Table = con.sql(sql).to_arrow_table()
    return out


def _rows(t: pa.Table, ndigits: int = 6) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples (floats rounded; dictionary strings plain)."""
    cols = []
    for c in t.columns:
        if pa.types.is_dictionary(c.type):
            c = c.cast(c.type.value_type)
        if pa.types.is_timestamp(c.type):
            c = c.cast(pa.int64())
        vals = c.to_pylist()
        cols.append([round(v, ndigits) if isinstance(v, float) else v for v in vals])
    return sorted(zip(*cols, strict=True), key=repr)


def _same(got: pa.Table, want: pa.Table) -> None:
    assert want.num_rows > 0, "the reference gives no rows: the test says nothing"
    assert got.column_names == want.column_names
    assert _rows(got) == _rows(want)


# -- windows ----------------------------------------------------------------------------------
TUMBLE_SQL = """
    SELECT user, COUNT(*) AS n, SUM(amount) AS total, window_start, window_end
    FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
    GROUP BY user, window_start, window_end"""
TUMBLE_DUCK = """
    SELECT user, COUNT(*) AS n, SUM(amount) AS total, ts // 10000 * 10000 AS window_start,
           ts // 10000 * 10000 + 10000 AS window_end
    FROM clicks GROUP BY ALL"""


@pytest.mark.parametrize("engine", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_a_tumbling_window_gives_duckdb_s_groups(engine: str) -> None:
    _same(_pipeline(engine).sql(TUMBLE_SQL).collect(), _duck(TUMBLE_DUCK))


def test_a_hopping_window_and_a_group_window_function() -> None:
    hop = _pipeline().sql("""
        SELECT page, COUNT(*) AS n, window_end FROM TABLE(
            HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '15' SECOND))
        GROUP BY page, window_start, window_end""").collect()
    _same(hop, _duck("""
        SELECT page, COUNT(*) AS n, (ts // 5000 - j) * 5000 + 15000 AS window_end
        FROM clicks, range(3) t(j) GROUP BY ALL"""))
    old = _pipeline().sql("""
        SELECT user, TUMBLE_START(ts, INTERVAL '20' SECOND) AS s, MAX(amount) AS top
        FROM clicks GROUP BY TUMBLE(ts, INTERVAL '20' SECOND), user""").collect()
    _same(old, _duck("SELECT user, ts // 20000 * 20000 AS s, MAX(amount) AS top "
                     "FROM clicks GROUP BY ALL"))


def test_session_windows_as_a_tvf_and_as_a_group_window() -> None:
    want = _duck("""
        WITH s AS (SELECT user, ts, CASE WHEN ts - lag(ts) OVER (PARTITION BY user
                   ORDER BY ts) < 4000 THEN 0 ELSE 1 END AS new FROM clicks),
             g AS (SELECT user, ts, sum(new) OVER (PARTITION BY user ORDER BY ts
                   ROWS UNBOUNDED PRECEDING) AS sid FROM s)
        SELECT user, COUNT(*) AS n, max(ts) + 4000 AS e FROM g GROUP BY user, sid""")
    tvf = _pipeline().sql("""
        SELECT user, COUNT(*) AS n, window_end AS e FROM TABLE(
            SESSION(TABLE clicks, DESCRIPTOR(ts), INTERVAL '4' SECOND))
        GROUP BY user, window_start, window_end""").collect()
    grouped = _pipeline().sql("""
        SELECT user, COUNT(*) AS n, SESSION_END(ts, INTERVAL '4' SECOND) AS e
        FROM clicks GROUP BY user, SESSION(ts, INTERVAL '4' SECOND)""").collect()
    for got in (tvf, grouped):
        if "op" in got.column_names:
            got = gs.materialize(got, key=["user", "e"])
        _same(got.select(["user", "n", "e"]), want)


@pytest.mark.parametrize("engine", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_cumulating_windows_give_duckdb_s_groups(engine: str) -> None:
    """CUMULATE(step 5 s, size 20 s): [0, 5), [0, 10), [0, 15), [0, 20), [20, 25) ..."""
    got = _pipeline(engine, batch_rows=200 if engine == "cudasim" else 64).sql("""
        SELECT user, window_start, window_end, COUNT(*) AS n, SUM(amount) AS total
        FROM TABLE(CUMULATE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND,
                            INTERVAL '20' SECOND))
        GROUP BY user, window_start, window_end""").collect()
    _same(got, _duck("""
        SELECT user, s AS window_start, s + k * 5000 AS window_end, COUNT(*) AS n,
               SUM(amount) AS total
        FROM (SELECT *, ts // 20000 * 20000 AS s FROM clicks), range(1, 5) t(k)
        WHERE s + k * 5000 > ts GROUP BY ALL"""))


def test_a_window_over_a_window_s_rows_groups_by_its_window() -> None:
    """Nexmark q5's shape: the most clicks of any user in each hopping window."""
    got = _pipeline().sql("""
        SELECT MAX(n) AS most, starttime, endtime FROM (
            SELECT user, COUNT(*) AS n, window_start AS starttime, window_end AS endtime
            FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND,
                           INTERVAL '10' SECOND))
            GROUP BY user, window_start, window_end) AS c
        GROUP BY starttime, endtime""").collect()
    _same(got, _duck("""
        WITH c AS (SELECT user, (ts // 5000 - j) * 5000 AS s, COUNT(*) AS n
                   FROM clicks, range(2) t(j) GROUP BY ALL)
        SELECT MAX(n) AS most, s AS starttime, s + 10000 AS endtime FROM c GROUP BY s"""))


# -- running aggregations ---------------------------------------------------------------------
def test_group_by_without_a_window_is_a_changelog_of_duckdb_s_groups() -> None:
    out = _pipeline().sql("""
        SELECT page, COUNT(*) AS n, COUNT(DISTINCT user) AS users,
               SUM(amount) FILTER (WHERE amount > 50) AS big
        FROM clicks GROUP BY page HAVING COUNT(*) > 100""").collect()
    assert "op" in out.column_names
    got = gs.materialize(out, key="page").select(["page", "n", "users", "big"])
    _same(got, _duck("""
        SELECT page, COUNT(*) AS n, COUNT(DISTINCT user) AS users,
               SUM(amount) FILTER (WHERE amount > 50) AS big
        FROM clicks GROUP BY page HAVING COUNT(*) > 100"""))


def test_select_distinct_emits_each_distinct_row_once() -> None:
    out = _pipeline().sql("SELECT DISTINCT user % 4 AS b, page FROM clicks").collect()
    assert set(out["op"].to_pylist()) == {"+I"}  # a distinct row never changes
    _same(out.drop(["op"]), _duck("SELECT DISTINCT user % 4 AS b, page FROM clicks"))


def test_an_aggregate_of_the_whole_stream_and_a_computed_key() -> None:
    total = _pipeline().sql("SELECT COUNT(*) AS n, AVG(amount) AS mean FROM clicks").collect()
    got = gs.materialize(total, key=None)
    rows = got.select(["n", "mean"]).to_pylist()
    last = _duck("SELECT COUNT(*) AS n, AVG(amount) AS mean FROM clicks").to_pylist()[0]
    assert rows[-1]["n"] == last["n"] and rows[-1]["mean"] == pytest.approx(last["mean"])
    keyed = _pipeline().sql("""
        SELECT user % 3 AS bucket, MAX(amount) AS top FROM clicks GROUP BY user % 3"""
                            ).collect()
    _same(gs.materialize(keyed, key="bucket").select(["bucket", "top"]),
          _duck("SELECT user % 3 AS bucket, MAX(amount) AS top FROM clicks GROUP BY 1"))


# -- joins ------------------------------------------------------------------------------------
def test_a_regular_join_with_conditions_in_where_and_on() -> None:
    got = _pipeline().sql("""
        SELECT c.user, u.country, c.amount FROM clicks c, users u
        WHERE c.user = u.id AND u.country <> 'us' AND c.amount > 90""").collect()
    _same(got, _duck("""SELECT c.user, u.country, c.amount FROM clicks c JOIN users u
                        ON c.user = u.id WHERE u.country <> 'us' AND c.amount > 90"""))


def test_three_way_and_untimed_regular_joins() -> None:
    """A regular join reads no event time: its inputs may have none, and its rows (which
    have none) join again."""
    p = gs.Pipeline(engine="cpu")
    p.source(gs.from_arrow(_events(1), batch_rows=70), name="clicks")  # no event time
    p.source(gs.from_arrow(_users(1), batch_rows=4), name="users")
    p.source(gs.from_arrow(pa.table({"code": ["de", "fr"], "name": ["Germany", "France"]})),
             name="countries")
    got = p.sql("""
        SELECT c.user, c.amount, n.name FROM clicks c
        JOIN users u ON c.user = u.id
        JOIN countries n ON u.country = n.code
        WHERE c.amount > 60""").collect()
    con = duckdb.connect()
    con.register("clicks", _events(1))
    con.register("users", _users(1))
    con.register("countries", pa.table({"code": ["de", "fr"], "name": ["Germany", "France"]}))
    _same(got, con.sql("""SELECT c.user, c.amount, n.name FROM clicks c
                          JOIN users u ON c.user = u.id JOIN countries n ON u.country = n.code
                          WHERE c.amount > 60""").to_arrow_table())


def test_a_left_join_is_a_changelog_of_duckdb_s_rows() -> None:
    out = _pipeline().sql("""
        SELECT u.id, c.amount FROM users u LEFT JOIN clicks c
        ON u.id = c.user AND c.amount > 95""").collect()
    got = gs.materialize(out).select(["id", "amount"])
    _same(got, _duck("""SELECT u.id, c.amount FROM users u LEFT JOIN clicks c
                        ON u.id = c.user AND c.amount > 95"""))


def test_time_bounds_make_an_interval_join() -> None:
    text = """SELECT u.id, a.ts, u.ts AS joined FROM clicks a JOIN users u ON a.user = u.id
              WHERE a.ts BETWEEN u.ts - INTERVAL '5' SECOND AND u.ts + INTERVAL '2' SECOND"""
    p = _pipeline()
    out = p.sql(text)
    assert "interval_join" in p.explain()
    _same(out.collect(), _duck(text.replace("INTERVAL '5' SECOND", "5000")
                               .replace("INTERVAL '2' SECOND", "2000")))


def test_two_windowing_functions_joined_on_their_window_make_a_window_join() -> None:
    p = _pipeline()
    got = p.sql("""
        SELECT L.user, L.ts, R.country, L.window_start, R.window_end FROM
            TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) L
        JOIN TABLE(TUMBLE(TABLE users, DESCRIPTOR(ts), INTERVAL '10' SECOND)) R
        ON L.user = R.id AND L.window_start = R.window_start
           AND L.window_end = R.window_end""").collect()
    assert "window_join" in p.explain()
    _same(got, _duck("""
        SELECT c.user, c.ts, u.country, c.ts // 10000 * 10000 AS window_start,
               c.ts // 10000 * 10000 + 10000 AS window_end
        FROM clicks c JOIN users u ON c.user = u.id AND c.ts // 10000 = u.ts // 10000"""))
    with pytest.raises(SqlError, match="same window"):
        _pipeline().sql("""
            SELECT L.user FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) L
            JOIN TABLE(TUMBLE(TABLE users, DESCRIPTOR(ts), INTERVAL '5' SECOND)) R
            ON L.user = R.id AND L.window_start = R.window_start
               AND L.window_end = R.window_end""")


def test_a_lookup_join_for_system_time_as_of() -> None:
    p = _pipeline()
    p.table(gs.from_arrow(_users(1).drop(["ts"])), key="id", name="dim")
    got = p.sql("""
        SELECT c.user, d.country FROM (SELECT *, PROCTIME() AS pt FROM clicks) c
        JOIN dim FOR SYSTEM_TIME AS OF c.pt AS d ON c.user = d.id
        WHERE c.amount < 10""").collect()
    assert "join_table" in p.explain()
    _same(got, _duck("""SELECT c.user, u.country FROM clicks c JOIN users u
                        ON c.user = u.id WHERE c.amount < 10"""))


# -- OVER, top-N ------------------------------------------------------------------------------
@pytest.mark.parametrize("frame, duck", [
    ("RANGE BETWEEN INTERVAL '5' SECOND PRECEDING AND CURRENT ROW",
     "RANGE BETWEEN 5000 PRECEDING AND CURRENT ROW"),
    ("ROWS BETWEEN 3 PRECEDING AND CURRENT ROW", "ROWS BETWEEN 3 PRECEDING AND CURRENT ROW"),
    ("ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
     "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
])
def test_over_aggregations(frame: str, duck: str) -> None:
    over = "OVER (PARTITION BY user ORDER BY ts {})"
    got = _pipeline().sql(f"""
        SELECT user, ts, COUNT(*) {over.format(frame)} AS n,
               SUM(amount) {over.format(frame)} AS spent FROM clicks""").collect()
    want = _duck(f"""
        SELECT user, ts, COUNT(*) {over.format(duck)} AS n,
               SUM(amount) {over.format(duck)} AS spent FROM clicks""")
    if "ROWS" in frame:  # rows of one user at one ms: in arrival order (DuckDB: any)
        dup = _duck("SELECT COUNT(*) AS d FROM (SELECT user, ts FROM clicks GROUP BY ALL "
                    "HAVING COUNT(*) > 1)").to_pylist()[0]["d"]
        assert dup == 0, "the data has ties the ROWS frame orders arbitrarily"
    _same(got, want)


def test_top_n_over_the_whole_stream_and_per_window() -> None:
    text = """SELECT user, page, amount FROM (
                  SELECT *, ROW_NUMBER() OVER (PARTITION BY page ORDER BY amount DESC, ts)
                      AS rn FROM clicks) WHERE rn <= 3"""
    got = gs.materialize(_pipeline().sql(text).collect()).select(["user", "page", "amount"])
    _same(got, _duck(text.replace(", ts)", ", ts, user)")))
    per_window = _pipeline().sql("""
        SELECT * FROM (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                                         ORDER BY n DESC) AS rn
            FROM (SELECT user, window_start, window_end, COUNT(*) AS n FROM TABLE(
                      TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '20' SECOND))
                  GROUP BY user, window_start, window_end))
        WHERE rn <= 1""").collect()
    assert per_window.column_names == ["user", "window_start", "window_end", "n", "rn"]
    most = _duck("SELECT ts // 20000 * 20000 AS s, MAX(c) AS n FROM (SELECT user, ts, "
                 "COUNT(*) OVER (PARTITION BY user, ts // 20000) AS c FROM clicks) GROUP BY 1")
    assert sorted(zip(per_window["window_start"].to_pylist(), per_window["n"].to_pylist(),
                      strict=True)) == sorted(map(tuple, most.to_pylist() and [
                          (r["s"], r["n"]) for r in most.to_pylist()]))
    assert set(per_window["rn"].to_pylist()) == {1}


# -- composition ------------------------------------------------------------------------------
def test_ctes_views_subqueries_and_union_all() -> None:
    p = _pipeline()
    got = p.sql("""
        CREATE VIEW big AS SELECT user AS who, amount, ts FROM clicks WHERE amount > 80;
        WITH small AS (SELECT user AS who, amount, ts FROM clicks WHERE amount < 5)
        SELECT who, amount FROM (SELECT * FROM big UNION ALL SELECT * FROM small) x
        WHERE who < 6""").collect()
    _same(got, _duck("SELECT user AS who, amount FROM clicks WHERE (amount > 80 OR "
                     "amount < 5) AND user < 6"))


def test_create_table_gives_a_registered_source_its_watermark(tmp_path: Any) -> None:
    path = tmp_path / "clicks.parquet"
    pq.write_table(_events(1), path)
    p = gs.Pipeline(engine="cpu")
    got = p.sql(f"""
        CREATE TABLE c (user BIGINT, amount DOUBLE, ts BIGINT,
                        WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
            WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'parquet');
        SELECT user, COUNT(*) AS n, SUM(amount) AS total, window_start, window_end
        FROM TABLE(TUMBLE(TABLE c, DESCRIPTOR(ts), INTERVAL '10' SECOND))
        GROUP BY user, window_start, window_end""").collect()
    _same(got, _duck(TUMBLE_DUCK))
    q = gs.Pipeline(engine="cpu")
    pending = q.sql("""
        CREATE TABLE c (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND);
        SELECT user, COUNT(*) AS n, SUM(amount) AS total, window_start, window_end
        FROM TABLE(TUMBLE(TABLE c, DESCRIPTOR(ts), INTERVAL '10' SECOND))
        GROUP BY user, window_start, window_end""",
        sources={"c": gs.from_arrow(_events(1), batch_rows=50)}).collect()
    _same(pending, _duck(TUMBLE_DUCK))


@settings(max_examples=8, deadline=None)
@given(batch_rows=st.integers(1, 300))
def test_results_do_not_depend_on_batching(batch_rows: int) -> None:
    text = """SELECT page, COUNT(*) AS n, window_start FROM TABLE(
                  HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND))
              GROUP BY page, window_start, window_end"""
    got = _pipeline(batch_rows=batch_rows).sql(text).collect()
    assert _rows(got) == _rows(_pipeline(batch_rows=600).sql(text).collect())


@pytest.mark.cudasim
def test_joins_and_running_aggregations_under_the_simulator() -> None:
    text = """SELECT u.country, COUNT(*) AS n FROM clicks c JOIN users u ON c.user = u.id
              WHERE c.amount > 70 GROUP BY u.country"""
    got = gs.materialize(_pipeline("cudasim", batch_rows=200).sql(text).collect(),
                         key="country").select(["country", "n"])
    _same(got, _duck(text))


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, where, words", [
    ("SELECT user FROM clickz", (1, 18), "unknown table 'clickz' (did you mean 'clicks'?)"),
    ("SELECT user,\n       amout FROM clicks", (2, 8), "unknown column 'amout'"),
    ("SELECT user FROM clicks ORDER BY ts", (1, 34), "rank with ROW_NUMBER()"),
    ("SELECT user, COUNT(*) FROM clicks GROUP BY page", (1, 8),
     "neither grouped nor aggregated"),
    ("SELECT user FROM clicks WHERE COUNT(*) > 1", (1, 31), "HAVING"),
    ("SELECT c.user FROM clicks c JOIN users u ON c.amount > u.ts", (1, 34),
     "at least one equality"),
    ("SELECT COUNT(*) FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(amount), "
     "INTERVAL '1' SECOND)) GROUP BY window_start, window_end", (1, 60), "event-time column"),
    ("SELECT user FROM clicks WHERE", (1, 25), "cannot parse"),
    ("SELECT * FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' SECOND))",
     None, "GROUP BY window_start, window_end"),
])
def test_errors_name_the_line_the_column_and_the_fix(
        text: str, where: tuple[int, int] | None, words: str) -> None:
    with pytest.raises(SqlError) as info:
        _pipeline().sql(text)
    assert words in str(info.value)
    if where is not None:
        assert (info.value.line, info.value.column) == where, str(info.value)
        assert str(info.value).startswith(f"SQL line {where[0]}, column {where[1]}")


# -- what a review found (each failed before its fix) -----------------------------------------
def test_top_n_orders_by_the_input_column_not_an_output_alias() -> None:
    text = """SELECT page, amount FROM (
                  SELECT page, -amount AS amount, ts,
                         ROW_NUMBER() OVER (PARTITION BY page ORDER BY amount DESC, ts) AS rn
                  FROM clicks) WHERE rn <= 2"""
    got = gs.materialize(_pipeline().sql(text).collect()).select(["page", "amount"])
    _same(got, _duck("""SELECT page, -amount AS amount FROM (SELECT *, ROW_NUMBER() OVER (
                            PARTITION BY page ORDER BY amount DESC, ts) AS rn FROM clicks)
                        WHERE rn <= 2"""))


def test_a_left_lookup_join_pads_the_table_s_key_with_null() -> None:
    p = _pipeline()
    p.table(gs.from_arrow(pa.table({"user": [1, 2, 3], "tier": ["a", "b", "c"]})),
            key="user", name="tiers")
    got = p.sql("""SELECT c.user, t.user AS tuser, t.tier FROM clicks c
                   LEFT JOIN tiers t ON c.user = t.user""").collect()
    con = duckdb.connect()
    con.register("clicks", _events(1))
    con.register("tiers", pa.table({"user": [1, 2, 3], "tier": ["a", "b", "c"]}))
    _same(got, con.sql("""SELECT c.user, t.user AS tuser, t.tier FROM clicks c
                          LEFT JOIN tiers t ON c.user = t.user""").to_arrow_table())
    with pytest.raises(SqlError, match="lookup table in a LEFT JOIN"):
        p.sql("""SELECT c.user FROM clicks c LEFT JOIN tiers t
                 ON c.user = t.user AND t.tier <> 'a'""")


def test_unnamed_expressions_are_expr_n_and_star_shows_no_internal_column() -> None:
    p = _pipeline()
    grouped = p.sql("SELECT user % 3, COUNT(*) FROM clicks GROUP BY user % 3")
    assert [n for n in grouped.schema.names if n != "op"] == ["EXPR$0", "EXPR$1"]
    over = p.sql("""SELECT *, COUNT(*) OVER (PARTITION BY user ORDER BY ts
                    ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS n FROM clicks""")
    assert over.schema.names == ["user", "page", "amount", "ts", "n"]
    nested = p.sql("SELECT * FROM (SELECT page, COUNT(*) AS n FROM clicks GROUP BY page) x")
    assert nested.schema.names == ["page", "n", "op"]


def test_where_on_a_windowing_function_filters_its_input_and_interval_first() -> None:
    got = _pipeline().sql("""
        SELECT user, COUNT(*) AS n, SUM(amount) AS total, window_start, window_end
        FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
        WHERE amount > 20 GROUP BY user, window_start, window_end""").collect()
    _same(got, _duck(TUMBLE_DUCK.replace("FROM clicks", "FROM clicks WHERE amount > 20")))
    shifted = _pipeline().sql("SELECT INTERVAL '1' SECOND + ts AS t FROM clicks").collect()
    assert shifted["t"].to_pylist() == [t + 1000 for t in _events(1)["ts"].to_pylist()]


def test_column_lists_name_a_subquery_s_and_a_cte_s_columns() -> None:
    got = _pipeline().sql("""
        WITH t(who, paid) AS (SELECT user, amount FROM clicks)
        SELECT s.w, s.p FROM (SELECT who, paid FROM t) AS s(w, p) WHERE s.p > 90""").collect()
    _same(got, _duck("SELECT user AS w, amount AS p FROM clicks WHERE amount > 90"))


def test_three_way_joins_and_window_times_name_their_error() -> None:
    with pytest.raises(SqlError, match=r"TUMBLE_ROWTIME\(\) .* not supported") as info:
        _pipeline().sql("""SELECT TUMBLE_ROWTIME(ts, INTERVAL '10' SECOND) AS e, COUNT(*) AS n
                           FROM clicks GROUP BY TUMBLE(ts, INTERVAL '10' SECOND)""")
    assert info.value.line == 1
    with pytest.raises(SqlError, match=r"JOIN: .*itself") as joined:
        _pipeline().sql("""SELECT x.user FROM clicks x JOIN clicks y ON x.user = y.user
                           AND y.ts BETWEEN x.ts AND x.ts + INTERVAL '1' SECOND""")
    assert joined.value.line == 1


def test_top_n_of_a_window_s_rows_must_partition_by_the_window() -> None:
    """gpustream ranks a window aggregation's rows per window; a ROW_NUMBER without the
    window in PARTITION BY means across windows (Flink), so it is refused, not changed."""
    with pytest.raises(SqlError, match="PARTITION BY window_start, window_end"):
        _pipeline().sql("""
            SELECT * FROM (
                SELECT *, ROW_NUMBER() OVER (ORDER BY n DESC) AS rn
                FROM (SELECT user, window_start, window_end, COUNT(*) AS n FROM TABLE(
                          TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '20' SECOND))
                      GROUP BY user, window_start, window_end))
            WHERE rn <= 1""")
