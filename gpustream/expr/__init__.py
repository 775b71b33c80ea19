"""Column expressions: ``gs.col("price") * 0.9 > 100`` (Polars vocabulary).

An expression is an immutable tree. The planner types it against a schema before
anything runs (:func:`expr_type`), so a missing column or a type clash fails at plan
time with the step, the column and the columns that exist; at run time it evaluates
vectorized with the backend's array namespace ``xp`` (numpy or cupy), never per row.

The package, by concern:

- :mod:`~gpustream.expr.nodes`: the nodes and their builders (:func:`col`, :func:`lit`,
  the operators, ``cast``, ``fill_null``, the aggregations: :class:`Agg`, :func:`count`);
- :mod:`~gpustream.expr.types`: result types at plan time (:func:`expr_type`,
  :func:`agg_type`);
- :mod:`~gpustream.expr.evaluate`: evaluation over a batch (:func:`evaluate`,
  :func:`agg_input`), giving a :class:`~gpustream.expr.column.Column`;
- :mod:`~gpustream.expr.entries`: results per dictionary entry, for functions of strings;
- the families: :mod:`~gpustream.expr.strings` (``col("s").str``),
  :mod:`~gpustream.expr.time` (``col("ts").dt``), :mod:`~gpustream.expr.when`
  (``when/then/otherwise``, ``is_in``);
- :mod:`~gpustream.expr.text`: expressions written as text (the YAML spec).

Examples
--------
>>> import numpy as np, pyarrow as pa
>>> from gpustream.batch import Batch
>>> e = (col("price") * 0.9 > 100) & ~col("flag")
>>> e
(((col('price') * 0.9) > 100) & ~col('flag'))
>>> b = Batch.from_arrow(pa.record_batch({"price": [200, 50], "flag": [False, False]}))
>>> expr_type(e, b.schema), evaluate(e, b, np).values.tolist()
(DataType(bool), [True, False])
"""

from gpustream.expr.column import Column
from gpustream.expr.evaluate import ByInput, agg_input, evaluate, order_key, value_bits
from gpustream.expr.nodes import (
    AGG_KINDS,
    BY_KINDS,
    MAX_EXPR_DEPTH,
    MAX_EXPR_PARTS,
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
    check_expr_size,
    col,
    count,
    lit,
    row_number,
)
from gpustream.expr.strings import concat_str
from gpustream.expr.types import agg_type, expr_type
from gpustream.expr.when import when

__all__ = [
    "AGG_KINDS",
    "BY_KINDS",
    "MAX_EXPR_DEPTH",
    "MAX_EXPR_PARTS",
    "Agg",
    "BinOp",
    "ByInput",
    "Cast",
    "Col",
    "Column",
    "Expr",
    "FillNull",
    "Filtered",
    "IsNull",
    "Lit",
    "UnaryOp",
    "agg_input",
    "agg_type",
    "check_expr_size",
    "col",
    "concat_str",
    "count",
    "evaluate",
    "expr_type",
    "lit",
    "order_key",
    "row_number",
    "value_bits",
    "when",
]
