"""Row-wise operators: ``filter``, ``with_columns`` and ``select``.

They evaluate expressions vectorized with the backend's ``xp`` (numpy or cupy): no
per-row Python and no host<->device copies.
"""

from __future__ import annotations

from types import ModuleType

import pyarrow as pa

from gpustream.batch import Batch, physical_dtype
from gpustream.expr import Expr, evaluate
from gpustream.operators.base import Operator

__all__ = ["FilterOp", "ProjectOp"]


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
    xp
        The backend's array namespace.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> from gpustream.expr import col
    >>> b = Batch.from_arrow(pa.record_batch({"x": [1, 2]}))
    >>> schema = pa.schema({"x": pa.int64(), "y": pa.int64()})
    >>> op = ProjectOp((("y", col("x") * 10),), schema, True, np)
    >>> op.process(b)[0].to_arrow().to_pydict()
    {'x': [1, 2], 'y': [10, 20]}
    """

    def __init__(
        self, exprs: tuple[tuple[str, Expr], ...], schema: pa.Schema, keep_input: bool,
        xp: ModuleType,
    ) -> None:
        self.exprs = exprs
        self.schema = schema
        self.keep_input = keep_input
        self.xp = xp
        self._dtypes = {f.name: physical_dtype(f.type, column=f.name) for f in schema}

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
            columns[name] = values
            validity[name] = out.valid
            if out.dictionary is not None:
                dictionaries[name] = out.dictionary
            else:
                dictionaries.pop(name, None)
        ordered = {f.name: columns[f.name] for f in self.schema}
        return [Batch(ordered, self.schema, validity, dictionaries, batch.watermarks)]


