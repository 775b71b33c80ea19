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

from collections.abc import Mapping
from dataclasses import replace

from sqlglot import exp

from gpustream.api import Stream
from gpustream.changelog import OP_COLUMN
from gpustream.expr import Expr, col
from gpustream.sql.errors import sql_error
from gpustream.sql.grouping import Grouping
from gpustream.sql.joins import and_all, conjuncts, join, sides
from gpustream.sql.ranking import Ranking
from gpustream.sql.relation import WINDOW_KINDS, Field, Rel, Tvf
from gpustream.sql.steps import HIDDEN, Catalog
from gpustream.sql.windows import tvf_window
from gpustream.windows import ProcessingTime, Sliding, Tumbling

__all__ = ["Catalog", "Translator"]

_JOIN_KINDS = {"": "inner", "INNER": "inner", "LEFT": "left", "RIGHT": "right",
               "FULL": "full"}


class Translator(Grouping, Ranking):
    """Translates one SQL text's statements; see :func:`gpustream.sql.sql`."""

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
            # an unnamed subquery's columns keep the tables that qualified them
            return rel.requalified(alias) if alias else rel
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
                pred = self.scalar(rel, and_all(rest))
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
            sel = self._distinct(sel)
        for clause in ("order", "limit", "offset"):
            if sel.args.get(clause) is not None:
                raise self.error(f"{clause.upper()} over a stream has no end to wait for; "
                                 "rank with ROW_NUMBER() OVER (...) <= N in a subquery "
                                 "(top-N), or sort the collected result", sel.args[clause])
        where_ = sel.args.get("where")
        where = conjuncts(where_.this) if where_ is not None else []
        same_level = self._rank_in_where(sel, where)
        if same_level is not None:
            return self.select(same_level, ctes)
        topn = self.topn_source(sel, where, ctes)
        if topn is not None:
            rel, where = topn, [c for c in where if not getattr(c, "_topn", False)]
        else:
            rel, where = self.from_clause(sel, ctes, where)
        if where:
            for c in where:
                self.no_aggregates(c, "WHERE")
            pred = self.scalar(rel, and_all(where))
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
                fields.append(replace(kept, name=name,
                                      qual=kept.qual if name == body.name else None,
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

