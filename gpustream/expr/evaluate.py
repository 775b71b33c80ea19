"""Evaluation of (type-checked) expressions over a batch, vectorized, at run time.

Every node evaluates with the backend's array namespace ``xp`` (numpy or cupy), never per
row. Null semantics follow SQL: arithmetic and comparisons with a null give null; ``&``
and ``|`` use three-valued (Kleene) logic; a filter keeps only rows whose predicate is
true. Division and modulo by zero give null, as in DuckDB. Integer arithmetic wraps on
overflow, as in numpy.

An aggregation's input (:func:`agg_input`) is evaluated here too; an aggregation itself
is folded by the window's state (:mod:`gpustream.state.aggstate`), never evaluated as a
column.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from gpustream.batch import physical_dtype
from gpustream.errors import PlanError
from gpustream.expr.column import Column, and_valid
from gpustream.expr.entries import concat_columns
from gpustream.expr.nodes import (
    ARITH,
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
    UnaryOp,
)

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["ByInput", "agg_input", "evaluate", "order_key", "value_bits"]


def evaluate(expr: Expr, batch: Batch, xp: ModuleType) -> Column:
    """Evaluate a (type-checked) expression on a batch with array namespace ``xp``.

    Literals stay scalars; the result of a bare literal is broadcast to the batch length.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2, None], "y": [2, 0, 1]}))
    >>> out = evaluate(col("x") / col("y"), b, np)
    >>> out.values[out.valid].tolist(), out.valid.tolist()
    ([0.5], [True, False, False])

    An aggregate's filter (:class:`~gpustream.expr.nodes.Filtered`) is null where its
    condition is not true:

    >>> from gpustream.expr import Filtered
    >>> b = Batch.from_arrow(pa.record_batch({"v": [1, 2, None, 4], "c": [True, None, True, False]}))
    >>> out = evaluate(Filtered(col("v"), col("c")), b, np)
    >>> out.values[out.valid].tolist(), out.valid.tolist()
    ([1], [True, False, False, False])
    """
    out = eval_node(expr, batch, xp)
    if not hasattr(out.values, "shape") or out.values.shape == ():
        value = out.values
        return Column(xp.full(batch.num_rows, value, dtype=np.asarray(value).dtype), None)
    return out


def eval_node(expr: Expr, batch: Batch, xp: ModuleType) -> Column:
    """One node's values on ``batch``, as :func:`evaluate` but a bare literal stays a
    scalar (so ``col + 1`` broadcasts); the families evaluate their operands with it.

    >>> import pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import lit
    >>> eval_node(lit(2), Batch.from_arrow(pa.record_batch({"x": [1, 2]})), np).values
    2
    """
    if isinstance(expr, Col):
        return Column(batch[expr.name], batch.validity(expr.name),
                      batch.dictionaries.get(expr.name))
    if isinstance(expr, Lit):
        return Column(expr.value, None)
    if isinstance(expr, BinOp):
        return _eval_binop(expr, batch, xp)
    if isinstance(expr, UnaryOp):
        c = eval_node(expr.operand, batch, xp)
        fn = {"-": xp.negative, "abs": xp.abs, "~": xp.logical_not}[expr.op]
        return Column(fn(c.values), c.valid)
    if isinstance(expr, IsNull):
        c = eval_node(expr.operand, batch, xp)
        if c.valid is None:
            return Column(xp.full(batch.num_rows, expr.negate, dtype=np.bool_), None)
        return Column(c.valid.copy() if expr.negate else xp.logical_not(c.valid), None)
    if isinstance(expr, FillNull):
        c = eval_node(expr.operand, batch, xp)
        if c.valid is None:
            return c
        values = xp.where(c.valid, c.values, xp.asarray(expr.value, dtype=c.values.dtype))
        return Column(values, None)
    if isinstance(expr, Filtered):
        return _eval_filtered(expr, batch, xp)
    if isinstance(expr, Agg):  # plan-checked: never reached from a typed expression
        raise PlanError(f"{expr!r} is an aggregation, which only an agg step computes; it "
                        "cannot be evaluated as a column")
    if isinstance(expr, Cast):
        c = eval_node(expr.operand, batch, xp)
        if c.dictionary is not None:  # strings to strings (plan-checked): as they are
            return c
        dtype = physical_dtype(expr.to)
        if not hasattr(c.values, "astype"):
            return Column(np.asarray(c.values).astype(dtype)[()], None)
        return Column(c.values.astype(dtype, copy=False), c.valid)
    return expr._evaluate(batch, xp)


def _eval_filtered(expr: Filtered, batch: Batch, xp: ModuleType) -> Column:
    n = batch.num_rows
    cond = eval_node(expr.condition, batch, xp)
    keep = cond.values
    if not hasattr(keep, "shape") or keep.shape == ():  # a literal condition
        keep = xp.full(n, bool(keep), dtype=np.bool_)
    keep = and_valid(xp, keep.astype(np.bool_, copy=False), cond.valid)
    if expr.operand is None:
        return Column(xp.zeros(n, dtype=np.bool_), keep)
    c = evaluate(expr.operand, batch, xp)
    return Column(c.values, and_valid(xp, c.valid, keep), c.dictionary)


def _eval_binop(expr: BinOp, batch: Batch, xp: ModuleType) -> Column:
    op = expr.op
    left = eval_node(expr.left, batch, xp)
    right = eval_node(expr.right, batch, xp)
    if op in ("==", "!=") and (left.dictionary is not None or right.dictionary is not None):
        # string column against a string literal: compare dictionary codes
        c, s = (left, right) if left.dictionary is not None else (right, left)
        assert c.dictionary is not None
        code = c.dictionary.lookup(str(s.values))
        fn = xp.equal if op == "==" else xp.not_equal
        return Column(fn(c.values, np.int32(code)), c.valid)
    if op == "+" and (left.dictionary is not None or right.dictionary is not None):
        return concat_columns(expr, [left, right], "", xp)
    valid = and_valid(xp, left.valid, right.valid)
    if op in LOGIC:
        lv, rv = left.values, right.values
        values = getattr(xp, LOGIC[op])(lv, rv)
        if op != "^" and (left.valid is not None or right.valid is not None):
            valid = _kleene_valid(xp, op, lv, left.valid, rv, right.valid)
        return Column(values, valid)
    if op in COMPARE:
        return Column(getattr(xp, COMPARE[op])(left.values, right.values), valid)
    lv, rv = left.values, right.values
    if op in ("/", "//", "%"):
        # division by zero gives null (as in DuckDB), never inf or a warning
        if not hasattr(rv, "shape"):
            if rv == 0:
                rv = type(rv)(1)
                valid = xp.zeros(batch.num_rows, dtype=np.bool_)
        else:
            zero = xp.equal(rv, 0)
            valid = and_valid(xp, valid, xp.logical_not(zero))
            rv = xp.where(zero, xp.ones((), dtype=rv.dtype), rv)
    if xp is np:
        with np.errstate(all="ignore"):
            values = getattr(np, ARITH[op])(lv, rv)
    else:
        values = getattr(xp, ARITH[op])(lv, rv)
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


def agg_input(agg: Agg, batch: Batch, xp: ModuleType,
              recode: Callable[[Column], Column] | None = None) -> Column | None:
    """An aggregation's input on ``batch`` (values, validity), as its state folds it:
    None for ``count()``; for ``max_by`` / ``min_by`` a :class:`ByInput` valid where both
    the value and the ``by`` column are non-null (and the filter holds), as DuckDB's
    ``arg_max`` skips such rows. ``recode`` maps a string input's codes into another
    dictionary (one the operator owns and checkpoints) before the state reads them.

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
    if recode is not None and c.dictionary is not None:  # strings into an owned dictionary
        c = recode(c)
    if agg.by is None:
        return c
    by = evaluate(agg.by, batch, xp)
    rank = order_key(by.values, xp)
    if agg.kind == "min_by":
        rank = ~rank  # the smallest ranks highest (no overflow, unlike negation)
    return Column(ByInput(value_bits(c.values), rank), and_valid(xp, c.valid, by.valid),
                  c.dictionary)

