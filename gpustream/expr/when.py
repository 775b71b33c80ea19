"""Conditional expressions: ``gs.when(cond).then(a).otherwise(b)`` and ``is_in``.

``when`` is SQL's ``CASE WHEN``: the first true condition wins, a null condition counts
as false, and without ``otherwise`` a row no condition picks is null. Every branch is
evaluated vectorized over the whole batch and the results are picked with ``xp.where``
(no per-row Python); a branch that fails on some rows (a division by zero) gives null
there, which matters only where that branch is picked.

Branches of strings may come from different dictionaries (and literals): the result's
dictionary is the union, each branch's dictionary mapped into it once per entry.

``is_in`` is SQL's ``IN``: a null value gives null; a value not in the list gives null
when the list holds a null (``None``), else false. On a string column it is computed
once per dictionary entry.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import PlanError
from gpustream.expr.column import Column
from gpustream.expr.entries import LOCK, EntryTable, gather, node_state, per_entry
from gpustream.expr.evaluate import eval_node
from gpustream.expr.nodes import Expr, Lit, Scalar, wrap
from gpustream.expr.types import describe, is_numeric, node_type, operand_for_numpy
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import is_string_type as _is_string

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["Case", "IsIn", "When", "when"]

Branch = tuple[Expr, Expr | None]


def _value(value: Any) -> Expr | None:
    return None if value is None else wrap(value)


def _condition(condition: Any) -> Expr:
    if isinstance(condition, Expr):
        return condition
    if isinstance(condition, bool | np.bool_):
        return wrap(bool(condition))
    raise PlanError(f"when() takes a condition (an expression such as col('x') > 0), got "
                    f"{condition!r}")


def when(condition: Expr | bool) -> When:
    """Start a ``when(...).then(...)[.when(...).then(...)][.otherwise(...)]`` expression.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.batch import Batch
    >>> from gpustream.expr import col, evaluate
    >>> e = when(col("x") > 10).then("big").when(col("x") > 0).then("small").otherwise("none")
    >>> e
    when((col('x') > 10)).then('big').when((col('x') > 0)).then('small').otherwise('none')
    >>> out = evaluate(e, Batch.from_arrow(pa.record_batch({"x": [20, 5, -1, None]})), np)
    >>> out.dictionary.decode(out.values, out.valid).to_pylist()
    ['big', 'small', 'none', 'none']
    """
    return When((), _condition(condition))


class When:
    """A condition waiting for its ``.then(value)``."""

    def __init__(self, branches: tuple[Branch, ...], condition: Expr) -> None:
        self._branches = branches
        self._condition = condition

    def then(self, value: Expr | Scalar | None) -> Case:
        """The value where this condition is the first true one (``None``: null).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> when(col("x") > 0).then(col("x"))
        when((col('x') > 0)).then(col('x'))
        """
        return Case((*self._branches, (self._condition, _value(value))), None, False)

    def __repr__(self) -> str:
        return f"{_branches_repr(self._branches)}when({self._condition!r})"


def _branches_repr(branches: tuple[Branch, ...]) -> str:
    return "".join(f"when({c!r}).then({v!r})." for c, v in branches)


@dataclass(frozen=True, eq=False, repr=False)
class Case(Expr):
    """SQL's ``CASE WHEN``: the value of the first true condition, else ``default``."""

    branches: tuple[Branch, ...]
    default: Expr | None
    closed: bool  # True once .otherwise() was given

    def when(self, condition: Expr | bool) -> When:
        """Another condition, tried when the ones before are not true.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> when(col("x") > 9).then(2).when(col("x") > 0).then(1)
        when((col('x') > 9)).then(2).when((col('x') > 0)).then(1)
        """
        if self.closed:
            raise PlanError(f"{self!r}: .when() after .otherwise(); give the conditions first")
        return When(self.branches, _condition(condition))

    def otherwise(self, value: Expr | Scalar | None) -> Expr:
        """The value where no condition is true (without it: null).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> when(col("x") > 0).then(1).otherwise(0)
        when((col('x') > 0)).then(1).otherwise(0)
        """
        if self.closed:
            raise PlanError(f"{self!r}: .otherwise() given twice")
        return Case(self.branches, _value(value), True)

    def __repr__(self) -> str:
        text = _branches_repr(self.branches)[:-1]
        return f"{text}.otherwise({self.default!r})" if self.closed else text

    def _children(self) -> Sequence[Expr]:
        out: list[Expr] = []
        for c, v in self.branches:
            out.append(c)
            if v is not None:
                out.append(v)
        if self.default is not None:
            out.append(self.default)
        return out

    def _values(self) -> list[Expr | None]:
        return [v for _, v in self.branches] + [self.default]

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        for c, _ in self.branches:
            t = node_type(c, schema, where)
            if not pa.types.is_boolean(t):
                raise PlanError(f"{where}: when() needs a bool condition, but "
                                f"{describe(c, t)} is not; compare it, e.g. col('x') > 0")
        typed = [(v, node_type(v, schema, where)) for v in self._values() if v is not None]
        if not typed:
            raise PlanError(f"{where}: every branch of {self!r} is null; give one a value")
        first_e, first_t = typed[0]
        for e, t in typed[1:]:
            same = (_is_string(t) and _is_string(first_t)) or t == first_t or (
                is_numeric(t) and is_numeric(first_t) and not pa.types.is_timestamp(t)
                and not pa.types.is_timestamp(first_t))
            if not same:
                raise PlanError(f"{where}: the branches of when() give different types: "
                                f"{describe(first_e, first_t)} and {describe(e, t)}; "
                                "cast them to one type")
        if _is_string(first_t):
            return pa.string()
        if not pa.types.is_integer(first_t) and not pa.types.is_floating(first_t):
            return first_t  # bool, or timestamps of one unit
        out = np.result_type(*(operand_for_numpy(e, t) for e, t in typed))
        for e, _ in typed:
            if isinstance(e, Lit):
                try:
                    np.asarray(e.value, dtype=out)
                except OverflowError as exc:
                    raise PlanError(f"{where}: {e!r} does not fit {out}, the type of the other "
                                    "branches; cast a branch to a wider type, e.g. "
                                    ".cast('int64')") from exc
        return pa.from_numpy_dtype(out)

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        n = batch.num_rows
        picks = []
        for c, _ in self.branches:
            got = eval_node(c, batch, xp)
            mask = got.values if got.valid is None else xp.logical_and(got.values, got.valid)
            picks.append(xp.full(n, bool(mask), dtype=np.bool_) if np.ndim(mask) == 0 else mask)
        values = [None if v is None else eval_node(v, batch, xp) for v in self._values()]
        dictionary = None
        if any(v is not None and (v.dictionary is not None or isinstance(v.values, str))
               for v in values):
            state: _Union = node_state(self, _Union)
            values = [None if v is None else state.codes(v, xp) for v in values]
            dictionary = state.out
        some = next(v for v in values if v is not None)
        default = values[-1]
        if default is None:
            out = xp.zeros(n, dtype=_dtype(some.values))
            valid: Any = xp.zeros(n, dtype=np.bool_)
        else:
            out, valid = default.values, default.valid
        nullable = default is None or any(v is None or v.valid is not None for v in values)
        for pick, v in zip(reversed(picks), reversed(values[:-1]), strict=True):
            if v is None:
                valid = xp.where(pick, False, True if valid is None else valid)
                continue
            out = xp.where(pick, v.values, out)
            if nullable:
                valid = xp.where(pick, True if v.valid is None else v.valid,
                                 True if valid is None else valid)
        if np.ndim(out) == 0:
            out = xp.full(n, out, dtype=_dtype(out))
        return Column(out, valid, dictionary)


def _dtype(values: Any) -> np.dtype:
    """The dtype of an array of any device, or of a Python scalar (as numpy reads it)."""
    return values.dtype if hasattr(values, "dtype") else np.asarray(values).dtype


class _Union:
    """The dictionary of a CASE over strings: every branch's strings, mapped once per entry."""

    def __init__(self) -> None:
        self.out = StringDictionary()
        self.maps: weakref.WeakKeyDictionary[StringDictionary, EntryTable] = \
            weakref.WeakKeyDictionary()

    def codes(self, c: Column, xp: ModuleType) -> Column:
        if c.dictionary is None:  # a string literal: one code
            code, _ = self.out.encode(pa.array([c.values], pa.large_string()))
            return Column(np.int32(code[0]), None, self.out)
        with LOCK:
            table = self.maps.get(c.dictionary)
            if table is None:
                table = self.maps[c.dictionary] = EntryTable(lambda a: a, None, self.out)
        return gather(table, c.dictionary.values, c, xp)


@dataclass(frozen=True, eq=False, repr=False)
class IsIn(Expr):
    """``is_in(values)``: SQL's ``IN`` over a list of literals."""

    operand: Expr
    values: tuple[Scalar, ...]
    has_null: bool

    @staticmethod
    def build(operand: Expr, values: Sequence[Scalar | None]) -> IsIn:
        """Check the list and make the node (``Expr.is_in`` calls it).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> IsIn.build(col("x"), [1, None]).has_null
        True
        """
        if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
            raise PlanError(f"is_in() takes a list of values, got {values!r}; write e.g. "
                            "is_in(['a', 'b'])")
        kept: list[Scalar] = []
        for v in values:
            if isinstance(v, np.generic):
                v = v.item()
            if v is not None and not isinstance(v, bool | int | float | str):
                raise PlanError(f"is_in(): {v!r} is not a number, a string, a bool or None")
            if v is not None:
                kept.append(v)
        if len({isinstance(v, str) for v in kept}) > 1:
            raise PlanError(f"is_in(): the list {list(values)!r} mixes strings and numbers")
        return IsIn(operand, tuple(kept), any(v is None for v in values))

    def __repr__(self) -> str:
        shown = list(self.values) + ([None] if self.has_null else [])
        return f"{self.operand!r}.is_in({shown!r})"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        t = node_type(self.operand, schema, where)
        wrong: list[Scalar]
        if _is_string(t):
            wrong = [v for v in self.values if not isinstance(v, str)]
        elif pa.types.is_boolean(t):
            wrong = [v for v in self.values if not isinstance(v, bool)]
        elif is_numeric(t):
            wrong = [v for v in self.values if isinstance(v, str | bool)]
        else:
            wrong = list(self.values)
        if wrong:
            raise PlanError(f"{where}: is_in() compares {describe(self.operand, t)} with "
                            f"{wrong[0]!r}, which is not of its type; give values of its type")
        return pa.bool_()

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        c = eval_node(self.operand, batch, xp)
        if c.dictionary is not None:
            strings = pa.array(list(self.values), pa.large_string())
            out = per_entry(c, ("is_in", self.values),
                            lambda a: pc.is_in(a, value_set=strings), pa.bool_(), xp)
            found, valid = out.values, out.valid
        else:
            values = c.values
            if np.ndim(values) == 0:
                values = xp.full(batch.num_rows, values)
            wanted = np.array(self.values) if self.values else np.zeros(0, values.dtype)
            found, valid = xp.isin(values, xp.asarray(wanted)), c.valid
        if self.has_null:  # x IN (..., NULL): not found is unknown
            valid = found.copy() if valid is None else xp.logical_and(valid, found)
        return Column(found, valid)
