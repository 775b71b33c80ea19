"""Run the Nexmark queries: generate the input, run a query on gpustream or DuckDB, time
it, compare results, write ``result.parquet`` and ``timing.json``.

Both engines read the same in-memory Arrow tables made by the project's generator
(:func:`generate`), so the timing of a query leaves out making its input and counts
every generator event (persons + auctions + bids) as an event in, as Nexmark's
throughput figures do.

Examples
--------
>>> data = generate(events=2000, seed=1)
>>> result = run_query(QUERIES["q2"], data, engine="cpu")
>>> result.events, result.table.column_names
(2000, ['auction', 'price'])
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import gpustream as gs
from gpustream.bench.nexmark import QUERIES, Inputs, Query, max_auction_ms, side_input
from gpustream.errors import GpustreamError
from gpustream.ingest.nexmark import NexmarkConfig
from gpustream.ingest.source import Source

__all__ = ["ENGINES", "WARMUP_EVENTS", "BenchError", "NexmarkData", "QueryResult", "bench",
           "differences", "generate", "normalize", "require_duckdb", "run_duckdb",
           "run_gpustream", "run_query", "shuffled", "sql_names", "write_result"]

#: what ``--engine`` takes: gpustream's backends, and DuckDB running the SQL
ENGINES = ("cpu", "cuda", "auto", "duckdb")
_INSTALL = "pip install 'gpustream[bench]'"


class BenchError(GpustreamError, RuntimeError):
    """A benchmark cannot run as asked (a missing optional dependency)."""


@dataclass(frozen=True)
class NexmarkData:
    """One generator run's rows, as the queries read them (in arrival order)."""

    persons: pa.Table
    auctions: pa.Table
    bids: pa.Table
    config: NexmarkConfig

    @property
    def events(self) -> int:
        """Generator events in all (persons + auctions + bids)."""
        return int(self.config.events or 0)

    def table(self, kind: str) -> pa.Table:
        """The rows of ``persons``, ``auctions`` or ``bids``.

        Examples
        --------
        >>> d = generate(events=100, seed=1)
        >>> d.table("persons").num_rows, d.events
        (2, 100)
        """
        return {"persons": self.persons, "auctions": self.auctions, "bids": self.bids}[kind]


@dataclass(frozen=True)
class QueryResult:
    """A query's rows and timing on one engine."""

    query: str
    engine: str
    backend: str
    table: pa.Table
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        """Generator events per second of the query's run."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def timing(self) -> dict[str, Any]:
        """What ``timing.json`` holds.

        Examples
        --------
        >>> r = QueryResult("q0", "cpu", "cpu", pa.table({"x": [1]}), 1000, 0.5)
        >>> r.timing()["events_per_s"], r.timing()["rows_out"]
        (2000.0, 1)
        """
        return {"query": self.query, "engine": self.engine, "backend": self.backend,
                "events": self.events, "seconds": round(self.seconds, 6),
                "events_per_s": round(self.events_per_s, 1), "rows_out": self.table.num_rows}


def _whole(source: Source) -> pa.Table:
    batches = [b.data for b in source.open()]
    return pa.Table.from_batches(batches) if batches else source.schema().empty_table()


def generate(events: int, seed: int, rate: float = 10_000.0) -> NexmarkData:
    """The Nexmark generator's persons, auctions and bids of ``events`` events
    (``rate`` events per second of event time).

    Examples
    --------
    >>> d = generate(events=500, seed=3)
    >>> (d.persons.num_rows, d.auctions.num_rows, d.bids.num_rows)
    (10, 30, 460)
    """
    nx = gs.nexmark(events=events, seed=seed, rate=rate)
    return NexmarkData(_whole(nx.persons), _whole(nx.auctions), _whole(nx.bids),
                       nx.bids.config)


def shuffled(data: NexmarkData, bound_ms: int, seed: int = 0) -> NexmarkData:
    """The same rows out of order: each stream's rows sorted by event time plus a random
    delay below ``bound_ms``, so no row arrives more than ``bound_ms`` of event time
    after a later one (keep it below the watermark delay: then no row is late).

    Examples
    --------
    >>> d = generate(events=5000, seed=1)
    >>> s = shuffled(d, bound_ms=200, seed=2)
    >>> ts = s.bids["date_time"].cast("int64").to_numpy()
    >>> bool((ts[1:] < ts[:-1]).any()), s.bids.num_rows == d.bids.num_rows
    (True, True)
    """
    rng = np.random.default_rng(seed)

    def mix(t: pa.Table) -> pa.Table:
        ts = t["date_time"].cast(pa.int64()).to_numpy()
        arrival = ts + rng.integers(0, max(bound_ms, 1), len(ts))
        return t.take(pa.array(np.argsort(arrival, kind="stable")))

    return NexmarkData(mix(data.persons), mix(data.auctions), mix(data.bids), data.config)


def sql_names(names: list[str], every: bool = False) -> list[str]:
    """The queries of ``names`` that run from their SQL text
    (:mod:`gpustream.bench.nexmark_sql`): all of them, or a :class:`ValueError` naming
    those that do not; with ``every`` (``--query all``) those that do.

    Examples
    --------
    >>> sql_names(["q0", "q99"], every=True)
    ['q0']
    >>> sql_names(["q1", "q99"])
    Traceback (most recent call last):
    ...
    ValueError: q99 does not run from SQL (--sql): the ones that do are q0, q1, q2, ...
    """
    from gpustream.bench.nexmark_sql import QUERIES_SQL

    missing = [n for n in names if n not in QUERIES_SQL]
    if missing and not every:
        raise ValueError(f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not "
                         f"run from SQL (--sql): the ones that do are {', '.join(QUERIES_SQL)}")
    return [n for n in names if n in QUERIES_SQL]


def run_gpustream(query: Query, data: NexmarkData, engine: str = "cpu",
                  batch_rows: int | None = None, sql: bool = False) -> QueryResult:
    """Build ``query`` as one pipeline over ``data`` and run it to the end; ``sql``: build
    it from its SQL text (:func:`gpustream.bench.nexmark_sql.build_sql`), not with the
    Python API (``query.build``).

    Examples
    --------
    >>> r = run_gpustream(QUERIES["q0"], generate(events=1000, seed=1), engine="cpu")
    >>> r.table.num_rows, r.backend
    (920, 'cpu')
    >>> run_gpustream(QUERIES["q0"], generate(events=1000, seed=1), sql=True).table.num_rows
    920
    """
    started = time.perf_counter()
    p = gs.Pipeline(f"nexmark-{query.name}", engine=engine)
    kw = {} if batch_rows is None else {"batch_rows": batch_rows}
    sources = {k: gs.from_arrow(data.table(k), **kw) for k in ("persons", "auctions", "bids")}
    inputs = Inputs(p, sources, max_auction_ms=max_auction_ms(data.config))
    if sql:
        from gpustream.bench.nexmark_sql import build_sql

        table = build_sql(inputs, query.name).collect()
    else:
        table = query.build(inputs).collect()
    if query.changelog is not None:  # the table the changelog describes
        table = gs.materialize(table, key=list(query.changelog) or None)
    seconds = time.perf_counter() - started
    return QueryResult(query.name, engine, p.backend.name, table, data.events, seconds)


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise BenchError(f"--engine duckdb needs DuckDB: {_INSTALL}") from None
    return duckdb


def _micros(t: pa.Table) -> pa.Table:
    """``t`` with its timestamps in microseconds (DuckDB 2.0's ``epoch_ms`` fails on a
    millisecond timestamp column read from Arrow: "Unimplemented type for cast")."""
    for i, f in enumerate(t.schema):
        if pa.types.is_timestamp(f.type):
            t = t.set_column(i, f.name, t[f.name].cast(pa.timestamp("us")))
    return t


def run_duckdb(query: Query, data: NexmarkData) -> QueryResult:
    """Run ``query``'s SQL in DuckDB over ``data`` as batch tables (an in-memory
    connection; bids get ``seq``, their arrival order).

    Examples
    --------
    >>> r = run_duckdb(QUERIES["q2"], generate(events=1000, seed=1))
    >>> r.table.column_names
    ['auction', 'price']
    """
    duckdb = _duckdb()
    con = duckdb.connect()
    bids = data.bids.append_column("seq", pa.array(np.arange(data.bids.num_rows)))
    tables = {"persons": _micros(data.persons), "auctions": _micros(data.auctions),
              "bids": _micros(bids), "side_input": side_input()}
    started = time.perf_counter()
    for name, t in tables.items():
        con.register(name, t)
    rel = con.sql(query.sql)
    # DuckDB >= 1.4 names it to_arrow_table; before, arrow() gave the table
    table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    seconds = time.perf_counter() - started
    con.close()
    return QueryResult(query.name, "duckdb", "duckdb", table, data.events, seconds)


def run_query(query: Query, data: NexmarkData, engine: str,
              batch_rows: int | None = None, sql: bool = False) -> QueryResult:
    """``query`` on ``engine``: ``cpu``, ``cuda``, ``auto`` (gpustream) or ``duckdb``;
    ``sql``: gpustream builds it from its SQL text (see :func:`run_gpustream`).

    Examples
    --------
    >>> run_query(QUERIES["q1"], generate(events=200, seed=1), "duckdb").engine
    'duckdb'
    """
    _check_engine(engine, sql)
    if engine == "duckdb":
        return run_duckdb(query, data)
    return run_gpustream(query, data, engine, batch_rows, sql=sql)


def _check_engine(engine: str, sql: bool) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if sql and engine == "duckdb":
        raise ValueError("sql=True (--sql) builds gpustream's pipeline from the query's SQL "
                         "text; DuckDB runs its own SQL: use --engine cpu, cuda or auto")


def normalize(table: pa.Table, query: Query) -> pa.Table:
    """``query``'s compared columns of ``table``, times as epoch milliseconds, strings
    plain, sorted on every column.

    Examples
    --------
    >>> t = pa.table({"price": [3, 1], "auction": [1, 1]})
    >>> normalize(t, QUERIES["q2"]).to_pydict()
    {'auction': [1, 1], 'price': [1, 3]}
    """
    missing = [c for c in query.compare if c not in table.column_names]
    if missing:
        raise ValueError(f"{query.name}: the result has no column(s) {missing}; it has "
                         f"{table.column_names}")
    cols: dict[str, pa.ChunkedArray] = {}
    for name in query.compare:
        c = table[name]
        if pa.types.is_dictionary(c.type):
            c = c.cast(c.type.value_type)
        if pa.types.is_timestamp(c.type):
            c = c.cast(pa.timestamp("ms")).cast(pa.int64())
        elif pa.types.is_large_string(c.type) or pa.types.is_string_view(c.type):
            c = c.cast(pa.string())
        elif pa.types.is_integer(c.type):
            c = c.cast(pa.int64())
        elif pa.types.is_floating(c.type) or pa.types.is_decimal(c.type):
            c = c.cast(pa.float64())
        cols[name] = c
    out = pa.table(cols)
    return out.take(pc.sort_indices(out, [(n, "ascending") for n in query.compare]))


def differences(got: pa.Table, want: pa.Table, query: Query) -> list[str]:
    """How ``got`` differs from ``want`` on ``query``'s compared columns (empty: same
    rows, floats within ``query.rtol``).

    Examples
    --------
    >>> a = pa.table({"auction": [1, 2], "price": [5, 6]})
    >>> differences(a, a, QUERIES["q2"])
    []
    >>> differences(a.slice(1), a, QUERIES["q2"])
    ['q2: 1 rows, want 2']
    """
    g, w = normalize(got, query), normalize(want, query)
    if g.num_rows != w.num_rows:
        return [f"{query.name}: {g.num_rows} rows, want {w.num_rows}"]
    out = []
    for name in query.compare:
        a, b = g[name], w[name]
        if pa.types.is_floating(a.type):
            x = a.to_numpy(zero_copy_only=False)
            y = b.to_numpy(zero_copy_only=False)
            bad = ~np.isclose(x, y, rtol=query.rtol, atol=0, equal_nan=True)
        else:
            bad = ~np.asarray(pc.fill_null(pc.equal(a, b), False)) \
                & ~np.asarray(pc.and_(a.is_null(), b.is_null()))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            out.append(f"{query.name}: column {name!r} differs in {int(bad.sum())} rows, "
                       f"first at row {first}: {a[first]!r} != {b[first]!r}")
    return out


def write_result(result: QueryResult, out: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``out/result.parquet`` and ``out/timing.json`` (plus ``extra`` fields).

    Examples
    --------
    >>> import tempfile
    >>> r = run_query(QUERIES["q2"], generate(events=500, seed=1), "cpu")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_result(r, Path(d))
    ...     sorted(json.loads((Path(d) / "timing.json").read_text()))[:4]
    ['backend', 'engine', 'events', 'events_per_s']
    """
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(result.table, out / "result.parquet")
    timing = {**result.timing(), **(extra or {})}
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")


def require_duckdb() -> None:
    """Fail with the install command when DuckDB is missing (``--engine duckdb``).

    Examples
    --------
    >>> require_duckdb()   # installed here
    """
    _duckdb()


#: the small run that compiles a query's kernels before it is timed
WARMUP_EVENTS = 20_000


def bench(names: list[str], events: int, seed: int, engine: str, out: Path,
          warmup: bool = True, sql: bool = False) -> list[QueryResult]:
    """Generate ``events`` Nexmark events, run each query of ``names`` on ``engine`` and
    write its ``result.parquet`` and ``timing.json`` to ``out`` (one query) or to
    ``out/<query>/`` (several, with a summary ``out/timing.json``).

    ``warmup``: first run each query on :data:`WARMUP_EVENTS` events, untimed, so its
    timing leaves out compiling its kernels (numba caches them on disk, so later
    processes skip most of it anyway). ``sql``: build each query from its SQL text
    (:func:`run_gpustream`); ``timing.json`` then says ``"sql": true``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     [r.query for r in bench(["q1", "q2"], 1000, 1, "cpu", Path(d), warmup=False)]
    ...     sorted(p.name for p in Path(d).iterdir())
    ['q1', 'q2']
    ['q1', 'q2', 'timing.json']
    """
    _check_engine(engine, sql)
    if engine == "duckdb":
        require_duckdb()
    started = time.perf_counter()
    data = generate(events, seed)
    made = time.perf_counter() - started
    small = generate(min(events, WARMUP_EVENTS), seed) if warmup and engine != "duckdb" \
        else None
    results = []
    front = {"sql": True} if sql else {}
    for name in names:
        query = QUERIES[name]
        if small is not None:
            run_query(query, small, engine, sql=sql)
        result = run_query(query, data, engine, sql=sql)
        write_result(result, out if len(names) == 1 else out / name,
                     {"seed": seed, "generate_seconds": round(made, 6), **front})
        results.append(result)
    if len(names) > 1:
        seconds = sum(r.seconds for r in results)
        summary = {"engine": engine, **front, "events": events, "seed": seed,
                   "generate_seconds": round(made, 6), "seconds": round(seconds, 6),
                   "queries": [r.timing() for r in results]}
        (out / "timing.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results
