"""Expression nodes and their builders: ``gs.col("price") * 0.9 > 100`` (Polars vocabulary).

An expression is an immutable tree of the nodes here; :mod:`gpustream.expr.types` types
it against a schema at plan time and :mod:`gpustream.expr.evaluate` evaluates it over a
batch at run time. Builders that take a wrong argument (``col(3)``, ``lit([1])``,
``cast("nope")``) raise :class:`~gpustream.errors.PlanError`.

An aggregation (:class:`Agg`, ``col("v").sum()``, :func:`count`) is a node too: an agg
step folds it over a window, and anywhere else (a filter, a computed column, inside
another aggregation) it is refused at plan time.

The families of functions build their nodes here through ``expr.str``
(:mod:`gpustream.expr.strings`), ``expr.dt`` (:mod:`gpustream.expr.time`) and
``expr.is_in`` (:mod:`gpustream.expr.when`); those modules define the nodes, so these
three builders import them when called. Their nodes type and evaluate themselves through
:meth:`Expr._type` and :meth:`Expr._evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gpustream.errors import PlanError

if TYPE_CHECKING:
    from gpustream.batch import Batch
    from gpustream.expr.column import Column
    from gpustream.expr.strings import StrNamespace
    from gpustream.expr.time import DtNamespace

__all__ = ["AGG_KINDS", "BY_KINDS", "MAX_EXPR_DEPTH", "MAX_EXPR_PARTS", "Agg", "BinOp", "Cast",
           "Col", "Expr", "FillNull", "Filtered", "IsNull", "Lit", "Scalar", "UnaryOp",
           "check_expr_size", "col", "count", "lit", "row_number"]

Scalar = bool | int | float | str

ARITH = {"+": "add", "-": "subtract", "*": "multiply", "/": "true_divide",
          "//": "floor_divide", "%": "remainder"}
COMPARE = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
            ">": "greater", ">=": "greater_equal"}
LOGIC = {"&": "logical_and", "|": "logical_or", "^": "logical_xor"}

#: the deepest expression a pipeline takes: ``col("a") + 1`` is 2 deep, and each operator
#: of a chain such as ``a + b + c`` adds a level (type checking and evaluation recurse)
MAX_EXPR_DEPTH = 200
#: the most parts (columns, literals, operators, functions) an expression may have
MAX_EXPR_PARTS = 10_000


class Expr:
    """Base of all column expressions; build them with :func:`col` and :func:`lit`.

    Examples
    --------
    >>> e = (col("price") * 0.9 > 100) & ~col("flag")
    >>> e
    (((col('price') * 0.9) > 100) & ~col('flag'))
    """

    # arithmetic
    def __add__(self, other: Any) -> Expr:
        return BinOp("+", self, wrap(other))

    def __radd__(self, other: Any) -> Expr:
        return BinOp("+", wrap(other), self)

    def __sub__(self, other: Any) -> Expr:
        return BinOp("-", self, wrap(other))

    def __rsub__(self, other: Any) -> Expr:
        return BinOp("-", wrap(other), self)

    def __mul__(self, other: Any) -> Expr:
        return BinOp("*", self, wrap(other))

    def __rmul__(self, other: Any) -> Expr:
        return BinOp("*", wrap(other), self)

    def __truediv__(self, other: Any) -> Expr:
        return BinOp("/", self, wrap(other))

    def __rtruediv__(self, other: Any) -> Expr:
        return BinOp("/", wrap(other), self)

    def __floordiv__(self, other: Any) -> Expr:
        return BinOp("//", self, wrap(other))

    def __rfloordiv__(self, other: Any) -> Expr:
        return BinOp("//", wrap(other), self)

    def __mod__(self, other: Any) -> Expr:
        return BinOp("%", self, wrap(other))

    def __rmod__(self, other: Any) -> Expr:
        return BinOp("%", wrap(other), self)

    def __neg__(self) -> Expr:
        return UnaryOp("-", self)

    def __abs__(self) -> Expr:
        return UnaryOp("abs", self)

    def abs(self) -> Expr:
        """Absolute value.

        Examples
        --------
        >>> col("delta").abs()
        abs(col('delta'))
        """
        return UnaryOp("abs", self)

    # comparisons (return expressions, as in Polars)
    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return BinOp("==", self, wrap(other))

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return BinOp("!=", self, wrap(other))

    def __lt__(self, other: Any) -> Expr:
        return BinOp("<", self, wrap(other))

    def __le__(self, other: Any) -> Expr:
        return BinOp("<=", self, wrap(other))

    def __gt__(self, other: Any) -> Expr:
        return BinOp(">", self, wrap(other))

    def __ge__(self, other: Any) -> Expr:
        return BinOp(">=", self, wrap(other))

    __hash__ = object.__hash__

    # logic
    def __and__(self, other: Any) -> Expr:
        return BinOp("&", self, wrap(other))

    def __rand__(self, other: Any) -> Expr:
        return BinOp("&", wrap(other), self)

    def __or__(self, other: Any) -> Expr:
        return BinOp("|", self, wrap(other))

    def __ror__(self, other: Any) -> Expr:
        return BinOp("|", wrap(other), self)

    def __xor__(self, other: Any) -> Expr:
        return BinOp("^", self, wrap(other))

    def __invert__(self) -> Expr:
        return UnaryOp("~", self)

    def __bool__(self) -> bool:
        raise TypeError(
            "an expression has no truth value: combine conditions with & | ~ instead of "
            "and/or/not, and wrap each comparison in parentheses"
        )

    # nulls and types
    def is_null(self) -> Expr:
        """True where the value is null.

        Examples
        --------
        >>> col("v").is_null()
        col('v').is_null()
        """
        return IsNull(self, negate=False)

    def is_not_null(self) -> Expr:
        """True where the value is present.

        Examples
        --------
        >>> col("v").is_not_null()
        col('v').is_not_null()
        """
        return IsNull(self, negate=True)

    def fill_null(self, value: Scalar) -> Expr:
        """Replace nulls with ``value``.

        Examples
        --------
        >>> col("v").fill_null(0)
        col('v').fill_null(0)
        """
        return FillNull(self, value)

    def cast(self, dtype: str | pa.DataType | np.dtype | type) -> Expr:
        """Convert to another type (numbers, bool, timestamps; strings of any encoding,
        a dictionary or categorical among them, to ``"string"``).

        Parameters
        ----------
        dtype
            An Arrow type, a numpy dtype, or a name such as ``"float32"``, ``"int64"``,
            ``"bool"``, ``"timestamp[ms]"``.

        Examples
        --------
        >>> col("v").cast("float32")
        col('v').cast(float)
        """
        return Cast(self, _to_arrow_type(dtype))

    def is_in(self, values: Sequence[Scalar | None]) -> Expr:
        """True where the value is one of ``values`` (numbers or strings), as SQL's ``IN``.

        A null value gives null; a value not in the list gives null when the list holds
        a ``None``, else false.

        Examples
        --------
        >>> col("channel").is_in(["apple", "google"])
        col('channel').is_in(['apple', 'google'])
        """
        from gpustream.expr.when import IsIn

        return IsIn.build(self, values)

    # aggregations (for windows)
    def _agg(self, kind: str, precision: int = 12) -> Agg:
        return Agg(kind, self, precision)

    def sum(self) -> Agg:
        """Sum of the non-null values (int64 for integers, float64 for floats).

        Examples
        --------
        >>> col("v").sum()
        col('v').sum()
        """
        return self._agg("sum")

    def min(self) -> Agg:
        """Smallest non-null value (numbers and timestamps).

        Examples
        --------
        >>> col("v").min()
        col('v').min()
        """
        return self._agg("min")

    def max(self) -> Agg:
        """Largest non-null value (numbers and timestamps).

        Examples
        --------
        >>> col("v").max()
        col('v').max()
        """
        return self._agg("max")

    def mean(self) -> Agg:
        """Mean of the non-null values (float64).

        Examples
        --------
        >>> col("v").mean()
        col('v').mean()
        """
        return self._agg("mean")

    def var(self) -> Agg:
        """Sample variance (ddof=1) of the non-null values; null below two values.

        Examples
        --------
        >>> col("v").var()
        col('v').var()
        """
        return self._agg("var")

    def std(self) -> Agg:
        """Sample standard deviation (ddof=1); null below two values.

        Examples
        --------
        >>> col("v").std()
        col('v').std()
        """
        return self._agg("std")

    def first(self) -> Agg:
        """The non-null value with the smallest event time (ties: the first to arrive).

        Examples
        --------
        >>> col("v").first()
        col('v').first()
        """
        return self._agg("first")

    def last(self) -> Agg:
        """The non-null value with the largest event time (ties: the last to arrive).

        Examples
        --------
        >>> col("v").last()
        col('v').last()
        """
        return self._agg("last")

    def count(self) -> Agg:
        """Number of non-null values (``gs.count()`` counts rows).

        Examples
        --------
        >>> col("v").count()
        col('v').count()
        """
        return self._agg("count_valid")

    def max_by(self, by: str | Expr) -> Agg:
        """This value on the row where ``by`` is largest (DuckDB's ``max_by`` /
        ``arg_max``, Polars' ``sort_by(by).last()``).

        Rows where ``by`` or this value is null are skipped (as DuckDB's ``arg_max``);
        NaN ranks above every number. Ties: the first such row in arrival order. Any
        value type (strings too); ``by`` must be a number, bool or timestamp.

        Examples
        --------
        >>> col("bidder").max_by("price")
        col('bidder').max_by(col('price'))
        """
        return self._by_agg("max_by", by)

    def min_by(self, by: str | Expr) -> Agg:
        """This value on the row where ``by`` is smallest (DuckDB's ``min_by`` /
        ``arg_min``); nulls and ties as :meth:`max_by`.

        Examples
        --------
        >>> col("bidder").min_by(col("ts"))
        col('bidder').min_by(col('ts'))
        """
        return self._by_agg("min_by", by)

    def _by_agg(self, kind: str, by: str | Expr) -> Agg:
        if not isinstance(by, str | Expr):
            raise PlanError(f"{kind}() takes a column name or an expression to order by, got "
                            f"{by!r}; e.g. col('bidder').{kind}('price')")
        return Agg(kind, self, by=col(by) if isinstance(by, str) else by)

    def count_distinct(self) -> Agg:
        """Exact number of distinct non-null values.

        Examples
        --------
        >>> col("v").count_distinct()
        col('v').count_distinct()
        """
        return self._agg("count_distinct")

    def approx_count_distinct(self, precision: int = 12) -> Agg:
        """Approximate number of distinct non-null values (HyperLogLog).

        With ``precision=p`` the sketch has ``m = 2**p`` registers and a relative
        standard error of about ``1.04 / sqrt(m)``: 1.6 % at the default p=12, 0.8 % at
        p=14 (tested: within three standard errors). Each open (key, window) holds
        ``4 * m`` bytes of registers (16 KiB at p=12).

        Examples
        --------
        >>> col("user").approx_count_distinct(precision=14).precision
        14
        """
        return self._agg("approx_count_distinct", precision)

    def columns(self) -> set[str]:
        """Every column name the expression reads.

        Examples
        --------
        >>> sorted((col("a") + col("b") * 2).columns())
        ['a', 'b']
        """
        out: set[str] = set()
        stack: list[Expr] = [self]
        while stack:
            e = stack.pop()
            if isinstance(e, Col):
                out.add(e.name)
            stack.extend(e._children())
        return out

    def _children(self) -> Sequence[Expr]:
        return ()

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        """The node's type on ``schema`` (nodes of the other expression modules)."""
        raise PlanError(f"{where}: {self!r} is not a column expression")

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        """The node's values on ``batch`` (nodes of the other expression modules)."""
        raise TypeError(f"cannot evaluate {self!r}")

    # namespaces last: a method named ``str`` hides the type ``str`` from annotations below it
    @property
    def str(self) -> StrNamespace:
        """String functions (Polars' ``.str``), computed once per dictionary entry.

        Examples
        --------
        >>> col("name").str.to_lowercase()
        col('name').str.to_lowercase()
        """
        from gpustream.expr.strings import StrNamespace

        return StrNamespace(self)

    @property
    def dt(self) -> DtNamespace:
        """Date/time parts of a timestamp (or integer epoch milliseconds) column.

        Examples
        --------
        >>> col("ts").dt.hour()
        col('ts').dt.hour()
        """
        from gpustream.expr.time import DtNamespace

        return DtNamespace(self)


@dataclass(frozen=True, eq=False, repr=False)
class Col(Expr):
    """A reference to a column by name."""

    name: str

    def __repr__(self) -> str:
        return f"col({self.name!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Lit(Expr):
    """A literal value (bool, int, float or str)."""

    value: Scalar

    def __repr__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True, eq=False, repr=False)
class BinOp(Expr):
    """A binary operation: arithmetic, comparison or logic."""

    op: str
    left: Expr
    right: Expr

    def __repr__(self) -> str:
        return f"({self.left!r} {self.op} {self.right!r})"

    def _children(self) -> Sequence[Expr]:
        return (self.left, self.right)


@dataclass(frozen=True, eq=False, repr=False)
class UnaryOp(Expr):
    """Negation (``-``), absolute value (``abs``) or logical not (``~``)."""

    op: str
    operand: Expr

    def __repr__(self) -> str:
        return f"abs({self.operand!r})" if self.op == "abs" else f"{self.op}{self.operand!r}"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)


@dataclass(frozen=True, eq=False, repr=False)
class IsNull(Expr):
    """``is_null()`` / ``is_not_null()``."""

    operand: Expr
    negate: bool

    def __repr__(self) -> str:
        return f"{self.operand!r}.{'is_not_null' if self.negate else 'is_null'}()"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)


@dataclass(frozen=True, eq=False, repr=False)
class FillNull(Expr):
    """``fill_null(value)``."""

    operand: Expr
    value: Scalar

    def __repr__(self) -> str:
        return f"{self.operand!r}.fill_null({self.value!r})"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)


@dataclass(frozen=True, eq=False, repr=False)
class Cast(Expr):
    """``cast(dtype)``."""

    operand: Expr
    to: pa.DataType

    def __repr__(self) -> str:
        return f"{self.operand!r}.cast({self.to})"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)


def col(name: str) -> Expr:
    """A column of the stream, by name.

    Examples
    --------
    >>> col("price") > 100
    (col('price') > 100)
    """
    if not isinstance(name, str) or not name:
        raise PlanError(f"col() takes a column name (a non-empty str), got {name!r}")
    return Col(name)


def lit(value: Scalar) -> Expr:
    """A literal value (bool, int, float or str; a numpy scalar is taken as its value).

    Examples
    --------
    >>> lit(3) + col("x")
    (3 + col('x'))
    >>> lit([1, 2])
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: literal [1, 2] of type list is not supported; use a bool, int, float or str
    """
    if isinstance(value, Expr):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        raise PlanError(
            f"literal {value!r} of type {type(value).__name__} is not supported; use a bool, "
            "int, float or str"
        )
    return Lit(value)


def wrap(value: Any) -> Expr:
    """``value`` as an expression: an expression as it is, anything else as :func:`lit`.

    >>> wrap(1), wrap(col("x"))
    (1, col('x'))
    """
    return value if isinstance(value, Expr) else lit(value)


def _to_arrow_type(dtype: str | pa.DataType | np.dtype | type) -> pa.DataType:
    if isinstance(dtype, pa.DataType):
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower()
        if name.startswith("timestamp"):
            unit = name[len("timestamp"):].strip("[]() ") or "ms"
            return pa.timestamp(unit)
        if name in ("str", "string", "utf8"):
            return pa.string()
        if name == "bool":
            return pa.bool_()
    try:
        return pa.from_numpy_dtype(np.dtype(name if isinstance(dtype, str) else dtype))
    except (TypeError, pa.ArrowNotImplementedError) as exc:
        raise PlanError(f"cast(): unknown type {dtype!r}; use e.g. 'int64', 'float32', 'bool', "
                        "'timestamp[ms]', 'string'") from exc


def check_expr_size(expr: Expr, where: str = "expression") -> None:
    """Raise :class:`PlanError` if ``expr`` is nested deeper than :data:`MAX_EXPR_DEPTH`
    or has more than :data:`MAX_EXPR_PARTS` parts.

    Measured without recursion, each shared part once, so an expression built in a loop
    (``e = e + e``, ``e = e + 1`` 20,000 times) is refused with this error rather than
    a ``RecursionError`` or a check that never ends.
    :func:`~gpustream.expr.types.expr_type` calls it.

    Examples
    --------
    >>> e = col("v")
    >>> for _ in range(300):
    ...     e = e + 1
    >>> check_expr_size(e, "step 2 (with_columns)")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 2 (with_columns): the expression is nested 301 levels deep; the limit is 200 (each operator of a chain such as a + b + c adds a level): compute parts of it in earlier with_columns steps
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (parts, depth)
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        e, children_done = stack.pop()
        if id(e) in measured:
            continue
        children = e._children() if isinstance(e, Expr) else ()
        if not children_done:
            stack.append((e, True))
            stack.extend((c, False) for c in children if id(c) not in measured)
            continue
        measured[id(e)] = (1 + sum(measured[id(c)][0] for c in children),
                           1 + max((measured[id(c)][1] for c in children), default=0))
    parts, depth = measured[id(expr)]
    if depth > MAX_EXPR_DEPTH:
        raise PlanError(f"{where}: the expression is nested {depth:,} levels deep; the limit "
                        f"is {MAX_EXPR_DEPTH} (each operator of a chain such as a + b + c "
                        "adds a level): compute parts of it in earlier with_columns steps")
    if parts > MAX_EXPR_PARTS:
        raise PlanError(f"{where}: the expression has {parts:,} parts (columns, literals, "
                        f"operators); the limit is {MAX_EXPR_PARTS:,}: compute parts of it "
                        "in earlier with_columns steps")



# --------------------------------------------------------------------------------------
# aggregations
# --------------------------------------------------------------------------------------


#: aggregations of one input (or none: ``count``)
AGG_KINDS = ("count", "count_valid", "sum", "min", "max", "mean", "var", "std", "first",
             "last", "count_distinct", "approx_count_distinct", "row_number")
#: aggregations of a value and a column to order by (``Agg.by``)
BY_KINDS = ("max_by", "min_by")

@dataclass(frozen=True, eq=False, repr=False)
class Filtered(Expr):
    """``operand`` where ``condition`` is true, else null: an aggregate's input under
    ``.filter(condition)`` (the validity ANDed with the condition; a null condition counts
    as false). Without an operand (``count().filter(...)``) it is null where the
    condition is not true. Typed and evaluated as the other core nodes
    (:func:`~gpustream.expr.types.expr_type`, :func:`~gpustream.expr.evaluate.evaluate`).

    Examples
    --------
    >>> Filtered(col("v"), col("c") > 0)
    filtered(col('v'), (col('c') > 0))
    """

    operand: Expr | None
    condition: Expr

    def __repr__(self) -> str:
        return f"filtered({self.operand!r}, {self.condition!r})"

    def _children(self) -> tuple[Expr, ...]:
        return (self.condition,) if self.operand is None else (self.operand, self.condition)


def unfiltered(e: Expr | None) -> Expr | None:
    """An aggregate's input as written, without its :class:`Filtered` wrapper.

    >>> unfiltered(Filtered(col("v"), col("ok")))
    col('v')
    """
    return e.operand if isinstance(e, Filtered) else e


@dataclass(frozen=True, eq=False, repr=False)
class Agg(Expr):
    """One aggregation: its kind, its input expression, and its parameters.

    An expression node like the others, but only an agg step computes it: typed or
    evaluated anywhere else (a filter, a computed column, another aggregation's input)
    it is refused with a :class:`~gpustream.errors.PlanError`.

    Build them with ``gs.count()`` and the column methods (``gs.col("v").sum()``,
    ``gs.col("bidder").max_by("price")``), and ``.filter(condition)``.

    ``input`` is the expression the state folds (under a filter: a :class:`Filtered`
    node), ``by`` the ordering column of ``max_by`` / ``min_by`` (the filter wraps it
    there: a filtered-out row must not be the winner), ``where`` the filter's condition.

    Examples
    --------
    >>> from gpustream.expr import col
    >>> Agg("sum", col("v"))
    col('v').sum()
    >>> Agg("median", col("v"))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: unknown aggregation 'median'; use one of count, count_valid, sum, min, max, mean, var, std, first, last, count_distinct, approx_count_distinct, row_number, max_by, min_by
    >>> import pyarrow as pa
    >>> from gpustream.expr import expr_type
    >>> expr_type(col("v").sum() > 1, pa.schema({"v": pa.int64()}), "step 2 (filter)")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 2 (filter): col('v').sum() is an aggregation, which only an agg step computes (e.g. .agg(total=col('v').sum())); it cannot be part of a filter, a computed column or another aggregation: aggregate in one step and use the result's column in the next
    """

    kind: str
    input: Expr | None = None
    precision: int = 12
    by: Expr | None = None
    where: Expr | None = None

    def __post_init__(self) -> None:
        if self.kind not in AGG_KINDS + BY_KINDS:
            raise PlanError(f"unknown aggregation {self.kind!r}; use one of "
                            f"{', '.join(AGG_KINDS + BY_KINDS)}")
        if self.kind == "approx_count_distinct" and not 4 <= self.precision <= 16:
            raise PlanError(f"approx_count_distinct: precision must be in 4..16, got "
                            f"{self.precision}")
        if (self.kind in BY_KINDS) != (self.by is not None):
            raise PlanError(f"{self.kind}: 'by' is for max_by and min_by only; use "
                            "col('x').max_by('y')")

    def __repr__(self) -> str:
        tail = "" if self.where is None else f".filter({self.where!r})"
        if self.kind in BY_KINDS:
            return f"{self.input!r}.{self.kind}({unfiltered(self.by)!r}){tail}"
        inner = self.value_input
        if self.kind == "row_number":
            return "row_number()"
        if self.kind == "count" or inner is None:
            return f"count(){tail}"
        name = "count" if self.kind == "count_valid" else self.kind
        if self.kind == "approx_count_distinct" and self.precision != 12:
            return f"{inner!r}.{name}(precision={self.precision}){tail}"
        return f"{inner!r}.{name}(){tail}"

    def _children(self) -> Sequence[Expr]:
        return tuple(e for e in (self.input, self.by) if e is not None)

    @property
    def value_input(self) -> Expr | None:
        """The input expression as written, before a filter (whose column's dictionary
        a string result keeps).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("name").first().filter(col("v") > 1).value_input
        col('name')
        """
        return unfiltered(self.input) if self.where is not None else self.input

    def filter(self, condition: Expr | bool) -> Agg:
        """Aggregate only the rows where ``condition`` is true (SQL's ``FILTER (WHERE
        condition)``; a null condition counts as false). ``count().filter(c)`` counts the
        rows where ``c`` is true; ``count``, ``sum``, ``min``, ``max`` of no row are 0,
        null, null, null as in SQL. A second ``.filter`` ANDs its condition.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("price").sum().filter(col("channel") == "apple")
        col('price').sum().filter((col('channel') == 'apple'))
        >>> count().filter(col("price") > 10).kind
        'count_valid'
        """
        if self.kind == "row_number":
            raise PlanError("row_number() numbers every row of its key; filter the rows "
                            "before the over step instead of the row number")
        cond = wrap(condition)
        where = cond if self.where is None else self.where & cond
        if self.kind in BY_KINDS:
            return replace(self, by=Filtered(unfiltered(self.by), where), where=where)
        inner = self.value_input
        kind = "count_valid" if self.kind == "count" else self.kind
        return replace(self, kind=kind, input=Filtered(inner, where), where=where)


def count() -> Agg:
    """Number of events in the window (rows, nulls included).

    Examples
    --------
    >>> count()
    count()
    """
    return Agg("count")


def row_number() -> Agg:
    """SQL's ``ROW_NUMBER() OVER (PARTITION BY keys ORDER BY event_time)``: each row's
    number among its key's rows (1, 2, ...; rows of the same time in arrival order), in
    an OVER window over every row before it: ``key_by(...).over(rows="unbounded")``.

    Examples
    --------
    >>> row_number()
    row_number()
    """
    return Agg("row_number")


