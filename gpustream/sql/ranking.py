"""OVER aggregations and top-N (``ROW_NUMBER() OVER (...) <= N``) in SQL.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"k": [1, 1, 2], "v": [5, 9, 7], "ts": [1, 2, 3]}),
...              event_time="ts", name="t")
>>> top = p.sql("SELECT k, v FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k "
...             "ORDER BY v DESC) AS rn FROM t) WHERE rn <= 1")
>>> gs.materialize(top.collect()).to_pydict()
{'k': [1, 2], 'v': [9, 7]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sqlglot import exp

from gpustream.api import Stream
from gpustream.expr import Agg, lit, row_number
from gpustream.sql.joins import and_all
from gpustream.sql.relation import Field, Rel
from gpustream.sql.scalar import interval_ms
from gpustream.sql.steps import HIDDEN, Steps

__all__ = ["Ranking"]


class Ranking(Steps):
    """OVER and top-N of the translator."""

    @staticmethod
    def _rank_in_where(sel: exp.Select, where: list[exp.Expression]) -> exp.Select | None:
        """``SELECT ..., ROW_NUMBER() OVER (...) AS rn FROM t WHERE rn <= N`` (the rank
        bounded in its own query's WHERE, as Nexmark q6's text writes it): the same as
        the rank in a subquery bounded by the query around it."""
        ranks = {it.alias for it in sel.expressions if isinstance(it, exp.Alias)
                 and isinstance(it.this, exp.Window) and isinstance(it.this.this, exp.RowNumber)}
        bound = [c for c in where if any(isinstance(col_, exp.Column) and not col_.table
                                         and col_.name in ranks
                                         for col_ in c.find_all(exp.Column))]
        if not ranks or not bound:
            return None
        inner = sel.copy()
        rest = [c.copy() for c in where if c not in bound]
        inner.set("where", exp.Where(this=and_all(rest)) if rest else None)
        return exp.Select(expressions=[exp.Star()],
                          from_=exp.From(this=exp.Subquery(this=inner)),
                          where=exp.Where(this=and_all([c.copy() for c in bound])))

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
        one = order is not None and len(order.expressions) == 1 \
            and isinstance(order.expressions[0].this, exp.Column) \
            and not order.expressions[0].args.get("desc")
        order_by: str | None = None
        if rel.changelog:  # the OVER of the table the changelog describes
            if not one:
                raise self.error("an OVER window over an updating input orders by one "
                                 "column, ascending", order or w)
            assert order is not None
            order_by = rel.field_of(order.expressions[0].this, self.text).column
        else:
            t = self.time_of(rel)
            if not one or t is None or rel.field_of(
                    order.expressions[0].this, self.text).column != t[0]:  # type: ignore[union-attr]
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
        out = self.plan("OVER", w, lambda: keyed.over(range=rng, rows=rows,
                                                      order_by=order_by).agg(**aggs))
        assert isinstance(out, Stream)
        return rel.with_stream(out), out_items

    def _spec_key(self, w: exp.Expression) -> str:
        c = w.copy()
        c.set("this", exp.Null())
        return c.sql()

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
        parts = [column_of(p) for p in w.args.get("partition_by") or []]
        per = [f.column for f in parts if f.kind not in ("window_start", "window_end")]
        per_window = {f.kind for f in parts} >= {"window_start", "window_end"}
        assert base.stream is not None
        t = self.time_of(base)
        # Flink keeps the last of rows with equal times when ranking by time descending
        # for the first row (its deduplication), the first otherwise
        ties = "last" if (n == 1 and len(by) == 1 and desc[0] and t is not None
                          and t[0] == by[0]) else "first"
        out = self.plan("top-N", w, lambda: base.stream.top_k(  # type: ignore[union-attr]
            n, by=by, per=per, descending=desc, ties=ties))
        assert isinstance(out, Stream)
        ranked_windows = "rank" in out.schema.names and "rank" not in base.stream.schema.names
        if ranked_windows != per_window:
            raise self.error("top-N over a window's rows ranks each window's rows: "
                             "PARTITION BY window_start, window_end (and other columns)"
                             if ranked_windows else
                             "PARTITION BY window_start, window_end ranks a window's rows: "
                             "rank the rows of a window aggregation", w)
        fields = list(base.fields)
        if ranked_windows:
            fields.append(Field(rn, None, "rank"))
        elif n == 1:
            ranked = base.with_stream(out)
            ranked, (one,) = self.compute(ranked, [("rownum", lit(1))])
            return replace(ranked, fields=[*fields, Field(rn, None, one)]).requalified(alias)
        else:
            fields.append(Field(rn, None, "", "rank"))
        return replace(base.with_stream(out), fields=fields).requalified(alias)
