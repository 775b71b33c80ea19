"""Independent references: pandas computing the same answers in batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

_NULLABLE = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(),
    pa.float32(): pd.Float32Dtype(), pa.float64(): pd.Float64Dtype(),
    pa.bool_(): pd.BooleanDtype(), pa.string(): pd.StringDtype("python"),
}


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A DataFrame with pandas' nullable dtypes (SQL-like nulls, Kleene logic)."""
    return table.to_pandas(types_mapper=_NULLABLE.get)


def assert_same(got: pa.Table, expected: pd.DataFrame) -> None:
    """Same column names, same values and nulls, row order included."""
    g = to_pandas(got).reset_index(drop=True)
    e = expected.reset_index(drop=True)
    assert list(g.columns) == list(e.columns), (list(g.columns), list(e.columns))
    assert len(g) == len(e), (len(g), len(e))
    for c in g.columns:
        gv, ev = g[c], e[c]
        assert gv.isna().tolist() == ev.isna().tolist(), c
        keep = ~gv.isna().to_numpy(dtype=bool)
        a = gv.to_numpy(dtype=object)[keep]
        b = ev.to_numpy(dtype=object)[keep]
        if len(a) and isinstance(a[0], (float, np.floating)):
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-6, err_msg=c)
        else:
            assert a.tolist() == b.tolist(), c
