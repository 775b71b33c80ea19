"""``Batch``: a columnar micro-batch on one device (DESIGN.md section 2).

A batch is an ordered mapping of column name -> 1-D array, all of one length, on one
device (numpy on the host, cupy on the GPU), plus its Arrow schema. Strings are int32
codes into a :class:`~gpustream.ingest.dictionary.StringDictionary`; timestamps are int64
in their schema unit; nulls are boolean validity masks (absent when a column has none).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import is_string_type as _is_string
from gpustream.ingest.schema import logical_type

if TYPE_CHECKING:
    from gpustream.backend import Backend

__all__ = ["Batch", "physical_dtype"]


def physical_dtype(arrow_type: pa.DataType, *, column: str = "?") -> np.dtype:
    """The numpy dtype that holds a column of ``arrow_type`` in a batch.

    Examples
    --------
    >>> import pyarrow as pa
    >>> physical_dtype(pa.timestamp("ms")), physical_dtype(pa.string()), physical_dtype(pa.float32())
    (dtype('int64'), dtype('int32'), dtype('float32'))
    >>> physical_dtype(pa.list_(pa.int8()), column="tags")
    Traceback (most recent call last):
    ...
    TypeError: column 'tags' has Arrow type list<item: int8>, which gpustream cannot hold; cast it to a number, bool, timestamp or string before the source
    """
    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if _is_string(t):
        return np.dtype(np.int32)
    if pa.types.is_timestamp(t):
        return np.dtype(np.int64)
    if pa.types.is_boolean(t):
        return np.dtype(np.bool_)
    if pa.types.is_integer(t) or (pa.types.is_floating(t) and not pa.types.is_float16(t)):
        return np.dtype(t.to_pandas_dtype())
    raise TypeError(
        f"column {column!r} has Arrow type {arrow_type}, which gpustream cannot hold; cast it "
        "to a number, bool, timestamp or string before the source"
    )


def _column_from_arrow(
    name: str, arr: pa.Array, dictionaries: dict[str, StringDictionary]
) -> tuple[np.ndarray, np.ndarray | None]:
    t = logical_type(arr.type)
    if _is_string(t):
        return dictionaries.setdefault(name, StringDictionary()).encode(arr)
    if pa.types.is_dictionary(arr.type):  # numbers in a dictionary: their values
        arr = arr.dictionary.take(arr.indices)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pa.types.is_boolean(t):
        values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
        return values.astype(np.bool_, copy=False), valid
    dtype = physical_dtype(t, column=name)
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(len(arr), dtype=dtype), valid
    # zero-copy view of the Arrow values buffer (null slots hold unspecified values)
    values = np.frombuffer(buf, dtype=dtype, count=arr.offset + len(arr))[arr.offset :]
    return values, valid


def _column_to_arrow(
    values: np.ndarray, valid: np.ndarray | None, arrow_type: pa.DataType,
    dictionary: StringDictionary | None,
) -> pa.Array:
    if dictionary is not None:
        return dictionary.decode(values, valid)
    mask = None if valid is None else ~valid
    if pa.types.is_boolean(arrow_type):
        return pa.array(values, type=pa.bool_(), mask=mask)
    values = np.ascontiguousarray(values)
    n = len(values)
    validity_buf = None
    null_count = 0
    if valid is not None:
        null_count = int(n - np.count_nonzero(valid))
        if null_count:
            validity_buf = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        arrow_type, n, [validity_buf, pa.py_buffer(values)], null_count=null_count
    )


class Batch:
    """Columns of one length on one device, with an Arrow schema.

    Parameters
    ----------
    columns
        Column name -> 1-D numpy or cupy array (the physical values).
    schema
        The logical Arrow schema (strings as ``pa.string()``, timestamps with their unit).
    validity
        Column name -> boolean mask, True where a value is present; omit columns without nulls.
    dictionaries
        String column name -> its :class:`StringDictionary`.

    Examples
    --------
    >>> import pyarrow as pa
    >>> rb = pa.record_batch({"k": ["x", "y", "x"], "v": [1.5, None, 3.0]})
    >>> b = Batch.from_arrow(rb)
    >>> b.num_rows, b.column_names, b["k"].tolist()
    (3, ['k', 'v'], [0, 1, 0])
    >>> b.to_arrow().equals(rb)
    True
    """

    __slots__ = ("_columns", "_validity", "dictionaries", "schema", "watermarks")

    def __init__(
        self,
        columns: Mapping[str, Any],
        schema: pa.Schema,
        validity: Mapping[str, Any] | None = None,
        dictionaries: Mapping[str, StringDictionary] | None = None,
        watermarks: Any | None = None,
    ) -> None:
        self._columns: dict[str, Any] = dict(columns)
        #: Per-row event-time watermark (the watermark as of each event), set by the source
        #: stage when the stream has an event time; it travels with the rows.
        self.watermarks = watermarks
        self.schema = schema
        self._validity: dict[str, Any] = {k: v for k, v in (validity or {}).items() if v is not None}
        self.dictionaries: dict[str, StringDictionary] = dict(dictionaries or {})
        names = list(schema.names)
        if names != list(self._columns):
            raise ValueError(f"schema names {names} differ from column names {list(self._columns)}")
        lengths = {len(a) for a in self._columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: {sorted(lengths)}")

    # -- access ---------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Number of rows.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"x": [1, 2]})).num_rows
        2
        """
        for arr in self._columns.values():
            return len(arr)
        return 0

    def __len__(self) -> int:
        return self.num_rows

    @property
    def column_names(self) -> list[str]:
        """Column names in order.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"a": [1], "b": [2]})).column_names
        ['a', 'b']
        """
        return list(self._columns)

    @property
    def columns(self) -> Mapping[str, Any]:
        """Column name -> physical values.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"s": ["x", "y", "x"]})).columns["s"].tolist()
        [0, 1, 0]
        """
        return self._columns

    def __getitem__(self, name: str) -> Any:
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def validity(self, name: str) -> Any | None:
        """The validity mask of a column, or None when it has no nulls.

        Examples
        --------
        >>> b = Batch.from_arrow(pa.record_batch({"x": [1, None], "y": [1, 2]}))
        >>> b.validity("x").tolist(), b.validity("y")
        ([True, False], None)
        """
        return self._validity.get(name)

    @property
    def on_device(self) -> bool:
        """True when the columns are GPU (cupy) arrays.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"x": [1]})).on_device
        False
        """
        return any(not isinstance(a, np.ndarray) for a in self._columns.values())

    # -- Arrow ----------------------------------------------------------------------------
    @classmethod
    def from_arrow(
        cls,
        data: pa.RecordBatch | pa.Table,
        dictionaries: dict[str, StringDictionary] | None = None,
    ) -> Batch:
        """A host batch from Arrow data: numeric columns are zero-copy views.

        ``dictionaries`` (column -> dictionary) is updated in place with new strings, so a
        stream keeps one dictionary per string column across batches.
        """
        if isinstance(data, pa.Table):
            chunks = data.combine_chunks().to_batches()
            data = chunks[0] if chunks else _empty_record_batch(data.schema)
        dicts = dictionaries if dictionaries is not None else {}
        columns: dict[str, np.ndarray] = {}
        validity: dict[str, np.ndarray | None] = {}
        fields = []
        for name, arr in zip(data.schema.names, data.columns, strict=True):
            values, valid = _column_from_arrow(name, arr, dicts)
            columns[name] = values
            validity[name] = valid
            fields.append(pa.field(name, logical_type(arr.type)))
        used = {k: dicts[k] for k in columns if k in dicts}
        return cls(columns, pa.schema(fields), validity, used)

    def to_arrow(self) -> pa.RecordBatch:
        """The batch as a host ``pyarrow.RecordBatch`` (strings decoded).

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"s": ["a", None]})).to_arrow().column(0).to_pylist()
        ['a', None]
        """
        host = self.to_host()
        arrays = [
            _column_to_arrow(
                host._columns[f.name], host._validity.get(f.name), f.type,
                host.dictionaries.get(f.name) if _is_string(f.type) else None,
            )
            for f in self.schema
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    # -- devices --------------------------------------------------------------------------
    def to_device(self, backend: Backend) -> Batch:
        """The batch on ``backend``'s device (cupy on ``cuda``; unchanged otherwise).

        Examples
        --------
        >>> from gpustream.backend import select_backend
        >>> b = Batch.from_arrow(pa.record_batch({"x": [1]}))
        >>> b.to_device(select_backend("cpu")) is b
        True
        """
        if not backend.is_device or backend.name == "cudasim" or self.on_device:
            return self
        return self._map(backend.to_device)

    def to_host(self) -> Batch:
        """The batch with numpy arrays (copies from the GPU only when on it).

        Examples
        --------
        >>> b = Batch.from_arrow(pa.record_batch({"x": [1]}))
        >>> b.to_host() is b
        True
        """
        if not self.on_device:
            return self
        return self._map(lambda a: a if isinstance(a, np.ndarray) else a.get())

    def _map(self, fn: Any) -> Batch:
        return Batch(
            {k: fn(v) for k, v in self._columns.items()},
            self.schema,
            {k: fn(v) for k, v in self._validity.items()},
            self.dictionaries,
            None if self.watermarks is None else fn(self.watermarks),
        )

    # -- cudf (optional extra) ------------------------------------------------------------
    def to_cudf(self) -> Any:
        """A ``cudf.DataFrame`` over the batch's device columns.

        Numeric columns without nulls are shared with cudf through
        ``__cuda_array_interface__`` (no copy); columns with nulls get a copied mask and
        string columns are decoded into cudf strings. Needs the ``cudf`` extra and a GPU.
        """
        cudf = _import_cudf()
        import cupy

        data = {}
        for f in self.schema:
            values = self._columns[f.name]
            if not isinstance(values, cupy.ndarray):
                values = cupy.asarray(values)
            valid = self._validity.get(f.name)
            if f.name in self.dictionaries:
                host = self.dictionaries[f.name].decode(
                    cupy.asnumpy(values), None if valid is None else cupy.asnumpy(valid)
                )
                data[f.name] = cudf.Series.from_arrow(host)
                continue
            series = cudf.Series(values)
            if valid is not None:
                series = series.where(cupy.asarray(valid))
            data[f.name] = series
        return cudf.DataFrame(data)

    @classmethod
    def from_cudf(
        cls, df: Any, dictionaries: dict[str, StringDictionary] | None = None
    ) -> Batch:
        """A device batch from a ``cudf.DataFrame``; numeric columns without nulls are not copied.

        Needs the ``cudf`` extra and a GPU; the round trip is tested where both exist.
        """
        _import_cudf()
        import cupy

        dicts = dictionaries if dictionaries is not None else {}
        columns: dict[str, Any] = {}
        validity: dict[str, Any] = {}
        fields = []
        for name in df.columns:
            s = df[name]
            arrow_type = logical_type(s.dtype.to_arrow() if hasattr(s.dtype, "to_arrow")
                                       else pa.from_numpy_dtype(s.dtype))
            if _is_string(arrow_type) or str(s.dtype) in ("object", "str", "string"):
                codes, valid = dicts.setdefault(name, StringDictionary()).encode(s.to_arrow())
                columns[name] = cupy.asarray(codes)
                validity[name] = None if valid is None else cupy.asarray(valid)
                fields.append(pa.field(name, pa.string()))
                continue
            if s.has_nulls:
                validity[name] = cupy.asarray(s.notna().values)
                s = s.fillna(0)
            columns[name] = cupy.asarray(s.values)  # .values is a zero-copy cupy view
            fields.append(pa.field(name, arrow_type))
        used = {k: dicts[k] for k in columns if k in dicts}
        return cls(columns, pa.schema(fields), validity, used)

    # -- row selection and columns --------------------------------------------------------
    def filter(self, mask: Any) -> Batch:
        """Rows where the boolean ``mask`` (same device) is True.

        Examples
        --------
        >>> import numpy as np
        >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2, 3]}))
        >>> b.filter(np.array([True, False, True]))["x"].tolist()
        [1, 3]
        """
        return self._map(lambda a: a[mask])

    @staticmethod
    def concat(batches: list[Batch], xp: Any) -> Batch:
        """Rows of ``batches`` (one schema, one device) one after the other.

        Examples
        --------
        >>> import numpy as np
        >>> a = Batch.from_arrow(pa.record_batch({"x": [1, None]}))
        >>> b = Batch.from_arrow(pa.record_batch({"x": [3]}))
        >>> Batch.concat([a, b], np).to_arrow().to_pydict()
        {'x': [1, None, 3]}
        """
        first = batches[0]
        if len(batches) == 1:
            return first
        columns = {n: xp.concatenate([b[n] for b in batches]) for n in first.column_names}
        validity = {}
        for n in first.column_names:
            vs = [b.validity(n) for b in batches]
            if any(v is not None for v in vs):
                validity[n] = xp.concatenate([
                    v if v is not None else xp.ones(b.num_rows, dtype=bool)
                    for v, b in zip(vs, batches, strict=True)])
        wms = [b.watermarks for b in batches]
        watermarks = xp.concatenate(wms) if all(w is not None for w in wms) else None
        dictionaries: dict[str, StringDictionary] = {}
        for b in batches:
            dictionaries.update(b.dictionaries)
        return Batch(columns, first.schema, validity, dictionaries, watermarks)

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop``, as views.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"x": [1, 2, 3]})).slice(1, 3)["x"].tolist()
        [2, 3]
        """
        return self._map(lambda a: a[start:stop])

    def select(self, names: list[str]) -> Batch:
        """Only the named columns, in that order.

        Examples
        --------
        >>> Batch.from_arrow(pa.record_batch({"a": [1], "b": [2]})).select(["b"]).column_names
        ['b']
        """
        return Batch(
            {n: self._columns[n] for n in names},
            pa.schema([self.schema.field(n) for n in names]),
            {n: self._validity.get(n) for n in names},
            {n: self.dictionaries[n] for n in names if n in self.dictionaries},
            self.watermarks,
        )

    def __repr__(self) -> str:
        where = "device" if self.on_device else "host"
        return f"Batch({self.num_rows} rows on {where}: {', '.join(self.column_names)})"


def _empty_record_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def _import_cudf() -> Any:
    try:
        import cudf
    except ImportError as exc:
        raise ImportError(
            "cudf is not installed: pip install 'gpustream[cudf]' (needs an NVIDIA GPU)"
        ) from exc
    return cudf
