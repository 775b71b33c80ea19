"""SELECT onto the plan: FROM (tables, subqueries, CTEs, windowing TVFs, joins), WHERE,
GROUP BY (windows, group windows, running aggregations), HAVING, OVER aggregations,
top-N (``ROW_NUMBER() OVER (...) <= N`` in the query around it), projections, UNION ALL.

Nothing is evaluated here: each clause becomes the stream step that does it.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"k": ["a", "b", "a"], "ts": [1, 2, 30]}),
...              event_time="ts", name="clicks")
>>> p.sql("SELECT k, COUNT(*) AS n, window_start FROM TABLE(TUMBLE(TABLE clicks, "
...       "DESCRIPTOR(ts), INTERVAL '0.01' SECOND)) GROUP BY k, window_start, window_end"
...       ).collect().to_pydict()
{'k': ['a', 'b', 'a'], 'n': [1, 1, 1], 'window_start': [0, 0, 30]}
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlglot import exp

from gpustream.api import Pipeline, Stream
from gpustream.changelog import OP_COLUMN
from gpustream.errors import PlanError
from gpustream.expr import Agg, Expr, col, count, lit, row_number
from gpustream.plan import TableNode, stream_time
from gpustream.sql.errors import SqlError, sql_error
from gpustream.sql.joins import _all, conjuncts, join, sides
from gpustream.sql.relation import WINDOW_KINDS, Field, Rel, Tvf, Windowed
from gpustream.sql.scalar import Scalars, interval_ms, is_aggregate
from gpustream.sql.windows import GROUP_WINDOW_PARTS, Cumulate, group_window, tvf_window
from gpustream.windows import ProcessingTime, Session, Sliding, Tumbling, WindowAssigner

__all__ = ["Catalog", "Translator"]

T = TypeVar("T")
#: the kind of the columns a clause makes for the select list (aggregates, grouping
#: expressions, OVER results): not columns of the query (``*`` leaves them out)
HIDDEN = "hidden"

_JOIN_KINDS = {"": "inner", "INNER": "inner", "LEFT": "left", "RIGHT": "right",
               "FULL": "full"}


@dataclass
class Catalog:
    """What SQL can name in one pipeline: its named sources and tables, sources given to
    :meth:`~gpustream.Pipeline.sql` that no statement has read yet, and views."""

    pipeline: Pipeline
    pending: dict[str, object] = field(default_factory=dict)
    views: dict[str, Rel] = field(default_factory=dict)

    def streams(self) -> dict[str, Stream]:
        """The pipeline's streams by source name."""
        return dict(self.pipeline._named_streams)

    def tables(self) -> dict[str, TableNode]:
        """The pipeline's lookup tables by name."""
        return {t.name: t for t in self.pipeline._tables}

    def names(self) -> list[str]:
        """Every name a FROM can use."""
        return sorted({*self.streams(), *self.tables(), *self.pending, *self.views})


class Translator:
    """Translates one SQL text's statements; see :func:`gpustream.sql.sql`."""

    def __init__(self, catalog: Catalog, text: str) -> None:
        self.catalog = catalog
        self.text = text
        self._ids = itertools.count()
        self._pre = Rel(None, [])  # the last SELECT's relation before its select list

    # -- helpers ---------------------------------------------------------------------------
    def error(self, message: str, node: exp.Expression | None) -> SqlError:
        return sql_error(message, node, self.text)

    def scalars(self, rel: Rel) -> Scalars:
        schema = rel.stream.schema if rel.stream is not None else None
        return Scalars(self.text, rel.resolver(self.text), schema)

    def scalar(self, rel: Rel, node: exp.Expression) -> Expr:
        return self.scalars(rel).expr(node)

    def fresh(self, rel: Rel, base: str) -> str:
        taken = set(rel.stream.schema.names) if rel.stream is not None else set()
        name = base if base.isidentifier() and base not in taken else f"_{base}"
        while name in taken or not name.isidentifier():
            name = f"_{base}{next(self._ids)}" if base.isidentifier() else f"_c{next(self._ids)}"
        return name

    def compute(self, rel: Rel, exprs: list[tuple[str, Expr]]) -> tuple[Rel, list[str]]:
        """Add computed columns under fresh names (never replacing a column)."""
        assert rel.stream is not None
        names: list[str] = []
        pairs: dict[str, Expr] = {}
        for base, e in exprs:
            if isinstance(e, exp.Expression):  # pragma: no cover - a translator bug
                raise TypeError(e)
            name = self.fresh(rel, base)
            while name in pairs:
                name = f"{name}_{next(self._ids)}"
            pairs[name] = e
            names.append(name)
        if not pairs:
            return rel, names
        return rel.with_stream(rel.stream.with_columns(pairs)), names

    def plan(self, step: str, node: exp.Expression | None, fn: Callable[[], T]) -> T:
        """Run ``fn``; a PlanError from the plan becomes an SqlError at ``node``."""
        try:
            return fn()
        except SqlError:
            raise
        except PlanError as exc:
            raise self.error(f"{step}: {exc}", node) from None

    @staticmethod
    def time_of(rel: Rel) -> tuple[str, Any, int] | None:
        """The stream's event-time column (type, delay), or None where it has none or no
        step can read it (a regular join's rows)."""
        if rel.stream is None:
            return None
        try:
            return stream_time(rel.stream._node, "SQL")
        except PlanError:
            return None

    # -- statements ------------------------------------------------------------------------
    def query(self, node: exp.Expression, ctes: Mapping[str, Rel]) -> Rel:
        """The relation of a query (SELECT, UNION ALL, a parenthesised query)."""
        with_ = node.args.get("with_") or node.args.get("with")
        if with_ is not None:
            scope = dict(ctes)
            for cte in with_.expressions:
                rel = self.columns_named(self.query(cte.this, scope), cte)
                scope[cte.alias] = rel.requalified(cte.alias)
            ctes = scope
        if isinstance(node, exp.Subquery):
            return self.query(node.this, ctes)
        if isinstance(node, exp.Union):
            if node.args.get("distinct"):
                raise self.error("UNION (distinct) is not supported: use UNION ALL, or GROUP "
                                 "BY the columns for distinct rows", node)
            parts = [self.query(node.this, ctes), self.query(node.expression, ctes)]
            return self.union(parts, node)
        if isinstance(node, exp.Select):
            return self.select(node, ctes)
        raise self.error(f"{node.key.upper()} is not a query gpustream runs: write a SELECT",
                         node)

    def union(self, parts: list[Rel], node: exp.Expression) -> Rel:
        names = [f.name for f in parts[0].fields]
        for p in parts[1:]:
            if len(p.fields) != len(names):
                raise self.error(f"UNION ALL needs as many columns on both sides: "
                                 f"{len(names)} and {len(p.fields)}", node)
        # by position, named as the first query's
        streams = [self.output(replace(p, fields=[replace(f, name=n) for f, n in
                                                  zip(p.fields, names, strict=True)]))
                   for p in parts]
        out = self.plan("UNION ALL", node, lambda: streams[0].union(*streams[1:]))
        assert isinstance(out, Stream)
        return Rel.of(out, None)

    # -- FROM ------------------------------------------------------------------------------
    def named(self, table: exp.Table, ctes: Mapping[str, Rel]) -> Rel:
        """A table name: a CTE, a view, a source, a lookup table or a pending source."""
        name = table.name
        qual = table.alias_or_name
        if table.args.get("db"):
            raise self.error(f"{table.sql()!r}: catalogs and databases are not supported; "
                             "name the source", table)
        if name in ctes:
            return ctes[name].requalified(qual)
        cat = self.catalog
        if name in cat.views:
            return cat.views[name].requalified(qual)
        if name in cat.pending:
            self.create_source(name, None, table)
        streams = cat.streams()
        if name in streams:
            return Rel.of(streams[name], qual)
        tables = cat.tables()
        if name in tables:
            return Rel.of_table(tables[name], qual)
        import difflib
        near = difflib.get_close_matches(name, cat.names(), n=1)
        raise self.error(f"unknown table {name!r}"
                         + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; the names here: {', '.join(cat.names()) or 'none'} (register "
                         "a source with p.source(..., name=...), or CREATE TABLE ... WITH "
                         "('connector' = ...))", table)

    def create_source(self, name: str, watermark: tuple[str, int] | None,
                      node: exp.Expression | None) -> Stream:
        """Add a pending source to the pipeline (with the watermark a CREATE TABLE
        declares)."""
        from gpustream.watermark import Watermark
        source = self.catalog.pending.pop(name)
        et, delay = watermark if watermark is not None else (None, 0)
        out = self.plan(f"source {name!r}", node, lambda: self.catalog.pipeline.source(
            source, event_time=et,
            watermark=Watermark.bounded(delay) if et is not None else None, name=name))
        assert isinstance(out, Stream)
        return out

    def from_item(self, item: exp.Expression, ctes: Mapping[str, Rel]) -> Rel:
        alias = item.alias or None
        if isinstance(item, exp.Subquery):
            rel = self.columns_named(self.query(item.this, ctes), item)
            return rel.requalified(alias)
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Anonymous) \
                and item.this.name.upper() == "TABLE":
            return self.window_tvf(item, ctes)
        if isinstance(item, exp.Table):
            if item.args.get("version") is not None:
                item = item.copy()
                item.set("version", None)  # FOR SYSTEM_TIME AS OF: every lookup is current
            return self.columns_named(self.named(item, ctes), item)
        raise self.error(f"{item.sql()!r} is not a table, a subquery or a windowing "
                         "function", item)

    def columns_named(self, rel: Rel, item: exp.Expression) -> Rel:
        """The relation's columns renamed by an alias's column list (``AS t(a, b)``,
        ``WITH t(a, b) AS``), in order."""
        alias = item.args.get("alias")
        names = [c.name for c in alias.args.get("columns") or []] if alias is not None else []
        if not names:
            return rel
        shown = [f for f in rel.fields if f.kind not in ("rank", HIDDEN)]
        if len(names) != len(shown):
            raise self.error(f"the column list names {len(names)} columns, the query has "
                             f"{len(shown)} ({', '.join(f.name for f in shown)})", alias)
        to = {id(f): n for f, n in zip(shown, names, strict=True)}
        return replace(rel, fields=[replace(f, name=to.get(id(f), f.name)) for f in rel.fields])

    def window_tvf(self, item: exp.Table, ctes: Mapping[str, Rel]) -> Rel:
        call = item.this.expressions[0] if item.this.expressions else item.this
        table, column, assigner = tvf_window(call, self.text)
        rel = self.named(table, ctes)
        if rel.stream is None:
            raise self.error("a window needs a stream, not a lookup table", table)
        got = rel.find(column.name, column.table or None)
        if len(got) == 1 and got[0].kind == "proctime":  # PROCTIME(): the wall clock
            if not isinstance(assigner, (Tumbling, Sliding)):
                raise self.error("a processing-time window is TUMBLE or HOP", call)
            clock = (ProcessingTime.tumbling(assigner.size_ms) if isinstance(assigner, Tumbling)
                     else ProcessingTime.sliding(assigner.size_ms, assigner.slide_ms))
            qual = item.alias or None
            fields = [replace(fl, qual=qual or fl.qual) for fl in rel.fields]
            fields += [Field(k, qual, "", k) for k in WINDOW_KINDS]
            return Rel(rel.stream, fields, tvf=Tvf(clock, ""))
        f = rel.field_of(column, self.text)
        t = self.time_of(rel)
        if t is None or t[0] != f.column:
            raise self.error(f"DESCRIPTOR({column.sql()}) must be the event-time column of "
                             f"{table.name!r} (its WATERMARK FOR, or event_time= of its "
                             "source)" + (f"; it is {t[0]!r}" if t else "; it has none"),
                             column)
        qual = item.alias or None
        fields = [replace(fl, qual=qual or fl.qual) for fl in rel.fields]
        fields += [Field(k, qual, "", k) for k in WINDOW_KINDS]
        return Rel(rel.stream, fields, tvf=Tvf(assigner, f.column))

    def from_clause(self, sel: exp.Select, ctes: Mapping[str, Rel],
                    where: list[exp.Expression]) -> tuple[Rel, list[exp.Expression]]:
        from_ = sel.args.get("from_") or sel.args.get("from")
        if from_ is None:
            raise self.error("a streaming query needs a FROM", sel)
        rel = self.from_item(from_.this, ctes)
        for j in sel.args.get("joins") or []:
            right = self.from_item(j.this, ctes)
            side = (j.side or "").upper()
            kind = (j.kind or "").upper()
            if kind == "CROSS" and not where:
                raise self.error("CROSS JOIN: gpustream joins on equal keys; add the "
                                 "condition (WHERE a.x = b.y)", j)
            how = _JOIN_KINDS.get(side, "")
            if not how or kind in ("SEMI", "ANTI"):
                raise self.error(f"{(side + ' ' + kind).strip()} JOIN is not supported: use "
                                 "INNER, LEFT, RIGHT or FULL", j)
            if j.args.get("using"):
                raise self.error("JOIN ... USING: write ON a.x = b.x", j)
            on = conjuncts(j.args.get("on"))
            take = []
            if how == "inner":  # WHERE conditions that name both sides join them too
                names = {id(c) for c in on}
                for c in list(where):
                    if self._names_only(c, rel, right) and id(c) not in names:
                        take.append(c)
                        where.remove(c)
            rel, rest = join(rel, right, how, on + take, self.text, self.scalar,
                             self.compute, j)
            if rest:
                pred = self.scalar(rel, _all(rest))
                assert rel.stream is not None
                rel = rel.with_stream(rel.stream.filter(pred))
        return rel, where

    @staticmethod
    def _names_only(c: exp.Expression, left: Rel, right: Rel) -> bool:
        """Whether ``c`` names only the two inputs' columns, the right's among them."""
        got = sides(c, left, right)
        return "?" not in got and "r" in got

    # -- SELECT ----------------------------------------------------------------------------
    def select(self, sel: exp.Select, ctes: Mapping[str, Rel]) -> Rel:
        if sel.args.get("distinct"):
            raise self.error("SELECT DISTINCT: GROUP BY the columns instead", sel)
        for clause in ("order", "limit", "offset"):
            if sel.args.get(clause) is not None:
                raise self.error(f"{clause.upper()} over a stream has no end to wait for; "
                                 "rank with ROW_NUMBER() OVER (...) <= N in a subquery "
                                 "(top-N), or sort the collected result", sel.args[clause])
        where_ = sel.args.get("where")
        where = conjuncts(where_.this) if where_ is not None else []
        topn = self.topn_source(sel, where, ctes)
        if topn is not None:
            rel, where = topn, [c for c in where if not getattr(c, "_topn", False)]
        else:
            rel, where = self.from_clause(sel, ctes, where)
        if where:
            for c in where:
                self.no_aggregates(c, "WHERE")
            pred = self.scalar(rel, _all(where))
            assert rel.stream is not None
            rel = rel.with_stream(self.plan("WHERE", where[0],
                                            lambda: rel.stream.filter(pred)))  # type: ignore[union-attr]
        items = [self._named(i, it) for i, it in enumerate(sel.expressions)]
        grouped = sel.args.get("group") is not None or any(
            self.has_aggregate(i) for i in items) or sel.args.get("having") is not None
        if grouped:
            rel, items = self.aggregate(rel, sel, items)
        elif rel.tvf is not None:
            raise self.error("rows of a windowing function need a GROUP BY window_start, "
                             "window_end (a window aggregation) or a window join; to rank "
                             "a window's rows, aggregate them first and rank the result "
                             "(ROW_NUMBER() OVER (PARTITION BY window_start, window_end "
                             "...))", sel)
        rel, items = self.over(rel, items)
        self._pre = rel
        return self.project(rel, items)

    @staticmethod
    def _named(i: int, item: exp.Expression) -> exp.Expression:
        """A select item with its output name: an expression without one is ``EXPR$i``
        (Flink's name), kept when GROUP BY or OVER replace its parts."""
        if isinstance(item, (exp.Alias, exp.Column, exp.Star)) or (
                isinstance(item, exp.Anonymous) and item.name.upper() == "PROCTIME"):
            return item
        return exp.Alias(this=item, alias=exp.to_identifier(f"EXPR${i}", quoted=True))

    def has_aggregate(self, node: exp.Expression) -> bool:
        return any(is_aggregate(n) for n in node.walk() if isinstance(n, exp.Expression)
                   and not self._in_window(n))

    @staticmethod
    def _in_window(n: exp.Expression) -> bool:
        p = n.parent
        while p is not None:
            if isinstance(p, exp.Window):
                return True
            p = p.parent
        return False

    def no_aggregates(self, node: exp.Expression, clause: str) -> None:
        for n in node.walk():
            if isinstance(n, exp.Expression) and is_aggregate(n):
                raise self.error(f"an aggregate in {clause}: filter aggregates in HAVING",
                                 n)

    # -- projection ------------------------------------------------------------------------
    def project(self, rel: Rel, items: list[exp.Expression]) -> Rel:
        """The select list: plain columns are bound (not copied); expressions computed."""
        fields: list[Field] = []
        todo: list[tuple[int, str, Expr]] = []
        for i, item in enumerate(items):
            if isinstance(item, exp.Star):
                fields += [f for f in rel.fields if f.kind not in ("rank", HIDDEN)]
                continue
            if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                q = item.table
                got = [f for f in rel.fields if f.qual == q and f.kind not in ("rank", HIDDEN)]
                if not got:
                    raise self.error(f"{q}.*: no table {q!r} here", item)
                fields += got
                continue
            name = item.alias_or_name if isinstance(item, (exp.Alias, exp.Column)) \
                else f"EXPR${i}"
            body = item.this if isinstance(item, exp.Alias) else item
            if isinstance(body, exp.Column):
                f = rel.find(body.name, body.table or None)
                kept = f[0] if len(f) == 1 and f[0].kind == "proctime" \
                    else rel.field_of(body, self.text)
                fields.append(replace(kept, name=name, qual=None,
                                      kind="" if kept.kind == HIDDEN else kept.kind))
                continue
            if isinstance(body, exp.Anonymous) and body.name.upper() == "PROCTIME":
                if body.expressions:
                    raise self.error("PROCTIME() takes no arguments", body)
                fields.append(Field(name, None, "", "proctime"))
                continue
            e = self.scalar(rel, body)
            todo.append((len(fields), name, e))
            fields.append(Field(name, None, ""))
        if todo:
            rel, cols = self.compute(rel, [(n, e) for _, n, e in todo])
            for (pos, _, _), c in zip(todo, cols, strict=True):
                fields[pos] = replace(fields[pos], column=c)
        seen: set[str] = set()
        for i, fl in enumerate(fields):  # a name taken already gets a number (as Flink's)
            name, n = fl.name, 0
            while name in seen:
                name, n = f"{fl.name}{n}", n + 1
            seen.add(name)
            fields[i] = replace(fl, name=name)
        return replace(rel, fields=fields)

    def output(self, rel: Rel) -> Stream:
        """The relation as a stream with the SQL names (and ``op`` for a changelog)."""
        assert rel.stream is not None
        pairs = {f.name: col(f.column) for f in rel.fields}
        if rel.changelog:
            if OP_COLUMN in pairs:
                raise sql_error(f"a changelog's rows carry {OP_COLUMN!r}: rename the "
                                f"column {OP_COLUMN!r}", None, self.text)
            pairs[OP_COLUMN] = col(OP_COLUMN)
        if list(pairs) == rel.stream.schema.names and all(
                f.name == f.column for f in rel.fields):
            return rel.stream
        return rel.stream.select(**pairs)

    # -- GROUP BY --------------------------------------------------------------------------
    def aggregate(self, rel: Rel, sel: exp.Select, items: list[exp.Expression]
                  ) -> tuple[Rel, list[exp.Expression]]:
        """GROUP BY: a window (TVF, group window, or the windows of windowed rows) or a
        running aggregation; returns the aggregated relation and the select list with
        aggregates and grouping expressions replaced by its columns."""
        if rel.stream is None:
            raise self.error("a lookup table cannot be aggregated: join it to a stream",
                             sel)
        group = sel.args.get("group")
        gexprs = list(group.expressions) if group is not None else []
        aliases = {i.alias: i.this for i in items if isinstance(i, exp.Alias)}
        assigner: WindowAssigner | None = None
        window_kinds: set[str] = set()
        keys: list[tuple[exp.Expression, Field | None, Expr | None]] = []
        for g in gexprs:
            gw = group_window(g, self.text)
            if gw is not None:
                column, a = gw
                f = rel.field_of(column, self.text)
                t = stream_time(rel.stream._node, "GROUP BY")
                if t is None or t[0] != f.column:
                    raise self.error(f"{g.sql()}: the window's time must be the stream's "
                                     "event-time column", column)
                assigner = a
                continue
            if isinstance(g, exp.Literal) and not g.is_string:
                pos = int(g.this) - 1
                if not 0 <= pos < len(items):
                    raise self.error(f"GROUP BY {g.this}: the select list has "
                                     f"{len(items)} items", g)
                g = items[pos].this if isinstance(items[pos], exp.Alias) else items[pos]
            if isinstance(g, exp.Column) and not g.table and g.name in aliases \
                    and not rel.find(g.name, None):
                g = aliases[g.name]
            if isinstance(g, exp.Column):
                got = rel.find(g.name, g.table or None)
                if len(got) == 1 and got[0].kind in ("window_start", "window_end"):
                    window_kinds.add(got[0].kind)
                    continue
                keys.append((g, rel.field_of(g, self.text), None))
            else:
                self.no_aggregates(g, "GROUP BY")
                keys.append((g, None, self.scalar(rel, g)))
        # computed keys become columns
        computed = [(f"key{i}", e) for i, (_, _, e) in enumerate(keys) if e is not None]
        rel, made = self.compute(rel, computed) if computed else (rel, [])
        made_iter = iter(made)
        key_cols = [f.column if f is not None else next(made_iter) for _, f, _ in keys]
        # the aggregates, with names
        aggs: dict[str, Agg] = {}
        agg_of: dict[str, str] = {}
        having = sel.args.get("having")
        for node in [*items, *([having.this] if having is not None else [])]:
            for n in node.walk():
                if isinstance(n, exp.Expression) and is_aggregate(n) \
                        and not self._in_window(n) and n.sql() not in agg_of:
                    base = (n.parent.alias if isinstance(n.parent, exp.Alias)
                            else f"agg{len(aggs)}")
                    name = base if base.isidentifier() and base not in key_cols \
                        and base not in aggs and base not in WINDOW_KINDS else f"agg{len(aggs)}"
                    while name in aggs or name in key_cols:
                        name = f"_{name}"
                    aggs[name] = self.scalars(rel).agg(n)
                    agg_of[n.sql()] = name
        hidden = None
        if not aggs:
            hidden = "_rows"
            aggs[hidden] = count()
        stream = rel.stream
        windowed: Windowed | None = None
        extra_fields: list[Field] = []
        if rel.tvf is not None:
            if not window_kinds:
                raise self.error("GROUP BY over a windowing function must name window_start "
                                 "and window_end", group or sel)
            tvf_window_of = rel.tvf.assigner
            if not isinstance(tvf_window_of, Cumulate):
                assigner = tvf_window_of
            else:
                # per period of the size (a key), a sliding window of the size every
                # step: the windows ending within the period hold the period's rows
                # before their end, Flink's cumulating windows
                cum = tvf_window_of
                rel, (period,) = self.compute(
                    rel, [("period", col(rel.tvf.time_column).dt.truncate(cum.size_ms))])
                stream = rel.stream
                key_cols.append(period)
                start = next(f for f in rel.fields if f.kind == "window_start")
                extra_fields.append(replace(start, column=period))
                assigner = cum.sliding
        elif window_kinds:
            if rel.windowed is None:
                raise self.error("GROUP BY window_start, window_end needs rows of a window",
                                 group)
            up = rel.windowed.assigner
            # the rows of one upstream window share one event time (window_end - 1): a
            # tumbling window of the slide holds exactly one upstream window's rows
            step = up.slide_ms if isinstance(up, Sliding) else (
                up.size_ms if isinstance(up, Tumbling) else 0)
            if not step:
                raise self.error(f"a window over {up.describe()} windows' rows: only "
                                 "tumbling and hopping windows can be grouped again", group)
            start = next(f for f in rel.fields if f.kind == "window_start")
            rel, (copy,) = self.compute(rel, [("start", col(start.column))])
            stream = rel.stream
            key_cols.append(copy)
            extra_fields.append(replace(start, column=copy))
            assigner = Tumbling(step)
            window_kinds = {"window_end"}
        assert stream is not None
        out: Stream
        if assigner is not None:
            keyed = stream.key_by(*key_cols) if key_cols else stream
            out = self.plan("GROUP BY", group or sel,
                            lambda: keyed.window(assigner).agg(**aggs))
            if rel.tvf is not None and isinstance(rel.tvf.assigner, Cumulate):
                # the sliding windows that reach past the period's end are not its
                out = out.filter(col("window_start") <= col(extra_fields[0].column))
                windowed = Windowed(assigner)
            else:
                windowed = None if isinstance(assigner, Session) else Windowed(
                    assigner if not extra_fields
                    else rel.windowed.assigner)  # type: ignore[union-attr]
        else:
            if not key_cols:
                rel, (one,) = self.compute(rel, [("all", lit(0))])
                stream = rel.stream
                key_cols = [one]
            assert stream is not None
            out = self.plan("GROUP BY", group or sel,
                            lambda: stream.key_by(*key_cols).agg(**aggs))
        assert isinstance(out, Stream)
        fields: list[Field] = []
        replace_map: dict[str, str] = {}
        for (g, kf, _), c in zip(keys, key_cols, strict=False):
            if kf is not None:
                fields.append(replace(kf, column=c))
            placeholder = f"__g{len(replace_map)}"
            replace_map[g.sql()] = placeholder
            fields.append(Field(placeholder, None, c, HIDDEN))
        if assigner is not None:
            made_start = extra_fields[0].column if extra_fields else "window_start"
            named = [f for f in rel.fields if f.kind in ("window_start", "window_end")]
            for f in named or [Field(k, None, k, k) for k in ("window_start", "window_end")]:
                fields.append(replace(f, column=made_start if f.kind == "window_start"
                                      else "window_end"))
            for i, gname in enumerate(GROUP_WINDOW_PARTS):
                if GROUP_WINDOW_PARTS[gname] in ("window_start", "window_end"):
                    fields.append(Field(f"__w{i}", None, (
                        extra_fields[0].column if extra_fields
                        and GROUP_WINDOW_PARTS[gname] == "window_start"
                        else GROUP_WINDOW_PARTS[gname]), HIDDEN))
        for sql_text, name in agg_of.items():
            placeholder = f"__a{len(replace_map)}"
            replace_map[sql_text] = placeholder
            fields.append(Field(placeholder, None, name, HIDDEN))
        new = Rel(out, fields, windowed=windowed)
        parts = {g: f"__w{i}" for i, g in enumerate(GROUP_WINDOW_PARTS)}

        def swap(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Anonymous) and n.name.upper() in parts:
                if assigner is None:
                    raise self.error(f"{n.name}() needs the GROUP BY window", n)
                if GROUP_WINDOW_PARTS[n.name.upper()] == "window_time":
                    raise self.error(f"{n.name}() (the window's time attribute) is not "
                                     "supported: select the window's end (its rows' event "
                                     "time is window_end - 1 ms, which a window further on "
                                     "uses)", n)
                return exp.column(parts[n.name.upper()], quoted=True)
            key = n.sql()
            if key in replace_map and (not isinstance(n, exp.Column) or is_aggregate(n)
                                       or key in replace_map):
                return exp.column(replace_map[key], quoted=True)
            return n

        out_items: list[exp.Expression] = []
        for item in items:
            body = item.this if isinstance(item, exp.Alias) else item
            if isinstance(body, exp.Column) and rel.find(body.name, body.table or None):
                first = rel.find(body.name, body.table or None)[0]
                kept = [f for f in fields if f.column and f.name == body.name
                        and (not body.table or f.qual == body.table)]
                if not kept and first.kind not in WINDOW_KINDS:
                    raise self.error(f"{body.sql()!r} is neither grouped nor aggregated: add "
                                     "it to GROUP BY or aggregate it", body)
                out_items.append(item)
                continue
            new_body = body.copy().transform(swap)
            self.not_grouped(new_body, new, body)
            out_items.append(exp.Alias(this=new_body, alias=exp.to_identifier(item.alias,
                                                                              quoted=True))
                             if isinstance(item, exp.Alias) else new_body)
        if having is not None:
            cond = having.this.copy().transform(swap)
            self.not_grouped(cond, new, having.this)
            pred = self.scalar(new, cond)
            new = new.with_stream(out.filter(pred))
        return new, out_items

    def not_grouped(self, node: exp.Expression, rel: Rel, original: exp.Expression) -> None:
        """Every column of ``node`` (``original`` with its aggregates and grouping
        expressions replaced) is the aggregation's."""
        for c in node.find_all(exp.Column):
            if not rel.find(c.name, c.table or None):
                at = next((o for o in original.find_all(exp.Column)
                           if o.name == c.name and o.table == c.table), original)
                raise self.error(f"{c.sql()!r} is neither grouped nor aggregated: add it to "
                                 "GROUP BY or aggregate it", at)

    # -- OVER ------------------------------------------------------------------------------
    def over(self, rel: Rel, items: list[exp.Expression]
             ) -> tuple[Rel, list[exp.Expression]]:
        """Aggregates with an OVER (...) in the select list: one OVER window step."""
        wins = [(i, it) for i, it in enumerate(items)
                for w in ([it.this] if isinstance(it, exp.Alias) else [it])
                if isinstance(w, exp.Window)]
        if not wins:
            return rel, items
        specs = {self._spec_key(w.this if isinstance(w, exp.Alias) else w) for _, w in wins}
        if len(specs) > 1:
            raise self.error("the OVER windows of one SELECT must be the same (one PARTITION "
                             "BY, ORDER BY and frame); use a subquery for another",
                             wins[1][1])
        first = wins[0][1]
        w = first.this if isinstance(first, exp.Alias) else first
        assert rel.stream is not None
        keys = [rel.field_of(p, self.text).column if isinstance(p, exp.Column) else None
                for p in w.args.get("partition_by") or []]
        if None in keys:
            raise self.error("PARTITION BY takes columns here", w)
        order = w.args.get("order")
        t = stream_time(rel.stream._node, "OVER")
        if order is None or len(order.expressions) != 1 or t is None \
                or not isinstance(order.expressions[0].this, exp.Column) \
                or rel.field_of(order.expressions[0].this, self.text).column != t[0] \
                or order.expressions[0].args.get("desc"):
            raise self.error("an OVER window orders by the stream's event-time column, "
                             "ascending (ORDER BY <its WATERMARK FOR column>)", order or w)
        spec = w.args.get("spec")
        rng: int | None = None
        rows: int | str | None = None
        if spec is None:
            rows = "unbounded"
        else:
            start = spec.args.get("start")
            if str(spec.args.get("end") or "CURRENT ROW").upper() != "CURRENT ROW":
                raise self.error("an OVER frame ends at CURRENT ROW", spec)
            kind = str(spec.args.get("kind") or "").upper()
            if str(start).upper() == "UNBOUNDED":
                if kind == "RANGE":
                    raise self.error("RANGE UNBOUNDED PRECEDING is not supported: use ROWS "
                                     "BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW", spec)
                rows = "unbounded"
            elif kind == "ROWS" and isinstance(start, exp.Literal) and not start.is_string:
                rows = int(start.this)
            elif kind == "RANGE" and isinstance(start, exp.Interval):
                rng = interval_ms(start, self.text)
            else:
                raise self.error("an OVER frame: ROWS BETWEEN n PRECEDING AND CURRENT ROW, "
                                 "RANGE BETWEEN INTERVAL '...' PRECEDING AND CURRENT ROW, or "
                                 "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW", spec)
        aggs: dict[str, Agg] = {}
        out_items = list(items)
        for i, it in wins:
            wnode = it.this if isinstance(it, exp.Alias) else it
            name = self.fresh(rel, it.alias if isinstance(it, exp.Alias) else f"over{i}")
            while name in aggs:
                name = f"_{name}"
            body = wnode.this
            aggs[name] = row_number() if isinstance(body, exp.RowNumber) \
                else self.scalars(rel).agg(body)
            ref = exp.column(f"__o{i}", quoted=True)
            out_items[i] = exp.Alias(this=ref, alias=exp.to_identifier(
                it.alias, quoted=True)) if isinstance(it, exp.Alias) else ref
            aggs[name] = aggs.pop(name)
            rel = replace(rel, fields=[*rel.fields, Field(f"__o{i}", None, name, HIDDEN)])
        stream = rel.stream
        assert stream is not None
        keyed = stream.key_by(*[k for k in keys if k is not None]) if keys else stream
        out = self.plan("OVER", w, lambda: keyed.over(range=rng, rows=rows).agg(**aggs))
        assert isinstance(out, Stream)
        return rel.with_stream(out), out_items

    def _spec_key(self, w: exp.Expression) -> str:
        c = w.copy()
        c.set("this", exp.Null())
        return c.sql()

    # -- top-N -----------------------------------------------------------------------------
    def topn_source(self, sel: exp.Select, where: list[exp.Expression],
                    ctes: Mapping[str, Rel]) -> Rel | None:
        """``SELECT ... FROM (SELECT ..., ROW_NUMBER() OVER (PARTITION BY p ORDER BY x
        DESC) AS rn FROM t) WHERE rn <= N``: the inner query ranked with ``top_k``."""
        from_ = sel.args.get("from_") or sel.args.get("from")
        if from_ is None or sel.args.get("joins") or not isinstance(from_.this, exp.Subquery):
            return None
        inner = from_.this.this
        if not isinstance(inner, exp.Select):
            return None
        ranks = [(i, it) for i, it in enumerate(inner.expressions)
                 if isinstance(it, exp.Alias) and isinstance(it.this, exp.Window)
                 and isinstance(it.this.this, exp.RowNumber)]
        if not ranks:
            return None
        pos, item = ranks[0]
        rn = item.alias
        n: int | None = None
        for c in where:
            lhs, rhs = c.this, c.expression if isinstance(c, exp.Binary) else None
            if isinstance(lhs, exp.Column) and lhs.name == rn and isinstance(rhs, exp.Literal) \
                    and not rhs.is_string:
                v = int(rhs.this)
                bounds: dict[type, int | None] = {exp.LTE: v, exp.LT: v - 1,
                                                  exp.EQ: v if v == 1 else None}
                got = bounds.get(type(c))
                if got is None:
                    raise self.error(f"top-N: bound {rn} with {rn} <= N (or {rn} = 1)", c)
                n = got
                c._topn = True  # type: ignore[attr-defined]
        if n is None:
            return None
        if n < 1:
            raise self.error(f"top-N: {rn} starts at 1, so this bound keeps no row", item)
        w = item.this
        order = w.args.get("order")
        if order is None or not order.expressions:
            raise self.error("top-N needs an ORDER BY in its ROW_NUMBER() OVER (...)", w)
        trimmed = inner.copy()
        trimmed.set("expressions", [e.copy() for i, e in enumerate(inner.expressions)
                                    if i != pos])
        base = self.query(trimmed, ctes)
        pre = self._pre  # the inner query before its select list: columns it dropped
        alias = from_.this.alias or None

        def column_of(c: exp.Expression) -> Field:
            if not isinstance(c, exp.Column):
                raise self.error("top-N orders and partitions by columns; compute the "
                                 "value in the query below", c)
            return pre.field_of(c, self.text)  # (the query's input, not its aliases)

        by = [column_of(o.this).column for o in order.expressions]
        desc = [bool(o.args.get("desc")) for o in order.expressions]
        per = [f.column for f in map(column_of, w.args.get("partition_by") or [])
               if f.kind not in ("window_start", "window_end")]
        assert base.stream is not None
        t = self.time_of(base)
        # Flink keeps the last of rows with equal times when ranking by time descending
        # for the first row (its deduplication), the first otherwise
        ties = "last" if (n == 1 and len(by) == 1 and desc[0] and t is not None
                          and t[0] == by[0]) else "first"
        out = self.plan("top-N", w, lambda: base.stream.top_k(  # type: ignore[union-attr]
            n, by=by, per=per, descending=desc, ties=ties))
        assert isinstance(out, Stream)
        fields = list(base.fields)
        if "rank" in out.schema.names and "rank" not in base.stream.schema.names:
            fields.append(Field(rn, None, "rank"))
        elif n == 1:
            ranked = base.with_stream(out)
            ranked, (one,) = self.compute(ranked, [("rownum", lit(1))])
            return replace(ranked, fields=[*fields, Field(rn, None, one)]).requalified(alias)
        else:
            fields.append(Field(rn, None, "", "rank"))
        return replace(base.with_stream(out), fields=fields).requalified(alias)
