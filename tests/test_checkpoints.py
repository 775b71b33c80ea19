"""Checkpoints: a run that dies and restarts from its checkpoint computes what one
uninterrupted run does (state exactly-once; a callback sink, which cannot take back what
it was given, sees the rows after the checkpoint again: file sinks, which commit with
checkpoints, are tested in test_exactly_once.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.ingest.source import Source, SourceBatch


class _Crash(Source):
    """Another source's batches, then a crash after ``after`` of them."""

    def __init__(self, inner: Source, after: int) -> None:
        self.inner, self.after = inner, after
        self.name = inner.name

    def schema(self) -> pa.Schema:
        return self.inner.schema()

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        for i, b in enumerate(self.inner.open(offset)):
            if i == self.after:
                raise OSError("the machine lost power")
            yield b


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 60_000, n)) + rng.integers(0, 400, n)
    return pa.table({"ts": ts, "user": rng.choice(["ann", "bo", "cy", "di", "ed"], n),
                     "k": rng.integers(0, 7, n), "v": rng.normal(size=n)})


def _pipeline(source: Source, window: str) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("ck", engine="cpu")
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(500), name="events")
    w = {"tumbling": gs.Tumbling(5_000), "sliding": gs.Sliding(4_000, 1_000),
         "session": gs.Session(300)}[window]
    out: list[pa.RecordBatch] = []
    (s.key_by("user", "k").window(w, name="w", allowed_lateness=0)
     .agg(n=gs.count(), total=gs.col("v").sum(), hi=gs.col("v").max(),
          users=gs.col("k").count_distinct())
     .sink(gs.to_callback(out.append)))
    return p, out


def _rows(batches: list[pa.RecordBatch]) -> list[tuple[Any, ...]]:
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    return [tuple((k, round(v, 9) if isinstance(v, float) else v) for k, v in r.items())
            for r in rows]


@pytest.mark.parametrize("window", ["tumbling", "sliding", "session"])
@pytest.mark.parametrize("crash_after", [4, 17])
def test_a_crashed_run_resumes_from_its_checkpoint(tmp_path: Path, window: str,
                                                   crash_after: int) -> None:
    table = _events(5_000, seed=1)
    whole, out = _pipeline(gs.from_arrow(table, batch_rows=200), window)
    whole.run()
    want = _rows(out)

    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, out1 = _pipeline(_Crash(gs.from_arrow(table, batch_rows=200), crash_after), window)
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2 = _pipeline(gs.from_arrow(table, batch_rows=200), window)
    stats = second.run(checkpoint=ck)
    assert stats.restored_checkpoint is not None
    assert stats.events_in < table.num_rows  # it resumed, it did not start over
    got = _rows(out1) + _rows(out2)
    # every window exactly as the uninterrupted run has it; rows the first run emitted
    # after its last checkpoint come again (at-least-once sinks), nothing else differs
    assert set(got) == set(want)
    assert len(_rows(out2)) <= len(want)
    # a third run finds everything done
    third, out3 = _pipeline(gs.from_arrow(table, batch_rows=200), window)
    assert third.run(checkpoint=ck).events_in == 0 and out3 == []


def test_checkpoints_are_written_atomically_and_pruned(tmp_path: Path) -> None:
    table = _events(3_000, seed=2)
    p, _ = _pipeline(gs.from_arrow(table, batch_rows=100), "tumbling")
    stats = p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=5))
    assert stats.checkpoints == 30 // 5 + 1  # and one at the end
    names = sorted(d.name for d in (tmp_path / "ck").glob("ckpt-*"))
    assert len(names) == 2 and all(n.startswith("ckpt-") and not n.endswith(".tmp")
                                   for n in names)
    assert all((tmp_path / "ck" / n / "state.arrow").exists() for n in names)


def test_a_checkpoint_of_another_pipeline_is_refused(tmp_path: Path) -> None:
    table = _events(500, seed=3)
    p, _ = _pipeline(gs.from_arrow(table, batch_rows=100), "tumbling")
    p.run(checkpoint=gs.Checkpointing(tmp_path, every_batches=2))
    other = gs.Pipeline("other", engine="cpu")
    other.source(gs.from_arrow(table), name="events").sink(gs.to_callback(lambda rb: None))
    with pytest.raises(PlanError, match="belongs to pipeline 'ck'"):
        other.run(checkpoint=gs.Checkpointing(tmp_path, every_batches=2))


def test_checkpoints_from_a_spec_and_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    pa.parquet.write_table(_events(4_000, seed=4), tmp_path / "events.parquet")
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "name: ck\nengine: cpu\n"
        "source: {type: parquet, path: events.parquet, event_time: ts, watermark: 500ms,"
        " max_rows: 256}\n"
        "steps:\n  - key_by: user\n  - window: {tumbling: 5s}\n  - agg: {n: count()}\n"
        "sink: {type: jsonl, path: out}\n"
        "checkpoint: {dir: ck, every_batches: 4}\n")
    run = [sys.executable, "-m", "gpustream.cli", "run", str(spec), "--no-live"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "4000 events in" in first.stdout
    assert (tmp_path / "ck").is_dir()
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "resumed from checkpoint" in again.stdout
    assert "0 events in" in again.stdout
    other = subprocess.run([*run, "--checkpoint-dir", str(tmp_path / "ck2")],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and "4000 events in" in other.stdout
    assert (tmp_path / "ck2").is_dir()
