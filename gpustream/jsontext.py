"""JSON text that is always valid JSON, whatever the values: for every JSON-lines writer.

Arrow rows hold values that ``json.dumps`` cannot write as JSON, or that Python cannot
even hold: non-finite floats (``json.dumps`` writes ``Infinity``/``NaN``, which no JSON
reader accepts), timestamps and dates outside Python's years 1-9999 (pyarrow raises
``OverflowError`` converting them), and strings that are not valid UTF-8. The JSONL sink
and the dead-letter writers encode rows with these functions so they never fail:

- non-finite floats are written as ``null``, as Polars' ``write_ndjson`` and pandas'
  ``to_json`` do (a string ``"inf"`` would turn a float column into a string column for
  whoever reads the file back);
- timestamps and dates as ISO 8601 text; outside years 1-9999, as numpy writes them
  (``"55969-09-28T..."``), the int64 minimum as ``"NaT"``;
- invalid UTF-8 with the bad bytes as ``\\xNN`` escapes; bytes and other values as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["json_line", "json_lines", "json_rows"]


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested too) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_line(row: Mapping[str, Any]) -> str:
    r"""One row as one line of valid JSON (no newline): see the module docstring.

    Examples
    --------
    >>> from datetime import datetime
    >>> json_line({"v": float("inf"), "w": [1.5, float("nan")], "t": datetime(2024, 1, 2)})
    '{"v": null, "w": [1.5, null], "t": "2024-01-02T00:00:00"}'
    >>> json_line({"b": b"\xff"})
    '{"b": "\\\\xff"}'
    """
    try:
        return json.dumps(row, default=_default, allow_nan=False)
    except ValueError:  # a non-finite float somewhere: rare, so looked for only now
        return json.dumps(_finite(row), default=_default, allow_nan=False)


_PY_RANGE = {unit: (pa.scalar(datetime(1, 1, 1), pa.timestamp(unit)).value,
                    pa.scalar(datetime(9999, 12, 31, 23, 59, 59, 999999),
                              pa.timestamp(unit)).value)
             for unit in ("s", "ms", "us")}


def _temporal_out_of_range(column: pa.Array) -> pa.Array | None:
    """A mask of the values Python cannot hold, or None when there is none."""
    t = column.type
    if pa.types.is_timestamp(t) and t.unit in _PY_RANGE:
        lo, hi = _PY_RANGE[t.unit]
        values = column.view(pa.int64())
    elif pa.types.is_date64(t):
        lo, hi = _PY_RANGE["ms"]
        values = column.view(pa.int64())
    else:
        return None
    bounds = pc.min_max(values).as_py()
    if bounds["min"] is None or (bounds["min"] >= lo and bounds["max"] <= hi):
        return None
    return pc.or_(pc.less(values, lo), pc.greater(values, hi))


def _column_values(column: pa.Array) -> list[Any]:
    """The column's values as Python objects that :func:`json_line` can always write."""
    t = column.type
    if pa.types.is_floating(t) and column.null_count < len(column):
        if not pc.all(pc.is_finite(column)).as_py():
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, t))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:  # invalid UTF-8: each value decoded with escapes
            return [None if b is None else b.decode("utf-8", errors="backslashreplace")
                    for b in column.view(pa.binary() if pa.types.is_string(t)
                                         else pa.large_binary()).to_pylist()]
    else:
        bad = _temporal_out_of_range(column)
        if bad is not None:
            unit = t.unit if pa.types.is_timestamp(t) else "ms"
            values = column.view(pa.int64()).to_numpy(zero_copy_only=False)
            text = np.datetime_as_string(values.astype(f"datetime64[{unit}]"))
            fine = pc.if_else(bad, pa.scalar(None, t), column).to_pylist()
            return [str(text[i]) if out else v
                    for i, (out, v) in enumerate(zip(bad.to_pylist(), fine, strict=True))]
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):  # nested values Python cannot hold
        return [_scalar(column, i) for i in range(len(column))]


def _scalar(column: pa.Array, i: int) -> Any:
    try:
        return column[i].as_py()
    except (OverflowError, ValueError):
        return str(column[i])


def json_rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """``batch.to_pylist()`` that never fails and whose rows :func:`json_line` writes.

    Examples
    --------
    >>> ts = pa.array([1, 1704067200123456], pa.int64()).view(pa.timestamp("ms"))
    >>> json_rows(pa.record_batch({"ts": ts, "v": [float("inf"), 2.0]}))
    [{'ts': datetime.datetime(1970, 1, 1, 0, 0, 0, 1000), 'v': None}, {'ts': '55969-09-28T00:02:03.456', 'v': 2.0}]
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
            pa.RecordBatch.from_pylist([], schema=batch.schema)
    if not batch.num_columns:
        return [{} for _ in range(batch.num_rows)]
    columns = [_column_values(c) for c in batch.columns]
    names = batch.schema.names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def json_lines(batch: pa.RecordBatch | pa.Table) -> str:
    """Every row of ``batch`` as a line of valid JSON, each line ending with a newline.

    Examples
    --------
    >>> print(json_lines(pa.record_batch({"x": [1, 2], "v": [float("nan"), 0.5]})), end="")
    {"x": 1, "v": null}
    {"x": 2, "v": 0.5}
    """
    return "".join(json_line(row) + "\n" for row in json_rows(batch))
