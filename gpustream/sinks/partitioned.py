"""File sinks partitioned by columns: Hive-style folders (``out/date=2026-12-01/part-…``).

``gs.to_parquet("out/", partition_by=["date"])`` (``to_csv`` and ``to_jsonl`` too) writes
each row to the folder of its partition columns' values, one level per column
(``col=value``, the value URL-encoded as pyarrow's Hive partitioning reads it, a null
as ``__HIVE_DEFAULT_PARTITION__``), without those columns in the files: ``pyarrow.parquet
.read_table("out/")``, DuckDB's ``read_parquet('out/**/*.parquet', hive_partitioning=1)``,
Spark and Polars read them back. Each partition folder is a
:class:`~gpustream.sinks.files.FileSink` folder, so rows roll into part files the same way
and, with checkpoints, output is exactly-once: every partition's files are written in
progress, recorded at a checkpoint and renamed into place once it is on disk, under one
lineage for the whole sink; a restart finishes or discards them in every partition
folder, those created after the checkpoint included.

A batch is split by partition in one pass (the rows sorted by a combined code of the
partition values); a batch of one partition costs no copy.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import PlanError
from gpustream.sinks.base import Sink
from gpustream.sinks.files import FileSink

__all__ = ["NULL_PARTITION", "PartitionedSink", "partition_folder"]

#: the folder name of a null partition value (Hive's)
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def partition_folder(columns: tuple[str, ...], values: tuple[Any, ...]) -> str:
    """The relative folder of one partition: ``col=value/...`` (URL-encoded values).

    Examples
    --------
    >>> partition_folder(("day", "site"), ("2026-12-01", "a/b c"))
    'day=2026-12-01/site=a%2Fb%20c'
    >>> partition_folder(("day",), (None,))
    'day=__HIVE_DEFAULT_PARTITION__'
    """
    parts = []
    for c, v in zip(columns, values, strict=True):
        text = NULL_PARTITION if v is None else quote(str(v), safe="")
        parts.append(f"{c}={text}")
    return "/".join(parts)


class PartitionedSink(Sink):
    """One folder sink per partition of ``partition_by`` under ``path`` (module doc).

    Examples
    --------
    >>> import gpustream as gs, tempfile, os, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"k": ["a", "b", "a"], "x": [1, 2, 3]})).sink(
    ...     gs.to_parquet(d, partition_by=["k"]))
    >>> _ = p.run()
    >>> sorted(os.listdir(d)), sorted(pq.read_table(d)["x"].to_pylist())
    (['k=a', 'k=b'], [1, 2, 3])
    """

    kind = "partitioned"

    def __init__(self, make: Callable[[Path], FileSink], path: str | os.PathLike[str],
                 partition_by: tuple[str, ...], suffix: str) -> None:
        self.path = Path(path)
        if self.path.suffix == suffix:
            raise ValueError(f"partition_by= writes a folder of partition folders: give "
                             f"a folder path, not {self.path.name!r}")
        if not partition_by or len(set(partition_by)) != len(partition_by):
            raise ValueError("partition_by= takes one or more distinct column names, got "
                             f"{list(partition_by)!r}")
        self.make = make
        self.partition_by = tuple(partition_by)
        self.children: dict[str, FileSink] = {}
        self.name = f"{make(self.path).kind} {self.path}/ partitioned by " \
                    f"{', '.join(self.partition_by)}"
        self._lineage: str | None = None  # checkpointed runs: one for every partition
        self._seq = 0
        self._key = ""

    @property
    def files(self) -> list[Path]:
        """The files this sink made visible in this run, over every partition."""
        return [f for child in self.children.values() for f in child.files]

    def open(self, schema: pa.Schema) -> None:
        missing = [c for c in self.partition_by if c not in schema.names]
        if missing:
            raise PlanError(f"{self.name}: partition column(s) {', '.join(missing)} are not "
                            f"in the stream; its columns are {', '.join(schema.names)}")
        if len(self.partition_by) == len(schema.names):
            raise PlanError(f"{self.name}: every column is a partition column: the files "
                            "would have none; keep at least one column out of partition_by")
        super().open(schema)
        self._file_schema = pa.schema([f for f in schema if f.name not in self.partition_by])
        self.path.mkdir(parents=True, exist_ok=True)

    def _child(self, folder: str) -> FileSink:
        child = self.children.get(folder)
        if child is None:
            child = self.children[folder] = self.make(self.path / folder)
            child.checkpointed_run = self.checkpointed_run
            child.open(self._file_schema)
            if self._lineage is not None:  # a partition new since the checkpoint
                child.restore({"lineage": self._lineage, "pending": []}, self._seq, self._key)
        return child

    def write(self, batch: pa.RecordBatch) -> None:
        parts = batch.select(self.partition_by)
        rows = batch.select(self._file_schema.names)
        codes = np.zeros(batch.num_rows, dtype=np.int64)
        uniques = []
        for name in self.partition_by:
            enc = pc.dictionary_encode(parts.column(name))
            idx = enc.indices.to_numpy(zero_copy_only=False)
            n_values = len(enc.dictionary)
            idx = np.where(np.isnan(idx), n_values, idx).astype(np.int64) if \
                idx.dtype.kind == "f" else idx.astype(np.int64)  # nulls: one past the values
            codes = codes * (n_values + 1) + idx
            uniques.append(enc.dictionary)
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        whole = len(starts) == 1
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            first = int(order[a])
            values = tuple(parts.column(name)[first].as_py() for name in self.partition_by)
            take = rows if whole else rows.take(pa.array(order[a:b]))
            self._child(partition_folder(self.partition_by, values)).write(take)

    def close(self) -> None:
        for child in self.children.values():
            child.close()

    # -- two-phase commit: every partition folder under one lineage ----------------------
    def _folders(self) -> list[str]:
        """The partition folders on disk (``partition_by`` levels deep)."""
        found = [self.path]
        for name in self.partition_by:
            found = [d for parent in found for d in parent.iterdir()
                     if d.is_dir() and d.name.startswith(f"{name}=")]
        return sorted(str(d.relative_to(self.path)) for d in found)

    def restore(self, state: dict[str, Any] | None, seq: int, key: str) -> None:
        self._seq, self._key = seq, key
        pending: dict[str, list[list[str]]] = {}
        if state and state.get("lineage"):
            self._lineage = str(state["lineage"])
            pending = dict(state.get("partitions", {}))
        else:
            self._lineage = uuid.uuid4().hex[:8]
        for folder in sorted(set(self._folders()) | set(pending)):
            child = self.children.get(folder)
            if child is None:
                child = self.children[folder] = self.make(self.path / folder)
                child.checkpointed_run = True
                child.open(self._file_schema)
            child.restore({"lineage": self._lineage, "pending": pending.get(folder, [])},
                          seq, key)

    def prepare(self, seq: int) -> dict[str, Any]:
        partitions = {folder: child.prepare(seq)["pending"]
                      for folder, child in self.children.items()}
        return {"lineage": self._lineage,
                "partitions": {f: p for f, p in partitions.items() if p}}

    def commit(self, seq: int) -> None:
        for child in self.children.values():
            child.commit(seq)

    def describe(self) -> str:
        return self.name
