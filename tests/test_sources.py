"""Sources: every record exactly once, in order, with offsets that resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpustream as gs


def _write(tmp: Path, parts: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    tables = []
    for i in range(parts):
        t = pa.table({"id": np.arange(i * rows, (i + 1) * rows), "v": rng.normal(size=rows),
                      "s": pa.array(rng.choice(["a", "b"], rows))})
        pq.write_table(t, tmp / f"part-{i:03d}.parquet", row_group_size=rows // 3 + 1)
        tables.append(t)
    return pa.concat_tables(tables)


@pytest.mark.parametrize("batch_rows", [1, 333, 100_000])
def test_read_parquet_yields_every_record_in_order(tmp_path: Path, batch_rows: int) -> None:
    want = _write(tmp_path, 3, 1000)
    for path in (tmp_path, tmp_path / "part-*.parquet"):
        src = gs.read_parquet(path, batch_rows=batch_rows)
        batches = [b.data for b in src.open()]
        assert all(b.num_rows <= batch_rows for b in batches)
        assert pa.Table.from_batches(batches).equals(want)


def test_read_parquet_resumes_from_any_offset(tmp_path: Path) -> None:
    want = _write(tmp_path, 2, 500)
    src = gs.read_parquet(tmp_path, batch_rows=128)
    offsets = [b.offset for b in src.open()]
    assert offsets[-1] == [str(tmp_path / "part-001.parquet"), 500]
    for off in offsets[:-1]:
        before = 500 * int(off[0].endswith("001.parquet")) + off[1]
        rest = [b.data for b in src.open(off)]
        assert pa.Table.from_batches(rest).equals(want.slice(before))
    assert list(src.open(offsets[-1])) == []
    assert pa.Table.from_batches([b.data for b in src.open([str(tmp_path / "part-000.parquet"), 77])]).equals(want.slice(77))


def test_read_parquet_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file matches"):
        gs.read_parquet(tmp_path / "nothing-*.parquet")
    _write(tmp_path, 1, 10)
    with pytest.raises(ValueError, match=r"column\(s\) nope are not in"):
        gs.read_parquet(tmp_path, columns=["id", "nope"])
    pq.write_table(pa.table({"other": [1]}), tmp_path / "part-999.parquet")
    with pytest.raises(ValueError, match=r"part-999.parquet lacks column\(s\) id, v, s"):
        list(gs.read_parquet(tmp_path).open())


def test_pipeline_over_parquet_with_projection(tmp_path: Path) -> None:
    want = _write(tmp_path, 2, 300)
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.read_parquet(tmp_path, batch_rows=100, columns=["id", "s"]))
    got = s.filter(gs.col("s") == "a").collect()
    assert got.equals(want.select(["id", "s"]).filter(pa.compute.equal(want["s"], "a")))
