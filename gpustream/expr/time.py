"""Date/time parts of timestamps: ``col("ts").dt.hour()``, ``.dt.truncate("1h")``, ...

A timestamp is int64 in its column's unit (``timestamp[s|ms|us|ns]``); an integer column is
read as epoch milliseconds, the unit of event times unless the schema gives another
(cast it, e.g. ``.cast("timestamp[us]")``, to read it in another unit). Times are UTC.

The parts are vectorized integer arithmetic in the backend's ``xp`` (numpy or cupy):
days since the epoch to the civil date by Howard Hinnant's ``civil_from_days``, no per-row
Python and no host copy. ``strftime`` formats each batch's distinct values with
``pyarrow.compute.strftime`` (C++ ``date`` format codes, where ``%S`` includes the
fraction of a second the column's unit holds), codes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.durations import Duration, to_millis
from gpustream.errors import PlanError
from gpustream.expr.column import Column
from gpustream.expr.entries import encode_distinct, node_state
from gpustream.expr.evaluate import eval_node
from gpustream.expr.nodes import Expr, Lit
from gpustream.expr.types import describe, node_type
from gpustream.ingest.dictionary import StringDictionary
from gpustream.windows import to_event_units

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["DtFn", "DtNamespace", "civil_from_days"]

_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_PARTS = ("year", "month", "day", "hour", "minute", "second", "millisecond", "weekday")


def _unit(t: pa.DataType) -> str:
    return str(t.unit) if pa.types.is_timestamp(t) else "ms"


@dataclass(frozen=True, eq=False, repr=False)
class DtFn(Expr):
    """A date/time function of a timestamp (or integer epoch milliseconds) operand."""

    op: str
    operand: Expr
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        args = self.args[1:] if self.op == "truncate" else self.args  # (ms, as written)
        return f"{self.operand!r}.dt.{self.op}({', '.join(map(repr, args))})"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        t = node_type(self.operand, schema, where)
        if not (pa.types.is_timestamp(t) or pa.types.is_integer(t)) or isinstance(
                self.operand, Lit):
            raise PlanError(f"{where}: dt.{self.op}() needs a timestamp column (or an integer "
                            f"column of epoch milliseconds), but {describe(self.operand, t)} "
                            "is not; cast it, e.g. .cast('timestamp[ms]')")
        if self.op == "truncate":
            to_event_units(self.args[0], t, f"{where}: dt.truncate({self.args[1]!r})")
            return t
        if self.op == "strftime":
            return pa.string()
        return pa.int32()

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        c = eval_node(self.operand, batch, xp)
        t = self._operand_type(batch)
        unit = _unit(t)
        v = c.values.astype(np.int64, copy=False)
        if self.op == "truncate":
            every = to_event_units(self.args[0], t, "dt.truncate")
            return Column((v - xp.remainder(v, every)).astype(c.values.dtype, copy=False),
                          c.valid)
        if self.op == "strftime":
            fmt = self.args[0]
            ts_type = t if pa.types.is_timestamp(t) else pa.timestamp("ms")

            def strings_of(values: np.ndarray) -> pa.Array:
                values = np.ascontiguousarray(values, dtype=np.int64)
                arr = pa.Array.from_buffers(ts_type, len(values),
                                            [None, pa.py_buffer(values)])
                return pc.strftime(arr, format=fmt)

            out: StringDictionary = node_state(self, StringDictionary)
            return encode_distinct(v, c.valid, xp, strings_of, out)
        return Column(part(self.op, v, unit, xp), c.valid)

    def _operand_type(self, batch: Batch) -> pa.DataType:
        return node_type(self.operand, batch.schema, repr(self))


def civil_from_days(days: Any, xp: ModuleType) -> tuple[Any, Any, Any]:
    """(year, month, day) of days since 1970-01-01, vectorized (Hinnant's algorithm).

    Examples
    --------
    >>> y, m, d = civil_from_days(np.array([0, 59, -1, 11016]), np)
    >>> y.tolist(), m.tolist(), d.tolist()
    ([1970, 1970, 1969, 2000], [1, 3, 12, 2], [1, 1, 31, 29])
    """
    z = days + 719_468
    era = xp.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = xp.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def part(op: str, values: Any, unit: str, xp: ModuleType) -> Any:
    """One date/time part (int32) of int64 epoch ``values`` in ``unit``.

    Examples
    --------
    >>> v = np.array([0, 1_700_000_123_456])  # 1970-01-01 00:00, 2023-11-14 22:15:23.456
    >>> [part(p, v, "ms", np).tolist() for p in ("year", "hour", "millisecond", "weekday")]
    [[1970, 2023], [0, 22], [0, 456], [4, 2]]
    """
    per_second = _PER_SECOND[unit]
    per_day = 86_400 * per_second
    days = xp.floor_divide(values, per_day)
    if op in ("year", "month", "day"):
        out = civil_from_days(days, xp)[("year", "month", "day").index(op)]
    elif op == "weekday":  # ISO: Monday = 1; 1970-01-01 was a Thursday
        out = xp.remainder(days + 3, 7) + 1
    else:
        rem = values - days * per_day
        if op == "millisecond":
            out = (rem // (per_second // 1_000)) % 1_000 if per_second >= 1_000 \
                else xp.zeros_like(rem)
        else:
            size = {"hour": 3_600, "minute": 60, "second": 1}[op] * per_second
            out = (rem // size) % {"hour": 24, "minute": 60, "second": 60}[op]
    return out.astype(np.int32)


class DtNamespace:
    """``expr.dt``: date/time parts (Polars' names) of a timestamp or integer epoch-ms column.

    Examples
    --------
    >>> from gpustream.expr import col
    >>> col("ts").dt.truncate("1h")
    col('ts').dt.truncate('1h')
    """

    def __init__(self, expr: Expr) -> None:
        self._expr = expr

    def _part(self, op: str) -> Expr:
        return DtFn(op, self._expr)

    def year(self) -> Expr:
        """The year (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.year()
        col('ts').dt.year()
        """
        return self._part("year")

    def month(self) -> Expr:
        """The month, 1-12 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.month()
        col('ts').dt.month()
        """
        return self._part("month")

    def day(self) -> Expr:
        """The day of the month, 1-31 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.day()
        col('ts').dt.day()
        """
        return self._part("day")

    def hour(self) -> Expr:
        """The hour, 0-23 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.hour()
        col('ts').dt.hour()
        """
        return self._part("hour")

    def minute(self) -> Expr:
        """The minute, 0-59 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.minute()
        col('ts').dt.minute()
        """
        return self._part("minute")

    def second(self) -> Expr:
        """The second, 0-59 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.second()
        col('ts').dt.second()
        """
        return self._part("second")

    def millisecond(self) -> Expr:
        """The millisecond within the second, 0-999 (int32; 0 for a column in seconds).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.millisecond()
        col('ts').dt.millisecond()
        """
        return self._part("millisecond")

    def weekday(self) -> Expr:
        """The ISO day of the week: Monday = 1 ... Sunday = 7 (int32).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.weekday()
        col('ts').dt.weekday()
        """
        return self._part("weekday")

    def truncate(self, every: Duration) -> Expr:
        """The time rounded down to a multiple of ``every`` since the epoch (``"1h"``,
        ``"15m"``, a timedelta or an int of milliseconds); the column's type is kept.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.truncate("15m")
        col('ts').dt.truncate('15m')
        """
        try:
            ms = to_millis(every, what="dt.truncate()")
        except (TypeError, ValueError) as exc:
            raise PlanError(str(exc)) from exc
        if ms <= 0:
            raise PlanError(f"dt.truncate(): the duration must be positive, got {every!r}")
        return DtFn("truncate", self._expr, (ms, str(every)))

    def strftime(self, format: str) -> Expr:
        """The time as text (a string column), e.g. ``"%Y-%m-%d %H:00"``: C++ ``date``
        format codes, as ``pyarrow.compute.strftime``; UTC.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("ts").dt.strftime("%Y-%m-%d")
        col('ts').dt.strftime('%Y-%m-%d')
        """
        if not isinstance(format, str) or not format:
            raise PlanError(f"dt.strftime() takes a format string such as '%Y-%m-%d', got "
                            f"{format!r}")
        return DtFn("strftime", self._expr, (format,))
