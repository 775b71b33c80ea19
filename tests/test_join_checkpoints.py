"""Checkpoints of joins: a run that dies and restarts from its checkpoint gives what one
uninterrupted run gives, for interval joins, window joins and lookup joins whose table
a changelog keeps current, on every backend and across backends.

Sinks are at-least-once: the rows a run emitted after its last checkpoint come again
after the restart. The tests therefore note how many rows the first run had emitted
when each checkpoint was written, and check, as multisets, that those rows plus the
restarted run's rows are exactly the uninterrupted run's (whose own correctness the
pandas comparisons of tests/test_joins.py check; the lookup join's is checked here
against a plain-Python model of the table).
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend
from gpustream.ingest.source import Source, SourceBatch
from gpustream.runtime.checkpoint import Checkpoint, CheckpointStore
from tests.conftest import cudasim_on
from tests.test_checkpoints import _Crash

Row = tuple[Any, ...]
Build = Callable[[str, dict[str, int]], tuple[gs.Pipeline, list[pa.RecordBatch], int]]


def _rows(batches: list[pa.RecordBatch]) -> list[Row]:
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    return [tuple((k, round(v, 9) if isinstance(v, float) else v) for k, v in r.items())
            for r in rows]


@contextmanager
def _checkpoint_marks(out: list[pa.RecordBatch]) -> Iterator[list[int]]:
    """Rows the sink had taken each time a checkpoint was written."""
    marks: list[int] = []
    write = CheckpointStore.write

    def noting(self: CheckpointStore, ck: Checkpoint) -> None:
        write(self, ck)
        marks.append(sum(b.num_rows for b in out))

    CheckpointStore.write = noting  # type: ignore[method-assign]
    try:
        yield marks
    finally:
        CheckpointStore.write = write  # type: ignore[method-assign]


def _crash_and_resume(build: Build, crash: dict[str, int], folder: Path, every: int,
                      engines: tuple[str, str]) -> tuple[list[Row], list[Row], gs.RunStats]:
    """Run ``build`` on ``engines[0]`` until a source crashes, then again on
    ``engines[1]`` from the checkpoint: the rows the first run emitted up to its last
    checkpoint, the restarted run's rows, and the restarted run's stats."""
    ck = gs.Checkpointing(folder, every_batches=every)
    first, out1, _ = build(engines[0], crash)
    with _checkpoint_marks(out1) as marks, pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2, _ = build(engines[1], {})
    stats = second.run(checkpoint=ck)
    before = _rows(out1)[: marks[-1]] if marks else []
    assert stats.restored_checkpoint == (len(marks) or None)
    return before, _rows(out2), stats


def _check(build: Build, crash: dict[str, int], folder: Path, every: int,
           engines: tuple[str, str], want: list[Row]) -> None:
    before, after, stats = _crash_and_resume(build, crash, folder, every, engines)
    assert stats.restored_checkpoint is not None  # it resumed ...
    assert stats.events_in < build(engines[1], {})[2]  # ... and did not start over
    assert Counter(before + after) == Counter(want)
    # a third run finds everything done
    third, out3, _ = build(engines[1], {})
    assert third.run(checkpoint=gs.Checkpointing(folder, every_batches=every)).events_in == 0
    assert out3 == []


# -- two streams --------------------------------------------------------------------------

def _two(n: int, seed: int, span: int) -> tuple[pa.Table, pa.Table]:
    """Two streams with a nullable int key, a string key and a string payload whose
    dictionaries differ between the streams (the right one has words the left lacks)."""
    rng = np.random.default_rng(seed)
    out = []
    for side, words in ((0, ["x", "y", "z"]), (1, ["w", "z", "v", "y", "x"])):
        m = n if side == 0 else n * 4 // 5
        ts = np.sort(rng.integers(0, span, m)) + rng.integers(0, 300, m)
        out.append(pa.table({
            "id": np.arange(m, dtype=np.int64) + side * 1_000_000,
            "k": pa.array(rng.integers(0, 6, m), mask=rng.random(m) < 0.03),
            "s": rng.choice(["x", "y"] if side == 0 else ["y", "q", "x"], m),
            "tag": rng.choice(words, m),
            "v": np.round(rng.normal(size=m), 3),
            "ts": ts.astype(np.int64),
        }))
    return out[0], out[1]


def _two_stream_build(kind: str, left: pa.Table, right: pa.Table, batch_rows: int) -> Build:
    def build(engine: str, crash: dict[str, int]) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                          int]:
        p = gs.Pipeline("join-ck", engine=engine)
        wm = gs.Watermark.bounded(200)
        srcs: dict[str, Source] = {}
        for name, table in (("left", left), ("right", right)):
            src: Source = gs.from_arrow(table, batch_rows=batch_rows)
            srcs[name] = _Crash(src, crash[name]) if name in crash else src
        a = p.source(srcs["left"], event_time="ts", watermark=wm, name="left")
        b = p.source(srcs["right"], event_time="ts", watermark=wm, name="right")
        if kind == "interval":
            joined = a.interval_join(b, on=["k", "s"], lower=-300, upper=250)
        else:
            window = {"tumbling": gs.Tumbling(1000), "sliding": gs.Sliding(1000, 250),
                      "session": gs.Session(40)}[kind]
            joined = a.window_join(b, on="k", window=window)
        out: list[pa.RecordBatch] = []
        joined.sink(gs.to_callback(out.append))
        return p, out, left.num_rows + right.num_rows
    return build


def _uninterrupted(build: Build, engine: str) -> list[Row]:
    p, out, _ = build(engine, {})
    p.run()
    return _rows(out)


# the simulator is slow: its step runs interval and session joins and a crash of the
# stream only across backends (test_a_checkpoint_restores_on_another_backend)
@pytest.mark.parametrize("kind", ["tumbling"] if cudasim_on() else
                         ["interval", "tumbling", "sliding", "session"])
def test_a_two_stream_join_resumes_from_its_checkpoint(backend: Backend, kind: str,
                                                       tmp_path: Path) -> None:
    small = cudasim_on()
    left, right = _two(100 if small else 1500, seed=21, span=2_000 if small else 20_000)
    build = _two_stream_build(kind, left, right, batch_rows=20 if small else 64)
    want = _uninterrupted(build, backend.name)
    assert len(want) > (20 if small else 200)
    # same-named string columns of the two inputs, each in its own dictionary
    assert {dict(r)["tag_right"] for r in want} > {dict(r)["tag"] for r in want} | {"w"}
    _check(build, {"left": 3 if small else 11}, tmp_path / "ck", 2 if small else 3,
           (backend.name, backend.name), want)


def test_the_join_of_a_crashed_right_input_resumes_too(tmp_path: Path) -> None:
    left, right = _two(1200, seed=22, span=15_000)
    build = _two_stream_build("interval", left, right, batch_rows=50)
    want = _uninterrupted(build, "cpu")
    _check(build, {"right": 9}, tmp_path / "ck", 2, ("cpu", "cpu"), want)


@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
def test_a_window_join_resumes_after_dropping_rows(kind: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # rows below the lowest one held are dropped at every chance: the checkpoint then
    # holds rows whose numbers start past 0, and the resumed run (a fresh store, numbered
    # from 0) pairs them as the uninterrupted run did
    from tests.test_join_index import drop_at_every_chance

    drops = drop_at_every_chance(monkeypatch)
    left, right = _two(1500, seed=21, span=20_000)
    build = _two_stream_build(kind, left, right, batch_rows=40)
    want = _uninterrupted(build, "cpu")
    assert len(want) > 200 and len(drops) > 10
    drops.clear()
    _check(build, {"left": 17}, tmp_path / "ck", 3, ("cpu", "cpu"), want)
    assert len(drops) > 10


# -- a table kept current by a changelog -------------------------------------------------

class _Turns:
    """Makes two sources take turns by a fixed schedule (``"S"``: the stream's next
    batch, ``"C"``: the changelog's): each yields its batch only once the batch before
    it in the schedule is queued, and the runtime takes queued batches in order. After
    a restart the sources resume at their offsets, which together say where in the
    schedule the checkpoint was."""

    def __init__(self, schedule: str) -> None:
        self.schedule = schedule
        self.cond = threading.Condition()
        self.opened: dict[str, int] = {}
        self.turn = -1
        self.stopped = False

    def open(self, who: str, at: int) -> None:
        with self.cond:
            self.opened[who] = at
            if len(self.opened) == 2:
                self.turn = sum(self.opened.values())
                self.cond.notify_all()

    def wait(self, who: str, i: int) -> bool:
        pos = [j for j, w in enumerate(self.schedule) if w == who][i]
        with self.cond:
            assert self.cond.wait_for(lambda: self.stopped or self.turn == pos, timeout=60)
            return not self.stopped

    def next(self) -> None:
        with self.cond:
            self.turn += 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _TakingTurns(Source):
    """Record batches (offset: how many were yielded), in turn with another source;
    with ``crash_after``, the machine loses power after that many of them."""

    def __init__(self, batches: list[pa.RecordBatch], who: str, turns: _Turns,
                 crash_after: int | None = None) -> None:
        self.batches, self.who, self.turns, self.crash_after = batches, who, turns, crash_after
        self.name = f"turns {who}"

    def schema(self) -> pa.Schema:
        return self.batches[0].schema

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        start = int(offset or 0)
        self.turns.open(self.who, start)
        for i in range(start, len(self.batches)):
            if not self.turns.wait(self.who, i):
                return
            if self.crash_after is not None and i - start == self.crash_after:
                self.turns.stop()  # on its turn: what the schedule had before is queued
                raise OSError("the machine lost power")
            yield SourceBatch(self.batches[i], i + 1)
            self.turns.next()


def _lookup_data(seed: int, n_stream: int, n_log: int, rows: int
                 ) -> tuple[pa.Table, list[pa.RecordBatch], list[pa.RecordBatch], str]:
    """A table of prices by sku, stream batches of orders, changelog batches (upserts
    with labels the table has never had, deletes) and a schedule interleaving them."""
    rng = np.random.default_rng(seed)
    skus = [f"sku{i}" for i in range(30)]
    table = pa.table({"sku": skus[:20], "price": np.round(rng.uniform(1, 9, 20), 2),
                      "label": rng.choice(["a", "b"], 20)})
    stream = [pa.record_batch({
        "sku": pa.array(rng.choice(skus, rows), mask=rng.random(rows) < 0.05),
        "qty": rng.integers(1, 5, rows)}) for _ in range(n_stream)]
    log = []
    for j in range(n_log):
        m = int(rng.integers(1, 8))
        log.append(pa.record_batch({
            "sku": rng.choice(skus, m), "price": np.round(rng.uniform(1, 9, m), 2),
            "label": [f"v{j}.{i}" for i in range(m)], "deleted": rng.random(m) < 0.25}))
    schedule = "".join(rng.permutation(list("S" * n_stream + "C" * n_log)))
    return table, stream, log, schedule


def _change(current: dict[str, dict[str, Any]], log: pa.RecordBatch) -> None:
    """Apply a changelog batch to the table held as a dict, by hand."""
    for r in log.to_pylist():
        if r.pop("deleted"):
            current.pop(r["sku"], None)
        else:
            current[r["sku"]] = r


def _lookup_model(table: pa.Table, stream: list[pa.RecordBatch], log: list[pa.RecordBatch],
                  schedule: str) -> list[Row]:
    """The join by hand: the table as a dict, changes applied in schedule order."""
    current = {r["sku"]: r for r in table.to_pylist()}
    out: list[Row] = []
    s = c = 0
    for who in schedule:
        if who == "C":
            _change(current, log[c])
            c += 1
            continue
        for r in stream[s].to_pylist():
            hit = current.get(r["sku"]) if r["sku"] is not None else None
            out.append((("sku", r["sku"]), ("qty", r["qty"]),
                        ("price", None if hit is None else round(hit["price"], 9)),
                        ("label", None if hit is None else hit["label"])))
        s += 1
    return out


def _lookup_build(table: pa.Table, stream: list[pa.RecordBatch], log: list[pa.RecordBatch],
                  schedule: str) -> Build:
    def build(engine: str, crash: dict[str, int]) -> tuple[gs.Pipeline, list[pa.RecordBatch],
                                                          int]:
        turns = _Turns(schedule)
        p = gs.Pipeline("lookup-ck", engine=engine)
        prices = p.table(gs.from_arrow(table, batch_rows=7), key="sku", name="prices",
                         changelog=_TakingTurns(log, "C", turns, crash.get("changelog")),
                         delete_column="deleted")
        orders = p.source(_TakingTurns(stream, "S", turns, crash.get("stream")), name="orders")
        out: list[pa.RecordBatch] = []
        orders.join_table(prices, on="sku", how="left").sink(gs.to_callback(out.append))
        return p, out, sum(b.num_rows for b in [*stream, *log])
    return build


@pytest.mark.parametrize("crash", [{"changelog": 4}] if cudasim_on() else
                         [{"stream": 6}, {"changelog": 4}, {"stream": 13}])
def test_a_lookup_join_with_a_changelog_resumes_from_its_checkpoint(
        backend: Backend, crash: dict[str, int], tmp_path: Path) -> None:
    small = cudasim_on()
    data = _lookup_data(31, n_stream=16, n_log=10, rows=12 if small else 60)
    build = _lookup_build(*data)
    want = _uninterrupted(build, backend.name)
    assert want == _lookup_model(*data)  # the changes apply in the schedule's order
    _check(build, crash, tmp_path / "ck", 2, (backend.name, backend.name), want)


def test_the_checkpoint_holds_the_changed_table_and_the_changelogs_offset(
        tmp_path: Path) -> None:
    # the table in the checkpoint is the loaded one with the changes read so far
    # (compacted: neither replaced nor deleted rows are kept), and the changelog's offset
    # says which changes those were
    table, stream, log, _ = _lookup_data(32, n_stream=4, n_log=3, rows=10)
    build = _lookup_build(table, stream, log, "SCSCSC" + "S")
    p, _, _ = build("cpu", {"stream": 3})
    with pytest.raises(OSError, match="lost power"):
        p.run(checkpoint=gs.Checkpointing(tmp_path, every_batches=1))
    ck = CheckpointStore(tmp_path, "lookup-ck").latest()
    assert ck is not None
    applied = int(ck.offsets["prices changelog"])
    assert applied == 3 and int(ck.offsets["orders"]) == 3
    current = {r["sku"]: r for r in table.to_pylist()}
    for rb in log[:applied]:
        _change(current, rb)
    (opid,) = {k.split("/")[0] for k in ck.arrays if "table.keys" in k}
    state = ck.state_of(opid)
    assert all(v.dtype.kind in "biuf" for v in state.values())  # flat numbers only
    from gpustream.operators.join import strings_from_state

    words = strings_from_state(state, "table.dictionary.sku").to_pylist()
    labels = strings_from_state(state, "table.dictionary.label").to_pylist()
    got = {words[int(code)]: (round(float(price), 9), labels[int(label)])
           for code, price, label in zip(state["table.keys"][0], state["table.col.price"],
                                         state["table.col.label"], strict=True)}
    assert got == {k: (round(r["price"], 9), r["label"]) for k, r in current.items()}


# -- across backends and checkpoint positions ----------------------------------------------

@pytest.mark.parametrize("kind", ["interval", "session", "lookup"])
@pytest.mark.parametrize("direction", ["from cpu", "to cpu"])
def test_a_checkpoint_restores_on_another_backend(device_backend: Backend, kind: str,
                                                  direction: str, tmp_path: Path) -> None:
    device = device_backend.name
    engines = ("cpu", device) if direction == "from cpu" else (device, "cpu")
    if kind == "lookup":
        data = _lookup_data(33, n_stream=12, n_log=8, rows=12)
        build, crash = _lookup_build(*data), {"stream": 7}
        want = _lookup_model(*data)
    else:
        left, right = _two(100, seed=23, span=2_000)
        build, crash = _two_stream_build(kind, left, right, batch_rows=20), {"left": 3}
        want = _uninterrupted(build, "cpu")  # the device's: tests/test_joins.py
    _check(build, crash, tmp_path / "ck", 2, engines, want)


_WANT: dict[str, tuple[Build, list[Row]]] = {}


def _case(kind: str) -> tuple[Build, list[Row]]:
    if kind not in _WANT:
        if kind == "lookup":
            data = _lookup_data(34, n_stream=14, n_log=9, rows=40)
            _WANT[kind] = (_lookup_build(*data), _lookup_model(*data))
        else:
            left, right = _two(700, seed=24, span=10_000)
            build = _two_stream_build(kind, left, right, batch_rows=40)
            _WANT[kind] = (build, _uninterrupted(build, "cpu"))
    return _WANT[kind]


@settings(max_examples=12)
@given(kind=st.sampled_from(["interval", "tumbling", "sliding", "session", "lookup"]),
       crash_after=st.integers(1, 13), every=st.integers(1, 5), right=st.booleans())
def test_where_the_checkpoint_falls_does_not_change_results(kind: str, crash_after: int,
                                                            every: int, right: bool) -> None:
    build, want = _case(kind)
    if kind == "lookup":
        crash = {"changelog" if right else "stream": min(crash_after, 8)}
    else:
        crash = {"right" if right else "left": crash_after}
    with tempfile.TemporaryDirectory() as folder:
        before, after, _ = _crash_and_resume(build, crash, Path(folder), every, ("cpu", "cpu"))
    assert Counter(before + after) == Counter(want)
