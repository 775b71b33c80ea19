"""Aggregations for windows: ``gs.count()`` and ``gs.col("v").sum()`` style.

Every aggregation is a mergeable partial state (init, update, merge, finalize; see
:mod:`gpustream.state.aggstate`). Nulls are skipped as in SQL: ``sum``/``min``/``max``/
``mean``/``first``/``last`` of only nulls is null, ``var``/``std`` (sample, ddof=1) of
fewer than two values is null, counts are never null.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from gpustream.errors import PlanError
from gpustream.expr import Expr, expr_type

__all__ = ["AGG_KINDS", "Agg", "agg_type", "count"]

AGG_KINDS = ("count", "count_valid", "sum", "min", "max", "mean", "var", "std", "first",
             "last", "count_distinct", "approx_count_distinct")
_NUMERIC_ONLY = ("sum", "mean", "var", "std")


@dataclass(frozen=True, eq=False)
class Agg:
    """One aggregation: its kind, its input expression, and its parameters.

    Build them with ``gs.count()`` and the column methods (``gs.col("v").sum()``).

    Examples
    --------
    >>> from gpustream.expr import col
    >>> Agg("sum", col("v"))
    col('v').sum()
    >>> Agg("median", col("v"))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: unknown aggregation 'median'; use one of count, count_valid, sum, min, max, mean, var, std, first, last, count_distinct, approx_count_distinct
    """

    kind: str
    input: Expr | None = None
    precision: int = 12

    def __post_init__(self) -> None:
        if self.kind not in AGG_KINDS:
            raise PlanError(f"unknown aggregation {self.kind!r}; use one of {', '.join(AGG_KINDS)}")
        if self.kind == "approx_count_distinct" and not 4 <= self.precision <= 16:
            raise PlanError(f"approx_count_distinct: precision must be in 4..16, got "
                            f"{self.precision}")

    def __repr__(self) -> str:
        if self.kind == "count":
            return "count()"
        name = "count" if self.kind == "count_valid" else self.kind
        if self.kind == "approx_count_distinct" and self.precision != 12:
            return f"{self.input!r}.{name}(precision={self.precision})"
        return f"{self.input!r}.{name}()"


def count() -> Agg:
    """Number of events in the window (rows, nulls included).

    Examples
    --------
    >>> count()
    count()
    """
    return Agg("count")


def agg_type(agg: Agg, schema: pa.Schema, where: str) -> pa.DataType:
    """The output type of an aggregation; raises :class:`PlanError` when it cannot apply.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.expr import col
    >>> s = pa.schema({"v": pa.int32(), "name": pa.string()})
    >>> agg_type(col("v").sum(), s, "w"), agg_type(col("v").mean(), s, "w"), agg_type(col("v").max(), s, "w")
    (DataType(int64), DataType(double), DataType(int32))
    >>> agg_type(col("name").sum(), s, "step 3 (agg) 'total'")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 3 (agg) 'total': sum needs numbers, but col('name') is string; use count(), count_distinct(), first() or last() for strings
    """
    if agg.kind == "count":
        return pa.int64()
    assert agg.input is not None
    t = expr_type(agg.input, schema, where)
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
    if agg.kind in _NUMERIC_ONLY and not numeric:
        raise PlanError(f"{where}: {agg.kind} needs numbers, but {agg.input!r} is {t}; use "
                        "count(), count_distinct(), first() or last() for strings"
                        if is_str else f"{where}: {agg.kind} needs numbers, but {agg.input!r} is "
                        f"{t}; cast it first, e.g. .cast('int64')")
    if agg.kind in ("min", "max") and not (numeric or pa.types.is_timestamp(t)):
        raise PlanError(f"{where}: {agg.kind} needs numbers or timestamps, but {agg.input!r} is "
                        f"{t}; use first() or last() for strings")
    if agg.kind in ("count_valid", "count_distinct", "approx_count_distinct"):
        return pa.int64()
    if agg.kind == "sum":
        return pa.float64() if pa.types.is_floating(t) else pa.int64()
    if agg.kind in ("mean", "var", "std"):
        return pa.float64()
    return t  # min, max, first, last keep the input type
