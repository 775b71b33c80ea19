"""Row-wise operators: ``filter``, ``with_columns``, ``select`` and ``map_batches``.

The first three evaluate expressions vectorized with the backend's ``xp`` (numpy or
cupy): no per-row Python and no host<->device copies. ``map_batches`` runs a Python
function of each batch as Arrow on the host (:class:`MapBatchesOp`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gpustream.batch import Batch, physical_dtype
from gpustream.errors import MapBatchesError
from gpustream.expr import Expr, evaluate
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import conform, is_string_type, logical_type
from gpustream.operators.base import Operator
from gpustream.watermark import NO_WATERMARK

if TYPE_CHECKING:
    from gpustream.backend import Backend

__all__ = ["FilterOp", "MapBatchesError", "MapBatchesOp", "ProjectOp"]


class FilterOp(Operator):
    """Keeps the rows whose predicate is true; a null predicate drops the row (SQL).

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 5, None, 9]}))
    >>> FilterOp(col("x") > 2, np).process(b)[0].to_arrow().column(0).to_pylist()
    [5, 9]
    """

    def __init__(self, predicate: Expr, xp: ModuleType) -> None:
        self.predicate = predicate
        self.xp = xp

    def process(self, batch: Batch) -> list[Batch]:
        out = evaluate(self.predicate, batch, self.xp)
        mask = out.values if out.valid is None else self.xp.logical_and(out.values, out.valid)
        return [batch.filter(mask)]


class ProjectOp(Operator):
    """Computes columns from expressions: ``with_columns`` (keep the rest) or ``select``.

    Parameters
    ----------
    exprs
        Output column name -> expression.
    schema
        The output schema the planner derived (types of computed columns are enforced).
    keep_input
        True for ``with_columns``, False for ``select``.
    backend
        The backend it runs on.

    Computed string columns come out as codes into dictionaries this step owns and
    checkpoints (:class:`~gpustream.operators.recode.Recoder`): the dictionaries an
    expression builds (a concatenation of two columns, a CASE over strings,
    ``strftime``) grow in arrival order, which a restart would not repeat.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.backend import select_backend
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2]}))
    >>> schema = pa.schema({"x": pa.int64(), "y": pa.int64()})
    >>> op = ProjectOp((("y", col("x") * 10),), schema, True, select_backend("cpu"))
    >>> op.process(b)[0].to_arrow().to_pydict()
    {'x': [1, 2], 'y': [10, 20]}
    """

    def __init__(
        self, exprs: tuple[tuple[str, Expr], ...], schema: pa.Schema, keep_input: bool,
        backend: Backend,
    ) -> None:
        from gpustream.operators.recode import Recoder

        self.exprs = exprs
        self.schema = schema
        self.keep_input = keep_input
        self.xp = backend.xp
        self._dtypes = {f.name: physical_dtype(f.type, column=f.name) for f in schema}
        self.recoder = Recoder([name for name, _ in exprs
                                if is_string_type(schema.field(name).type)], backend)

    def owned_dictionaries(self) -> dict[str, StringDictionary]:
        """The dictionary of each computed string column (decodes it after a restore)."""
        return self.recoder.dictionaries

    def process(self, batch: Batch) -> list[Batch]:
        columns = dict(batch.columns) if self.keep_input else {}
        validity = (
            {n: batch.validity(n) for n in batch.column_names} if self.keep_input else {}
        )
        dictionaries = dict(batch.dictionaries) if self.keep_input else {}
        for name, expr in self.exprs:
            out = evaluate(expr, batch, self.xp)
            values = out.values
            dtype = self._dtypes[name]
            if values.dtype != dtype:
                values = values.astype(dtype)
            if name in self.recoder.dictionaries:
                values = self.recoder.recode(name, out.dictionary, values)
                dictionaries[name] = self.recoder.dictionaries[name]
            elif out.dictionary is not None:
                dictionaries[name] = out.dictionary
            else:
                dictionaries.pop(name, None)
            columns[name] = values
            validity[name] = out.valid
        ordered = {f.name: columns[f.name] for f in self.schema}
        return [Batch(ordered, self.schema, validity, dictionaries, batch.watermarks)]

    def snapshot(self) -> dict[str, Any]:
        """The dictionaries of the computed string columns."""
        return self.recoder.snapshot("dictionary")

    def restore(self, state: dict[str, Any]) -> None:
        self.recoder.restore(state, "dictionary")


class MapBatchesOp(Operator):
    """Runs ``fn`` on each batch as a ``pyarrow.RecordBatch`` on the host; its result,
    checked against ``schema``, is the step's output.

    On a device backend the batch is copied to the host (strings decoded) and the
    result back (strings encoded into this step's dictionaries): two copies of every
    column per batch, where every other step keeps the batch on the device.

    With ``event_time`` (the column, the watermark delay in its units) the output's
    per-event watermarks are computed from the output as a source computes them from
    its events: the watermark as of a row is the largest event time among the rows this
    step returned before it, minus the delay; :attr:`current` is the step's watermark,
    which the runtime passes downstream in place of the input's. So ``fn`` may drop rows,
    add rows or change event times; results downstream depend on batching only when
    ``fn`` does (a row-wise ``fn`` gives the same rows however the stream is cut).

    Examples
    --------
    >>> import pyarrow as pa, pyarrow.compute as pc
    >>> from gpustream.backend import select_backend
    >>> schema = pa.schema([("ts", pa.int64()), ("v", pa.int64())])
    >>> def big(rb: pa.RecordBatch) -> pa.RecordBatch:
    ...     return rb.filter(pc.greater(rb["v"], 1))
    >>> op = MapBatchesOp(big, schema, "step 1 (map_batches 'big')", ("ts", 0),
    ...                   select_backend("cpu"))
    >>> out = op.process(Batch.from_arrow(pa.record_batch({"ts": [7, 3, 9], "v": [1, 2, 3]})))
    >>> out[0].to_arrow().to_pydict(), out[0].watermarks.tolist()[1:], op.current
    ({'ts': [3, 9], 'v': [2, 3]}, [3], 9)
    """

    def __init__(self, fn: Callable[[pa.RecordBatch], Any], schema: pa.Schema, label: str,
                 event_time: tuple[str, int] | None, backend: Backend) -> None:
        from gpustream.operators.watermark import WatermarkOp  # loads numba: at plan time

        self.fn = fn
        self.schema = schema
        self.label = label
        self.backend = backend
        #: this step's dictionary of each string column it returns
        self.owned: dict[str, StringDictionary] = {}
        self._watermarks = (None if event_time is None
                            else WatermarkOp(event_time[0], event_time[1], backend))

    @property
    def current(self) -> int:
        """This step's watermark (``NO_WATERMARK`` before a row with an event time)."""
        return NO_WATERMARK if self._watermarks is None else self._watermarks.current

    def output_watermark(self) -> int | None:
        """With an event time, this step computes its output's watermark
        (:attr:`current`); without one, its input's passes through (None)."""
        return None if self._watermarks is None else self._watermarks.current

    def owned_dictionaries(self) -> dict[str, StringDictionary]:
        """This step's dictionary of each string column it returns."""
        return self.owned

    def _checked(self, out: Any) -> pa.RecordBatch:
        """``fn``'s result as a record batch of the declared schema."""
        if isinstance(out, pa.Table):
            out = out.combine_chunks()
            out = (out.to_batches()[0] if out.num_rows
                   else pa.RecordBatch.from_pylist([], schema=out.schema))
        if not isinstance(out, pa.RecordBatch):
            raise MapBatchesError(f"{self.label}: the function returned "
                                  f"{type(out).__name__}, not a pyarrow.RecordBatch")
        missing = [n for n in self.schema.names if n not in out.schema.names]
        extra = [n for n in out.schema.names if n not in self.schema.names]
        if missing or extra:
            raise MapBatchesError(
                f"{self.label}: the function's batch has columns {out.schema.names}, but "
                f"schema= declares {self.schema.names}"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not declared: {', '.join(extra)}" if extra else "")
                + ". Return the declared columns, or declare what it returns")
        for f in self.schema:
            got = out.schema.field(f.name).type
            if logical_type(got) != f.type:
                try:
                    out = out.set_column(out.schema.get_field_index(f.name), f.name,
                                         out.column(f.name).cast(f.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise MapBatchesError(
                        f"{self.label}: column {f.name!r} of the function's batch is {got}, "
                        f"which does not cast to the declared {f.type} ({exc}); return "
                        f"{f.type} or declare {got}") from None
        return conform(out, self.schema, keep_encoding=True)

    def process(self, batch: Batch) -> list[Batch]:
        try:
            out = self.fn(batch.to_arrow())
        except Exception as exc:
            raise MapBatchesError(f"{self.label}: the function raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        result = Batch.from_arrow(self._checked(out), self.owned)
        result = result.to_device(self.backend)
        if self._watermarks is not None:
            result = self._watermarks.process(result)[0]
        return [result]

    def snapshot(self) -> dict[str, Any]:
        """The watermark's running maximum and this step's dictionaries."""
        from gpustream.operators.join import strings_state

        state = {} if self._watermarks is None else self._watermarks.snapshot()
        names = sorted(self.owned)
        state.update(strings_state("columns", pa.array(names, pa.string())))
        for i, name in enumerate(names):
            state.update(strings_state(f"dictionary{i}", self.owned[name].values))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        from gpustream.operators.join import strings_from_state

        if self._watermarks is not None:
            self._watermarks.restore(state)
        names = strings_from_state(state, "columns").to_pylist() if state else []
        for i, name in enumerate(names):
            self.owned[name] = StringDictionary(
                strings_from_state(state, f"dictionary{i}"))
