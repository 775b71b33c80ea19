"""Streaming SQL: Flink's SQL, parsed with sqlglot, translated into gpustream's plan.

``p.sql(text)`` runs ``CREATE TABLE`` / ``CREATE VIEW`` statements and returns the
stream of the last query; nothing is evaluated as Python: each clause becomes the step
that does it (:mod:`~gpustream.sql.query`: FROM, WHERE, projections;
:mod:`~gpustream.sql.grouping`: GROUP BY; :mod:`~gpustream.sql.ranking`: OVER, top-N;
:mod:`~gpustream.sql.joins`, :mod:`~gpustream.sql.windows`, :mod:`~gpustream.sql.ddl`,
:mod:`~gpustream.sql.scalar`: expressions). Errors name the line and column of the text
(:class:`~gpustream.sql.errors.SqlError`).

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"auction": [1, 246, 369], "price": [5, 6, 7]}), name="bid")
>>> p.sql("SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0").collect().to_pydict()
{'auction': [246, 369], 'price': [6, 7]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpustream.api import Pipeline, Stream
from gpustream.sql.dialect import parse
from gpustream.sql.errors import SqlError

__all__ = ["SqlError", "sql"]


def sql(pipeline: Pipeline, text: str, sources: Mapping[str, Any] | None = None) -> Stream:
    """Run the statements of ``text`` on ``pipeline``; the stream of its last query.

    ``sources``: sources by name that a ``CREATE TABLE`` may give a watermark (read on
    first use; without one they have no event time).

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline(engine="cpu")
    >>> sql(p, "SELECT x + 1 AS y FROM t", {"t": gs.from_arrow({"x": [1]})}).collect()["y"]
    <pyarrow.lib.ChunkedArray object at ...>
    [
      [
        2
      ]
    ]
    """
    from gpustream.api.pipeline import _as_source
    from gpustream.sql.ddl import create, is_query
    from gpustream.sql.query import Catalog, Translator
    catalog = getattr(pipeline, "_sql_catalog", None)
    if catalog is None:
        catalog = Catalog(pipeline)
        pipeline._sql_catalog = catalog  # type: ignore[attr-defined]
    for name, src in (sources or {}).items():
        if name in catalog.names():
            raise SqlError(f"SQL: sources={{{name!r}: ...}}: the name is taken already")
        catalog.pending[name] = _as_source(src, f"sql source {name!r}")
    tr = Translator(catalog, text)
    result = None
    for stmt in parse(text):
        if is_query(stmt):
            result = tr.output(tr.query(stmt, {}))
        elif stmt.key == "create":
            create(tr, stmt)  # type: ignore[arg-type]
        else:
            raise tr.error(f"{stmt.key.upper()}: gpustream runs queries, CREATE TABLE and "
                           "CREATE VIEW (write the result with a sink on the returned "
                           "stream, or the CLI's --out)", stmt)
    if result is None:
        raise SqlError("SQL: the text has no query (SELECT ...) to return")
    return result
