"""Column expressions: ``gs.col("price") * 0.9 > 100`` (Polars vocabulary).

An expression is an immutable tree. The planner types it against a schema before
anything runs (:func:`expr_type`), so a missing column or a type clash fails at plan
time with the step, the column and the columns that exist; at run time it evaluates
vectorized with the backend's array namespace ``xp`` (numpy or cupy), never per row.

Null semantics follow SQL: arithmetic and comparisons with a null give null; ``&`` and
``|`` use three-valued (Kleene) logic; a filter keeps only rows whose predicate is true.
Division and modulo by zero give null, as in DuckDB. Integer arithmetic wraps on
overflow, as in numpy. Python literals are "weak": ``col_int32 + 1`` stays int32.

Families live beside this module, one each: string functions on dictionary codes
(:mod:`gpustream.expr_strings`, ``col("s").str``), date/time parts
(:mod:`gpustream.expr_time`, ``col("ts").dt``) and ``when/then/otherwise`` and ``is_in``
(:mod:`gpustream.expr_when`). Their nodes type and evaluate themselves through
:meth:`Expr._type` and :meth:`Expr._evaluate`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from gpustream.batch import physical_dtype
from gpustream.errors import PlanError
from gpustream.ingest.schema import is_string_type as _is_string

if TYPE_CHECKING:
    from gpustream.aggs import Agg
    from gpustream.batch import Batch
    from gpustream.expr_strings import StrNamespace
    from gpustream.expr_time import DtNamespace
    from gpustream.ingest.dictionary import StringDictionary

__all__ = ["MAX_EXPR_DEPTH", "MAX_EXPR_PARTS", "Expr", "check_expr_size", "col", "evaluate",
           "expr_type", "lit"]

Scalar = bool | int | float | str

_ARITH = {"+": "add", "-": "subtract", "*": "multiply", "/": "true_divide",
          "//": "floor_divide", "%": "remainder"}
_COMPARE = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal",
            ">": "greater", ">=": "greater_equal"}
_LOGIC = {"&": "logical_and", "|": "logical_or", "^": "logical_xor"}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
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
        return BinOp("+", self, _wrap(other))

    def __radd__(self, other: Any) -> Expr:
        return BinOp("+", _wrap(other), self)

    def __sub__(self, other: Any) -> Expr:
        return BinOp("-", self, _wrap(other))

    def __rsub__(self, other: Any) -> Expr:
        return BinOp("-", _wrap(other), self)

    def __mul__(self, other: Any) -> Expr:
        return BinOp("*", self, _wrap(other))

    def __rmul__(self, other: Any) -> Expr:
        return BinOp("*", _wrap(other), self)

    def __truediv__(self, other: Any) -> Expr:
        return BinOp("/", self, _wrap(other))

    def __rtruediv__(self, other: Any) -> Expr:
        return BinOp("/", _wrap(other), self)

    def __floordiv__(self, other: Any) -> Expr:
        return BinOp("//", self, _wrap(other))

    def __rfloordiv__(self, other: Any) -> Expr:
        return BinOp("//", _wrap(other), self)

    def __mod__(self, other: Any) -> Expr:
        return BinOp("%", self, _wrap(other))

    def __rmod__(self, other: Any) -> Expr:
        return BinOp("%", _wrap(other), self)

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
        return BinOp("==", self, _wrap(other))

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return BinOp("!=", self, _wrap(other))

    def __lt__(self, other: Any) -> Expr:
        return BinOp("<", self, _wrap(other))

    def __le__(self, other: Any) -> Expr:
        return BinOp("<=", self, _wrap(other))

    def __gt__(self, other: Any) -> Expr:
        return BinOp(">", self, _wrap(other))

    def __ge__(self, other: Any) -> Expr:
        return BinOp(">=", self, _wrap(other))

    __hash__ = object.__hash__

    # logic
    def __and__(self, other: Any) -> Expr:
        return BinOp("&", self, _wrap(other))

    def __rand__(self, other: Any) -> Expr:
        return BinOp("&", _wrap(other), self)

    def __or__(self, other: Any) -> Expr:
        return BinOp("|", self, _wrap(other))

    def __ror__(self, other: Any) -> Expr:
        return BinOp("|", _wrap(other), self)

    def __xor__(self, other: Any) -> Expr:
        return BinOp("^", self, _wrap(other))

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
        from gpustream.expr_when import IsIn

        return IsIn.build(self, values)

    # aggregations (for windows)
    def _agg(self, kind: str, precision: int = 12) -> Agg:
        from gpustream.aggs import Agg

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
        from gpustream.aggs import Agg

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
        from gpustream.expr_strings import StrNamespace

        return StrNamespace(self)

    @property
    def dt(self) -> DtNamespace:
        """Date/time parts of a timestamp (or integer epoch milliseconds) column.

        Examples
        --------
        >>> col("ts").dt.hour()
        col('ts').dt.hour()
        """
        from gpustream.expr_time import DtNamespace

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
        raise TypeError(f"col() takes a column name (a non-empty str), got {name!r}")
    return Col(name)


def lit(value: Scalar) -> Expr:
    """A literal value.

    Examples
    --------
    >>> lit(3) + col("x")
    (3 + col('x'))
    """
    if isinstance(value, Expr):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        raise TypeError(
            f"literal {value!r} of type {type(value).__name__} is not supported; use a bool, "
            "int, float or str"
        )
    return Lit(value)


def _wrap(value: Any) -> Expr:
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
            return pa.from_numpy_dtype(np.dtype(name))
        except TypeError as exc:
            raise TypeError(f"unknown type {dtype!r}; use e.g. 'int64', 'float32', 'bool'") from exc
    return pa.from_numpy_dtype(np.dtype(dtype))


# --------------------------------------------------------------------------------------
# typing (plan time)
# --------------------------------------------------------------------------------------

def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t)


def _lit_type(value: Scalar) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def _describe(e: Expr, t: pa.DataType) -> str:
    if isinstance(e, Col):
        return f"column {e.name!r} ({t})"
    if isinstance(e, Lit):
        return f"{type(e.value).__name__} literal {e.value!r}"
    return f"expression {e!r} ({t})"


def _operand_for_numpy(e: Expr, t: pa.DataType) -> Any:
    """What stands for an operand in numpy's type resolution: literals stay weak scalars."""
    if isinstance(e, Lit) and not isinstance(e.value, str):
        return e.value
    return np.empty(0, dtype=physical_dtype(t))


def _numpy_result(op: str, left: Any, right: Any, where: str, what: str) -> pa.DataType:
    ufunc = getattr(np, _ARITH.get(op) or _COMPARE[op])
    try:
        with np.errstate(all="ignore"):
            out = ufunc(left, right)
    except OverflowError as exc:
        raise PlanError(
            f"{where}: {what}: {exc}; cast the column to a wider type first, e.g. "
            ".cast('int64')"
        ) from exc
    return pa.from_numpy_dtype(np.asarray(out).dtype)


def check_expr_size(expr: Expr, where: str = "expression") -> None:
    """Raise :class:`PlanError` if ``expr`` is nested deeper than :data:`MAX_EXPR_DEPTH`
    or has more than :data:`MAX_EXPR_PARTS` parts.

    Measured without recursion, each shared part once, so an expression built in a loop
    (``e = e + e``, ``e = e + 1`` 20,000 times) is refused with this error rather than
    a ``RecursionError`` or a check that never ends. :func:`expr_type` calls it.

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


def expr_type(expr: Expr, schema: pa.Schema, where: str = "expression") -> pa.DataType:
    """The Arrow type an expression yields on ``schema``; raises :class:`PlanError` if invalid.

    Parameters
    ----------
    expr
        The expression.
    schema
        The schema of the stream it runs on.
    where
        Names the step in error messages, e.g. ``"step 2 (filter)"``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> s = pa.schema({"price": pa.int32(), "name": pa.string()})
    >>> expr_type(col("price") + 1, s), expr_type(col("price") / 2, s)
    (DataType(int32), DataType(double))
    >>> expr_type(col("prize") > 1, s, "step 1 (filter)")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 1 (filter): unknown column 'prize'; did you mean 'price'? The columns are: price, name
    >>> expr_type(col("name") + 1, s, "step 2 (with_columns)")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 2 (with_columns): '+' needs numbers, but column 'name' (string) is not a number; cast it or use another column
    """
    check_expr_size(expr, where)
    return _expr_type(expr, schema, where)


def _expr_type(expr: Expr, schema: pa.Schema, where: str) -> pa.DataType:
    if isinstance(expr, Col):
        if expr.name not in schema.names:
            hint = difflib.get_close_matches(expr.name, schema.names, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else "."
            raise PlanError(
                f"{where}: unknown column {expr.name!r}{did} The columns are: "
                f"{', '.join(schema.names)}"
            )
        return schema.field(expr.name).type
    if isinstance(expr, Lit):
        return _lit_type(expr.value)
    if isinstance(expr, BinOp):
        return _binop_type(expr, schema, where)
    if isinstance(expr, UnaryOp):
        t = _expr_type(expr.operand, schema, where)
        if expr.op == "~":
            if not pa.types.is_boolean(t):
                raise PlanError(
                    f"{where}: '~' needs a bool, but {_describe(expr.operand, t)} is not; "
                    "compare it first, e.g. col('x') > 0"
                )
            return t
        if not _is_numeric(t):
            raise PlanError(
                f"{where}: '{expr.op}' needs a number, but {_describe(expr.operand, t)} is not"
            )
        return pa.int64() if pa.types.is_timestamp(t) else t
    if isinstance(expr, IsNull):
        _expr_type(expr.operand, schema, where)
        return pa.bool_()
    if isinstance(expr, FillNull):
        t = _expr_type(expr.operand, schema, where)
        fill_t = _lit_type(expr.value)
        if _is_string(t) or _is_string(fill_t):
            raise PlanError(f"{where}: fill_null on strings is not supported yet; filter the "
                            "nulls out with .is_not_null() instead")
        if pa.types.is_boolean(t) != pa.types.is_boolean(fill_t):
            raise PlanError(f"{where}: fill_null({expr.value!r}) does not fit "
                            f"{_describe(expr.operand, t)}; use a value of its type")
        if pa.types.is_integer(t) and isinstance(expr.value, float):
            raise PlanError(f"{where}: fill_null({expr.value!r}) does not fit "
                            f"{_describe(expr.operand, t)}; cast it to float first")
        return t
    if isinstance(expr, Cast):
        t = _expr_type(expr.operand, schema, where)
        to = expr.to
        if _is_string(t) and _is_string(to):  # any string encoding: the same strings
            return pa.string()
        if _is_string(t) or _is_string(to):
            raise PlanError(f"{where}: casting {_describe(expr.operand, t)} to {to} is not "
                            "supported; strings are dictionary codes and convert only to themselves")
        try:
            physical_dtype(to, column=repr(expr))
        except TypeError as exc:
            raise PlanError(f"{where}: {exc}") from exc
        return to
    return expr._type(schema, where)


def _binop_type(expr: BinOp, schema: pa.Schema, where: str) -> pa.DataType:
    lt = _expr_type(expr.left, schema, where)
    rt = _expr_type(expr.right, schema, where)
    op = expr.op
    if op in _LOGIC:
        for e, t in ((expr.left, lt), (expr.right, rt)):
            if not pa.types.is_boolean(t):
                raise PlanError(
                    f"{where}: '{op}' combines conditions, but {_describe(e, t)} is not a bool; "
                    "compare it first, e.g. (col('x') > 0)"
                )
        return pa.bool_()
    if op in _COMPARE:
        if _is_string(lt) or _is_string(rt):
            if op not in ("==", "!="):
                raise PlanError(f"{where}: strings support only == and !=, not '{op}'")
            str_side = [e for e, t in ((expr.left, lt), (expr.right, rt)) if _is_string(t)]
            other = expr.right if str_side[0] is expr.left else expr.left
            other_t = rt if other is expr.right else lt
            if not (isinstance(other, Lit) and isinstance(other.value, str)):
                if len(str_side) == 2:
                    raise PlanError(f"{where}: comparing two string columns is not supported "
                                    "yet; compare each with a string literal")
                raise PlanError(f"{where}: cannot compare {_describe(str_side[0], pa.string())} "
                                f"with {_describe(other, other_t)}")
            if isinstance(str_side[0], Lit):
                raise PlanError(f"{where}: compare a string column with a literal, not two "
                                "literals")
            return pa.bool_()
        if pa.types.is_boolean(lt) or pa.types.is_boolean(rt):
            if not (pa.types.is_boolean(lt) and pa.types.is_boolean(rt)) or op not in ("==", "!="):
                raise PlanError(f"{where}: cannot compare {_describe(expr.left, lt)} with "
                                f"{_describe(expr.right, rt)} using '{op}'")
            return pa.bool_()
        _check_numeric(op, ((expr.left, lt), (expr.right, rt)), where)
        what = f"{_describe(expr.left, lt)} {op} {_describe(expr.right, rt)}"
        _numpy_result(op, _operand_for_numpy(expr.left, lt), _operand_for_numpy(expr.right, rt),
                      where, what)
        return pa.bool_()
    if op == "+" and _is_string(lt) and _is_string(rt):  # Polars: strings concatenate
        if isinstance(expr.left, Lit) and isinstance(expr.right, Lit):
            raise PlanError(f"{where}: {expr!r} joins two literals; write the one string")
        return pa.string()
    if op in _ARITH:
        _check_numeric(op, ((expr.left, lt), (expr.right, rt)), where)
        lt2 = pa.int64() if pa.types.is_timestamp(lt) else lt
        rt2 = pa.int64() if pa.types.is_timestamp(rt) else rt
        what = f"{_describe(expr.left, lt)} {op} {_describe(expr.right, rt)}"
        return _numpy_result(op, _operand_for_numpy(expr.left, lt2),
                             _operand_for_numpy(expr.right, rt2), where, what)
    raise PlanError(f"{where}: unknown operator {op!r}")


def _check_numeric(op: str, sides: Sequence[tuple[Expr, pa.DataType]], where: str) -> None:
    for e, t in sides:
        if not _is_numeric(t):
            raise PlanError(
                f"{where}: '{op}' needs numbers, but {_describe(e, t)} is not a number; "
                "cast it or use another column"
            )


# --------------------------------------------------------------------------------------
# evaluation (run time, vectorized)
# --------------------------------------------------------------------------------------

class Column(NamedTuple):
    """An evaluated expression: values, validity (None = no nulls), dictionary for strings."""

    values: Any
    valid: Any | None
    dictionary: StringDictionary | None = None


def _and_valid(xp: ModuleType, a: Any | None, b: Any | None) -> Any | None:
    if a is None:
        return b
    if b is None:
        return a
    return xp.logical_and(a, b)


def evaluate(expr: Expr, batch: Batch, xp: ModuleType) -> Column:
    """Evaluate a (type-checked) expression on a batch with array namespace ``xp``.

    Literals stay scalars; the result of a bare literal is broadcast to the batch length.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2, None], "y": [2, 0, 1]}))
    >>> out = evaluate(col("x") / col("y"), b, np)
    >>> out.values[out.valid].tolist(), out.valid.tolist()
    ([0.5], [True, False, False])
    """
    out = _eval(expr, batch, xp)
    if not hasattr(out.values, "shape") or out.values.shape == ():
        value = out.values
        return Column(xp.full(batch.num_rows, value, dtype=np.asarray(value).dtype), None)
    return out


def _eval(expr: Expr, batch: Batch, xp: ModuleType) -> Column:
    if isinstance(expr, Col):
        return Column(batch[expr.name], batch.validity(expr.name),
                      batch.dictionaries.get(expr.name))
    if isinstance(expr, Lit):
        return Column(expr.value, None)
    if isinstance(expr, BinOp):
        return _eval_binop(expr, batch, xp)
    if isinstance(expr, UnaryOp):
        c = _eval(expr.operand, batch, xp)
        fn = {"-": xp.negative, "abs": xp.abs, "~": xp.logical_not}[expr.op]
        return Column(fn(c.values), c.valid)
    if isinstance(expr, IsNull):
        c = _eval(expr.operand, batch, xp)
        if c.valid is None:
            return Column(xp.full(batch.num_rows, expr.negate, dtype=np.bool_), None)
        return Column(c.valid.copy() if expr.negate else xp.logical_not(c.valid), None)
    if isinstance(expr, FillNull):
        c = _eval(expr.operand, batch, xp)
        if c.valid is None:
            return c
        values = xp.where(c.valid, c.values, xp.asarray(expr.value, dtype=c.values.dtype))
        return Column(values, None)
    if isinstance(expr, Cast):
        c = _eval(expr.operand, batch, xp)
        if c.dictionary is not None:  # strings to strings (plan-checked): as they are
            return c
        dtype = physical_dtype(expr.to)
        if not hasattr(c.values, "astype"):
            return Column(np.asarray(c.values).astype(dtype)[()], None)
        return Column(c.values.astype(dtype, copy=False), c.valid)
    return expr._evaluate(batch, xp)


def _eval_binop(expr: BinOp, batch: Batch, xp: ModuleType) -> Column:
    op = expr.op
    left = _eval(expr.left, batch, xp)
    right = _eval(expr.right, batch, xp)
    if op in ("==", "!=") and (left.dictionary is not None or right.dictionary is not None):
        # string column against a string literal: compare dictionary codes
        c, s = (left, right) if left.dictionary is not None else (right, left)
        assert c.dictionary is not None
        code = c.dictionary.lookup(str(s.values))
        fn = xp.equal if op == "==" else xp.not_equal
        return Column(fn(c.values, np.int32(code)), c.valid)
    if op == "+" and (left.dictionary is not None or right.dictionary is not None):
        from gpustream.expr_strings import concat_columns  # strings (plan-checked)

        return concat_columns(expr, [left, right], "", xp)
    valid = _and_valid(xp, left.valid, right.valid)
    if op in _LOGIC:
        lv, rv = left.values, right.values
        values = getattr(xp, _LOGIC[op])(lv, rv)
        if op != "^" and (left.valid is not None or right.valid is not None):
            valid = _kleene_valid(xp, op, lv, left.valid, rv, right.valid)
        return Column(values, valid)
    if op in _COMPARE:
        return Column(getattr(xp, _COMPARE[op])(left.values, right.values), valid)
    lv, rv = left.values, right.values
    if op in ("/", "//", "%"):
        # division by zero gives null (as in DuckDB), never inf or a warning
        if not hasattr(rv, "shape"):
            if rv == 0:
                rv = type(rv)(1)
                valid = xp.zeros(batch.num_rows, dtype=np.bool_)
        else:
            zero = xp.equal(rv, 0)
            valid = _and_valid(xp, valid, xp.logical_not(zero))
            rv = xp.where(zero, xp.ones((), dtype=rv.dtype), rv)
    if xp is np:
        with np.errstate(all="ignore"):
            values = getattr(np, _ARITH[op])(lv, rv)
    else:
        values = getattr(xp, _ARITH[op])(lv, rv)
    return Column(values, valid)


def _kleene_valid(xp: ModuleType, op: str, lv: Any, lvalid: Any | None, rv: Any,
                  rvalid: Any | None) -> Any:
    """Validity under three-valued logic: false & null = false, true | null = true."""
    lval = lvalid if lvalid is not None else True
    rval = rvalid if rvalid is not None else True
    both = xp.logical_and(lval, rval)
    if op == "&":
        decided_l = xp.logical_and(lval, xp.logical_not(lv))
        decided_r = xp.logical_and(rval, xp.logical_not(rv))
    else:
        decided_l = xp.logical_and(lval, lv)
        decided_r = xp.logical_and(rval, rv)
    return xp.logical_or(both, xp.logical_or(decided_l, decided_r))
