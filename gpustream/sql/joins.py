"""SQL joins onto gpustream's joins, chosen from the join's conditions as Flink does.

The conditions (``ON``, and for inner and comma joins the ``WHERE`` conjuncts that name
both sides) are sorted into equality keys, bounds on the two sides' event times, and the
rest:

- a lookup table on the right (``p.table(..., name=)``, ``FOR SYSTEM_TIME AS OF`` or not):
  a lookup join (:meth:`~gpustream.Stream.join_table`);
- both event times bounded from both sides (``b.ts BETWEEN a.ts - INTERVAL '5' SECOND AND
  a.ts``; two windows' rows joined on ``window_end``): an interval join;
- otherwise a regular join (:meth:`~gpustream.Stream.join`; outer joins are changelogs).

Conditions on one side of an inner join filter that side before the join; what is left
filters the joined rows.

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"id": [1, 2], "ts": [0, 0]}), event_time="ts", name="a")
>>> _ = p.source(gs.from_arrow({"a_id": [1, 1], "ts": [5, 50]}), event_time="ts", name="b")
>>> out = p.sql("SELECT a.id, b.ts FROM a JOIN b ON a.id = b.a_id "
...             "AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '0.01' SECOND")
>>> out.collect().to_pydict()
{'id': [1], 'ts': [5]}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlglot import exp

from gpustream.changelog import OP_COLUMN
from gpustream.errors import PlanError
from gpustream.expr import Expr
from gpustream.plan import stream_time, time_shift
from gpustream.sql.errors import SqlError, sql_error
from gpustream.sql.relation import Field, Rel
from gpustream.sql.scalar import interval_ms
from gpustream.sql.windows import Cumulate
from gpustream.windows import WindowAssigner

__all__ = ["JoinSpec", "and_all", "conjuncts", "join"]

_FLIP = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}


@dataclass
class JoinSpec:
    """What the conditions of one join say."""

    left_on: list[str]
    right_on: list[str]
    lower: int | None = None
    upper: int | None = None


def conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    """The AND-ed parts of a condition (``BETWEEN`` split into its two comparisons).

    Examples
    --------
    >>> import sqlglot
    >>> [c.sql() for c in conjuncts(sqlglot.parse_one("a = 1 AND (b BETWEEN 2 AND 3)"))]
    ['a = 1', 'b >= 2', 'b <= 3']
    """
    if node is None:
        return []
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    if isinstance(node, exp.Between):
        x = node.this
        return [exp.GTE(this=x.copy(), expression=node.args["low"].copy()),
                exp.LTE(this=x.copy(), expression=node.args["high"].copy())]
    return [node]


def sides(node: exp.Expression, left: Rel, right: Rel) -> set[str]:
    """Which inputs (``"l"``, ``"r"``) the columns of ``node`` come from (a name both
    have counts as the left's when unqualified: the resolver says it is ambiguous)."""
    out: set[str] = set()
    for c in node.find_all(exp.Column):
        q = c.table or None
        if left.find(c.name, q):
            out.add("l")
        elif right.find(c.name, q):
            out.add("r")
        else:
            out.add("?")
    return out


def _time_term(node: exp.Expression, rel: Rel, text: str) -> int | None:
    """``node`` as the rel's event time plus a constant: that constant (ms), else None."""
    offset = 0
    while isinstance(node, (exp.Add, exp.Sub)):
        if isinstance(node.expression, exp.Interval):
            ms = interval_ms(node.expression, text, zero=True)
            offset += ms if isinstance(node, exp.Add) else -ms
            node = node.this
        elif isinstance(node, exp.Add) and isinstance(node.this, exp.Interval):
            offset += interval_ms(node.this, text, zero=True)
            node = node.expression
        else:
            break
    if isinstance(node, exp.Paren):
        return _time_term(node.this, rel, text) if offset == 0 else None
    if not isinstance(node, exp.Column) or rel.stream is None:
        return None
    got = rel.find(node.name, node.table or None)
    if len(got) != 1 or not got[0].column:
        return None
    where = "SQL join"
    try:
        t = stream_time(rel.stream._node, where)
        shift = time_shift(rel.stream._node, where) if t is not None else 0
    except PlanError:
        return None
    if t is None or t[0] != got[0].column:
        return None
    return offset - shift  # the column's value is event time - shift


def _bound(cond: exp.Expression, left: Rel, right: Rel, text: str,
           spec: JoinSpec) -> bool:
    """Fold ``cond`` into the bounds on ``right time - left time``; False when it is not
    such a bound."""
    if type(cond) not in _FLIP:
        return False
    a, b = cond.this, cond.expression
    op: type[exp.Binary] = type(cond)  # type: ignore[assignment]
    ca_l, cb_r = _time_term(a, left, text), _time_term(b, right, text)
    if ca_l is not None and cb_r is not None:   # l + ca OP r + cb  <=>  d FLIP(OP) ca - cb
        op, k = _FLIP[op], ca_l - cb_r
    else:
        ca_r, cb_l = _time_term(a, right, text), _time_term(b, left, text)
        if ca_r is None or cb_l is None:
            return False
        k = cb_l - ca_r                        # r + ca OP l + cb  <=>  d OP cb - ca
    if op is exp.GT:
        spec.lower = max(spec.lower if spec.lower is not None else k + 1, k + 1)
    elif op is exp.GTE:
        spec.lower = max(spec.lower if spec.lower is not None else k, k)
    elif op is exp.LT:
        spec.upper = min(spec.upper if spec.upper is not None else k - 1, k - 1)
    else:
        spec.upper = min(spec.upper if spec.upper is not None else k, k)
    return True


def _joined_fields(left: Rel, right: Rel, names: list[str], spec: JoinSpec,
                   tail: tuple[str, ...] = ()) -> list[Field]:
    """The right side's fields as the join's output names them (its columns after the
    left's, before ``tail``; a key named as its left partner appears once; clashes get
    ``_right``)."""
    extra = [n for n in names[len(left.stream.schema.names
                                   if left.stream is not None else []):len(names) - len(tail)]
             if n != OP_COLUMN]
    left_names = set(left.stream.schema.names if left.stream is not None else [])
    right_cols = (right.stream.schema.names if right.stream is not None
                  else right.table.schema().names if right.table is not None else [])
    right_cols = [c for c in right_cols if c != OP_COLUMN]
    shared = {r: lft for lft, r in zip(spec.left_on, spec.right_on, strict=True) if lft == r}
    if len(extra) != len(right_cols):
        right_cols = [c for c in right_cols if c not in shared]
    if len(extra) != len(right_cols):  # pragma: no cover - the join's naming rule changed
        raise PlanError(f"SQL join: cannot match the join's columns {names} to its inputs")
    out_of = dict(zip(right_cols, extra, strict=True))
    for c in shared:
        out_of.setdefault(c, shared[c])
    fields = []
    for f in right.fields:
        if f.kind in ("window_start", "window_end", "window_time") and not f.column:
            continue  # (a windowing function's: the window join's own columns)
        col = out_of.get(f.column, f.column if f.column in left_names else "")
        fields.append(replace(f, column=col))
    return fields


def _window_pairs(pairs: list[tuple[exp.Expression, exp.Expression]], left: Rel,
                  right: Rel) -> tuple[list[tuple[exp.Expression, exp.Expression]], set[str]]:
    """For two windowing functions' rows: the equalities of their window columns taken
    out of ``pairs`` (which kinds were equated), the other pairs left."""
    kinds: set[str] = set()
    rest = []
    for a, b in pairs:
        fa = left.find(a.name, a.table or None) if isinstance(a, exp.Column) else []
        fb = right.find(b.name, b.table or None) if isinstance(b, exp.Column) else []
        if len(fa) == 1 and len(fb) == 1 and fa[0].kind and fa[0].kind == fb[0].kind \
                and not fa[0].column and not fb[0].column:
            kinds.add(fa[0].kind)
        else:
            rest.append((a, b))
    return rest, kinds


def and_all(conds: list[exp.Expression]) -> exp.Expression:
    """The conditions AND-ed (at least one).

    Examples
    --------
    >>> and_all([exp.column("a"), exp.column("b"), exp.column("c")]).sql()
    'a AND b AND c'
    """
    out = conds[0]
    for c in conds[1:]:
        out = exp.And(this=out, expression=c)
    return out


def join(left: Rel, right: Rel, how: str, conds: list[exp.Expression], text: str,
         scalar: Callable[[Rel, exp.Expression], Expr],
         compute: Callable[[Rel, list[tuple[str, Expr]]], tuple[Rel, list[str]]],
         node: exp.Expression) -> tuple[Rel, list[exp.Expression]]:
    """Join ``left`` and ``right`` on ``conds``; returns the joined relation and the
    conditions that filter its rows (those of neither kind above)."""
    spec = JoinSpec([], [])
    rest: list[exp.Expression] = []
    left_only: list[exp.Expression] = []
    right_only: list[exp.Expression] = []
    pairs: list[tuple[exp.Expression, exp.Expression]] = []
    bounds: list[exp.Expression] = []
    for c in conds:
        s = sides(c, left, right)
        if isinstance(c, exp.EQ) and s == {"l", "r"}:
            sa, sb = sides(c.this, left, right), sides(c.expression, left, right)
            if sa == {"l"} and sb == {"r"}:
                pairs.append((c.this, c.expression))
                continue
            if sa == {"r"} and sb == {"l"}:
                pairs.append((c.expression, c.this))
                continue
        if s == {"l", "r"} and _bound(c, left, right, text, spec):
            bounds.append(c)
            continue
        if s == {"l"} and how in ("inner", "right"):
            left_only.append(c)
        elif s == {"r"} and how in ("inner", "left"):
            right_only.append(c)
        elif how == "inner" or not (s & {"l", "r"}):
            rest.append(c)
        else:
            raise sql_error(f"a {how.upper()} JOIN condition must be equalities of the two "
                            "sides' columns (or conditions on the side whose rows are "
                            "padded); filter in a WHERE or a subquery instead", c, text)
    window = None
    if left.tvf is not None or right.tvf is not None:
        if left.tvf is None or right.tvf is None or left.tvf.assigner != right.tvf.assigner:
            raise sql_error("a window join joins two windowing functions of the same "
                            "window (TUMBLE/HOP/SESSION of the same sizes) on window_start "
                            "and window_end", node, text)
        pairs, kinds = _window_pairs(pairs, left, right)
        if not {"window_start", "window_end"} <= kinds or how != "inner" or bounds:
            raise sql_error("a window join needs ON l.window_start = r.window_start AND "
                            "l.window_end = r.window_end (and is an inner join, without "
                            "time bounds)", node, text)
        if isinstance(left.tvf.assigner, Cumulate):
            raise sql_error("a window join of CUMULATE windows is not supported; join "
                            "TUMBLE, HOP or SESSION windows", node, text)
        window = left.tvf.assigner
    for conds_of, side in ((left_only, "left"), (right_only, "right")):
        if conds_of:
            rel = left if side == "left" else right
            if rel.stream is None:  # a lookup table: its rows filter the joined rows
                if how != "inner":
                    raise sql_error(f"a condition on the lookup table in a {how.upper()} "
                                    "JOIN's ON cannot filter the table (it is looked up "
                                    "whole); filter the joined rows in WHERE, or the table "
                                    "before registering it", conds_of[0], text)
                rest.extend(conds_of)
                continue
            pred = scalar(rel, and_all(conds_of))
            moved = rel.with_stream(rel.stream.filter(pred))
            left, right = (moved, right) if side == "left" else (left, moved)
    for lhs, rhs in pairs:
        for rel_name, e in (("l", lhs), ("r", rhs)):
            rel = left if rel_name == "l" else right
            if isinstance(e, exp.Column) and (how == "inner" or rel_name == "r"
                                              or rel.stream is None):
                col = rel.field_of(e, text).column
            elif rel.stream is None:
                raise sql_error("a lookup table's key must be one of its columns", e, text)
            else:  # an expression, or an outer join's left key (its own copy: the
                # join's output keeps one column for keys of one name, but an outer
                # join's padded rows have the key on one side only)
                rel, (col,) = compute(rel, [("key", scalar(rel, e))])
                left, right = (rel, right) if rel_name == "l" else (left, rel)
            (spec.left_on if rel_name == "l" else spec.right_on).append(col)
    if not spec.left_on:
        raise sql_error("a join needs at least one equality of the two sides' columns "
                        "(e.g. ON a.id = b.auction); gpustream does not run cross joins",
                        node, text)
    interval = (window is None and right.table is None and how == "inner"
                and spec.lower is not None and spec.upper is not None)
    if bounds and not interval:
        if how != "inner":
            raise sql_error(f"a {how.upper()} JOIN cannot bound the two sides' times; use "
                            "an inner join (an interval join), or filter after the join",
                            bounds[0], text)
        rest.extend(bounds)  # not bounded from both sides: filters of a regular join
    try:
        return _joined(left, right, how, spec, window, rest, node, text)
    except PlanError as exc:
        if isinstance(exc, SqlError):
            raise
        raise sql_error(f"JOIN: {exc}", node, text) from None


def _joined(left: Rel, right: Rel, how: str, spec: JoinSpec, window: WindowAssigner | None,
            rest: list[exp.Expression], node: exp.Expression, text: str
            ) -> tuple[Rel, list[exp.Expression]]:
    """The join step ``spec`` chose (see :func:`join`)."""
    on = list(zip(spec.left_on, spec.right_on, strict=True))
    assert left.stream is not None
    if window is not None:
        assert right.stream is not None
        out = left.stream.window_join(right.stream, on=on, window=window)
        wcols = ("window_start", "window_end")
        fields = [f for f in left.fields if f.column or f.kind not in wcols]
        fields += _joined_fields(left, right, out.schema.names, spec, tail=wcols)
        fields += [Field(f.name, f.qual, f.kind, f.kind) for rel in (left, right)
                   for f in rel.fields if f.kind in wcols and not f.column]
        return Rel(out, fields), rest
    if right.table is not None:
        if how not in ("inner", "left"):
            raise sql_error(f"a {how.upper()} JOIN with a lookup table: use INNER or LEFT "
                            "(the table is looked up for each row of the stream)", node, text)
        out = left.stream.join_table(right.table, on=on, how=how)
    elif spec.lower is not None and spec.upper is not None and how == "inner":
        assert right.stream is not None
        out = left.stream.interval_join(right.stream, on=on, lower=spec.lower,
                                        upper=spec.upper)
    else:
        assert right.stream is not None
        out = left.stream.join(right.stream, on=on, how=how)
    fields = left.fields + _joined_fields(left, right, out.schema.names, spec)
    return Rel(out, fields), rest
