"""Windows keyed on computed strings survive a crash and a restart.

A string computed from two columns, a CASE over strings or ``strftime`` is coded into a
dictionary that grows in arrival order; after a restart the same strings would come in
another order. The projecting step owns those columns' dictionaries and checkpoints
them, so the codes held in a window's state mean the same strings after a restore.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from tests.test_checkpoints import _Crash, _rows


def _table(n: int = 4000, seed: int = 2) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 200_000, n))
    return pa.table({"ts": ts.astype(np.int64), "a": rng.choice(["ann", "bo", "cy"], n),
                     "b": rng.choice(["x", "y", "z", "w"], n),
                     "v": rng.integers(0, 100, n).astype(np.int64)})


def _pipeline(source: Any, kind: str) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("computed-strings", engine="cpu")
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(1000), name="ev")
    if kind == "concat":
        key = gs.col("a") + "-" + gs.col("b")
    elif kind == "case":
        key = gs.when(gs.col("v") > 50).then(gs.col("a")).otherwise(gs.col("b"))
    else:
        key = gs.col("ts").cast("timestamp[ms]").dt.strftime("%M:%S")
    out: list[pa.RecordBatch] = []
    (s.with_columns(key=key).key_by("key").window(gs.Tumbling(20_000), name="w")
     .agg(n=gs.count(), total=gs.col("v").sum()).sink(gs.to_callback(out.append)))
    return p, out


Build = Callable[[Any, str], tuple[gs.Pipeline, list[pa.RecordBatch]]]


def _crash_and_resume(build: Build, kind: str, tmp_path: Path
                      ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
    """The output of a whole run, and of a run that crashed then resumed from its
    checkpoint (both parts)."""
    table = _table()
    whole, out = build(gs.from_arrow(table, batch_rows=150), kind)
    whole.run()
    assert len(_rows(out)) > 20
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=4)
    first, out1 = build(_Crash(gs.from_arrow(table, batch_rows=150), 14), kind)
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2 = build(gs.from_arrow(table, batch_rows=150), kind)
    assert second.run(checkpoint=ck).restored_checkpoint is not None
    return out, out1 + out2


@pytest.mark.parametrize("kind", ["concat", "case", "strftime"])
def test_a_window_keyed_on_a_computed_string_resumes_with_the_same_rows(
        tmp_path: Path, kind: str) -> None:
    want, got = _crash_and_resume(_pipeline, kind, tmp_path)
    assert set(_rows(got)) == set(_rows(want))


def test_two_columns_of_one_dictionary_each_get_their_own() -> None:
    """Two computed columns reading one dictionary are coded into their own each (a
    recoder keyed by the source dictionary alone gave the second none: found by review)."""
    from gpustream.batch import Batch
    from gpustream.operators.map import ProjectOp

    schema = pa.schema({"a": pa.string(), "b": pa.string()})
    op = ProjectOp((("a", gs.col("s")), ("b", gs.col("s"))), schema, False,
                   gs.select_backend("cpu"))
    out = op.process(Batch.from_arrow(pa.record_batch({"s": ["x", "y", "x"]})))[0]
    assert out.to_arrow().to_pydict() == {"a": ["x", "y", "x"], "b": ["x", "y", "x"]}


def _agg_pipeline(source: Any, kind: str) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    """An aggregate OF a computed string (not keyed by one): the operator owns its
    input's dictionary."""
    p = gs.Pipeline("computed-string-aggs", engine="cpu")
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(1000), name="ev")
    pair = gs.col("a") + "-" + gs.col("b")
    aggs = {"best": pair.max_by("v"), "first": pair.first(), "last": pair.last(),
            "pairs": pair.count_distinct()}
    keyed = s.key_by("a")
    out: list[pa.RecordBatch] = []
    step = (keyed.window(gs.Tumbling(20_000), name="w") if kind == "tumbling"
            else keyed.window(gs.Session(300), name="w") if kind == "session" else keyed)
    step.agg(**aggs).sink(gs.to_callback(out.append))
    return p, out


@pytest.mark.parametrize("kind", ["tumbling", "session", "running"])
def test_aggregates_of_a_computed_string_resume_with_the_same_rows(
        tmp_path: Path, kind: str) -> None:
    """Before the aggregating operators owned these dictionaries, a restore decoded the
    held codes with a new process's dictionary: wrong strings, or an index error."""
    want, got = _crash_and_resume(_agg_pipeline, kind, tmp_path)
    if kind == "running":  # a changelog: the table it describes
        assert gs.materialize(pa.Table.from_batches(got), key="a").sort_by("a").to_pylist() \
            == gs.materialize(pa.Table.from_batches(want), key="a").sort_by("a").to_pylist()
    else:
        assert set(_rows(got)) == set(_rows(want))
