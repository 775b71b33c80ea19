"""Types of expressions at plan time: :func:`expr_type` and :func:`agg_type`.

The planner types every expression against its stream's schema before anything runs, so
a missing column or a type clash fails at plan time with the step, the column and the
columns that exist. Python literals are "weak": ``col_int32 + 1`` stays int32, as numpy
resolves it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.batch import physical_dtype
from gpustream.errors import PlanError
from gpustream.expr.nodes import (
    ARITH,
    BY_KINDS,
    COMPARE,
    LOGIC,
    Agg,
    BinOp,
    Cast,
    Col,
    Expr,
    FillNull,
    Filtered,
    IsNull,
    Lit,
    Scalar,
    UnaryOp,
    check_expr_size,
    unfiltered,
)
from gpustream.ingest.schema import is_string_type as _is_string

__all__ = ["agg_type", "expr_type"]

_NUMERIC_ONLY = ("sum", "mean", "var", "std")


def is_numeric(t: pa.DataType) -> bool:
    """Whether arithmetic takes ``t``: integers, floats and timestamps.

    >>> is_numeric(pa.timestamp("ms")), is_numeric(pa.bool_())
    (True, False)
    """
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t)


def _lit_type(value: Scalar) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def describe(e: Expr, t: pa.DataType) -> str:
    """``e`` of type ``t`` as an error message names it.

    >>> from gpustream.expr import col, lit
    >>> describe(col("s"), pa.string()), describe(lit(3), pa.int64())
    ("column 's' (string)", 'int literal 3')
    """
    if isinstance(e, Col):
        return f"column {e.name!r} ({t})"
    if isinstance(e, Lit):
        return f"{type(e.value).__name__} literal {e.value!r}"
    return f"expression {e!r} ({t})"


def operand_for_numpy(e: Expr, t: pa.DataType) -> Any:
    """What stands for an operand in numpy's type resolution: literals stay weak scalars.

    >>> from gpustream.expr import col, lit
    >>> operand_for_numpy(lit(1), pa.int64()), operand_for_numpy(col("x"), pa.int8()).dtype
    (1, dtype('int8'))
    """
    if isinstance(e, Lit) and not isinstance(e.value, str):
        return e.value
    return np.empty(0, dtype=physical_dtype(t))


def _numpy_result(op: str, left: Any, right: Any, where: str, what: str) -> pa.DataType:
    ufunc = getattr(np, ARITH.get(op) or COMPARE[op])
    try:
        with np.errstate(all="ignore"):
            out = ufunc(left, right)
    except OverflowError as exc:
        raise PlanError(
            f"{where}: {what}: {exc}; cast the column to a wider type first, e.g. "
            ".cast('int64')"
        ) from exc
    return pa.from_numpy_dtype(np.asarray(out).dtype)


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
    >>> from gpustream.expr import col
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
    return node_type(expr, schema, where)


def node_type(expr: Expr, schema: pa.Schema, where: str) -> pa.DataType:
    """:func:`expr_type` without the size check (done once, at the root); the families
    type their operands with it.

    >>> from gpustream.expr import col
    >>> node_type(col("x") * 2, pa.schema({"x": pa.int8()}), "step 1")
    DataType(int8)
    """
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
        t = node_type(expr.operand, schema, where)
        if expr.op == "~":
            if not pa.types.is_boolean(t):
                raise PlanError(
                    f"{where}: '~' needs a bool, but {describe(expr.operand, t)} is not; "
                    "compare it first, e.g. col('x') > 0"
                )
            return t
        if not is_numeric(t):
            raise PlanError(
                f"{where}: '{expr.op}' needs a number, but {describe(expr.operand, t)} is not"
            )
        return pa.int64() if pa.types.is_timestamp(t) else t
    if isinstance(expr, IsNull):
        node_type(expr.operand, schema, where)
        return pa.bool_()
    if isinstance(expr, FillNull):
        t = node_type(expr.operand, schema, where)
        fill_t = _lit_type(expr.value)
        if _is_string(t) or _is_string(fill_t):
            raise PlanError(f"{where}: fill_null on strings is not supported yet; filter the "
                            "nulls out with .is_not_null() instead")
        if pa.types.is_boolean(t) != pa.types.is_boolean(fill_t):
            raise PlanError(f"{where}: fill_null({expr.value!r}) does not fit "
                            f"{describe(expr.operand, t)}; use a value of its type")
        if pa.types.is_integer(t) and isinstance(expr.value, float):
            raise PlanError(f"{where}: fill_null({expr.value!r}) does not fit "
                            f"{describe(expr.operand, t)}; cast it to float first")
        return t
    if isinstance(expr, Filtered):
        t = node_type(expr.condition, schema, where)
        if not pa.types.is_boolean(t):
            raise PlanError(f"{where}: filter() needs a true/false condition, but "
                            f"{expr.condition!r} is {t}; compare it, e.g. "
                            "col('channel') == 'apple', or cast it with .cast('bool')")
        return pa.bool_() if expr.operand is None else node_type(expr.operand, schema, where)
    if isinstance(expr, Agg):
        raise PlanError(f"{where}: {expr!r} is an aggregation, which only an agg step "
                        "computes (e.g. .agg(total=col('v').sum())); it cannot be part of a "
                        "filter, a computed column or another aggregation: aggregate in one "
                        "step and use the result's column in the next")
    if isinstance(expr, Cast):
        t = node_type(expr.operand, schema, where)
        to = expr.to
        if _is_string(t) and _is_string(to):  # any string encoding: the same strings
            return pa.string()
        if _is_string(t) or _is_string(to):
            raise PlanError(f"{where}: casting {describe(expr.operand, t)} to {to} is not "
                            "supported; strings are dictionary codes and convert only to themselves")
        try:
            physical_dtype(to, column=repr(expr))
        except TypeError as exc:
            raise PlanError(f"{where}: {exc}") from exc
        return to
    return expr._type(schema, where)


def _binop_type(expr: BinOp, schema: pa.Schema, where: str) -> pa.DataType:
    lt = node_type(expr.left, schema, where)
    rt = node_type(expr.right, schema, where)
    op = expr.op
    if op in LOGIC:
        for e, t in ((expr.left, lt), (expr.right, rt)):
            if not pa.types.is_boolean(t):
                raise PlanError(
                    f"{where}: '{op}' combines conditions, but {describe(e, t)} is not a bool; "
                    "compare it first, e.g. (col('x') > 0)"
                )
        return pa.bool_()
    if op in COMPARE:
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
                raise PlanError(f"{where}: cannot compare {describe(str_side[0], pa.string())} "
                                f"with {describe(other, other_t)}")
            if isinstance(str_side[0], Lit):
                raise PlanError(f"{where}: compare a string column with a literal, not two "
                                "literals")
            return pa.bool_()
        if pa.types.is_boolean(lt) or pa.types.is_boolean(rt):
            if not (pa.types.is_boolean(lt) and pa.types.is_boolean(rt)) or op not in ("==", "!="):
                raise PlanError(f"{where}: cannot compare {describe(expr.left, lt)} with "
                                f"{describe(expr.right, rt)} using '{op}'")
            return pa.bool_()
        _check_numeric(op, ((expr.left, lt), (expr.right, rt)), where)
        what = f"{describe(expr.left, lt)} {op} {describe(expr.right, rt)}"
        _numpy_result(op, operand_for_numpy(expr.left, lt), operand_for_numpy(expr.right, rt),
                      where, what)
        return pa.bool_()
    if op == "+" and _is_string(lt) and _is_string(rt):  # Polars: strings concatenate
        if isinstance(expr.left, Lit) and isinstance(expr.right, Lit):
            raise PlanError(f"{where}: {expr!r} joins two literals; write the one string")
        return pa.string()
    if op in ARITH:
        _check_numeric(op, ((expr.left, lt), (expr.right, rt)), where)
        lt2 = pa.int64() if pa.types.is_timestamp(lt) else lt
        rt2 = pa.int64() if pa.types.is_timestamp(rt) else rt
        what = f"{describe(expr.left, lt)} {op} {describe(expr.right, rt)}"
        return _numpy_result(op, operand_for_numpy(expr.left, lt2),
                             operand_for_numpy(expr.right, rt2), where, what)
    raise PlanError(f"{where}: unknown operator {op!r}")


def _check_numeric(op: str, sides: Sequence[tuple[Expr, pa.DataType]], where: str) -> None:
    for e, t in sides:
        if not is_numeric(t):
            raise PlanError(
                f"{where}: '{op}' needs numbers, but {describe(e, t)} is not a number; "
                "cast it or use another column"
            )


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
    if agg.kind in ("count", "row_number"):
        return pa.int64()
    assert agg.input is not None
    t = expr_type(agg.input, schema, where)
    shown = unfiltered(agg.input) if agg.where is not None else agg.input
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
    if agg.kind in BY_KINDS:
        assert agg.by is not None
        bt = expr_type(agg.by, schema, where)
        if not (pa.types.is_integer(bt) or pa.types.is_floating(bt)
                or pa.types.is_timestamp(bt) or pa.types.is_boolean(bt)):
            raise PlanError(f"{where}: {agg.kind} orders by numbers, bools or timestamps, but "
                            f"{unfiltered(agg.by)!r} is {bt}; order by a number column, or "
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
