"""GROUP BY in SQL: a window (a windowing function, a group window, or the windows of
a window's rows again), or a running aggregation; HAVING; SELECT DISTINCT.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"k": ["a", "b", "a"], "ts": [1, 2, 3]}), name="t")
>>> gs.materialize(p.sql("SELECT k, COUNT(*) AS n FROM t GROUP BY k").collect(),
...                key="k").to_pydict()
{'k': ['a', 'b'], 'n': [2, 1]}
"""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from gpustream.api import Stream
from gpustream.expr import Agg, Expr, col, count, lit
from gpustream.plan import stream_time
from gpustream.sql.relation import WINDOW_KINDS, Field, Rel, Windowed
from gpustream.sql.scalar import is_aggregate
from gpustream.sql.steps import HIDDEN, Steps
from gpustream.sql.windows import GROUP_WINDOW_PARTS, Cumulate, group_window
from gpustream.windows import Session, Sliding, Tumbling, WindowAssigner

__all__ = ["Grouping"]


class Grouping(Steps):
    """GROUP BY, HAVING and DISTINCT of the translator."""

    def _distinct(self, sel: exp.Select) -> exp.Select:
        """``SELECT DISTINCT a, b``: ``GROUP BY a, b`` (a running aggregation whose rows
        never change: each distinct row once, ``+I``; per window over a windowing
        function's window columns)."""
        if sel.args["distinct"].args.get("on") is not None:
            raise self.error("DISTINCT ON is not supported: GROUP BY, or rank with "
                             "ROW_NUMBER() OVER (...) = 1", sel)
        if sel.args.get("group") is not None or any(self.has_aggregate(i)
                                                    for i in sel.expressions):
            raise self.error("SELECT DISTINCT with GROUP BY or aggregates: drop DISTINCT "
                             "(a GROUP BY's rows are distinct)", sel)
        if any(isinstance(i, exp.Star) or (isinstance(i, exp.Column)
                                           and isinstance(i.this, exp.Star))
               for i in sel.expressions):
            raise self.error("SELECT DISTINCT *: name the columns", sel)
        out = sel.copy()
        out.set("distinct", None)
        out.set("group", exp.Group(expressions=[
            (i.this if isinstance(i, exp.Alias) else i).copy() for i in sel.expressions]))
        return out

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
        if not aggs:  # a GROUP BY without aggregates still needs one
            windows = assigner is not None or rel.tvf is not None or bool(window_kinds)
            if windows or not key_cols:
                aggs["_rows"] = count()
            else:  # a running one that never changes: each group's row once, +I
                aggs["_first"] = col(key_cols[0]).first()
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
