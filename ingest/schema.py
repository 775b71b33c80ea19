"""Schemas for sources: given explicitly (whole or in part) or inferred, and conformed.

A text source has two schemas: the *stream* schema its batches carry, and the *wire*
schema its parser reads. They differ only for timestamps written as numbers (epoch
values in the stream column's unit), which are read as int64 and reinterpreted.
Timestamps of any unit are normalised to the stream schema's unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import IngestError

__all__ = ["SchemaLike", "as_schema", "conform", "merge_schema", "type_of"]

#: What ``schema=`` accepts: a ``pyarrow.Schema`` or a mapping of column -> Arrow type
#: (a ``pyarrow.DataType`` or its name: ``"int64"``, ``"float64"``, ``"string"``,
#: ``"bool"``, ``"timestamp[ms]"`` …).
SchemaLike: TypeAlias = "pa.Schema | Mapping[str, Any]"


def type_of(value: Any, where: str) -> pa.DataType:
    """An Arrow type from a type or its name.

    Examples
    --------
    >>> type_of("timestamp[ms]", "schema['ts']")
    TimestampType(timestamp[ms])
    >>> type_of("int", "schema['x']")
    Traceback (most recent call last):
    ...
    gpustream.errors.IngestError: schema['x']: 'int' is not an Arrow type name; use e.g. 'int64', 'float64', 'string', 'bool' or 'timestamp[ms]'
    """
    if isinstance(value, pa.DataType):
        return value
    if isinstance(value, str):
        try:
            return pa.type_for_alias(value.strip())
        except (ValueError, KeyError):
            pass
    raise IngestError(f"{where}: {value!r} is not an Arrow type name; use e.g. 'int64', "
                      "'float64', 'string', 'bool' or 'timestamp[ms]'")


def as_schema(schema: SchemaLike, where: str) -> pa.Schema:
    """A ``pyarrow.Schema`` from a schema or a mapping of column -> type.

    Examples
    --------
    >>> as_schema({"ts": "timestamp[ms]", "v": "float64"}, "read_csv").names
    ['ts', 'v']
    """
    if isinstance(schema, pa.Schema):
        return schema
    if isinstance(schema, Mapping):
        return pa.schema([pa.field(str(k), type_of(v, f"{where}: schema[{k!r}]"))
                          for k, v in schema.items()])
    raise IngestError(f"{where}: schema must be a pyarrow.Schema or a dict of column -> "
                      f"type, got {type(schema).__name__}")


def merge_schema(inferred: pa.Schema, given: pa.Schema | None, complete: bool) -> pa.Schema:
    """The stream schema: ``given`` types override ``inferred`` ones.

    With ``complete`` the given schema is the whole schema (its columns, its order);
    otherwise it overrides the types of inferred columns and adds missing ones. Columns
    inferred as all-null become strings.

    Examples
    --------
    >>> inferred = pa.schema([("ts", pa.int64()), ("k", pa.null())])
    >>> merge_schema(inferred, pa.schema([("ts", pa.timestamp("ms"))]), False)
    ts: timestamp[ms]
    k: string
    """
    if given is not None and complete:
        return given
    over = {} if given is None else {f.name: f for f in given}
    fields = [over.pop(f.name, f) for f in inferred]
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in fields]
    return pa.schema(fields + list(over.values()))


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``table`` as one record batch of ``schema``: columns selected, ordered and cast.

    Integers read for a timestamp column are epoch values in that column's unit;
    timestamps of another unit are converted (truncating toward the past). A column the
    data lacks becomes nulls. Raises ``pyarrow.ArrowInvalid`` when a value does not fit.

    Examples
    --------
    >>> schema = pa.schema([("ts", pa.timestamp("ms")), ("v", pa.float64())])
    >>> t = pa.table({"v": [1, 2], "ts": pa.array([1500, 2500], pa.timestamp("us"))})
    >>> conform(t, schema).to_pydict()["ts"][1].microsecond
    2000
    >>> conform(pa.table({"ts": [7]}), schema).to_pydict()
    {'ts': [datetime.datetime(1970, 1, 1, 0, 0, 0, 7000)], 'v': [None]}
    """
    n = table.num_rows
    columns = []
    for field in schema:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            columns.append(pa.nulls(n, field.type))
            continue
        col: Any = table.column(idx)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if col.type != field.type:
            if pa.types.is_timestamp(field.type) and pa.types.is_integer(col.type):
                col = pc.cast(col, pa.int64()).view(field.type)
            else:
                lossy = pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type)
                col = pc.cast(col, field.type, safe=not lossy)
        columns.append(col)
    return pa.RecordBatch.from_arrays(columns, schema=schema)
