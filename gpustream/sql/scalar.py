"""SQL expressions (sqlglot trees) as gpustream expressions: :class:`Scalars`.

:meth:`Scalars.expr` translates a scalar expression (columns through the translator's
``resolve``, literals, operators, ``CASE``, ``CAST`` and Flink's functions) into a
:class:`~gpustream.expr.Expr`; :meth:`Scalars.agg` translates one aggregate call
(``COUNT(DISTINCT x) FILTER (WHERE ...)``, ``SUM``, ``AVG`` ...) into an
:class:`~gpustream.expr.Agg`. Nothing is evaluated here: the result is an expression tree
that the planner types and the engine evaluates vectorized. Every refusal is a
:class:`~gpustream.sql.errors.SqlError` at the line and column of the part it refuses,
with the fix.

The functions (Flink's names and semantics; the names the YAML spec's text shares are
mapped by :func:`gpustream.expr.text.apply_function`):

- numbers: ``+ - * / %``, ``MOD``, ``ABS``, ``CAST``; ``/`` divides exactly (DuckDB's
  ``/``), ``%`` and ``MOD`` take the sign of the dividend (SQL's);
- strings: ``LOWER``, ``UPPER``, ``CHAR_LENGTH`` / ``LENGTH``, ``SUBSTRING`` (1-based),
  ``REPLACE``, ``REGEXP_EXTRACT``, ``REGEXP``, ``SPLIT_INDEX`` (0-based), ``CONCAT`` /
  ``||``, ``TRIM`` / ``LTRIM`` / ``RTRIM``, ``LIKE``, ``COUNT_CHAR`` (Nexmark's UDF);
- times: ``YEAR``, ``MONTH``, ``DAYOFMONTH``, ``HOUR``, ``MINUTE``, ``SECOND``,
  ``DAYOFWEEK`` (Sunday = 1), ``EXTRACT(part FROM ts)``, ``DATE_FORMAT`` (Java patterns),
  ``ts + INTERVAL ...``, ``TIMESTAMP '...'`` literals (timestamps in milliseconds,
  Flink's ``TIMESTAMP(3)``).

Examples
--------
>>> from gpustream.sql.dialect import parse
>>> text = "SELECT price * 0.908, LOWER(channel) IN ('apple', 'google') FROM bid"
>>> s = Scalars(text, lambda c: c.name)
>>> [s.expr(e) for e in parse(text)[0].expressions]
[(col('price') * 0.908), col('channel').str.to_lowercase().is_in(['apple', 'google'])]
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from sqlglot import exp

from gpustream.errors import PlanError
from gpustream.expr import Agg, Expr, col, concat_str, count, lit, when
from gpustream.expr.text import apply_function
from gpustream.sql.errors import SqlError, sql_error

__all__ = ["AGGREGATES", "FUNCTIONS", "Resolve", "Scalars", "interval_ms", "is_aggregate",
           "sql_type"]

#: a SQL column reference -> the stream's column name (raises SqlError when unknown)
Resolve = Callable[[exp.Column], str]

#: aggregate calls -> the gpustream aggregation (``COUNT`` is special-cased)
_AGG_KINDS: dict[type[exp.Expression], str] = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "mean", exp.Min: "min", exp.Max: "max",
    exp.Stddev: "std", exp.StddevSamp: "std", exp.Variance: "var",
    exp.ApproxDistinct: "approx_count_distinct", exp.FirstValue: "first",
    exp.LastValue: "last",
}
#: the aggregates, as SQL spells them
AGGREGATES = ("COUNT", "COUNT(DISTINCT)", "SUM", "AVG", "MIN", "MAX", "STDDEV", "STDDEV_SAMP",
              "VARIANCE", "VAR_SAMP", "APPROX_COUNT_DISTINCT", "FIRST_VALUE", "LAST_VALUE")
#: aggregates sqlglot knows that gpustream does not compute, with the fix
_REFUSED_AGGS: dict[type[exp.Expression], str] = {
    exp.StddevPop: "STDDEV_POP is not supported; STDDEV / STDDEV_SAMP (the sample "
                   "deviation) is",
    exp.VariancePop: "VAR_POP is not supported; VARIANCE / VAR_SAMP (the sample variance) is",
}
#: the scalar functions :meth:`Scalars.expr` translates, as SQL spells them
FUNCTIONS = ("ABS", "CAST", "COALESCE", "IFNULL", "MOD", "LOWER", "UPPER", "CHAR_LENGTH",
             "LENGTH", "SUBSTRING", "REPLACE", "REGEXP_EXTRACT", "REGEXP", "SPLIT_INDEX",
             "CONCAT", "TRIM", "LTRIM", "RTRIM", "COUNT_CHAR", "YEAR", "MONTH", "DAYOFMONTH",
             "HOUR", "MINUTE", "SECOND", "DAYOFWEEK", "EXTRACT", "DATE_FORMAT")
#: time parts: sqlglot node -> the function name :func:`apply_function` takes
_TIME_PARTS: dict[type[exp.Expression], str] = {
    exp.Year: "year", exp.Month: "month", exp.Day: "day", exp.DayOfMonth: "day",
    exp.Hour: "hour", exp.Minute: "minute", exp.Second: "second",
}
#: ``EXTRACT(unit FROM ts)`` units
_EXTRACT = {"YEAR": "year", "MONTH": "month", "DAY": "day", "DAYOFMONTH": "day",
            "HOUR": "hour", "MINUTE": "minute", "SECOND": "second", "DOW": "dow",
            "DAYOFWEEK": "dow", "ISODOW": "isodow"}
_COMPARE: dict[type[exp.Expression], str] = {
    exp.EQ: "__eq__", exp.NEQ: "__ne__", exp.LT: "__lt__", exp.LTE: "__le__",
    exp.GT: "__gt__", exp.GTE: "__ge__"}
_ARITH: dict[type[exp.Expression], str] = {
    exp.Add: "__add__", exp.Sub: "__sub__", exp.Mul: "__mul__", exp.Div: "__truediv__"}
#: interval units in milliseconds
_UNIT_MS = {"MILLISECOND": 1, "SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000,
            "DAY": 86_400_000}
_SPAN_ORDER = ("DAY", "HOUR", "MINUTE", "SECOND")
#: SQL types -> the name :meth:`gpustream.expr.Expr.cast` takes
_TYPES: dict[Any, str] = {  # exp.DataType.Type -> name
    exp.DataType.Type.BIGINT: "int64", exp.DataType.Type.INT: "int32",
    exp.DataType.Type.SMALLINT: "int16", exp.DataType.Type.TINYINT: "int8",
    exp.DataType.Type.DOUBLE: "float64", exp.DataType.Type.FLOAT: "float32",
    exp.DataType.Type.DECIMAL: "float64", exp.DataType.Type.VARCHAR: "string",
    exp.DataType.Type.TEXT: "string", exp.DataType.Type.CHAR: "string",
    exp.DataType.Type.NVARCHAR: "string", exp.DataType.Type.BOOLEAN: "bool",
}
_TIMESTAMPS = (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPLTZ,
               exp.DataType.Type.TIMESTAMPTZ)
_SUPPORTED_TYPES = ("BIGINT, INT / INTEGER, SMALLINT, TINYINT, DOUBLE, FLOAT / REAL, "
                    "DECIMAL (as DOUBLE), VARCHAR / STRING / CHAR, BOOLEAN, TIMESTAMP(p) / "
                    "TIMESTAMP_LTZ(p) with p = 0, 3, 6, 9")
#: the unit of a timestamp of precision p
_UNITS = {0: "s", 3: "ms", 6: "us", 9: "ns"}
#: Java SimpleDateFormat runs -> strftime (``ss`` is handled on its own: see _date_format)
_JAVA_FORMAT = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M"}
_SECONDS_MARK = "\x01"
_MILLIS_MARK = "\x02"


def is_aggregate(node: exp.Expression) -> bool:
    """Whether ``node`` itself is an aggregate call (``FILTER``-wrapped ones too), not a
    window function (an aggregate under ``OVER``).

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> q = parse("SELECT COUNT(*) FILTER (WHERE a > 1), SUM(a) OVER (ORDER BY t), a FROM x")
    >>> [is_aggregate(e) for e in q[0].expressions]
    [True, False, False]
    """
    inner = node.this if isinstance(node, exp.Filter) else node
    if not isinstance(inner, exp.AggFunc):
        return False
    return not isinstance(node.parent, exp.Window)


def interval_ms(node: exp.Expression, text: str, zero: bool = False) -> int:
    """The length of ``INTERVAL '10' SECOND`` (``MILLISECOND``, ``SECOND``, ``MINUTE``,
    ``HOUR``, ``DAY``, plurals too; ``INTERVAL '1:30' MINUTE TO SECOND``) in milliseconds;
    ``zero``: a length of 0 is allowed (a watermark delay, a join bound).

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> q = "SELECT INTERVAL '10' SECOND, INTERVAL '1:30' MINUTE TO SECOND, INTERVAL '2' HOURS"
    >>> [interval_ms(e, q) for e in parse(q)[0].expressions]
    [10000, 90000, 7200000]
    >>> q = "SELECT INTERVAL '1' MONTH"
    >>> interval_ms(parse(q)[0].expressions[0], q)
    Traceback (most recent call last):
    ...
    gpustream.sql.errors.SqlError: SQL line 1, column 17 ("'1'"): INTERVAL ... MONTH has no fixed length; write the interval in MILLISECOND, SECOND, MINUTE, HOUR or DAY, e.g. INTERVAL '10' SECOND
    """
    fix = "write the interval in MILLISECOND, SECOND, MINUTE, HOUR or DAY, e.g. INTERVAL '10' SECOND"
    if not isinstance(node, exp.Interval):
        raise sql_error(f"expected an interval here; {fix}", node, text)
    value = node.this.name if isinstance(node.this, exp.Literal) else None
    unit = node.args.get("unit")
    if value is None:
        raise sql_error(f"the interval's length must be a literal; {fix}", node, text)
    if unit is None:  # INTERVAL '10 SECONDS'
        value, _, name = value.strip().partition(" ")
        units = [name.strip().upper()]
    elif isinstance(unit, exp.IntervalSpan):
        first, last = unit.this.name.upper(), unit.expression.name.upper()
        if first not in _SPAN_ORDER or last not in _SPAN_ORDER \
                or _SPAN_ORDER.index(first) >= _SPAN_ORDER.index(last):
            raise sql_error(f"INTERVAL ... {first} TO {last} is not supported; {fix}", node, text)
        units = list(_SPAN_ORDER[_SPAN_ORDER.index(first):_SPAN_ORDER.index(last) + 1])
    else:
        units = [unit.name.upper()]
    units = [u[:-1] if u.endswith("S") and u[:-1] in _UNIT_MS else u for u in units]
    for u in units:
        if u not in _UNIT_MS:
            raise sql_error(f"INTERVAL ... {u or '(no unit)'} has no fixed length; {fix}"
                            if u in ("YEAR", "MONTH", "QUARTER", "WEEK") or u == ""
                            else f"unknown interval unit {u!r}; {fix}", node, text)
    parts = re.split(r"[ :]", value.strip())
    if len(parts) != len(units):
        raise sql_error(f"INTERVAL {value!r} does not have the {len(units)} part(s) "
                        f"{' '.join(units)} asks for; {fix}", node, text)
    total = 0.0
    for p, u in zip(parts, units, strict=True):
        try:
            total += float(p) * _UNIT_MS[u]
        except ValueError:
            raise sql_error(f"cannot read {value!r} as a length; {fix}", node, text) from None
    if total < 0 or (total == 0 and not zero) or total != int(total):
        raise sql_error(f"INTERVAL {value!r} is not a positive whole number of milliseconds; "
                        f"{fix}", node, text)
    return int(total)


def sql_type(node: exp.DataType, text: str) -> str:
    """The type name :meth:`gpustream.expr.Expr.cast` takes for a SQL type.

    ``TIMESTAMP`` without a precision is milliseconds, gpustream's event-time unit (Flink's
    default precision is 6: write ``TIMESTAMP(6)`` for microseconds).

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> q = "SELECT CAST(a AS BIGINT), CAST(a AS REAL), CAST(a AS TIMESTAMP(3)), CAST(a AS STRING)"
    >>> [sql_type(e.to, q) for e in parse(q)[0].expressions]
    ['int64', 'float32', 'timestamp[ms]', 'string']
    >>> q = "SELECT CAST(a AS DATE)"
    >>> sql_type(parse(q)[0].expressions[0].to, q)
    Traceback (most recent call last):
    ...
    gpustream.sql.errors.SqlError: SQL: the type DATE is not supported; use one of BIGINT, INT / INTEGER, SMALLINT, TINYINT, DOUBLE, FLOAT / REAL, DECIMAL (as DOUBLE), VARCHAR / STRING / CHAR, BOOLEAN, TIMESTAMP(p) / TIMESTAMP_LTZ(p) with p = 0, 3, 6, 9
    """
    kind = node.this
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _TIMESTAMPS:
        sizes = node.expressions
        precision = 3
        if sizes:
            size = sizes[0].this if isinstance(sizes[0], exp.DataTypeParam) else sizes[0]
            precision = int(size.name) if isinstance(size, exp.Literal) \
                and size.name.isdigit() else -1
        if precision not in _UNITS:
            raise sql_error(f"TIMESTAMP({precision}) is not supported; use a precision of "
                            "0 (seconds), 3 (milliseconds), 6 or 9", node, text)
        return f"timestamp[{_UNITS[precision]}]"
    raise sql_error(f"the type {node.sql()} is not supported; use one of {_SUPPORTED_TYPES}",
                    node, text)


def _like_regex(pattern: str) -> str:
    """A LIKE pattern as an anchored regular expression: ``%`` any text, ``_`` one
    character.

    >>> _like_regex("a%b_.c")
    '(?s)^a.*b.\\\\.c$'
    """
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return f"(?s)^{body}$"


def _function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    if isinstance(node, exp.Func):
        return node.sql_name()
    return type(node).__name__.upper()


class Scalars:
    """Translates SQL expressions of one query text into gpustream expressions.

    Parameters
    ----------
    text
        The whole SQL text (errors name their line and column in it).
    resolve
        A SQL column reference -> the stream's column name; raises
        :class:`~gpustream.sql.errors.SqlError` itself when the column is unknown.
    schema
        The stream's schema, where known: the type of a time ``ts + INTERVAL`` shifts.

    Examples
    --------
    >>> from gpustream.sql.dialect import parse
    >>> text = "SELECT COUNT(DISTINCT bidder) FILTER (WHERE price > 10) FROM bid"
    >>> Scalars(text, lambda c: c.name).agg(parse(text)[0].expressions[0])
    col('bidder').count_distinct().filter((col('price') > 10))
    """

    def __init__(self, text: str, resolve: Resolve, schema: pa.Schema | None = None) -> None:
        self.text = text
        self.resolve = resolve
        self.schema = schema

    # ---------------------------------------------------------------- helpers
    def fail(self, message: str, node: exp.Expression | None) -> SqlError:
        """A :class:`SqlError` placed at ``node``.

        >>> Scalars("SELECT 1", lambda c: c.name).fail("no", None).args[0]
        'SQL: no'
        """
        return sql_error(message, node, self.text)

    def build(self, node: exp.Expression, make: Callable[[], Any]) -> Any:
        """``make()``, a :class:`PlanError` it raises (a wrong argument) placed at ``node``.

        >>> Scalars("SELECT 1", lambda c: c.name).build(exp.Null(), lambda: 1)
        1
        """
        try:
            return make()
        except SqlError:
            raise
        except PlanError as exc:
            raise self.fail(str(exc), node) from None

    def _type_of(self, x: Expr, node: exp.Expression) -> pa.DataType | None:
        """The type of ``x`` in the stream (None where the schema is not known)."""
        if self.schema is None:
            return None
        from gpustream.expr import expr_type
        t: pa.DataType = self.build(node, lambda: expr_type(x, self.schema))
        return t

    def constant(self, node: exp.Expression | None, what: str) -> Any:
        """The Python value of a literal (``None`` for ``NULL``); anything else refused.

        >>> Scalars("SELECT -2", lambda c: c.name).constant(exp.Neg(this=exp.Literal.number(2)), "x")
        -2
        """
        if isinstance(node, exp.Paren):
            return self.constant(node.this, what)
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.name
            text = node.name
            try:
                return int(text)
            except ValueError:
                return float(text)
        if isinstance(node, exp.Neg):
            value = self.constant(node.this, what)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value
        raise self.fail(f"{what} must be a constant (a number or a 'string')", node)

    def string(self, node: exp.Expression | None, what: str) -> str:
        value = self.constant(node, what)
        if not isinstance(value, str):
            raise self.fail(f"{what} must be a 'string', got {value!r}", node)
        return value

    def integer(self, node: exp.Expression | None, what: str) -> int:
        value = self.constant(node, what)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{what} must be a whole number, got {value!r}", node)
        return value

    def value(self, node: exp.Expression | None) -> Expr | None:
        """A branch's value: ``None`` for ``NULL``."""
        return None if isinstance(node, exp.Null) or node is None else self.expr(node)

    # ---------------------------------------------------------------- expressions
    def expr(self, node: exp.Expression) -> Expr:
        """A scalar SQL expression as a gpustream expression.

        Examples
        --------
        >>> from gpustream.sql.dialect import parse
        >>> text = "SELECT CASE WHEN price > 100 THEN 'high' ELSE 'low' END, hour(ts) FROM bid"
        >>> s = Scalars(text, lambda c: c.name)
        >>> [s.expr(e) for e in parse(text)[0].expressions]
        [when((col('price') > 100)).then('high').otherwise('low'), col('ts').dt.hour()]
        >>> text = "SELECT price + SUM(price) FROM bid"
        >>> s = Scalars(text, lambda c: c.name)
        >>> s.expr(parse(text)[0].expressions[0])
        Traceback (most recent call last):
        ...
        gpustream.sql.errors.SqlError: SQL line 1, column 16 ('SUM(price'): aggregate SUM() is not allowed here: aggregates belong in the SELECT list (or HAVING) of a GROUP BY query; compute it there and use its column
        """
        if isinstance(node, exp.Paren | exp.Alias):
            return self.expr(node.this)
        if isinstance(node, exp.Column):
            return col(self.resolve(node))
        if _is_literal(node):
            return lit(self.constant(node, "a literal"))
        if isinstance(node, exp.Null):
            raise self.fail("NULL is allowed only as a CASE branch, in IN (...) and as x IS "
                            "[NOT] NULL; filter with x IS NULL instead of x = NULL", node)
        if isinstance(node, exp.Interval):
            raise self.fail("an INTERVAL can only be added to or subtracted from a timestamp "
                            "(ts + INTERVAL '10' SECOND)", node)
        if isinstance(node, exp.Window):
            raise self.fail("a window function (... OVER (...)) is not allowed here; "
                            "compute it in its own SELECT and use its column", node)
        if is_aggregate(node) or isinstance(node, exp.AggFunc):
            raise self.fail(f"aggregate {_function_name(node.this if isinstance(node, exp.Filter) else node)}() "
                            "is not allowed here: aggregates belong in the SELECT list (or "
                            "HAVING) of a GROUP BY query; compute it there and use its column",
                            node)
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            return handler(self, node)
        if isinstance(node, exp.Anonymous):
            anonymous = _ANONYMOUS.get(str(node.name).upper())
            if anonymous is not None:
                return anonymous(self, node)
        if isinstance(node, exp.Func):
            name = _function_name(node)
            close = difflib.get_close_matches(name, FUNCTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise self.fail(f"unknown function {name}(); {hint}the functions are "
                            f"{', '.join(FUNCTIONS)} (and the aggregates {', '.join(AGGREGATES)})",
                            node)
        raise self.fail(f"{node.sql(dialect='')!r} ({type(node).__name__}) is not supported "
                        "in an expression; use columns, literals, arithmetic, comparisons, "
                        "AND/OR/NOT, IN, BETWEEN, LIKE, CASE, CAST and the functions "
                        f"{', '.join(FUNCTIONS)}", node)

    def _binary(self, node: exp.Expression) -> Expr:
        left, right = node.this, node.expression
        if isinstance(node, exp.Add) and isinstance(left, exp.Interval):  # INTERVAL + ts
            left, right = right, left
        if isinstance(node, exp.Add | exp.Sub) and isinstance(right, exp.Interval):
            ms = interval_ms(right, self.text)
            x = self.expr(left)
            shifted = x + ms if isinstance(node, exp.Add) else x - ms
            t = self._type_of(x, left)
            if t is not None and pa.types.is_integer(t):  # times as int milliseconds
                return shifted
            if t is not None and not (pa.types.is_timestamp(t) and t.unit == "ms"):
                raise self.fail(f"{left.sql()} is {t}: INTERVAL arithmetic takes millisecond "
                                "times (TIMESTAMP(3), or int milliseconds); read the column "
                                "as timestamp[ms] at the source (schema_overrides)", left)
            return self.build(node, lambda: shifted.cast("timestamp[ms]"))
        if isinstance(node, exp.EQ | exp.NEQ) and (
                isinstance(left, exp.Null) or isinstance(right, exp.Null)):
            raise self.fail("comparing with NULL is never true; write x IS NULL or "
                            "x IS NOT NULL", node)
        a, b = self.expr(left), self.expr(right)
        if isinstance(node, exp.And):
            return a & b
        if isinstance(node, exp.Or):
            return a | b
        method = _COMPARE.get(type(node)) or _ARITH[type(node)]
        out: Expr = getattr(a, method)(b)
        return out

    def _mod(self, node: exp.Expression) -> Expr:
        a_node, b_node = node.this, node.expression  # MOD(a, b) parses as a % b
        a, b = self.expr(a_node), self.expr(b_node)
        r = a % b  # numpy's remainder: the sign of the divisor; SQL's: the dividend's
        if _is_literal(b_node):
            divisor = self.constant(b_node, "MOD's divisor")
            signs_differ = (a < 0) if divisor > 0 else (a > 0)
        else:
            signs_differ = (a < 0) ^ (b < 0)
        return when((r != 0) & signs_differ).then(r - b).otherwise(r)

    def _neg(self, node: exp.Neg) -> Expr:
        return -self.expr(node.this)

    def _not(self, node: exp.Not) -> Expr:
        return ~self.expr(node.this)

    def _is(self, node: exp.Is) -> Expr:
        x = self.expr(node.this)
        other = node.expression
        if isinstance(other, exp.Null):
            return x.is_null()
        if isinstance(other, exp.Boolean):  # IS TRUE / IS FALSE: never null
            return (x == bool(other.this)).fill_null(False)
        raise self.fail("IS takes NULL, TRUE or FALSE: x IS [NOT] NULL", node)

    def _in(self, node: exp.In) -> Expr:
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            raise self.fail("IN (SELECT ...) is not supported; list the values, "
                            "x IN (1, 2), or join with the other table", node)
        x = self.expr(node.this)
        values = [self.constant(v, "a value of IN (...)") for v in node.expressions]
        return self.build(node, lambda: x.is_in(values))

    def _between(self, node: exp.Between) -> Expr:
        x = self.expr(node.this)
        return (x >= self.expr(node.args["low"])) & (x <= self.expr(node.args["high"]))

    def _like(self, node: exp.Like) -> Expr:
        x = self.expr(node.this)
        pattern = self.string(node.expression, "LIKE's pattern")
        out = self.build(node, lambda: x.str.contains(_like_regex(pattern)))
        return ~out if node.args.get("negate") else out

    def _escape(self, node: exp.Escape) -> Expr:
        raise self.fail("LIKE ... ESCAPE is not supported; match the text with "
                        "REGEXP(s, pattern) instead", node)

    def _case(self, node: exp.Case) -> Expr:
        operand = node.this
        subject = None if operand is None else self.expr(operand)
        ifs = node.args.get("ifs") or []
        out: Any = None
        for branch in ifs:
            cond = self.expr(branch.this) if subject is None \
                else subject == self.expr(branch.this)
            then = self.value(branch.args.get("true"))
            out = (when(cond) if out is None else out.when(cond)).then(then)
        default = node.args.get("default")
        result: Expr = out if default is None else out.otherwise(self.value(default))
        return result

    def _coalesce(self, node: exp.Coalesce) -> Expr:
        parts = [node.this, *node.expressions]
        if len(parts) < 2:
            raise self.fail("COALESCE() takes two or more values", node)
        last = parts[-1]
        acc: Expr | None
        if isinstance(last, exp.Literal | exp.Boolean) and not (
                isinstance(last, exp.Literal) and last.is_string):
            fill = self.constant(last, "COALESCE's value")
            before = self.expr(parts[-2])
            acc = self.build(node, lambda: before.fill_null(fill))
            rest = parts[:-2]
        else:
            acc = self.value(last)
            rest = parts[:-1]
        for p in reversed(rest):
            e = self.expr(p)
            acc = when(e.is_not_null()).then(e).otherwise(acc)
        assert acc is not None
        return acc

    def _cast(self, node: exp.Cast) -> Expr:
        to = node.to
        name = sql_type(to, self.text)
        operand = node.this
        if name.startswith("timestamp") and isinstance(operand, exp.Literal) \
                and operand.is_string:  # TIMESTAMP '2024-01-01 10:00:00'
            unit = name[len("timestamp["):-1]
            try:
                epoch = int(np.array([operand.name.strip().replace(" ", "T")],
                                     dtype=f"datetime64[{unit}]").astype(np.int64)[0])
            except ValueError:
                raise self.fail(f"cannot read {operand.name!r} as a timestamp; write it as "
                                "'2024-01-31 10:00:00' (or with .123 milliseconds)",
                                operand) from None
            return lit(epoch).cast(name)
        x = self.expr(operand)
        return self.build(node, lambda: x.cast(name))

    def _abs(self, node: exp.Abs) -> Expr:
        return self.expr(node.this).abs()

    def _call(self, name: str, node: exp.Expression, *args: Any) -> Expr:
        x = self.expr(node.this)
        return self.build(node, lambda: apply_function(name, x, list(args)))

    def _string_fn(self, node: exp.Expression) -> Expr:
        names: dict[type[exp.Expression], str] = {
            exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length"}
        return self._call(names[type(node)], node)

    def _substring(self, node: exp.Substring) -> Expr:
        start = self.integer(node.args.get("start"), "SUBSTRING's start")
        length = node.args.get("length")
        rest = [] if length is None else [self.integer(length, "SUBSTRING's length")]
        return self._call("substring", node, start, *rest)

    def _replace(self, node: exp.Replace) -> Expr:
        return self._call("replace", node, self.string(node.expression, "REPLACE's text"),
                          self.string(node.args.get("replacement"), "REPLACE's replacement"))

    def _regexp_extract(self, node: exp.RegexpExtract) -> Expr:
        pattern = self.string(node.expression, "REGEXP_EXTRACT's pattern")
        group = node.args.get("group") or node.args.get("position")
        index = 0 if group is None else self.integer(group, "REGEXP_EXTRACT's group index")
        return self._call("regexp_extract", node, pattern, index)

    def _concat(self, node: exp.Expression) -> Expr:
        parts: list[exp.Expression] = []
        stack: list[exp.Expression] = [node]
        while stack:  # a || b || c nests: flatten it, left to right
            n = stack.pop()
            if isinstance(n, exp.DPipe):
                stack.extend([n.expression, n.this])
            elif isinstance(n, exp.Concat) and n is node:
                stack.extend(reversed(n.expressions))
            else:
                parts.append(n)
        if len(parts) < 2:
            return self.expr(parts[0])
        exprs = [self.expr(p) for p in parts]
        return self.build(node, lambda: concat_str(exprs))

    def _trim(self, node: exp.Trim) -> Expr:
        x = self.expr(node.this)
        chars = node.expression
        text = " " if chars is None else self.string(chars, "TRIM's characters")
        if not text:
            return x
        one = re.escape(text) if len(text) == 1 else f"[{''.join(re.escape(c) for c in text)}]"
        position = str(node.args.get("position") or "BOTH").upper()
        pattern = {"LEADING": f"^{one}+", "TRAILING": f"{one}+$"}.get(
            position, f"^{one}+|{one}+$")
        return self.build(node, lambda: x.str.replace_all(pattern, ""))

    def _time_part(self, node: exp.Expression) -> Expr:
        return self._call(_TIME_PARTS[type(node)], node)

    def _day_of_week(self, node: exp.Expression) -> Expr:
        iso = self._call("day_of_week", node)  # Monday = 1 ... Sunday = 7
        return iso if isinstance(node, exp.DayOfWeekIso) else iso % 7 + 1  # Sunday = 1

    def _extract(self, node: exp.Extract) -> Expr:
        unit = node.this.name.upper()
        part = _EXTRACT.get(unit)
        if part is None:
            raise self.fail(f"EXTRACT({unit} FROM ...) is not supported; use one of "
                            f"{', '.join(_EXTRACT)}", node)
        x = self.expr(node.expression)
        if part in ("dow", "isodow"):
            iso = self.build(node, lambda: x.dt.weekday())
            return iso if part == "isodow" else iso % 7 + 1
        return self.build(node, lambda: apply_function(part, x, []))

    def _args(self, node: exp.Anonymous, name: str, n: int, usage: str) -> list[exp.Expression]:
        args = list(node.expressions)
        if len(args) != n:
            raise self.fail(f"{name}() takes {n} arguments: {usage}", node)
        return args

    def _regexp(self, node: exp.Anonymous) -> Expr:
        s, p = self._args(node, "REGEXP", 2, "REGEXP(s, 'pattern')")
        x, pattern = self.expr(s), self.string(p, "REGEXP's pattern")
        return self.build(node, lambda: apply_function("regexp_match", x, [pattern]))

    def _split_index(self, node: exp.Anonymous) -> Expr:
        s, sep_node, i = self._args(node, "SPLIT_INDEX", 3, "SPLIT_INDEX(s, 'separator', index)")
        x = self.expr(s)
        sep = self.string(sep_node, "SPLIT_INDEX's separator")
        index = self.integer(i, "SPLIT_INDEX's index")
        if index < 0 or not sep:
            raise self.fail("SPLIT_INDEX takes a non-empty separator and an index from 0 "
                            "(the first part)", node)
        part = self.build(node, lambda: apply_function("split_part", x, [sep, index + 1]))
        # Flink: null past the last part (split_part gives ''): the parts are separators + 1
        separators = self.build(node, lambda: _occurrences(x, sep))
        return when(separators >= index).then(part).otherwise(None)

    def _count_char(self, node: exp.Anonymous) -> Expr:
        s, c = self._args(node, "COUNT_CHAR", 2, "COUNT_CHAR(s, 'c')")
        x, char = self.expr(s), self.string(c, "COUNT_CHAR's character")
        if len(char) != 1:
            raise self.fail(f"COUNT_CHAR counts one character, got {char!r}", c)
        return self.build(node, lambda: _occurrences(x, char))

    def _date_format(self, node: exp.Anonymous) -> Expr:
        ts, f = self._args(node, "DATE_FORMAT", 2, "DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm:ss')")
        x = self.expr(ts)
        fmt = _strftime(self.string(f, "DATE_FORMAT's format"), lambda m: self.fail(m, f))
        out = self.build(node, lambda: x.dt.strftime(fmt))
        if _SECONDS_MARK in fmt:  # whole seconds: drop the fraction %S gives
            out = out.str.replace_all(f"(?:\\.[0-9]+)?{_SECONDS_MARK}", "")
        if _MILLIS_MARK in fmt:  # ss.SSS: the fraction cut to milliseconds
            out = out.str.replace_all(f"(?:(\\.[0-9]{{3}})[0-9]*)?{_MILLIS_MARK}", "\\1")
        return out

    # ---------------------------------------------------------------- aggregates
    def agg(self, node: exp.Expression) -> Agg:
        """One aggregate call (``FILTER (WHERE ...)`` and ``COUNT(DISTINCT x)`` too) as a
        gpustream aggregation.

        Examples
        --------
        >>> from gpustream.sql.dialect import parse
        >>> text = "SELECT COUNT(*), AVG(price), MAX(price) FILTER (WHERE channel = 'apple') FROM bid"
        >>> s = Scalars(text, lambda c: c.name)
        >>> [s.agg(e) for e in parse(text)[0].expressions]
        [count(), col('price').mean(), col('price').max().filter((col('channel') == 'apple'))]
        """
        if isinstance(node, exp.Paren | exp.Alias):
            return self.agg(node.this)
        if isinstance(node, exp.Filter):
            inner = self.agg(node.this)
            where = node.expression
            cond = self.expr(where.this if isinstance(where, exp.Where) else where)
            filtered: Agg = self.build(node, lambda: inner.filter(cond))
            return filtered
        if type(node) in _REFUSED_AGGS:
            raise self.fail(_REFUSED_AGGS[type(node)], node)
        kind = _AGG_KINDS.get(type(node))
        if kind is None:
            raise self.fail(f"{node.sql(dialect='')!r} is not an aggregate; the aggregates "
                            f"are {', '.join(AGGREGATES)}", node)
        name = _function_name(node)
        if node.expressions and not isinstance(node, exp.Count):
            raise self.fail(f"{name}() takes one expression", node)
        arg = node.this
        if isinstance(arg, exp.Distinct):
            values = arg.expressions
            if kind != "count" or len(values) != 1:
                raise self.fail("DISTINCT is supported as COUNT(DISTINCT x) of one "
                                "expression; for several, COUNT(DISTINCT CONCAT(a, '|', b))",
                                node)
            x = self.expr(values[0])
            distinct: Agg = self.build(node, x.count_distinct)
            return distinct
        if kind == "count":
            if arg is None or isinstance(arg, exp.Star) or (
                    isinstance(arg, exp.Literal) and not arg.is_string):
                return count()
            x = self.expr(arg)
            counted: Agg = self.build(node, x.count)
            return counted
        if arg is None:
            raise self.fail(f"{name}() takes an expression, e.g. {name}(price)", node)
        x = self.expr(arg)
        if kind in ("max", "min") and _function_name(arg) == "DATE_FORMAT":
            # MAX of formatted times: the strings order as the numbers their fields
            # make (fixed-width, zero-padded): the string on the row where that is largest
            ts, f = arg.expressions
            order = _format_order(self.expr(ts), self.string(f, "DATE_FORMAT's format"))
            if order is not None:
                by_order: Agg = self.build(node, lambda: getattr(x, f"{kind}_by")(order))
                return by_order
        out: Agg = self.build(node, getattr(x, kind))
        return out


def _is_literal(node: exp.Expression) -> bool:
    """A number, string or boolean literal, or a negative number.

    >>> _is_literal(exp.Neg(this=exp.Literal.number(1))), _is_literal(exp.column("x"))
    (True, False)
    """
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    return isinstance(node, exp.Literal | exp.Boolean)


def _occurrences(x: Expr, text: str) -> Expr:
    """How often ``text`` occurs in ``x``: the characters removed by deleting it, over its
    length."""
    removed = x.str.len_chars() - x.str.replace_all(text, "", literal=True).str.len_chars()
    return removed if len(text) == 1 else removed // len(text)


_ORDER_FIELDS = {"yyyy": ("year", 4), "yy": ("year", 2), "MM": ("month", 2),
                 "dd": ("day", 2), "HH": ("hour", 2), "mm": ("minute", 2),
                 "ss": ("second", 2), "SSS": ("millisecond", 3)}


def _format_order(ts: Expr, java: str) -> Expr | None:
    """A number that orders times as ``DATE_FORMAT(ts, java)``'s strings order, where
    every field of the pattern is fixed-width and zero-padded (``yyyy-MM-dd HH:mm``):
    its fields' digits, most significant first. ``None`` for any other pattern.

    >>> from gpustream.expr import col
    >>> _format_order(col("ts"), "HH:mm")
    ((col('ts').dt.hour() * 100) + col('ts').dt.minute())
    >>> _format_order(col("ts"), "EEE") is None
    True
    """
    key: Expr | None = None
    runs = [m.group(0) for m in re.finditer(r"'[^']*'|([A-Za-z])\1*", java)]
    for run in runs:
        if run.startswith("'"):
            continue
        if run not in _ORDER_FIELDS:
            return None
        part, width = _ORDER_FIELDS[run]
        value = getattr(ts.dt, part)()
        if width == 2 and part == "year":
            value = value % 100
        key = value if key is None else key * (10 ** width) + value
    return key


def _strftime(java: str, fail: Callable[[str], SqlError]) -> str:
    """A Java ``SimpleDateFormat`` pattern as a strftime format (whole seconds end with
    a mark that the caller removes with the fraction).

    >>> _strftime("yyyy-MM-dd HH:mm:ss.SSS 'at' HH", lambda m: SqlError(m))
    '%Y-%m-%d %H:%M:%S\\x02 at %H'
    """
    out: list[str] = []
    i = 0
    while i < len(java):
        ch = java[i]
        if ch == "'":  # quoted text; '' is a quote
            end = java.find("'", i + 1)
            if end < 0:
                raise fail(f"DATE_FORMAT's format {java!r} has an unclosed quote")
            out.append("'" if end == i + 1 else java[i + 1:end].replace("%", "%%"))
            i = end + 1
            continue
        if not ch.isalpha():
            out.append("%%" if ch == "%" else ch)
            i += 1
            continue
        run = len(java) - i - len(java[i:].lstrip(ch))
        letters = java[i:i + run]
        if letters == "ss":
            if java[i + 2:i + 6] == ".SSS":  # %S with milliseconds: ss.SSS exactly
                out.append("%S" + _MILLIS_MARK)
                i += 6
                continue
            out.append("%S" + _SECONDS_MARK)
        elif letters in _JAVA_FORMAT:
            out.append(_JAVA_FORMAT[letters])
        else:
            raise fail(f"DATE_FORMAT: the pattern letters {letters!r} are not supported; use "
                       "yyyy, yy, MM, dd, HH, mm, ss and ss.SSS (quote text: 'T')")
        i += run
    return "".join(out)


_HANDLERS: dict[type[exp.Expression], Callable[[Scalars, Any], Expr]] = {
    **{k: Scalars._binary for k in (*_COMPARE, *_ARITH, exp.And, exp.Or)},
    exp.Mod: Scalars._mod, exp.Neg: Scalars._neg, exp.Not: Scalars._not, exp.Is: Scalars._is,
    exp.In: Scalars._in, exp.Between: Scalars._between, exp.Like: Scalars._like,
    exp.Escape: Scalars._escape, exp.Case: Scalars._case, exp.Coalesce: Scalars._coalesce,
    exp.Cast: Scalars._cast, exp.TryCast: Scalars._cast, exp.Abs: Scalars._abs,
    exp.Lower: Scalars._string_fn, exp.Upper: Scalars._string_fn,
    exp.Length: Scalars._string_fn, exp.Substring: Scalars._substring,
    exp.Replace: Scalars._replace, exp.RegexpExtract: Scalars._regexp_extract,
    exp.Concat: Scalars._concat, exp.DPipe: Scalars._concat, exp.Trim: Scalars._trim,
    exp.Extract: Scalars._extract, exp.DayOfWeek: Scalars._day_of_week,
    exp.DayOfWeekIso: Scalars._day_of_week,
    **{k: Scalars._time_part for k in _TIME_PARTS},
}
_ANONYMOUS: dict[str, Callable[[Scalars, Any], Expr]] = {
    "REGEXP": Scalars._regexp, "SPLIT_INDEX": Scalars._split_index,
    "COUNT_CHAR": Scalars._count_char, "DATE_FORMAT": Scalars._date_format,
}
