"""SQL expressions and aggregates (sqlglot trees) translated by gpustream.sql.scalar, run
through a pipeline and checked against DuckDB running the same SQL on the same rows."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from sqlglot import exp

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.sql.dialect import parse
from gpustream.sql.errors import SqlError, sql_error
from gpustream.sql.scalar import Scalars, interval_ms, is_aggregate, sql_type

_WORDS = ["apple", "a,b,c", " pad ", "abc-12", "", "x,,y", "Banana", "aaa", "cab,", "a_c%",
          "(x)+", "(xx)++"]


def _table(seed: int, n: int = 800) -> pa.Table:
    rng = np.random.default_rng(seed)

    def nulls() -> np.ndarray:
        return rng.random(n) < 0.1

    ms = rng.integers(946_684_800_000, 1_893_456_000_000, n)  # 2000 .. 2030
    return pa.table({
        "k": pa.array(rng.integers(0, 7, n), pa.int64()),
        "a": pa.array(rng.integers(-20, 20, n), pa.int64(), mask=nulls()),
        "b": pa.array(rng.integers(-5, 6, n), pa.int32(), mask=nulls()),
        "price": pa.array(rng.normal(50, 30, n), pa.float64(), mask=nulls()),
        "s": pa.array([_WORDS[i] for i in rng.integers(0, len(_WORDS), n)], pa.string(),
                      mask=nulls()),
        "flag": pa.array(rng.random(n) < 0.5, pa.bool_(), mask=nulls()),
        "ts": pa.array(ms, pa.timestamp("ms"), mask=nulls()),
        "tus": pa.array(ms * 1000 + rng.integers(0, 1000, n), pa.timestamp("us")),
        "et": pa.array(np.arange(n) * 1_000, pa.timestamp("ms")),  # one hour's event times
    })


def _resolve_in(table: pa.Table, text: str) -> Any:
    def resolve(c: exp.Column) -> str:
        if c.name not in table.column_names:
            raise sql_error(f"unknown column {c.name!r}; the columns are "
                            f"{', '.join(table.column_names)}", c, text)
        return c.name
    return resolve


def _same(got: list[Any], want: list[Any], what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(g, float) and isinstance(w, float | int) and w is not None:
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9), (what, i, g, w)
        else:
            assert g == w, (what, i, g, w)


#: our SQL -> DuckDB's spelling of the same (None: the same text)
_CASES: dict[str, str | None] = {
    "a + b * 2 - 1": None,
    "price * 0.908": None,
    "a / b": "a / NULLIF(b, 0)",  # by zero: null (DuckDB: an error)
    "a % b": "a % NULLIF(b, 0)",
    "MOD(a, 3)": "a % 3",
    "MOD(a, -3)": "a % -3",
    "-a": None,
    "ABS(a - 5)": None,
    "a = 3": None,
    "a <> 3": None,
    "a != 3": "a <> 3",
    "a < b": None,
    "price >= 40.5": None,
    "a > 0 AND b < 0 OR NOT flag": None,
    "a IS NULL": None,
    "s IS NOT NULL": None,
    "flag IS TRUE": None,
    "a IN (1, 2, -3)": None,
    "a NOT IN (1, 2)": None,
    "s IN ('apple', 'aaa')": None,
    "a NOT IN (1, NULL)": None,
    "a BETWEEN -5 AND 5": None,
    "a NOT BETWEEN -5 AND 5": None,
    "ts BETWEEN TIMESTAMP '2010-01-01 00:00:00' AND TIMESTAMP '2020-06-30 12:00:00.500'": None,
    "s LIKE 'a%'": None,
    "s LIKE '%,_'": None,
    "s NOT LIKE '_a%'": None,
    "s LIKE 'a_c%'": None,
    "s LIKE '(%)+'": None,  # regular expression characters are plain text
    "s = 'apple'": None,
    "s <> 'apple'": None,
    "CASE WHEN a > 10 THEN 'high' WHEN a > 0 THEN 'mid' ELSE 'low' END": None,
    "CASE WHEN a > 10 THEN a END": None,
    "CASE b WHEN 1 THEN 'one' WHEN 2 THEN 'two' ELSE 'many' END": None,
    "COALESCE(a, 0)": None,
    "IFNULL(price, -1.5)": "COALESCE(price, -1.5)",
    "COALESCE(a, b, 7)": None,
    "COALESCE(s, 'none')": None,
    "CAST(a AS DOUBLE) / 4": None,
    "CAST(price AS INT)": "CAST(trunc(price) AS INTEGER)",
    "CAST(b AS BIGINT) * 3000000000": None,
    "LOWER(s)": None,
    "UPPER(s)": None,
    "CHAR_LENGTH(s)": "length(s)",
    "LENGTH(s)": None,
    "SUBSTRING(s, 2, 3)": None,
    "SUBSTRING(s FROM 2 FOR 3)": "substring(s, 2, 3)",
    "SUBSTRING(s, 3)": None,
    "REPLACE(s, 'a', 'A')": None,
    "REGEXP_EXTRACT(s, '([a-c]+)-?([0-9]*)', 1)":
        "NULLIF(regexp_extract(s, '([a-c]+)-?([0-9]*)', 1), '')",
    "REGEXP_EXTRACT(s, '[0-9]+')": "NULLIF(regexp_extract(s, '[0-9]+'), '')",
    "REGEXP(s, '^a.c')": "regexp_matches(s, '^a.c')",
    "SPLIT_INDEX(s, ',', 0)": "string_split(s, ',')[1]",
    "SPLIT_INDEX(s, ',', 1)": "string_split(s, ',')[2]",
    "SPLIT_INDEX(s, ',', 2)": "string_split(s, ',')[3]",
    "CONCAT(s, '-', s)": "s || '-' || s",
    "s || '!'": None,
    "TRIM(s)": None,
    "LTRIM(s)": None,
    "RTRIM(s)": None,
    "TRIM(BOTH 'a' FROM s)": "trim(s, 'a')",
    "TRIM(LEADING 'a' FROM s)": "ltrim(s, 'a')",
    "COUNT_CHAR(s, 'a')": "length(s) - length(replace(s, 'a', ''))",
    "COUNT_CHAR(s, ',')": "length(s) - length(replace(s, ',', ''))",
    "YEAR(ts)": None,
    "MONTH(ts)": None,
    "DAYOFMONTH(ts)": None,
    "HOUR(ts)": None,
    "MINUTE(ts)": None,
    "SECOND(ts)": None,
    "DAYOFWEEK(ts)": "dayofweek(ts) + 1",
    "EXTRACT(HOUR FROM ts)": None,
    "EXTRACT(DOW FROM ts)": "extract(dow FROM ts) + 1",
    "EXTRACT(YEAR FROM ts) * 100 + EXTRACT(MONTH FROM ts)": None,
    "DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm')": "strftime(ts, '%Y-%m-%d %H:%M')",
    "DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm:ss')": "strftime(ts, '%Y-%m-%d %H:%M:%S')",
    "DATE_FORMAT(ts, 'HH:mm:ss.SSS')": "strftime(ts, '%H:%M:%S.%g')",
    "DATE_FORMAT(ts, 'dd/MM/yy ''at'' HH')": "strftime(ts, '%d/%m/%y at %H')",
    "DATE_FORMAT(tus, 'HH:mm:ss.SSS')": "strftime(tus, '%H:%M:%S.%g')",
    "DATE_FORMAT(tus, 'mm:ss')": "strftime(tus, '%M:%S')",
    "ts + INTERVAL '10' SECOND": None,
    "ts - INTERVAL '1:30' MINUTE TO SECOND": "ts - INTERVAL 90 SECOND",
    "HOUR(ts + INTERVAL '2' HOUR)": None,
}


def _run(table: pa.Table, exprs: list[str], engine: str = "cpu") -> pa.Table:
    text = f"SELECT {', '.join(exprs)} FROM t"
    scalars = Scalars(text, _resolve_in(table, text))
    p = gs.Pipeline(engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=300), name="t")
    return s.select(**{f"c{i}": scalars.expr(e)
                       for i, e in enumerate(parse(text)[0].expressions)}).collect()


def _duckdb(table: pa.Table, exprs: list[str]) -> list[list[Any]]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("t", table)
    rows = con.sql(f"SELECT {', '.join(exprs)} FROM t").fetchall()
    return [[r[i] for r in rows] for i in range(len(exprs))]


@pytest.mark.parametrize("seed", [1, 2])
def test_expressions_match_duckdb(seed: int) -> None:
    table = _table(seed)
    ours = list(_CASES)
    got = _run(table, ours)
    want = _duckdb(table, [theirs or mine for mine, theirs in _CASES.items()])
    for i, mine in enumerate(ours):
        _same(got[f"c{i}"].to_pylist(), want[i], mine)


def test_result_types() -> None:
    got = _run(_table(3, 50), ["price * 0.908", "a + 1", "CAST(a AS INT)", "DATE_FORMAT(ts, 'yyyy')",
                               "ts + INTERVAL '1' DAY", "s LIKE 'a%'", "CAST(a AS REAL)"])
    assert [f.type for f in got.schema] == [
        pa.float64(), pa.int64(), pa.int32(), pa.string(), pa.timestamp("ms"), pa.bool_(),
        pa.float32()]


_DEVICE_CASES = ["a * 2 + b", "MOD(a, -3)", "CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END",
                 "COALESCE(a, 0)", "SPLIT_INDEX(s, ',', 1)", "HOUR(ts)", "s LIKE 'a%'"]


def test_expressions_match_duckdb_on_each_engine(backend: gs.Backend) -> None:
    table = _table(4, 60)
    got = _run(table, _DEVICE_CASES, engine=backend.name)
    want = _duckdb(table, [_CASES.get(c) or c for c in _DEVICE_CASES])
    for i, mine in enumerate(_DEVICE_CASES):
        _same(got[f"c{i}"].to_pylist(), want[i], mine)


_AGGS: dict[str, str | None] = {
    "COUNT(*)": None,
    "COUNT(1)": "COUNT(*)",
    "COUNT(a)": None,
    "COUNT(DISTINCT a)": None,
    "COUNT(DISTINCT s) FILTER (WHERE price > 50)": None,
    "COUNT(*) FILTER (WHERE s LIKE 'a%')": None,
    "SUM(a)": None,
    "SUM(a * b) FILTER (WHERE flag)": None,
    "AVG(price)": None,
    "MIN(a)": None,
    "MAX(price) FILTER (WHERE a > 0)": None,
    "STDDEV(price)": "stddev_samp(price)",
    "VARIANCE(a)": "var_samp(a)",
    "FIRST_VALUE(a)": "first(a ORDER BY et) FILTER (WHERE a IS NOT NULL)",
    "LAST_VALUE(price)": "last(price ORDER BY et) FILTER (WHERE price IS NOT NULL)",
    "APPROX_COUNT_DISTINCT(a)": "COUNT(DISTINCT a)",
}


def test_aggregates_match_duckdb_group_by() -> None:
    table = _table(5, 1500)
    text = f"SELECT {', '.join(_AGGS)} FROM t GROUP BY k"
    scalars = Scalars(text, _resolve_in(table, text))
    nodes = parse(text)[0].expressions
    assert all(is_aggregate(n) for n in nodes)
    p = gs.Pipeline(engine="cpu")
    got = (p.source(gs.from_arrow(table, batch_rows=400), name="t", event_time="et")
           .key_by("k").window(gs.Tumbling("1h"))
           .agg(**{f"c{i}": scalars.agg(n) for i, n in enumerate(nodes)})
           .collect().sort_by("k"))
    con = duckdb.connect()
    con.register("t", table)
    theirs = ", ".join(t or m for m, t in _AGGS.items())
    rows = con.sql(f"SELECT k, {theirs} FROM t GROUP BY k ORDER BY k").fetchall()
    assert got["k"].to_pylist() == [r[0] for r in rows]
    for i, mine in enumerate(_AGGS):
        want = [r[i + 1] for r in rows]
        if mine.startswith("APPROX"):  # HyperLogLog: within 3 % here
            assert all(abs(g - w) <= 0.03 * w for g, w in
                       zip(got[f"c{i}"].to_pylist(), want, strict=True)), mine
        else:
            _same(got[f"c{i}"].to_pylist(), want, mine)


def test_running_aggregate_with_filter_matches_duckdb() -> None:
    table = _table(6, 600)
    text = "SELECT COUNT(DISTINCT b) FILTER (WHERE NOT flag), AVG(a) FROM t GROUP BY k"
    scalars = Scalars(text, _resolve_in(table, text))
    a1, a2 = (scalars.agg(n) for n in parse(text)[0].expressions)
    p = gs.Pipeline(engine="cpu")
    log = (p.source(gs.from_arrow(table, batch_rows=100), name="t", event_time="et")
           .key_by("k").agg(n=a1, m=a2).collect())
    got = gs.materialize(log, key="k").sort_by("k")
    con = duckdb.connect()
    con.register("t", table)
    rows = con.sql("SELECT k, COUNT(DISTINCT b) FILTER (WHERE NOT flag), AVG(a) FROM t "
                   "GROUP BY k ORDER BY k").fetchall()
    assert got["k"].to_pylist() == [r[0] for r in rows]
    assert got["n"].to_pylist() == [r[1] for r in rows]
    _same(got["m"].to_pylist(), [r[2] for r in rows], "AVG(a)")


def test_min_of_strings_is_refused_by_the_planner() -> None:
    table = _table(7, 20)
    text = "SELECT MIN(s) FROM t GROUP BY k"
    agg = Scalars(text, _resolve_in(table, text)).agg(parse(text)[0].expressions[0])
    p = gs.Pipeline(engine="cpu")
    with pytest.raises(PlanError, match=r"min needs numbers or timestamps.*use first"):
        (p.source(gs.from_arrow(table), name="t", event_time="et").key_by("k")
         .window(gs.Tumbling("1h")).agg(m=agg).collect())


def test_is_aggregate() -> None:
    text = ("SELECT COUNT(*), SUM(a) FILTER (WHERE a > 0), SUM(a) OVER (PARTITION BY k), "
            "a + 1, LOWER(s), FIRST_VALUE(a), APPROX_COUNT_DISTINCT(a) FROM t")
    nodes = parse(text)[0].expressions
    assert [is_aggregate(n) for n in nodes] == [True, True, False, False, False, True, True]
    assert not is_aggregate(nodes[2].this)  # the SUM under OVER: a window function


def _error(text: str, use: str = "expr") -> SqlError:
    table = _table(8, 5)
    scalars = Scalars(text, _resolve_in(table, text))
    node = parse(text)[0].expressions[-1]
    with pytest.raises(SqlError) as err:
        getattr(scalars, use)(node)
    return err.value


def test_unknown_function_is_placed_and_suggests() -> None:
    e = _error("SELECT a,\n       LOWR(s) FROM t")
    assert (e.line, e.column) == (2, 8)
    assert str(e).startswith("SQL line 2, column 8 ('LOWR(s'): unknown function LOWR(); "
                             "did you mean LOWER? the functions are ABS, CAST,")
    e = _error("SELECT a, 1 + SQRT(a) FROM t")
    assert (e.line, e.column) == (1, 15)
    assert "unknown function SQRT(); the functions are ABS, CAST" in str(e)
    assert "DATE_FORMAT" in str(e)


def test_unknown_column_from_resolve() -> None:
    e = _error("SELECT\n  a + prise FROM t")
    assert (e.line, e.column) == (2, 7)
    assert "unknown column 'prise'; the columns are k, a, b, price" in str(e)


def test_aggregate_in_a_scalar_place() -> None:
    e = _error("SELECT a,\n  CASE WHEN COUNT(*) > 1 THEN 1 END FROM t")
    assert (e.line, e.column) == (2, 13)
    assert "aggregate COUNT() is not allowed here: aggregates belong in the SELECT list" in str(e)
    e = _error("SELECT a + SUM(a) OVER (PARTITION BY k) FROM t")
    assert "a window function (... OVER (...)) is not allowed here" in str(e)


@pytest.mark.parametrize(("text", "use", "message"), [
    ("SELECT a FROM t", "agg", r"'a' is not an aggregate; the aggregates are COUNT"),
    ("SELECT STDDEV_POP(a) FROM t", "agg", r"STDDEV_POP is not supported; STDDEV / STDDEV_SAMP"),
    ("SELECT SUM(DISTINCT a) FROM t", "agg", r"COUNT\(DISTINCT x\) of one expression"),
    ("SELECT a = NULL FROM t", "expr", r"write x IS NULL"),
    ("SELECT DATE_FORMAT(ts, 'yyyy-MM-dd EEE') FROM t", "expr",
     r"column 24 .*the pattern letters 'EEE' are not supported; use yyyy"),
    ("SELECT SPLIT_INDEX(s, ',', -1) FROM t", "expr", r"an index from 0"),
    ("SELECT SUBSTRING(s, 0, 2) FROM t", "expr", r"the start counts from 1, got 0"),
    ("SELECT s LIKE 'a!%' ESCAPE '!' FROM t", "expr", r"ESCAPE is not supported"),
    ("SELECT ts + INTERVAL '1' MONTH FROM t", "expr", r"MONTH has no fixed length"),
    ("SELECT CAST(a AS DATE) FROM t", "expr", r"the type DATE is not supported; use one of"),
    ("SELECT a IN (b, 2) FROM t", "expr", r"column 14 .*a value of IN \(...\) must be a constant"),
    ("SELECT COUNT_CHAR(s, 'ab') FROM t", "expr", r"COUNT_CHAR counts one character"),
    ("SELECT INTERVAL '1' SECOND FROM t", "expr", r"added to or subtracted from a timestamp"),
])
def test_refusals_name_the_fix(text: str, use: str, message: str) -> None:
    with pytest.raises(SqlError, match=message):
        e = _error(text, use)
        raise e


def test_interval_and_type_names() -> None:
    text = ("SELECT INTERVAL '10' SECOND, INTERVAL '2' MINUTES, INTERVAL '1' HOUR, "
            "INTERVAL '1' DAY, INTERVAL '250' MILLISECOND, INTERVAL '1:30' MINUTE TO SECOND, "
            "INTERVAL '5 SECONDS' FROM t")
    got = [interval_ms(n, text) for n in parse(text)[0].expressions]
    assert got == [10_000, 120_000, 3_600_000, 86_400_000, 250, 90_000, 5_000]
    types = ("BIGINT INT INTEGER SMALLINT TINYINT DOUBLE FLOAT REAL DECIMAL(10,2) VARCHAR "
             "STRING CHAR(3) BOOLEAN TIMESTAMP(3) TIMESTAMP TIMESTAMP(6) TIMESTAMP_LTZ(3)")
    text = "SELECT " + ", ".join(f"CAST(a AS {t})" for t in types.split()) + " FROM t"
    got_types = [sql_type(n.to, text) for n in parse(text)[0].expressions]
    assert got_types == ["int64", "int32", "int32", "int16", "int8", "float64", "float32",
                         "float32", "float64", "string", "string", "string", "bool",
                         "timestamp[ms]", "timestamp[ms]", "timestamp[us]", "timestamp[ms]"]


def test_filtered_aggregates_on_each_engine(backend: gs.Backend) -> None:
    table = _table(9, 80)
    aggs = ["COUNT(*)", "COUNT(DISTINCT a) FILTER (WHERE price > 50)", "AVG(price)",
            "MAX(a) FILTER (WHERE s LIKE 'a%')"]
    text = f"SELECT {', '.join(aggs)} FROM t GROUP BY k"
    scalars = Scalars(text, _resolve_in(table, text))
    p = gs.Pipeline(engine=backend.name)
    got = (p.source(gs.from_arrow(table, batch_rows=40), name="t", event_time="et")
           .key_by("k").window(gs.Tumbling("1h"))
           .agg(**{f"c{i}": scalars.agg(n) for i, n in enumerate(parse(text)[0].expressions)})
           .collect().sort_by("k"))
    con = duckdb.connect()
    con.register("t", table)
    rows = con.sql(f"SELECT k, {', '.join(aggs)} FROM t GROUP BY k ORDER BY k").fetchall()
    assert got["k"].to_pylist() == [r[0] for r in rows]
    for i, mine in enumerate(aggs):
        _same(got[f"c{i}"].to_pylist(), [r[i + 1] for r in rows], mine)
