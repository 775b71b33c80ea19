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

__all__ = ["SchemaLike", "as_schema", "conform", "is_string_type", "logical_schema",
           "logical_type", "merge_schema", "type_of"]

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


def is_string_type(arrow_type: pa.DataType) -> bool:
    """True for strings of any Arrow encoding: plain, large, view, or a dictionary of them.

    Examples
    --------
    >>> is_string_type(pa.dictionary(pa.uint8(), pa.large_string())), is_string_type(pa.int8())
    (True, False)
    """
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_string_view(t))


def logical_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a column has in a stream: dictionaries decoded, large strings as strings.

    Dictionary-encoded columns (Parquet's, a pandas ``category``, a Polars
    ``Categorical``; any index width) hold their value type; strings of every kind become
    ``pa.string()`` (a batch holds them as codes into the stream's own dictionary).

    Examples
    --------
    >>> import pyarrow as pa
    >>> logical_type(pa.dictionary(pa.uint8(), pa.large_string()))
    DataType(string)
    >>> logical_type(pa.dictionary(pa.int16(), pa.int64())), logical_type(pa.float32())
    (DataType(int64), DataType(float))
    """
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    return arrow_type


def logical_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every field's :func:`logical_type` (metadata dropped).

    Plans are checked against this schema, whatever encoding a source's data has.

    Examples
    --------
    >>> import pyarrow as pa
    >>> logical_schema(pa.schema([("c", pa.dictionary(pa.int32(), pa.string())),
    ...                           ("x", pa.int64())]))
    c: string
    x: int64
    """
    return pa.schema([pa.field(f.name, logical_type(f.type), f.nullable) for f in schema])


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema,
            keep_encoding: bool = False) -> pa.RecordBatch:
    """``table`` as one record batch of ``schema``: columns selected, ordered and cast.

    Integers read for a timestamp column are epoch values in that column's unit;
    timestamps of another unit are converted (truncating toward the past). A column the
    data lacks becomes nulls. Raises ``pyarrow.ArrowInvalid`` when a value does not fit.
    With ``keep_encoding``, a column whose values already have the field's type up to
    encoding (a dictionary of strings for a string field, large or view strings, a
    dictionary of the field's numbers) is passed through as it is, and the batch's schema
    says so: batches then differ in encoding, never in values (``Batch.from_arrow`` reads
    every encoding), and nothing is decoded only to be encoded again.

    Examples
    --------
    >>> schema = pa.schema([("ts", pa.timestamp("ms")), ("v", pa.float64())])
    >>> t = pa.table({"v": [1, 2], "ts": pa.array([1500, 2500], pa.timestamp("us"))})
    >>> conform(t, schema).to_pydict()["ts"][1].microsecond
    2000
    >>> conform(pa.table({"ts": [7]}), schema).to_pydict()
    {'ts': [datetime.datetime(1970, 1, 1, 0, 0, 0, 7000)], 'v': [None]}
    >>> cats = pa.table({"c": pa.array(["a", "b", "a"]).dictionary_encode()})
    >>> conform(cats, pa.schema([("c", pa.string())])).schema.types
    [DataType(string)]
    >>> conform(cats, pa.schema([("c", pa.string())]), keep_encoding=True).schema.types
    [DictionaryType(dictionary<values=string, indices=int32, ordered=0>)]
    """
    n = table.num_rows
    columns = []
    fields = []
    for field in schema:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            columns.append(pa.nulls(n, field.type))
            fields.append(field)
            continue
        col: Any = table.column(idx)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if keep_encoding and col.type != field.type and (
                logical_type(col.type) == logical_type(field.type)):
            columns.append(col)
            fields.append(pa.field(field.name, col.type, field.nullable))
            continue
        if col.type != field.type:
            if pa.types.is_timestamp(field.type) and pa.types.is_integer(col.type):
                col = pc.cast(col, pa.int64()).view(field.type)
            else:
                lossy = pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type)
                col = pc.cast(col, field.type, safe=not lossy)
        columns.append(col)
        fields.append(field)
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, schema.metadata))
