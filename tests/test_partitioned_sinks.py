"""File sinks partitioned by columns (Hive-style folders), read back by pyarrow and DuckDB,
exactly once across a crash and restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from tests.test_checkpoints import _Crash


def _table(n: int = 3000, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "ts": np.sort(rng.integers(0, 100_000, n)).astype(np.int64),
        "site": pa.array(rng.choice(["a/b", "c d", "e"], n), mask=rng.random(n) < 0.05),
        "k": rng.integers(0, 5, n),
        "v": rng.normal(size=n),
    })


def _read(root: Path, partition_by: list[str]) -> list[tuple[Any, ...]]:
    """The rows under ``root`` (partition columns back from the folder names, as text)."""
    t = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    cols = ["ts", "k", "v", *partition_by] if "k" not in partition_by else \
        ["ts", "v", *partition_by]
    return sorted(tuple(None if x is None else (str(x) if c in partition_by else x)
                        for c, x in zip(cols, r, strict=True))
                  for r in zip(*(t.column(c).to_pylist() for c in cols), strict=True))


def _want(table: pa.Table, partition_by: list[str]) -> list[tuple[Any, ...]]:
    cols = ["ts", "k", "v", *partition_by] if "k" not in partition_by else \
        ["ts", "v", *partition_by]
    return sorted(tuple(None if x is None else (str(x) if c in partition_by else x)
                        for c, x in zip(cols, r, strict=True))
                  for r in zip(*(table.column(c).to_pylist() for c in cols), strict=True))


@pytest.mark.parametrize("partition_by", [["site"], ["k", "site"]])
def test_rows_land_in_their_partition_folders(tmp_path: Path, partition_by: list[str]) -> None:
    table = _table()
    p = gs.Pipeline("parts", engine="cpu")
    p.source(gs.from_arrow(table, batch_rows=250), event_time="ts").sink(
        gs.to_parquet(tmp_path / "out", rows_per_file=400, partition_by=partition_by))
    p.run()
    top = sorted(d.name for d in (tmp_path / "out").iterdir())
    assert "site=a%2Fb" in top or top[0].startswith("k=")
    if partition_by == ["site"]:
        assert top == ["site=__HIVE_DEFAULT_PARTITION__", "site=a%2Fb", "site=c%20d", "site=e"]
    assert _read(tmp_path / "out", partition_by) == _want(table, partition_by)
    # DuckDB reads the same folders (hive partitioning), every row once
    rel = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/out/**/*.parquet', "
                     "hive_partitioning=1)")
    assert rel is not None and rel.fetchall() == [(table.num_rows,)]


def test_a_partitioned_jsonl_sink(tmp_path: Path) -> None:
    table = _table(500)
    p = gs.Pipeline("parts", engine="cpu")
    p.source(gs.from_arrow(table, batch_rows=100), event_time="ts").sink(
        gs.to_jsonl(tmp_path / "out", partition_by=["k"]))
    p.run()
    counts = {d.name: sum(len(f.read_text().splitlines()) for f in d.glob("part-*.jsonl"))
              for d in (tmp_path / "out").iterdir()}
    want = Counter(f"k={k}" for k in table.column("k").to_pylist())
    assert counts == dict(want)


def test_a_crashed_run_leaves_every_row_once_in_its_partition(tmp_path: Path) -> None:
    table = _table(4000, seed=9)
    out = tmp_path / "out"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)

    def pipeline(source: Any) -> gs.Pipeline:
        p = gs.Pipeline("parts", engine="cpu")
        p.source(source, event_time="ts", name="ev").sink(
            gs.to_parquet(out, rows_per_file=150, partition_by=["k", "site"]))
        return p

    with pytest.raises(OSError, match="lost power"):
        pipeline(_Crash(gs.from_arrow(table, batch_rows=100), 17)).run(checkpoint=ck)
    stats = pipeline(gs.from_arrow(table, batch_rows=100)).run(checkpoint=ck)
    assert stats.restored_checkpoint is not None
    assert _read(out, ["k", "site"]) == _want(table, ["k", "site"])  # none lost, none twice


def test_partition_columns_are_checked(tmp_path: Path) -> None:
    p = gs.Pipeline("parts", engine="cpu")
    p.source(gs.from_arrow(_table(10))).sink(gs.to_parquet(tmp_path / "o", partition_by=["x"]))
    with pytest.raises(PlanError, match="partition column"):
        p.run()
    with pytest.raises(ValueError, match="folder path"):
        gs.to_parquet(tmp_path / "o.parquet", partition_by=["k"])
