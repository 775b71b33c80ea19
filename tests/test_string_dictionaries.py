"""String keys while the source thread grows the stream's dictionary.

Each source encodes its strings on its own thread, a few batches ahead of the operators;
joins map the stream's codes to their own. These runs have 100,000 distinct string keys
in batches of 1,000, so nearly every batch adds strings while an operator reads the
dictionary; results are compared with pandas.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.backend import Backend
from gpustream.ingest.source import Source, SourceBatch
from tests.conftest import cudasim_on


def _sizes() -> tuple[int, int]:
    """(distinct keys, rows per batch): 100k keys in batches of 1,000; under the
    simulator (the same host code around slower kernels) 240 keys in batches of 40."""
    return (240, 40) if cudasim_on() else (100_000, 1_000)


def _keys(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([f"key-{i:06d}" for i in rng.permutation(n)], dtype=object)


def _stream(n: int, seed: int) -> pd.DataFrame:
    """n events, each with its own string key, 1 ms apart."""
    return pd.DataFrame({"ts": np.arange(n, dtype=np.int64), "k": _keys(n, seed),
                         "v": np.arange(n, dtype=np.int64)})


def _sorted(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by).reset_index(drop=True)


def test_lookup_join_on_fresh_string_keys(backend: Backend) -> None:
    n, rows = _sizes()
    stream = _stream(n, seed=1)
    table = pd.DataFrame({"k": _keys(n, seed=2)[: n // 2], "w": np.arange(n // 2)})
    p = gs.Pipeline(engine=backend.name)
    t = p.table(gs.from_arrow(pa.Table.from_pandas(table, preserve_index=False)), key="k")
    s = p.source(gs.from_arrow(pa.Table.from_pandas(stream, preserve_index=False),
                               batch_rows=rows), event_time="ts")
    got = s.join_table(t, on="k", how="left").collect().to_pandas()
    ref = stream.merge(table, on="k", how="left")
    assert got["w"].notna().sum() == n // 2
    pd.testing.assert_frame_equal(_sorted(got, ["ts"]), _sorted(ref, ["ts"]), check_dtype=False)


def test_interval_and_window_joins_on_fresh_string_keys(backend: Backend) -> None:
    n, rows = _sizes()
    left = _stream(n, seed=3)
    right = left.rename(columns={"k": "rk", "v": "rv"}).sample(frac=1.0, random_state=4)
    right = right.assign(ts=np.sort(right["ts"].to_numpy()) + 2)  # order by time again
    for kind in ("interval", "window"):
        p = gs.Pipeline(engine=backend.name)
        wm = gs.Watermark.bounded("10ms")
        a = p.source(gs.from_arrow(pa.Table.from_pandas(left, preserve_index=False),
                                   batch_rows=rows), event_time="ts", watermark=wm, name="a")
        b = p.source(gs.from_arrow(pa.Table.from_pandas(right, preserve_index=False),
                                   batch_rows=rows), event_time="ts", watermark=wm, name="b")
        if kind == "interval":
            joined = a.interval_join(b, on=("k", "rk"), lower=-n, upper=n)
        else:
            joined = a.window_join(b, on=("k", "rk"), window=gs.Tumbling(10 * n))
        got = joined.collect().to_pandas()
        ref = left.merge(right, left_on="k", right_on="rk", suffixes=("", "_right"))
        assert len(ref) == n
        cols = ["k", "v", "rk", "rv"]
        pd.testing.assert_frame_equal(_sorted(got[cols], ["v"]), _sorted(ref[cols], ["v"]),
                                      check_dtype=False)


def test_windows_keyed_by_fresh_string_keys(backend: Backend) -> None:
    n, rows = _sizes()
    stream = _stream(n, seed=5)
    stream["k"] = stream["k"].str.slice(0, -1)  # ten events a key
    p = gs.Pipeline(engine=backend.name)
    s = p.source(gs.from_arrow(pa.Table.from_pandas(stream, preserve_index=False),
                               batch_rows=rows), event_time="ts")
    got = (s.key_by("k").window(gs.Tumbling(n // 4), name="w")
           .agg(n=gs.count(), top=gs.col("v").max()).collect().to_pandas())
    ref = (stream.assign(window_start=stream["ts"] // (n // 4) * (n // 4))
           .groupby(["k", "window_start"], as_index=False)
           .agg(n=("v", "size"), top=("v", "max")))
    assert len(ref) > n // 10
    pd.testing.assert_frame_equal(_sorted(got[["k", "window_start", "n", "top"]],
                                          ["k", "window_start"]),
                                  _sorted(ref, ["k", "window_start"]), check_dtype=False)


class _LateSource(Source):
    """A string column whose first batch comes only once ``go`` is set."""

    def __init__(self, go: threading.Event) -> None:
        self.go = go
        self.name = "late source"

    def schema(self) -> pa.Schema:
        return pa.schema([("ts", pa.int64()), ("who", pa.string())])

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        if offset is not None:
            return
        assert self.go.wait(30)
        yield SourceBatch(pa.record_batch({"ts": [5, 6], "who": ["x", "y"]},
                                          schema=self.schema()), 2)


def test_checkpoints_never_see_a_source_thread_add_a_dictionary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint reads each source's column -> dictionary map on the pipeline thread;
    a source thread that added a column's dictionary to it meanwhile would change the map
    under the reader (``dictionary changed size during iteration``). Every string column's
    dictionary exists before the threads start, so each checkpoint has all of them, the
    late source's included, even before that source read anything."""
    from gpustream.runtime.checkpoint import CheckpointStore

    seen: list[set[str]] = []
    write = CheckpointStore.write

    def spy(self: CheckpointStore, ck: Any) -> None:
        seen.append(set(ck.dictionaries))
        write(self, ck)

    monkeypatch.setattr(CheckpointStore, "write", spy)
    go = threading.Event()
    p = gs.Pipeline("late", engine="cpu")
    early = p.source(gs.from_arrow({"ts": [1, 2, 3], "name": ["a", "b", "c"]}, batch_rows=1),
                     event_time="ts", name="early")
    late = p.source(_LateSource(go), event_time="ts", name="late")
    calls: list[int] = []

    def after(rb: pa.RecordBatch) -> None:
        calls.append(rb.num_rows)
        if len(calls) == 2:  # two checkpoints taken before the late source reads a row
            go.set()

    early.sink(gs.to_callback(after))
    late.sink(gs.to_callback(lambda rb: None))
    p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=1))
    assert len(seen) >= 3
    assert all(keys == {"early/name", "late/who"} for keys in seen), seen
