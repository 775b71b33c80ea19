"""Exactly-once output: file sinks commit with checkpoints (two-phase), a restart
discards what was not committed, a damaged checkpoint falls back to the one before, a
changed plan is refused, and single files are never overwritten by accident."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.ingest.source import Source, SourceBatch
from gpustream.sinks.files import FileSink
from tests.conftest import cudasim_on
from tests.test_checkpoints import _Crash


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 60_000, n)) + rng.integers(0, 400, n)
    return pa.table({"ts": ts, "user": rng.choice(["ann", "bo", "cy", "di", "ed"], n),
                     "k": rng.integers(0, 7, n), "v": rng.integers(-50, 50, n)})


Build = Callable[[gs.Stream], gs.Stream]


def _tumbling(s: gs.Stream) -> gs.Stream:
    return (s.key_by("user", "k").window(gs.Tumbling(5_000), name="w")
            .agg(n=gs.count(), total=gs.col("v").sum()))


def _pipeline(source: Source, sink: gs.Sink, build: Build = _tumbling,
              engine: str = "cpu") -> gs.Pipeline:
    p = gs.Pipeline("eo", engine=engine)
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(500), name="events")
    build(s).sink(sink)
    return p


def _crashed(table: pa.Table, after: int, sink: gs.Sink, ck: gs.Checkpointing,
             build: Build = _tumbling) -> None:
    """A checkpointed run of ``table`` that dies after ``after`` batches of 100 rows."""
    with pytest.raises(OSError, match="lost power"):
        _pipeline(_Crash(gs.from_arrow(table, batch_rows=100), after), sink, build).run(
            checkpoint=ck)


SINKS = {
    "parquet folder": (lambda d: gs.to_parquet(d / "out", rows_per_file=40),
                       lambda d: pq.read_table(d / "out")),
    "csv folder": (lambda d: gs.to_csv(d / "out", rows_per_file=40),
                   lambda d: pa.concat_tables(
                       [pacsv.read_csv(f) for f in sorted((d / "out").glob("*.csv"))])),
    "jsonl file": (lambda d: gs.to_jsonl(d / "out.jsonl"),
                   lambda d: pa.Table.from_pylist(
                       [json.loads(line) for line in
                        (d / "out.jsonl").read_text().splitlines()])),
    "parquet file": (lambda d: gs.to_parquet(d / "out.parquet"),
                     lambda d: pq.read_table(d / "out.parquet")),
}


def _rows(table: pa.Table) -> Counter[tuple[Any, ...]]:
    cols = sorted(table.column_names)
    return Counter(tuple(str(r[c]) for c in cols) for r in table.to_pylist())


def _reference(tmp_path: Path, kind: str, table: pa.Table) -> Counter[tuple[Any, ...]]:
    make, read = SINKS[kind]
    d = tmp_path / "reference"
    _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run()
    return _rows(read(d))


@pytest.mark.parametrize("kind", list(SINKS))
@pytest.mark.parametrize("crashes", [(4,), (7, 3, 11)])
def test_crashes_and_restarts_write_every_row_exactly_once(tmp_path: Path, kind: str,
                                                           crashes: tuple[int, ...]) -> None:
    table = _events(3_000, seed=1)
    want = _reference(tmp_path, kind, table)
    make, read = SINKS[kind]
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=4)
    d = tmp_path / "run"
    for after in crashes:
        _crashed(table, after, make(d), ck)
    stats = _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert stats.restored_checkpoint is not None
    got = _rows(read(d))
    assert got == want  # no row lost, none doubled
    # a run on the finished checkpoint adds nothing
    _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert _rows(read(d)) == want
    leftovers = [f.name for f in d.rglob(".*") if f.name.endswith(".inprogress")]
    assert leftovers == []


def test_output_after_the_last_checkpoint_is_not_visible_until_committed(
        tmp_path: Path) -> None:
    table = _events(2_000, seed=2)
    want = _reference(tmp_path, "parquet folder", table)
    d = tmp_path / "run"
    _crashed(table, 10, gs.to_parquet(d / "out", rows_per_file=10_000),
             gs.Checkpointing(tmp_path / "ck", every_batches=4))
    hidden = [f for f in (d / "out").iterdir() if f.name.endswith(".inprogress")]
    assert hidden, "rows after the last checkpoint stay in progress"
    visible = _rows(pq.read_table(d / "out"))  # readers skip the hidden files
    assert 0 < sum(visible.values()) < sum(want.values())
    assert not visible - want  # what is visible is right and will not be written again


def test_a_crash_between_checkpoint_and_commit_commits_on_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _events(2_000, seed=3)
    want = _reference(tmp_path, "parquet folder", table)
    make, read = SINKS["parquet folder"]
    d = tmp_path / "run"
    calls = {"n": 0}
    real = FileSink.commit

    def dies_on_second(self: FileSink, seq: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed after the checkpoint was written")
        real(self, seq)

    monkeypatch.setattr(FileSink, "commit", dies_on_second)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    with pytest.raises(OSError, match="killed after"):
        _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    monkeypatch.setattr(FileSink, "commit", real)
    pending = [f for f in (d / "out").iterdir() if f.name.endswith(".inprogress")]
    assert pending  # checkpoint 2's files, recorded in it but not renamed
    _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert _rows(read(d)) == want


@pytest.mark.parametrize("damage", ["truncated state", "empty state", "cut meta",
                                    "flipped byte"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    table = _events(3_000, seed=4)
    want = _reference(tmp_path, "parquet folder", table)
    make, read = SINKS["parquet folder"]
    d = tmp_path / "run"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 14, make(d), ck)
    newest = sorted((tmp_path / "ck").glob("ckpt-*"))[-1]
    state, meta = newest / "state.arrow", newest / "meta.json"
    if damage == "truncated state":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "empty state":
        state.write_bytes(b"")
    elif damage == "cut meta":
        meta.write_text(meta.read_text()[:40])
    else:
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="gpustream"):
        stats = _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert any(newest.name in r.getMessage() and "damaged" in r.getMessage()
               for r in caplog.records)
    assert stats.restored_checkpoint == int(newest.name.split("-")[1]) - 1
    assert _rows(read(d)) == want  # what the lost checkpoint committed was set aside
    assert list((d / "out").glob(".*.superseded"))


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    table = _events(1_000, seed=5)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(lambda rb: None)).run(
        checkpoint=ck)
    for folder in (tmp_path / "ck").glob("ckpt-*"):
        (folder / "state.arrow").write_bytes(b"")
    with pytest.raises(PlanError, match=r"every checkpoint in .* is damaged"):
        _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(lambda rb: None)).run(
            checkpoint=ck)


CHANGES: dict[str, tuple[Build, str]] = {
    "shorter windows": (lambda s: s.key_by("user", "k").window(gs.Tumbling(2_000), name="w")
                        .agg(n=gs.count(), total=gs.col("v").sum()), "tumbling(2000ms)"),
    "another key": (lambda s: s.key_by("user").window(gs.Tumbling(5_000), name="w")
                    .agg(n=gs.count(), total=gs.col("v").sum()), "key_by(user)"),
    "a filter added": (lambda s: _tumbling(s.filter(gs.col("v") > 0)), "filter"),
    "sum to mean": (lambda s: s.key_by("user", "k").window(gs.Tumbling(5_000), name="w")
                    .agg(n=gs.count(), total=gs.col("v").mean()), "mean"),
    "an aggregation added": (lambda s: s.key_by("user", "k").window(gs.Tumbling(5_000), name="w")
                             .agg(n=gs.count(), total=gs.col("v").sum(),
                                  hi=gs.col("v").max()), "hi="),
    "tumbling to session": (lambda s: s.key_by("user", "k").window(gs.Session(300), name="w")
                            .agg(n=gs.count(), total=gs.col("v").sum()), "session"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_plan_is_refused_naming_what_changed(tmp_path: Path, change: str) -> None:
    table = _events(1_000, seed=6)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 5, gs.to_parquet(tmp_path / "out"), ck)
    build, named = CHANGES[change]
    got: list[pa.RecordBatch] = []
    p = _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(got.append), build)
    with pytest.raises(PlanError, match="taken by a different plan") as err:
        p.run(checkpoint=ck)
    assert named in str(err.value) and "another checkpoint dir" in str(err.value)
    assert got == []  # refused before anything ran


@pytest.mark.cudasim
@pytest.mark.skipif(not cudasim_on(), reason="needs NUMBA_ENABLE_CUDASIM=1 (its own step)")
def test_a_checkpoint_taken_on_cpu_restores_under_cudasim_and_back(tmp_path: Path) -> None:
    table = _events(600, seed=7)
    want = _reference(tmp_path, "parquet folder", table)
    make, read = SINKS["parquet folder"]
    d = tmp_path / "run"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=2)
    _crashed(table, 3, make(d), ck)
    with pytest.raises(OSError):
        _pipeline(_Crash(gs.from_arrow(table, batch_rows=100), 1), make(d),
                  engine="cudasim").run(checkpoint=ck)
    stats = _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert stats.restored_checkpoint is not None
    assert _rows(read(d)) == want


# -- single files and paths -------------------------------------------------------------
def _write(sink: gs.Sink, values: list[int]) -> None:
    p = gs.Pipeline("files", engine="cpu")
    p.source(gs.from_arrow({"x": values})).sink(sink)
    p.run()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_single_file_is_not_overwritten_unless_asked(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    sink = getattr(gs, f"to_{fmt}")
    _write(sink(path), [1, 2])
    with pytest.raises(PlanError, match="exists; give mode='overwrite' or mode='append'"):
        _write(sink(path), [3])
    read = {"parquet": lambda: pq.read_table(path)["x"].to_pylist(),
            "csv": lambda: pacsv.read_csv(path)["x"].to_pylist(),
            "jsonl": lambda: [json.loads(x)["x"] for x in path.read_text().splitlines()]}[fmt]
    assert read() == [1, 2]
    _write(sink(path, mode="append"), [3, 4])
    assert read() == [1, 2, 3, 4]
    _write(sink(path, mode="overwrite"), [5])
    assert read() == [5]
    with pytest.raises(ValueError, match="mode='nope' is not one of error, overwrite, append"):
        sink(path, mode="nope")


def test_a_single_file_with_checkpoints_is_assembled_from_committed_segments(
        tmp_path: Path) -> None:
    table = _events(2_000, seed=8)
    want = _reference(tmp_path, "jsonl file", table)
    path = tmp_path / "run" / "out.jsonl"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 9, gs.to_jsonl(path), ck)
    _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_jsonl(path)).run(checkpoint=ck)
    assert _rows(SINKS["jsonl file"][1](tmp_path / "run")) == want
    assert (tmp_path / "run" / ".out.jsonl.segments").is_dir()


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_sinks_never_write_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    # links planted where the single file's in-progress file and a part file go
    single = gs.to_jsonl(tmp_path / "single.jsonl")
    assert isinstance(single, FileSink)
    (tmp_path / f".single.jsonl.{single._token}.inprogress").symlink_to(victim)
    (out / "part-00000.parquet").symlink_to(victim)
    _write(single, [1])
    _write(gs.to_parquet(out), [2])
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "single.jsonl").read_text())["x"] == 1
    assert pq.read_table(out / "part-00001.parquet")["x"].to_pylist() == [2]


# -- found in review: other runs, the metadata, the fingerprint, max_events, SIGTERM ------
def _dies_on_second_commit(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    real = FileSink.commit
    calls = {"n": 0}

    def dies_on_second(self: FileSink, seq: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed after the checkpoint was written")
        real(self, seq)

    monkeypatch.setattr(FileSink, "commit", dies_on_second)
    return lambda: monkeypatch.setattr(FileSink, "commit", real)


def test_another_pipeline_writing_into_the_folder_does_not_discard_pending_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _events(2_000, seed=3)
    want = _reference(tmp_path, "parquet folder", table)
    make, _ = SINKS["parquet folder"]
    d = tmp_path / "run"
    undo = _dies_on_second_commit(monkeypatch)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    with pytest.raises(OSError, match="killed after"):
        _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    undo()
    other = gs.Pipeline("other", engine="cpu")  # its own checkpoints, the same folder
    other.source(gs.from_arrow({"x": [1]})).sink(gs.to_parquet(d / "out"))
    other.run(checkpoint=gs.Checkpointing(tmp_path / "ck2", every_batches=1))
    _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    ours = [f for f in sorted((d / "out").glob("part-*")) if "user" in pq.read_schema(f).names]
    assert _rows(pa.concat_tables([pq.read_table(f) for f in ours])) == want


def test_a_pending_file_that_vanished_is_an_error_not_silent_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _events(2_000, seed=3)
    make, _ = SINKS["parquet folder"]
    d = tmp_path / "run"
    undo = _dies_on_second_commit(monkeypatch)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    with pytest.raises(OSError, match="killed after"):
        _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    undo()
    for f in (d / "out").glob(".part-*.inprogress"):
        f.unlink()  # cleaned away by some other program
    with pytest.raises(PlanError, match=r"recorded .* as written, but neither it nor"):
        _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)


def test_mode_error_holds_after_a_checkpointed_run_wrote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    p = gs.Pipeline("a", engine="cpu")
    p.source(gs.from_arrow({"x": [1, 2]})).sink(gs.to_jsonl(path))
    p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=1))
    q = gs.Pipeline("b", engine="cpu")
    q.source(gs.from_arrow({"x": [9]})).sink(gs.to_jsonl(path))
    with pytest.raises(PlanError, match="exists"):
        q.run()
    assert [json.loads(x)["x"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_changed_offset_in_meta_json_is_caught_by_its_checksum(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = _events(3_000, seed=4)
    want = _reference(tmp_path, "parquet folder", table)
    make, read = SINKS["parquet folder"]
    d = tmp_path / "run"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 14, make(d), ck)
    newest = sorted((tmp_path / "ck").glob("ckpt-*"))[-1]
    meta = json.loads((newest / "meta.json").read_text())
    meta["offsets"]["events"] -= 300  # still valid JSON, wrong offset
    (newest / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="gpustream"):
        _pipeline(gs.from_arrow(table, batch_rows=100), make(d)).run(checkpoint=ck)
    assert any("meta.json does not match its checksum" in r.getMessage() for r in caplog.records)
    assert _rows(read(d)) == want


def test_a_checkpoint_folder_that_lost_its_meta_is_damaged_not_ignored(tmp_path: Path) -> None:
    table = _events(1_000, seed=5)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(lambda rb: None)).run(
        checkpoint=ck)
    for folder in (tmp_path / "ck").glob("ckpt-*"):
        (folder / "meta.json").unlink()
    with pytest.raises(PlanError, match="is damaged"):  # starting over would repeat output
        _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(lambda rb: None)).run(
            checkpoint=ck)


def test_a_sink_pointed_elsewhere_is_a_changed_plan(tmp_path: Path) -> None:
    table = _events(2_000, seed=3)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 10, gs.to_parquet(tmp_path / "a"), ck)
    with pytest.raises(PlanError, match="different plan") as err:
        _pipeline(gs.from_arrow(table, batch_rows=100),
                  gs.to_parquet(tmp_path / "b")).run(checkpoint=ck)
    assert "parquet" in str(err.value) and "/b/" in str(err.value)


def test_max_events_with_checkpoints_stops_like_a_signal_and_resumes_exactly(
        tmp_path: Path) -> None:
    table = _events(3_000, seed=9)
    want = _reference(tmp_path, "parquet folder", table)
    make, read = SINKS["parquet folder"]
    d = tmp_path / "run"
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=4)
    seen: list[pa.RecordBatch] = []

    def both(s: gs.Stream) -> gs.Stream:
        w = _tumbling(s)
        w.sink(gs.to_callback(seen.append))
        return w

    stats = _pipeline(gs.from_arrow(table, batch_rows=100), make(d), both).run(
        max_events=1_050, checkpoint=ck)
    assert stats.stopped_early and stats.events_in == 1_100  # the whole batch went through
    assert _rows(read(d)) == _rows(pa.Table.from_batches(seen))  # all it emitted, committed
    _pipeline(gs.from_arrow(table, batch_rows=100), make(d), both).run(checkpoint=ck)
    assert _rows(read(d)) == want


def test_a_second_run_on_a_checkpoint_dir_in_use_is_refused(tmp_path: Path) -> None:
    from gpustream.runtime.checkpoint import CheckpointStore

    holder = CheckpointStore(tmp_path / "ck", "eo")
    holder.lock()
    try:
        with pytest.raises(PlanError, match="is in use by another run"):
            _pipeline(gs.from_arrow(_events(100, 1)), gs.to_callback(lambda rb: None)).run(
                checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=1))
    finally:
        holder.unlock()
    _pipeline(gs.from_arrow(_events(100, 1)), gs.to_callback(lambda rb: None)).run(
        checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=1))


def test_sigterm_ends_a_python_script_with_143_after_a_clean_stop(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, threading, gpustream as gs\n"
        "p = gs.Pipeline('job', engine='cpu')\n"
        "def first(rb):\n"
        "    if not first.done:\n"
        "        first.done = True\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "first.done = False\n"
        "p.source(gs.from_arrow({'x': list(range(1000))}, batch_rows=10)).sink("
        "gs.to_callback(first))\n"
        "p.source(gs.from_arrow({'y': [1]}), name='b').sink(gs.to_jsonl('out.jsonl'))\n"
        "p.run(checkpoint=gs.Checkpointing('ck', every_batches=5))\n"
        "print('not reached')\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert "not reached" not in done.stdout
    assert (tmp_path / "ck").is_dir() and list((tmp_path / "ck").glob("ckpt-*"))


def test_dead_letters_are_not_repeated_by_a_restart(tmp_path: Path) -> None:
    lines = [json.dumps({"ts": i * 10, "user": "ann", "k": 1, "v": 1}) if i % 7 else "{broken"
             for i in range(2_000)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    schema = {"ts": "int64", "user": "string", "k": "int64", "v": "int64"}
    letters = tmp_path / "bad.jsonl"

    def run(source: Source) -> None:
        p = gs.Pipeline("eo", engine="cpu", dead_letter=letters)
        s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded(500),
                     name="events")
        _tumbling(s).sink(gs.to_parquet(tmp_path / "out"))
        p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=3))

    with pytest.raises(OSError):
        run(_Crash(gs.read_jsonl(tmp_path / "in.jsonl", schema=schema, max_rows=100), 11))
    run(gs.read_jsonl(tmp_path / "in.jsonl", schema=schema, max_rows=100))
    got = [json.loads(x)["raw"] for x in letters.read_text().splitlines()]
    assert len(got) == len([x for x in lines if x == "{broken"])  # each once


def test_a_second_signal_stops_at_once() -> None:
    import signal

    from gpustream.runtime.stopping import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request, nothing raised
        assert stop.event.wait(5) and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the second: at once
            for _ in range(500):  # the handler runs between bytecodes of this thread
                time.sleep(0.01)


def test_a_changed_approx_count_distinct_precision_is_a_changed_plan(tmp_path: Path) -> None:
    def hll(precision: int) -> Build:
        return lambda s: (s.key_by("k").window(gs.Tumbling(5_000), name="w")
                          .agg(d=gs.col("user").approx_count_distinct(precision=precision)))

    table = _events(1_000, seed=6)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    _crashed(table, 5, gs.to_callback(lambda rb: None), ck, hll(12))
    with pytest.raises(PlanError, match="different plan") as err:
        _pipeline(gs.from_arrow(table, batch_rows=100), gs.to_callback(lambda rb: None),
                  hll(6)).run(checkpoint=ck)
    assert "precision=6" in str(err.value)


class _Quiet(Source):
    """A batch, then a quiet spell during which it looks at the output, then another."""

    def __init__(self, out: Path) -> None:
        self.out, self.name = out, "quiet"
        self.seen_during_quiet: list[str] = []

    def schema(self) -> pa.Schema:
        return pa.schema([("x", pa.int64())])

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        yield SourceBatch(pa.record_batch({"x": [1, 2, 3]}), 1)
        time.sleep(1.0)  # nothing arrives: a timed checkpoint must still be taken
        self.seen_during_quiet = sorted(p.name for p in self.out.glob("part-*"))
        yield SourceBatch(pa.record_batch({"x": [4]}), 2)


def test_a_timed_checkpoint_is_taken_while_the_sources_are_quiet(tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = _Quiet(out)
    p = gs.Pipeline("quiet", engine="cpu")
    p.source(source).sink(gs.to_parquet(out))
    stats = p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_s=0.2))
    assert source.seen_during_quiet, "the first batch's rows were committed while waiting"
    # one in the quiet spell (once: nothing new after it), one when the second batch
    # arrives (0.2 s are long past), one at the end
    assert stats.checkpoints == 3
    assert sorted(pq.read_table(out)["x"].to_pylist()) == [1, 2, 3, 4]


class _Recording(_Crash):
    """``_Crash`` (never crashing without ``crash_after``) that remembers the offsets it
    yielded and what the runtime says is done with."""

    def __init__(self, inner: Source, crash_after: int | None = None) -> None:
        super().__init__(inner, -1 if crash_after is None else crash_after)
        self.committed: list[Any] = []
        self.yielded: list[Any] = []

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        for b in super().open(offset):
            self.yielded.append(b.offset)
            yield b

    def commit(self, offset: Any) -> None:
        self.committed.append(offset)


def test_without_checkpoints_input_is_done_with_only_after_a_clean_end(tmp_path: Path) -> None:
    table = _events(1_000, seed=10)
    dying = _Recording(gs.from_arrow(table, batch_rows=100), crash_after=6)
    with pytest.raises(OSError):
        _pipeline(dying, gs.to_parquet(tmp_path / "a")).run()
    assert dying.committed == []  # its rows were never all durable: read them again
    clean = _Recording(gs.from_arrow(table, batch_rows=100))
    _pipeline(clean, gs.to_parquet(tmp_path / "b")).run()
    assert clean.committed == [clean.yielded[-1]]


def test_with_checkpoints_input_is_done_with_after_each_checkpoint(tmp_path: Path) -> None:
    table = _events(1_000, seed=10)
    src = _Recording(gs.from_arrow(table, batch_rows=100))
    _pipeline(src, gs.to_parquet(tmp_path / "a")).run(
        checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=4))
    assert src.committed == [src.yielded[3], src.yielded[7], src.yielded[9]]


def _lookup(delete_column: str | None, console: bool = False) -> gs.Pipeline:
    p = gs.Pipeline("lk", engine="cpu")
    cards = gs.from_arrow({"card": [1, 2], "limit": [10, 20]})
    changes = gs.from_arrow({"card": [2], "limit": [25], "gone": [False], "gone2": [True]})
    t = p.table(cards, key="card", name="cards", changelog=changes, delete_column=delete_column)
    out = p.source(gs.from_arrow({"card": [1, 2, 2]}, batch_rows=1), name="tx").join_table(
        t, on="card", how="left")
    out.sink(gs.to_callback(lambda rb: None))
    if console:
        out.sink(gs.to_console())
    return p


def test_a_changed_delete_column_is_a_changed_plan_and_a_console_sink_is_not(
        tmp_path: Path) -> None:
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=1)
    _lookup("gone").run(checkpoint=ck)
    with pytest.raises(PlanError, match="delete_column=gone2"):
        _lookup("gone2").run(checkpoint=ck)
    stats = _lookup("gone", console=True).run(checkpoint=ck)  # no state: may come and go
    assert stats.restored_checkpoint is not None


class _Endless(Source):
    """A batch every 20 ms until the run stops it."""

    name = "endless"
    bounded = False

    def schema(self) -> pa.Schema:
        return pa.schema([("x", pa.int64())])

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        i = 0 if offset is None else int(offset)
        while True:
            time.sleep(0.02)
            yield SourceBatch(pa.record_batch({"x": [i]}), i + 1)
            i += 1


def test_stop_from_another_thread_stops_a_run_cleanly_and_it_resumes(tmp_path: Path) -> None:
    import threading

    def pipeline() -> gs.Pipeline:
        p = gs.Pipeline("endless", engine="cpu")
        p.source(_Endless(), name="n").sink(gs.to_parquet(tmp_path / "out"))
        return p

    ck = gs.Checkpointing(tmp_path / "ck", every_batches=5)
    for _ in range(2):
        p = pipeline()
        got: list[gs.RunStats] = []
        t = threading.Thread(target=lambda: got.append(p.run(checkpoint=ck)))  # noqa: B023
        t.start()
        time.sleep(0.5)
        p.stop()
        t.join(10)
        assert not t.is_alive() and got[0].interrupted and got[0].stopped_by == "stop()"
    xs = pq.read_table(tmp_path / "out")["x"].to_pylist()
    assert sorted(xs) == list(range(len(xs)))  # every row once, none skipped
