"""Expressions written as text (the YAML spec): parsed into ``gs.col`` expressions.

The text is parsed with Python's own expression grammar (``ast.parse(mode="eval")``) and
the tree is then *walked*, accepting only a small set of node kinds: column names,
numbers, strings, ``true``/``false``/``null``, arithmetic, comparisons, ``and``/``or``/
``not``, and calls of known functions. Nothing is ever evaluated; anything else is an
error that says where it is in the text and what is allowed.

Examples
--------
>>> parse_expr("price * 0.908 > 100 and channel != 'apple'")
(((col('price') * 0.908) > 100) & (col('channel') != 'apple'))
>>> parse_agg("sum(usd)")
col('usd').sum()
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

from gpustream.aggs import Agg, count
from gpustream.errors import PlanError
from gpustream.expr import MAX_EXPR_DEPTH, Expr, check_expr_size, col, lit

__all__ = ["AGGREGATIONS", "FUNCTIONS", "MAX_EXPR_CHARS", "parse_agg", "parse_expr"]

#: the longest expression text accepted, checked before it is parsed (a real one is
#: well under 1,000 characters; an expression's depth and parts are capped as well, see
#: :func:`gpustream.expr.check_expr_size`)
MAX_EXPR_CHARS = 10_000

#: aggregations by name -> the column method (``count`` alone counts rows)
AGGREGATIONS = {
    "count": "count", "sum": "sum", "min": "min", "max": "max", "mean": "mean",
    "avg": "mean", "var": "var", "std": "std", "first": "first", "last": "last",
    "count_distinct": "count_distinct", "approx_count_distinct": "approx_count_distinct",
}
#: scalar functions by name -> number of arguments
FUNCTIONS = {"is_null": 1, "is_not_null": 1, "fill_null": 2, "cast": 2, "abs": 1}
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
            raise self.fail(node, f"the operator {type(op).__name__} is not supported")
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed (use column names, "
                              "numbers, 'strings', arithmetic, comparisons, and, or, not, "
                              f"and the functions {', '.join(FUNCTIONS)})")

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
        if len(node.args) != FUNCTIONS[name] or node.keywords:
            raise self.fail(node, f"{name}() takes {FUNCTIONS[name]} argument(s)")
        x = self.expr(node.args[0])
        if name == "fill_null":
            return x.fill_null(self.constant(node.args[1]))
        if name == "cast":
            return x.cast(str(self.constant(node.args[1])))
        return getattr(x, name)()

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
        if name == "count" and not node.args:
            return count()
        if len(node.args) != 1 or node.keywords:
            raise self.fail(node, f"{name}() takes one expression")
        return getattr(self.expr(node.args[0]), AGGREGATIONS[name])()


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
    :data:`gpustream.expr.MAX_EXPR_DEPTH`, is refused with a :class:`PlanError` before
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
    gpustream.errors.PlanError: steps[0].filter: unknown function '__import__'; known: is_null, is_not_null, fill_null, cast, abs in "__import__('os')" at column 1
    >>> parse_expr(" + ".join(["v"] * 5000), "steps[1].with_columns.x")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: steps[1].with_columns.x: the expression is 19,997 characters long; the limit is 10,000: compute parts of it in earlier with_columns steps
    """
    out = _Walker(text, where).expr(_tree(text, where))
    check_expr_size(out, where)  # a long ``a or b or ...`` is one level deep as text only
    return out


def parse_agg(text: str, where: str = "aggregation") -> Agg:
    """An aggregation from text, e.g. ``"count()"``, ``"sum(price * qty)"``.

    Examples
    --------
    >>> parse_agg("count()")
    count()
    >>> parse_agg("avgg(v)", "steps[2].agg.x")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: steps[2].agg.x: unknown aggregation 'avgg'; did you mean 'avg'? in 'avgg(v)' at column 1
    """
    out = _Walker(text, where).agg(_tree(text, where))
    if out.input is not None:
        check_expr_size(out.input, where)
    return out
