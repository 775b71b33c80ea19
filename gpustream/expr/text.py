"""Expressions written as text (the YAML spec): parsed into ``gs.col`` expressions.

The text is parsed with Python's own expression grammar (``ast.parse(mode="eval")``) and
the tree is then *walked*, accepting only a small set of node kinds: column names,
numbers, strings, ``true``/``false``/``null``, arithmetic, comparisons, ``and``/``or``/
``not``, ``x in (...)``, ``a if cond else b``, and calls of known functions
(:data:`FUNCTIONS`). Nothing is ever evaluated; anything else is an error that says where
it is in the text and what is allowed.

Functions take SQL's names and conventions (DuckDB's), each the text of a Python method:
``lower(s)`` is ``col("s").str.to_lowercase()``, ``substring(s, 1, 3)`` (1-based) is
``.str.slice(0, 3)``, ``contains(s, 'x')`` matches plain text and ``regexp_match(s, p)``
a regular expression, ``replace(s, a, b)`` replaces every ``a``, ``regexp_extract(s, p,
group=0)`` is ``.str.extract(p, group)``, ``day_of_week(ts)`` is ``.dt.weekday()``,
``when(c1, v1, c2, v2, ..., else)`` is ``gs.when(c1).then(v1)...otherwise(else)``.

Examples
--------
>>> parse_expr("price * 0.908 > 100 and channel != 'apple'")
(((col('price') * 0.908) > 100) & (col('channel') != 'apple'))
>>> parse_expr("'high' if price > 100 else 'low' if price > 10 else null")
when((col('price') > 100)).then('high').when((col('price') > 10)).then('low').otherwise(None)
>>> parse_expr("lower(channel) in ('apple', 'google') and hour(ts) >= 9")
(col('channel').str.to_lowercase().is_in(['apple', 'google']) & (col('ts').dt.hour() >= 9))
>>> parse_agg("sum(usd)")
col('usd').sum()
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

from gpustream.errors import PlanError
from gpustream.expr.nodes import (
    MAX_EXPR_DEPTH,
    Agg,
    Expr,
    check_expr_size,
    col,
    count,
    lit,
    row_number,
)
from gpustream.expr.strings import concat_str
from gpustream.expr.when import Case, when

__all__ = ["AGGREGATIONS", "FUNCTIONS", "MAX_EXPR_CHARS", "apply_function", "parse_agg",
           "parse_expr"]

#: the longest expression text accepted, checked before it is parsed (a real one is
#: well under 1,000 characters; an expression's depth and parts are capped as well, see
#: :func:`gpustream.expr.nodes.check_expr_size`)
MAX_EXPR_CHARS = 10_000

#: aggregations by name -> the column method (``count`` alone counts rows)
AGGREGATIONS = {
    "count": "count", "sum": "sum", "min": "min", "max": "max", "mean": "mean",
    "avg": "mean", "var": "var", "std": "std", "first": "first", "last": "last",
    "count_distinct": "count_distinct", "approx_count_distinct": "approx_count_distinct",
    "max_by": "max_by", "arg_max": "max_by", "min_by": "min_by", "arg_min": "min_by",
    "row_number": "row_number",
}
#: aggregations of two expressions: ``max_by(value, by)``
_BY_AGGREGATIONS = ("max_by", "min_by")
#: scalar functions by name -> (fewest, most) arguments (most None: any number)
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "is_null": (1, 1), "is_not_null": (1, 1), "fill_null": (2, 2), "cast": (2, 2),
    "abs": (1, 1), "when": (2, None),
    # strings
    "lower": (1, 1), "upper": (1, 1), "len": (1, 1), "length": (1, 1), "contains": (2, 2),
    "regexp_match": (2, 2), "starts_with": (2, 2), "ends_with": (2, 2), "replace": (3, 3),
    "regexp_extract": (2, 3), "split_part": (3, 3), "substring": (2, 3), "concat": (2, None),
    # dates and times
    "year": (1, 1), "month": (1, 1), "day": (1, 1), "hour": (1, 1), "minute": (1, 1),
    "second": (1, 1), "millisecond": (1, 1), "day_of_week": (1, 1), "truncate": (2, 2),
    "strftime": (2, 2),
}
#: functions that are a method of ``expr.str`` or ``expr.dt`` without arguments
_STR_METHODS = {"lower": "to_lowercase", "upper": "to_uppercase", "len": "len_chars",
                "length": "len_chars"}
_DT_METHODS = {"year": "year", "month": "month", "day": "day", "hour": "hour",
               "minute": "minute", "second": "second", "millisecond": "millisecond",
               "day_of_week": "weekday"}
_CONSTANTS = {"true": True, "false": False, "True": True, "False": False}
_NULL = ("null", "None")
_BINARY = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Div: "__truediv__",
           ast.FloorDiv: "__floordiv__", ast.Mod: "__mod__", ast.BitAnd: "__and__",
           ast.BitOr: "__or__", ast.BitXor: "__xor__"}
_COMPARE = {ast.Eq: "__eq__", ast.NotEq: "__ne__", ast.Lt: "__lt__", ast.LtE: "__le__",
            ast.Gt: "__gt__", ast.GtE: "__ge__"}


class _Walker:
    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where

    def fail(self, node: ast.AST | None, msg: str) -> PlanError:
        at = ""
        if node is not None and hasattr(node, "col_offset"):
            at = f" at column {node.col_offset + 1}"
        return PlanError(f"{self.where}: {msg} in {_shown(self.text)}{at}")

    def expr(self, node: ast.AST) -> Expr:
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return lit(_CONSTANTS[node.id])
            if node.id in _NULL:
                raise self.fail(node, "null is only allowed as 'x is null' or 'x is not null'")
            return col(node.id)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool | int | float | str):
                return lit(node.value)
            raise self.fail(node, f"{node.value!r} is not a number, a string, true or false")
        if isinstance(node, ast.BoolOp):
            values = [self.expr(v) for v in node.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.UnaryOp):
            operand = self.expr(node.operand)
            if isinstance(node.op, ast.Not | ast.Invert):
                return ~operand
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.expr(node.left), self.expr(node.right)
            return getattr(left, _BINARY[type(node.op)])(right)
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise self.fail(node, "chained comparisons are not supported; write "
                                      "'a < b and b < c'")
            op, other = node.ops[0], node.comparators[0]
            left = self.expr(node.left)
            if isinstance(op, ast.Is | ast.IsNot) and (
                    (isinstance(other, ast.Name) and other.id in _NULL)
                    or (isinstance(other, ast.Constant) and other.value is None)):
                return left.is_null() if isinstance(op, ast.Is) else left.is_not_null()
            if type(op) in _COMPARE:
                return getattr(left, _COMPARE[type(op)])(self.expr(other))
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(other, ast.Tuple | ast.List | ast.Set):
                    raise self.fail(other, "'in' takes a list of values, e.g. x in (1, 2) or "
                                           "s in ('a', 'b')")
                listed = [None if self.is_null(v) else self.constant(v) for v in other.elts]
                found = self.build(node, lambda: left.is_in(listed))
                return found if isinstance(op, ast.In) else ~found
            raise self.fail(node, f"the operator {type(op).__name__} is not supported")
        if isinstance(node, ast.IfExp):  # a if c else b: when(c).then(a).otherwise(b)
            case: Any = when(self.expr(node.test)).then(self.value(node.body))
            rest = node.orelse
            while isinstance(rest, ast.IfExp):
                case = case.when(self.expr(rest.test)).then(self.value(rest.body))
                rest = rest.orelse
            return case.otherwise(self.value(rest))
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed (use column names, "
                              "numbers, 'strings', arithmetic, comparisons, and, or, not, "
                              "in (...), a if c else b, and the functions "
                              f"{', '.join(FUNCTIONS)})")

    def is_null(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in _NULL) or (
            isinstance(node, ast.Constant) and node.value is None)

    def value(self, node: ast.AST) -> Expr | None:
        """A branch's value: an expression, or None for ``null``."""
        return None if self.is_null(node) else self.expr(node)

    def build(self, node: ast.AST, make: Any) -> Any:
        """``make()``, its PlanError (a wrong argument) placed in the text."""
        try:
            return make()
        except PlanError as exc:
            raise self.fail(node, str(exc)) from None

    def name_of(self, node: ast.Call) -> str:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only plain function names can be called")
        return node.func.id

    def call(self, node: ast.Call) -> Expr:
        name = self.name_of(node)
        if name in AGGREGATIONS:
            raise self.fail(node, f"the aggregation {name}() belongs in an agg step, not here")
        if name not in FUNCTIONS:
            raise self.fail(node, f"unknown function {name!r}{_did_you_mean(name, FUNCTIONS)}")
        fewest, most = FUNCTIONS[name]
        if not fewest <= len(node.args) <= (most or len(node.args)) or node.keywords:
            counted = (f"{fewest}" if fewest == most else f"{fewest} or more" if most is None
                       else f"{fewest} to {most}")
            raise self.fail(node, f"{name}() takes {counted} argument(s)")
        if name == "when":
            return self.when(node)
        if name == "concat":
            parts = [self.expr(a) for a in node.args]
            return self.build(node, lambda: concat_str(parts))
        x = self.expr(node.args[0])
        consts = [self.constant(a) for a in node.args[1:]]
        return self.build(node, lambda: apply_function(name, x, consts))

    def when(self, node: ast.Call) -> Expr:
        """``when(c1, v1, c2, v2, ..., [else])``: CASE WHEN c1 THEN v1 ... ELSE else END."""
        args = node.args
        case: Case = when(self.expr(args[0])).then(self.value(args[1]))
        for i in range(2, len(args) - 1, 2):
            case = case.when(self.expr(args[i])).then(self.value(args[i + 1]))
        return case.otherwise(self.value(args[-1])) if len(args) % 2 else case

    def constant(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
                and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, int | float):
            return -node.operand.value
        raise self.fail(node, "expected a constant here")

    def agg(self, node: ast.AST) -> Agg:
        if not isinstance(node, ast.Call):
            raise self.fail(node, "an aggregation is a call such as count(), sum(price), "
                                  "max(price)")
        name = self.name_of(node)
        if name not in AGGREGATIONS:
            raise self.fail(node, f"unknown aggregation {name!r}"
                                  f"{_did_you_mean(name, AGGREGATIONS)}")
        kind = AGGREGATIONS[name]
        where = None
        for kw in node.keywords:
            if kw.arg != "where":
                raise self.fail(kw.value, f"{name}() takes where=<condition> as its only "
                                          "keyword, e.g. sum(price, where=channel == 'apple')")
            where = self.expr(kw.value)
        out: Agg
        if name == "row_number":
            if node.args or node.keywords:
                raise self.fail(node, "row_number() takes no arguments (it numbers each "
                                      "key's rows in event-time order)")
            out = row_number()
        elif name == "count" and not node.args:
            out = count()
        elif kind in _BY_AGGREGATIONS:
            if len(node.args) != 2:
                raise self.fail(node, f"{name}() takes two expressions: the value and what to "
                                      f"order by, e.g. {name}(bidder, price)")
            value, by = self.expr(node.args[0]), self.expr(node.args[1])
            out = self.build(node, lambda: getattr(value, kind)(by))
        elif len(node.args) != 1:
            raise self.fail(node, f"{name}() takes one expression")
        else:
            out = getattr(self.expr(node.args[0]), kind)()
        return out if where is None else self.build(node, lambda: out.filter(where))


def apply_function(name: str, x: Expr, args: list[Any]) -> Expr:
    """The expression the function ``name`` (SQL's name, DuckDB's conventions) of ``x``
    stands for, with the constant arguments ``args``: the one mapping of SQL function
    names onto the Python methods, shared by the YAML spec's text and the SQL front end
    (:mod:`gpustream.sql.scalar`). A wrong argument raises :class:`PlanError`.

    Examples
    --------
    >>> apply_function("substring", col("s"), [2, 3])
    col('s').str.slice(1, 3)
    >>> apply_function("hour", col("ts"), [])
    col('ts').dt.hour()
    >>> apply_function("substring", col("s"), [0])
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: substring(): the start counts from 1, got 0
    """
    if name in _STR_METHODS:
        return getattr(x.str, _STR_METHODS[name])()
    if name in _DT_METHODS:
        return getattr(x.dt, _DT_METHODS[name])()
    if name == "fill_null":
        return x.fill_null(args[0])
    if name == "cast":
        return x.cast(str(args[0]))
    if name == "contains":
        return x.str.contains(args[0], literal=True)
    if name == "regexp_match":
        return x.str.contains(args[0])
    if name == "starts_with":
        return x.str.starts_with(args[0])
    if name == "ends_with":
        return x.str.ends_with(args[0])
    if name == "replace":
        return x.str.replace_all(args[0], args[1], literal=True)
    if name == "regexp_extract":
        return x.str.extract(args[0], *(args[1:] or [0]))
    if name == "split_part":
        return x.str.split_part(args[0], args[1])
    if name == "substring":
        start = args[0]
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise PlanError(f"substring(): the start counts from 1, got {start!r}")
        return x.str.slice(start - 1, *args[1:])
    if name == "truncate":
        return x.dt.truncate(args[0])
    if name == "strftime":
        return x.dt.strftime(args[0])
    return getattr(x, name)()


def _did_you_mean(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short if long."""
    return repr(text) if len(text) <= 200 else f"{text[:80]!r}... ({len(text):,} characters)"


def _too_deep(where: str) -> PlanError:
    return PlanError(f"{where}: the expression is nested more than {MAX_EXPR_DEPTH} levels "
                     "deep, the limit: compute parts of it in earlier with_columns steps")


def _tree(text: str, where: str) -> ast.AST:
    if not isinstance(text, str):
        raise PlanError(f"{where}: expected an expression as text, got {text!r}")
    if len(text) > MAX_EXPR_CHARS:
        raise PlanError(f"{where}: the expression is {len(text):,} characters long; the limit "
                        f"is {MAX_EXPR_CHARS:,}: compute parts of it in earlier with_columns "
                        "steps")
    source = text.replace("&&", " and ").replace("||", " or ")
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as err:
        raise PlanError(f"{where}: cannot parse {_shown(text)}: {err.msg} at column "
                        f"{err.offset or 0}") from None
    except (RecursionError, MemoryError):  # the parser's own stack: nested far too deep
        raise _too_deep(where) from None
    # the tree's depth, measured without recursion before it is walked (recursively)
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            raise _too_deep(where)
        stack.extend((c, depth + 1) for c in ast.iter_child_nodes(node)
                     if isinstance(c, ast.expr))
    return tree


def parse_expr(text: str, where: str = "expression") -> Expr:
    """A column expression from text, e.g. ``"price > 100 and channel != 'apple'"``.

    A text longer than :data:`MAX_EXPR_CHARS`, or nested deeper than
    :data:`gpustream.expr.nodes.MAX_EXPR_DEPTH`, is refused with a :class:`PlanError` before
    it is parsed or walked.

    Examples
    --------
    >>> parse_expr("fill_null(v, 0) + abs(w)")
    (col('v').fill_null(0) + abs(col('w')))
    >>> parse_expr("v is not null && w == -1")
    (col('v').is_not_null() & (col('w') == -1))
    >>> parse_expr("__import__('os')", "steps[0].filter")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: steps[0].filter: unknown function '__import__'; known: is_null, is_not_null, fill_null, cast, abs, when, lower, ..., strftime in "__import__('os')" at column 1
    >>> parse_expr(" + ".join(["v"] * 5000), "steps[1].with_columns.x")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: steps[1].with_columns.x: the expression is 19,997 characters long; the limit is 10,000: compute parts of it in earlier with_columns steps
    """
    out = _Walker(text, where).expr(_tree(text, where))
    check_expr_size(out, where)  # a long ``a or b or ...`` is one level deep as text only
    return out


def parse_agg(text: str, where: str = "aggregation") -> Agg:
    """An aggregation from text, e.g. ``"count()"``, ``"sum(price * qty)"``,
    ``"max_by(bidder, price)"`` (also ``arg_max``; ``min_by`` / ``arg_min``).

    SQL's ``agg(x) FILTER (WHERE cond)`` is the keyword ``where``:
    ``"sum(price, where=channel == 'apple')"``, ``"count(where=price > 10)"``.

    Examples
    --------
    >>> parse_agg("count()")
    count()
    >>> parse_agg("arg_max(bidder, price)")
    col('bidder').max_by(col('price'))
    >>> parse_agg("sum(price, where=channel == 'apple')")
    col('price').sum().filter((col('channel') == 'apple'))
    >>> parse_agg("count(where=price > 10)")
    count().filter((col('price') > 10))
    >>> parse_agg("avgg(v)", "steps[2].agg.x")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: steps[2].agg.x: unknown aggregation 'avgg'; did you mean 'avg'? in 'avgg(v)' at column 1
    """
    out = _Walker(text, where).agg(_tree(text, where))
    for part in (out.input, out.by):
        if part is not None:
            check_expr_size(part, where)
    return out
