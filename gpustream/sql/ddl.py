"""``CREATE TABLE`` (a source, its columns and its ``WATERMARK FOR``) and ``CREATE VIEW``.

A ``CREATE TABLE`` names a source: one given to :meth:`~gpustream.Pipeline.sql` (or the
CLI's ``--source name=path``) that no statement has read yet, or one its ``WITH``
clause describes (``'connector' = 'filesystem'``, ``'path'``, ``'format'`` = ``parquet``,
``csv`` or ``json``). Its ``WATERMARK FOR ts AS ts - INTERVAL 'n' SECOND`` makes ``ts``
the event time with a watermark ``n`` seconds behind the latest seen. Declared columns
must be the source's (checked); their types are the source's.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> clicks = gs.from_arrow({"user": [1, 2], "ts": [0, 5000]})
>>> out = p.sql("CREATE TABLE clicks (user BIGINT, ts BIGINT, "
...             "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND); "
...             "SELECT user FROM clicks", sources={"clicks": clicks})
>>> out.collect().to_pydict()
{'user': [1, 2]}
"""

from __future__ import annotations

from sqlglot import exp

from gpustream.plan import stream_time
from gpustream.sql.errors import SqlError
from gpustream.sql.query import Translator
from gpustream.sql.scalar import interval_ms

__all__ = ["create"]

_FORMATS = ("parquet", "csv", "json")


def _properties(node: exp.Create) -> dict[str, str]:
    props = node.args.get("properties")
    out: dict[str, str] = {}
    for p in props.expressions if props is not None else []:
        if isinstance(p, exp.Property):
            key = p.this.name if isinstance(p.this, exp.Expression) else str(p.this)
            value = p.args.get("value")
            out[key.lower()] = value.name if isinstance(value, exp.Expression) else str(value)
    return out


def _source(tr: Translator, name: str, props: dict[str, str], node: exp.Create) -> object:
    from gpustream.ingest.files import read_parquet
    from gpustream.ingest.textfiles import read_csv, read_jsonl
    connector = props.get("connector", "")
    if connector != "filesystem":
        raise tr.error(f"CREATE TABLE {name}: 'connector' = {connector!r} is not supported: "
                       "use 'filesystem' with 'path' and 'format' (parquet, csv, json), or "
                       "register the source in Python (p.source(..., name=...)) or with the "
                       "CLI (--source name=path)", node)
    path, fmt = props.get("path"), props.get("format", "").lower()
    if not path or fmt not in _FORMATS:
        raise tr.error(f"CREATE TABLE {name}: the filesystem connector needs 'path' and "
                       f"'format' (one of {', '.join(_FORMATS)})", node)
    if fmt == "parquet":
        return read_parquet(path)
    return read_csv(path) if fmt == "csv" else read_jsonl(path)


def create(tr: Translator, node: exp.Create) -> None:
    """Run one CREATE statement (TABLE: a source; VIEW: a named query)."""
    kind = str(node.args.get("kind") or "").upper()
    if kind == "VIEW":
        target = node.this
        name = target.name
        rel = tr.query(node.expression, {})
        tr.catalog.views[name] = rel.requalified(name)
        return
    if kind != "TABLE":
        raise tr.error(f"CREATE {kind}: only CREATE TABLE (a source) and CREATE VIEW", node)
    schema = node.this
    if not isinstance(schema, exp.Schema):
        raise tr.error("CREATE TABLE name (columns, WATERMARK FOR ts AS ts - INTERVAL ...)",
                       node)
    name = schema.this.name
    declared: list[exp.ColumnDef] = []
    watermark: tuple[str, int] | None = None
    for e in schema.expressions:
        if isinstance(e, exp.ColumnDef):
            if any(not isinstance(c.args.get("kind"), exp.NotNullColumnConstraint)
                   for c in e.args.get("constraints") or []):
                raise tr.error(f"column {e.name!r}: computed columns and constraints are not "
                               "supported; compute it in a view", e)
            declared.append(e)
        elif isinstance(e, exp.WatermarkColumnConstraint):
            ts = e.this.name
            expr = e.expression
            delay = 0
            if isinstance(expr, exp.Sub) and isinstance(expr.this, exp.Column) \
                    and expr.this.name == ts:
                delay = interval_ms(expr.expression, tr.text, zero=True)
            elif not (isinstance(expr, exp.Column) and expr.name == ts):
                raise tr.error(f"WATERMARK FOR {ts} AS {ts} - INTERVAL 'n' SECOND (a bounded "
                               "delay) is the watermark gpustream takes", expr)
            watermark = (ts, delay)
        else:
            raise tr.error("CREATE TABLE takes columns and a WATERMARK FOR here", e)
    props = _properties(node)
    cat = tr.catalog
    if props:
        if name in cat.pending or name in cat.streams():
            raise tr.error(f"CREATE TABLE {name}: a source of that name is registered "
                           "already; drop the WITH (...) clause to declare its watermark",
                           node)
        cat.pending[name] = _source(tr, name, props, node)
    if name in cat.pending:
        stream = tr.create_source(name, watermark, node)
    elif name in cat.streams():
        stream = cat.streams()[name]
        t = stream_time(stream._node, "CREATE TABLE")
        if watermark is not None and (t is None or t[0] != watermark[0]
                                      or t[2] != watermark[1]):
            have = f"event time {t[0]!r}, delay {t[2]} ms" if t else "no event time"
            raise tr.error(f"CREATE TABLE {name}: the source was registered with {have}; "
                           "declare the same WATERMARK, or register it with "
                           "p.sql(..., sources={name: source}) to let the DDL set it", node)
    else:
        raise tr.error(f"CREATE TABLE {name}: no source of that name: register one "
                       "(p.source(..., name=...), --source name=path) or give WITH "
                       "('connector' = 'filesystem', 'path' = ..., 'format' = ...)", node)
    names = stream.schema.names
    for c in declared:
        if c.name not in names:
            raise tr.error(f"CREATE TABLE {name}: column {c.name!r} is not in the source "
                           f"(its columns: {', '.join(names)})", c)


def is_query(node: exp.Expression) -> bool:
    """Whether a statement is a query.

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> [is_query(s) for s in parse("CREATE VIEW v AS SELECT 1 FROM t; SELECT 1 FROM v")]
    [False, True]
    """
    return isinstance(node, (exp.Select, exp.Union, exp.Subquery))


__all__ += ["is_query"]
_ = SqlError
