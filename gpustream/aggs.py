"""Aggregations for windows: ``gs.count()`` and ``gs.col("v").sum()`` style.

Every aggregation is a mergeable partial state (init, update, merge, finalize; see
:mod:`gpustream.state.aggstate`). Nulls are skipped as in SQL: ``sum``/``min``/``max``/
``mean``/``first``/``last`` of only nulls is null, ``var``/``std`` (sample, ddof=1) of
fewer than two values is null, counts are never null.

``col("bidder").max_by("price")`` (DuckDB's ``max_by`` / ``arg_max``) is the value of one
column on the row where another is largest; ``min_by`` / ``arg_min`` where it is
smallest. ``agg.filter(cond)`` is SQL's ``agg(x) FILTER (WHERE cond)``: a row where
``cond`` is not true (false or null) does not reach the aggregate. The filter is the
input's validity ANDed with the condition (:class:`Filtered`), so every state store
skips those rows as it skips nulls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from gpustream.errors import PlanError
from gpustream.expr import Column, Expr, _and_valid, _eval, _expr_type, _wrap, evaluate, expr_type

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["AGG_KINDS", "BY_KINDS", "Agg", "ByInput", "Filtered", "agg_input", "agg_type", "count",
           "order_key"]

#: aggregations of one input (or none: ``count``)
AGG_KINDS = ("count", "count_valid", "sum", "min", "max", "mean", "var", "std", "first",
             "last", "count_distinct", "approx_count_distinct")
#: aggregations of a value and a column to order by (``Agg.by``)
BY_KINDS = ("max_by", "min_by")
_NUMERIC_ONLY = ("sum", "mean", "var", "std")


@dataclass(frozen=True, eq=False, repr=False)
class Filtered(Expr):
    """``operand`` where ``condition`` is true, else null: an aggregate's input under
    ``.filter(condition)`` (the validity ANDed with the condition; a null condition counts
    as false). Without an operand (``count().filter(...)``) it is null where the
    condition is not true.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"v": [1, 2, None, 4], "c": [True, None, True, False]}))
    >>> out = evaluate(Filtered(col("v"), col("c")), b, np)
    >>> out.values[out.valid].tolist(), out.valid.tolist()
    ([1], [True, False, False, False])
    """

    operand: Expr | None
    condition: Expr

    def __repr__(self) -> str:
        return f"filtered({self.operand!r}, {self.condition!r})"

    def _children(self) -> tuple[Expr, ...]:
        return (self.condition,) if self.operand is None else (self.operand, self.condition)

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        t = _expr_type(self.condition, schema, where)
        if not pa.types.is_boolean(t):
            raise PlanError(f"{where}: filter() needs a true/false condition, but "
                            f"{self.condition!r} is {t}; compare it, e.g. "
                            "col('channel') == 'apple', or cast it with .cast('bool')")
        return pa.bool_() if self.operand is None else _expr_type(self.operand, schema, where)

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        n = batch.num_rows
        cond = _eval(self.condition, batch, xp)
        keep = cond.values
        if not hasattr(keep, "shape") or keep.shape == ():  # a literal condition
            keep = xp.full(n, bool(keep), dtype=np.bool_)
        keep = _and_valid(xp, keep.astype(np.bool_, copy=False), cond.valid)
        if self.operand is None:
            return Column(xp.zeros(n, dtype=np.bool_), keep)
        c = evaluate(self.operand, batch, xp)
        return Column(c.values, _and_valid(xp, c.valid, keep), c.dictionary)


def _unfiltered(e: Expr | None) -> Expr | None:
    return e.operand if isinstance(e, Filtered) else e


@dataclass(frozen=True, eq=False)
class Agg:
    """One aggregation: its kind, its input expression, and its parameters.

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
    gpustream.errors.PlanError: unknown aggregation 'median'; use one of count, count_valid, sum, min, max, mean, var, std, first, last, count_distinct, approx_count_distinct, max_by, min_by
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
            return f"{self.input!r}.{self.kind}({_unfiltered(self.by)!r}){tail}"
        inner = self.value_input
        if self.kind == "count" or inner is None:
            return f"count(){tail}"
        name = "count" if self.kind == "count_valid" else self.kind
        if self.kind == "approx_count_distinct" and self.precision != 12:
            return f"{inner!r}.{name}(precision={self.precision}){tail}"
        return f"{inner!r}.{name}(){tail}"

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
        return _unfiltered(self.input) if self.where is not None else self.input

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
        cond = _wrap(condition)
        where = cond if self.where is None else self.where & cond
        if self.kind in BY_KINDS:
            return replace(self, by=Filtered(_unfiltered(self.by), where), where=where)
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


class ByInput(NamedTuple):
    """The input of ``max_by`` / ``min_by`` per row: the value as 64 bits (floats: their
    float64 bit pattern) and the rank of the ``by`` column (larger wins)."""

    bits: Any
    rank: Any


def order_key(values: Any, xp: ModuleType) -> Any:
    """int64 keys ordered as ``values`` (numbers, bools, timestamps): integers as they
    are (uint64 shifted by 2**63), floats by their bits with the negative ones flipped;
    -0.0 equals 0.0 and NaN (any) is above +inf, as in DuckDB's ordering.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.array([1.5, -np.inf, np.nan, -0.0, 0.0, -2.0, np.inf])
    >>> np.argsort(order_key(v, np), kind="stable").tolist()
    [1, 5, 3, 4, 0, 6, 2]
    """
    if values.dtype.kind == "f":
        v = values.astype(np.float64) + 0.0  # -0.0 -> 0.0
        v = xp.where(xp.isnan(v), np.float64(np.nan), v)  # one NaN, the positive one
        bits = v.view(np.int64)
        return xp.where(bits < 0, bits ^ np.int64(0x7FFFFFFFFFFFFFFF), bits)
    if values.dtype == np.uint64:
        return (values ^ np.uint64(1 << 63)).view(np.int64)
    return values.astype(np.int64)


def value_bits(values: Any) -> Any:
    """64-bit words of values: floats as float64 bits, the rest as int64 (string codes,
    bools, timestamps); :meth:`~gpustream.state.aggstate.ArgBestState.finalize` undoes it.

    Examples
    --------
    >>> import numpy as np
    >>> value_bits(np.array([1.5])).view(np.float64).tolist(), value_bits(np.array([True])).tolist()
    ([1.5], [1])
    """
    if values.dtype.kind == "f":
        return values.astype(np.float64).view(np.int64)
    return values.astype(np.int64)


def agg_input(agg: Agg, batch: Batch, xp: ModuleType) -> Column | None:
    """An aggregation's input on ``batch`` (values, validity), as its state folds it:
    None for ``count()``; for ``max_by`` / ``min_by`` a :class:`ByInput` valid where both
    the value and the ``by`` column are non-null (and the filter holds), as DuckDB's
    ``arg_max`` skips such rows.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"a": [7, None, 9], "p": [1.0, 2.0, None]}))
    >>> c = agg_input(col("a").min_by("p"), b, np)
    >>> c.values.bits.tolist(), c.valid.tolist(), bool(c.values.rank[0] > c.values.rank[1])
    ([7, 0, 9], [True, False, False], True)
    """
    if agg.input is None:
        return None
    c = evaluate(agg.input, batch, xp)
    if agg.by is None:
        return c
    by = evaluate(agg.by, batch, xp)
    rank = order_key(by.values, xp)
    if agg.kind == "min_by":
        rank = ~rank  # the smallest ranks highest (no overflow, unlike negation)
    return Column(ByInput(value_bits(c.values), rank), _and_valid(xp, c.valid, by.valid),
                  c.dictionary)


def agg_type(agg: Agg, schema: pa.Schema, where: str) -> pa.DataType:
    """The output type of an aggregation; raises :class:`PlanError` when it cannot apply.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import col
    >>> s = pa.schema({"v": pa.int32(), "name": pa.string()})
    >>> agg_type(col("v").sum(), s, "w"), agg_type(col("v").mean(), s, "w"), agg_type(col("v").max(), s, "w")
    (DataType(int64), DataType(double), DataType(int32))
    >>> agg_type(col("name").max_by("v"), s, "w")
    DataType(string)
    >>> agg_type(col("name").sum(), s, "step 3 (agg) 'total'")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 3 (agg) 'total': sum needs numbers, but col('name') is string; use count(), count_distinct(), first() or last() for strings
    >>> agg_type(col("v").sum().filter(col("v")), s, "step 3 (agg) 'total'")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 3 (agg) 'total': filter() needs a true/false condition, but col('v') is int32; compare it, e.g. col('channel') == 'apple', or cast it with .cast('bool')
    """
    if agg.kind == "count":
        return pa.int64()
    assert agg.input is not None
    t = expr_type(agg.input, schema, where)
    shown = _unfiltered(agg.input) if agg.where is not None else agg.input
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
    if agg.kind in BY_KINDS:
        assert agg.by is not None
        bt = expr_type(agg.by, schema, where)
        if not (pa.types.is_integer(bt) or pa.types.is_floating(bt)
                or pa.types.is_timestamp(bt) or pa.types.is_boolean(bt)):
            raise PlanError(f"{where}: {agg.kind} orders by numbers, bools or timestamps, but "
                            f"{_unfiltered(agg.by)!r} is {bt}; order by a number column, or "
                            "use first() or last() for the order of events")
        return t
    if agg.kind in _NUMERIC_ONLY and not numeric:
        raise PlanError(f"{where}: {agg.kind} needs numbers, but {shown!r} is {t}; use "
                        "count(), count_distinct(), first() or last() for strings"
                        if is_str else f"{where}: {agg.kind} needs numbers, but {shown!r} is "
                        f"{t}; cast it first, e.g. .cast('int64')")
    if agg.kind in ("min", "max") and not (numeric or pa.types.is_timestamp(t)):
        raise PlanError(f"{where}: {agg.kind} needs numbers or timestamps, but {shown!r} is "
                        f"{t}; use first() or last() for strings")
    if agg.kind in ("count_valid", "count_distinct", "approx_count_distinct"):
        return pa.int64()
    if agg.kind == "sum":
        return pa.float64() if pa.types.is_floating(t) else pa.int64()
    if agg.kind in ("mean", "var", "std"):
        return pa.float64()
    return t  # min, max, first, last keep the input type
