"""Batch: Arrow round trips, zero-copy views, string dictionaries, device transfer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpustream as gs
from gpustream.batch import Batch
from gpustream.ingest.dictionary import StringDictionary

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(),
             pa.uint32(), pa.uint64()]


def _table(rng: np.random.Generator, n: int) -> pa.Table:
    mask = rng.random(n) < 0.2
    return pa.table({
        "i32": pa.array(rng.integers(-1000, 1000, n).astype(np.int32), mask=mask),
        "u16": pa.array(rng.integers(0, 60000, n).astype(np.uint16)),
        "f32": pa.array(rng.normal(size=n).astype(np.float32), mask=rng.random(n) < 0.1),
        "f64": rng.normal(size=n),
        "flag": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.3),
        "ts": pa.array(rng.integers(0, 10**12, n), type=pa.timestamp("ms")),
        "s": pa.array(rng.choice(["a", "bb", "ccc", "dddd"], n), mask=rng.random(n) < 0.15),
    })


def test_round_trip_every_supported_type() -> None:
    t = _table(np.random.default_rng(1), 500)
    for rb in t.to_batches(max_chunksize=77):
        assert Batch.from_arrow(rb).to_arrow().equals(rb)


def test_numeric_columns_are_zero_copy_views() -> None:
    rb = pa.record_batch({"x": np.arange(1000, dtype=np.int64)})
    b = Batch.from_arrow(rb)
    buf = rb.column(0).buffers()[1]
    assert b["x"].ctypes.data == buf.address
    sliced = rb.slice(100, 50)
    bs = Batch.from_arrow(sliced)
    assert bs["x"].ctypes.data == buf.address + 100 * 8
    assert bs["x"].tolist() == list(range(100, 150))


@given(st.sampled_from(INT_TYPES), st.lists(st.one_of(st.none(), st.integers(0, 100)),
                                              max_size=50))
def test_integer_types_with_nulls_round_trip(t: pa.DataType, values: list[int | None]) -> None:
    rb = pa.record_batch({"v": pa.array(values, type=t)})
    b = Batch.from_arrow(rb)
    assert b["v"].dtype == np.dtype(t.to_pandas_dtype())
    assert b.to_arrow().equals(rb)


def test_string_codes_do_not_depend_on_batching() -> None:
    rng = np.random.default_rng(3)
    values = pa.array(rng.choice(["x", "y", "z", "w", "v"], 400))
    whole = StringDictionary()
    codes_whole, _ = whole.encode(values)
    for size in (1, 7, 64):
        d = StringDictionary()
        parts = [d.encode(values.slice(i, size))[0] for i in range(0, len(values), size)]
        assert np.concatenate(parts).tolist() == codes_whole.tolist()
        assert d.values.equals(whole.values)


def test_dictionary_is_shared_across_batches_and_snapshots() -> None:
    dicts: dict[str, StringDictionary] = {}
    b1 = Batch.from_arrow(pa.record_batch({"s": ["a", "b"]}), dicts)
    b2 = Batch.from_arrow(pa.record_batch({"s": ["b", "c", "a"]}), dicts)
    assert b1["s"].tolist() == [0, 1] and b2["s"].tolist() == [1, 2, 0]
    snap = dicts["s"].snapshot()
    restored = StringDictionary(snap)
    assert restored.decode(b2["s"]).to_pylist() == ["b", "c", "a"]


def test_dictionary_typed_and_large_string_inputs() -> None:
    rb = pa.record_batch({
        "d": pa.array(["p", "q", "p", None]).dictionary_encode(),
        "l": pa.array(["x", None, "y", "x"], type=pa.large_string()),
    })
    b = Batch.from_arrow(rb)
    assert b.schema.field("d").type == pa.string() and b.schema.field("l").type == pa.string()
    out = b.to_arrow()
    assert out.column(0).to_pylist() == ["p", "q", "p", None]
    assert out.column(1).to_pylist() == ["x", None, "y", "x"]


def test_unsupported_type_names_column_and_fix() -> None:
    rb = pa.record_batch({"tags": pa.array([[1], [2]])})
    with pytest.raises(TypeError, match=r"column 'tags' has Arrow type list<item: int64>.*cast it"):
        Batch.from_arrow(rb)


def test_empty_and_table_inputs() -> None:
    t = pa.table({"x": pa.array([], pa.int32()), "s": pa.array([], pa.string())})
    b = Batch.from_arrow(t)
    assert b.num_rows == 0 and b.to_arrow().schema == t.schema
    t2 = pa.concat_tables([pa.table({"x": [1, 2]}), pa.table({"x": [3]})])
    assert Batch.from_arrow(t2)["x"].tolist() == [1, 2, 3]


def test_device_round_trip(backend: gs.Backend) -> None:
    rb = _table(np.random.default_rng(5), 300).to_batches()[0]
    b = Batch.from_arrow(rb).to_device(backend)
    assert b.on_device == (backend.name == "cuda")
    filtered = b.filter(backend.xp.asarray(np.arange(300) % 3 == 0))
    assert filtered.to_arrow().equals(rb.filter(pa.array(np.arange(300) % 3 == 0)))
    assert b.to_host().to_arrow().equals(rb)


def test_cudf_missing_is_a_clear_error() -> None:
    try:
        import cudf  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cudf is installed here; test_cudf_zero_copy covers it")
    b = Batch.from_arrow(pa.record_batch({"x": [1]}))
    with pytest.raises(ImportError, match=r"pip install 'gpustream\[cudf\]'"):
        b.to_cudf()


@pytest.mark.cuda
def test_cudf_zero_copy() -> None:
    from gpustream.probe import probe_gpu

    if not probe_gpu().ok:
        pytest.skip(f"needs a GPU: {probe_gpu().reason}")
    cudf = pytest.importorskip("cudf", reason="the cudf extra is not installed")
    b = Batch.from_arrow(pa.record_batch({"x": np.arange(100), "s": ["a", "b"] * 50}))
    dev = b.to_device(gs.select_backend("cuda"))
    df = dev.to_cudf()
    assert isinstance(df, cudf.DataFrame)
    assert df["x"].values.data.ptr == dev["x"].data.ptr  # shared, not copied
    back = Batch.from_cudf(df)
    assert back.to_arrow().equals(b.to_arrow())
