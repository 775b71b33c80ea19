"""``union``: streams with the same columns as one stream; windows over it equal DuckDB's
over the concatenated inputs, however the inputs are cut into batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.backend import Backend, select_backend
from gpustream.batch import Batch
from gpustream.errors import PlanError
from gpustream.ingest.source import Source, SourceBatch
from gpustream.operators.union import UnionOp
from gpustream.watermark import NO_WATERMARK
from tests.test_checkpoints import _Crash

DELAY = 50


def _events(n: int, seed: int, users: list[str], start: int = 0) -> pa.Table:
    """Events whose times are out of order by at most DELAY: none is late on its own
    stream (each is at least the largest time before it minus DELAY)."""
    rng = np.random.default_rng(seed)
    base = start + np.cumsum(rng.integers(0, 30, n))
    return pa.table({"ts": base + rng.integers(0, DELAY + 1, n),
                     "user": rng.choice(users, n),
                     "v": rng.integers(-50, 100, n)})


def _duckdb_windows(tables: list[pa.Table], size: int) -> list[tuple[Any, ...]]:
    """Tumbling windows per user over all the tables' rows, in DuckDB."""
    con = duckdb.connect()
    con.register("events", pa.concat_tables([t.select(["ts", "user", "v"]) for t in tables]))
    return sorted(con.sql(f"""
        select "user", ts - ts % {size} as window_start, count(*), sum(v), min(v), max(v)
        from events group by all""").fetchall())


def _windows(stream: gs.Stream, size: int) -> list[tuple[Any, ...]]:
    out = (stream.key_by("user").window(gs.Tumbling(size), name="w")
           .agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(),
                hi=gs.col("v").max()).collect())
    assert out.column_names == ["user", "window_start", "window_end", "n", "total", "lo", "hi"]
    assert np.all(pa.compute.subtract(out["window_end"], out["window_start"]).to_numpy()
                  == size)
    return sorted(tuple(r[c] for c in ("user", "window_start", "n", "total", "lo", "hi"))
                  for r in out.to_pylist())


@settings(max_examples=25)
@given(sizes=st.lists(st.integers(0, 300), min_size=2, max_size=3),
       batch_rows=st.lists(st.integers(1, 80), min_size=3, max_size=3),
       seed=st.integers(0, 2**16), size=st.sampled_from([40, 100, 1000]))
def test_windows_over_a_union_equal_duckdb_over_the_concatenation(
        sizes: list[int], batch_rows: list[int], seed: int, size: int) -> None:
    users = [["ann", "bo", "cy"], ["cy", "di"], ["ed", "ann", "fay", "bo"]]
    tables = [_events(n, seed + i, users[i], start=i * 700) for i, n in enumerate(sizes)]
    tables[1] = tables[1].select(["v", "user", "ts"])  # same columns in another order
    p = gs.Pipeline(engine="cpu")
    streams = [p.source(gs.from_arrow(t, batch_rows=b), event_time="ts",
                        watermark=gs.Watermark.bounded(DELAY), name=f"s{i}")
               for i, (t, b) in enumerate(zip(tables, batch_rows, strict=False))]
    union = streams[0].union(*streams[1:])
    assert union.schema.names == ["ts", "user", "v"]
    assert _windows(union, size) == _duckdb_windows(tables, size)


def test_a_union_is_the_rows_of_its_streams() -> None:
    """Without event times: every row of every stream once (order-insensitive)."""
    a, b = _events(500, 1, ["x", "y"]), _events(300, 2, ["y", "z"])
    p = gs.Pipeline(engine="cpu")
    u = p.source(gs.from_arrow(a, batch_rows=37), name="a").union(
        p.source(gs.from_arrow(b.select(["user", "v", "ts"]), batch_rows=11), name="b"))
    got = u.filter(gs.col("v") > 0).collect()
    want = pa.concat_tables([a, b]).filter(pa.compute.greater(pa.concat_tables([a, b])["v"], 0))
    assert sorted(got.to_pylist(), key=str) == sorted(want.to_pylist(), key=str)


def test_the_union_holds_each_rows_watermark_to_the_other_streams() -> None:
    """A row's watermark is the smaller of its own and the other inputs' (the union's
    watermark as of that row), never below the watermark the union passed on (rows of an
    input back from idleness: late, not reopening what fired); the union's is the
    smallest of the inputs'."""
    schema = pa.schema([("ts", pa.int64())])
    op = UnionOp(schema, [schema, schema, schema], (None, None, None), select_backend("cpu"))
    batch = Batch.from_arrow(pa.record_batch({"ts": [100, 200, 300]}))
    batch.watermarks = np.array([50, 150, 250])

    def watermarks(port: int) -> list[int]:
        out = op.process_port(port, batch)[0].watermarks
        assert out is not None
        return list(out.tolist())

    assert watermarks(0) == [NO_WATERMARK] * 3  # nothing from the others yet: none
    assert op.input_watermark(0, 250) == ([], None)
    assert op.input_watermark(1, 100) == ([], None)  # input 2 has none yet
    assert watermarks(0) == [NO_WATERMARK] * 3
    assert op.input_watermark(2, 400) == ([], 100)
    assert watermarks(0) == [100, 100, 100]  # held to input 1's 100
    assert op.input_watermark(1, 120) == ([], 120)
    assert watermarks(2) == [120, 120, 120]
    op.input_ended(1)  # an input that ended holds nothing back
    assert op.current == 250
    batch.watermarks = np.array([260, 270, 280])
    assert watermarks(0) == [260, 270, 280]


def test_rows_on_time_on_their_stream_are_on_time_after_the_union() -> None:
    """One stream far ahead of the other in event time: its watermark must not make the
    other's rows late (they would be, were the union's watermark the larger one)."""
    ahead = pa.table({"ts": np.arange(100_000, 200_000, 100), "user": ["a"] * 1000,
                      "v": np.ones(1000, dtype=np.int64)})
    behind = _events(400, 9, ["b", "c"])
    p = gs.Pipeline(engine="cpu")
    s1 = p.source(gs.from_arrow(ahead, batch_rows=50), event_time="ts",
                  watermark=gs.Watermark.bounded(DELAY), name="ahead")
    s2 = p.source(gs.from_arrow(behind, batch_rows=7), event_time="ts",
                  watermark=gs.Watermark.bounded(DELAY), name="behind")
    w = s1.union(s2).key_by("user").window(gs.Tumbling(100), name="w").agg(n=gs.count())
    late = w.late.collect()
    assert late.num_rows == 0
    assert _windows(s1.union(s2), 100) == _duckdb_windows([ahead, behind], 100)


@pytest.mark.parametrize("build, message", [
    (lambda a, b, c: a.union(c),
     r"step 1 \(union\): the streams' columns differ: 'v' is int64 in step 0 \(source\) 'a' "
     r"but double in step 0 \(source\) 'c'"),
    (lambda a, b, c: a.union(b.select("ts", "user")),
     r"the streams' columns differ: 'v' only in step 0 \(source\) 'a'. A union needs the "
     r"same columns"),
    (lambda a, b, c: a.union(b.with_columns(w=gs.col("v") * 2).filter(gs.col("v") > 0)),
     r"'w' only in step 2 \(filter\) of source 'b'"),
    (lambda a, b, c: a.union(a), r"a stream is given twice"),
    (lambda a, b, c: a.union(), r"name the stream\(s\) to add"),
    (lambda a, b, c: a.union(b.pipeline.source(gs.from_arrow({"ts": [1], "user": ["x"],
                                                               "v": [1]}), name="d")),
     r"step 0 \(source\) 'a' has event time 'ts' but step 0 \(source\) 'd' has no event "
     r"time"),
    (lambda a, b, c: a.union(42), r"step 1 \(union\): expected another stream"),
    (lambda a, b, c: a.union(gs.Pipeline().source(gs.from_arrow({"ts": [1]}))),
     r"the other stream belongs to another pipeline"),
    (lambda a, b, c: a.union(b).interval_join(c, on="user", lower=0, upper=1),
     r"joining the output of a union is not supported yet"),
])
def test_invalid_unions_fail_at_plan_time(build: Any, message: str) -> None:
    p = gs.Pipeline(engine="cpu")
    a = p.source(gs.from_arrow(_events(5, 1, ["x"])), event_time="ts", name="a")
    b = p.source(gs.from_arrow(_events(5, 2, ["x"])), event_time="ts", name="b")
    c = p.source(gs.from_arrow(_events(5, 3, ["x"]).set_column(
        2, "v", pa.array([1.0] * 5))), event_time="ts", name="c")
    with pytest.raises(PlanError, match=message):
        build(a, b, c)


def test_union_in_a_spec(tmp_path: Path) -> None:
    tables = [_events(700, 3, ["ann", "bo"]), _events(500, 4, ["bo", "cy"]),
              _events(300, 5, ["ann"])]
    for i, t in enumerate(tables):
        pa.parquet.write_table(t, tmp_path / f"e{i}.parquet", row_group_size=64)
    (tmp_path / "spec.yaml").write_text(f"""
name: union
engine: cpu
source: {{type: parquet, path: e0.parquet, event_time: ts, watermark: {DELAY}ms, name: e0}}
steps:
  - union:
      other:
        - {{type: parquet, path: e1.parquet, event_time: ts, watermark: {DELAY}ms, name: e1}}
        - {{type: parquet, path: e2.parquet, event_time: ts, watermark: {DELAY}ms, name: e2}}
  - key_by: user
  - window: {{tumbling: 100ms}}
  - agg: {{n: count(), total: sum(v), lo: min(v), hi: max(v)}}
sink: {{type: parquet, path: out}}
""")
    from gpustream.spec import pipeline_from_spec

    pipeline_from_spec(tmp_path / "spec.yaml").run()
    out = pa.parquet.read_table(tmp_path / "out")
    got = sorted((r["user"], r["window_start"], r["n"], r["total"], r["lo"], r["hi"])
                 for r in out.to_pylist())
    assert got == _duckdb_windows(tables, 100)
    (tmp_path / "bad.yaml").write_text("""
source: {type: parquet, path: e0.parquet, event_time: ts}
steps:
  - union: {other: {type: parquet, path: e1.parquet, name: e1}}
sink: {type: console}
""")
    with pytest.raises(gs.spec.SpecError, match=r"bad.yaml:4: steps\[0\].union: .*'e1' has no "
                                                r"event time"):
        pipeline_from_spec(tmp_path / "bad.yaml")


def test_a_union_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    """The union's own dictionaries and watermarks are checkpointed: string keys of the
    windows after it come out right after a restart."""
    a, b = _events(3000, 11, ["ann", "bo", "cy"]), _events(2000, 12, ["zed", "cy", "yu"])

    def run(crash: int | None, out: list[pa.RecordBatch]) -> gs.RunStats:
        p = gs.Pipeline("ck-union", engine="cpu")
        src = gs.from_arrow(a, batch_rows=100)
        s1 = p.source(src if crash is None else _Crash(src, crash), event_time="ts",
                      watermark=gs.Watermark.bounded(DELAY), name="a")
        s2 = p.source(gs.from_arrow(b, batch_rows=100), event_time="ts",
                      watermark=gs.Watermark.bounded(DELAY), name="b")
        (s1.union(s2).key_by("user").window(gs.Tumbling(1000), name="w")
         .agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(),
              hi=gs.col("v").max()).sink(gs.to_callback(out.append)))
        return p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=4))

    first: list[pa.RecordBatch] = []
    with pytest.raises(OSError, match="lost power"):
        run(20, first)
    second: list[pa.RecordBatch] = []
    stats = run(None, second)
    assert stats.restored_checkpoint is not None and stats.events_in < 5000

    def rows(batches: list[pa.RecordBatch]) -> set[tuple[Any, ...]]:
        return {(r["user"], r["window_start"], r["n"], r["total"], r["lo"], r["hi"])
                for r in pa.Table.from_batches(batches).to_pylist()} if batches else set()

    # every window as one uninterrupted run has it: what fired before the crash's last
    # checkpoint in the first run, the rest in the second (at-least-once callback sink)
    assert rows(first) | rows(second) == set(_duckdb_windows([a, b], 1000))
    assert rows(second) and rows(second) <= set(_duckdb_windows([a, b], 1000))


@pytest.mark.cudasim
def test_a_union_on_the_device_backends(device_backend: Backend) -> None:
    tables = [_events(120, 21, ["ann", "bo"]), _events(90, 22, ["bo", "cy"])]
    p = gs.Pipeline(engine=device_backend.name)
    s = [p.source(gs.from_arrow(t, batch_rows=25), event_time="ts",
                  watermark=gs.Watermark.bounded(DELAY), name=f"s{i}")
         for i, t in enumerate(tables)]
    assert _windows(s[0].union(s[1]), 100) == _duckdb_windows(tables, 100)


class _DiesAtEnd(Source):
    """Another source's batches, then a crash instead of its end."""

    def __init__(self, inner: Source) -> None:
        self.inner, self.name = inner, inner.name

    def schema(self) -> pa.Schema:
        return self.inner.schema()

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        yield from self.inner.open(offset)
        raise OSError("the machine lost power")


def test_restored_windows_decode_keys_with_their_own_streams_dictionary(
        tmp_path: Path) -> None:
    """Two sources with a string column of the same name: a window over one of them,
    restored and fired before any batch reaches it, reads its keys through that
    stream's dictionary, not the other's (the runtime hands each operator the
    dictionaries of the rows it reads, a union's or map_batches' own below them)."""
    a = _events(400, 31, ["ann", "bo"])
    b = _events(400, 32, ["zed", "yu", "xi", "wo"])

    def run(src: Source, out: list[pa.RecordBatch]) -> gs.RunStats:
        p = gs.Pipeline("ck-names", engine="cpu")
        s1 = p.source(src, event_time="ts", watermark=gs.Watermark.bounded(DELAY), name="a")
        s2 = p.source(gs.from_arrow(b, batch_rows=50), name="b")
        s1.key_by("user").window(gs.Tumbling(100_000), name="w").agg(n=gs.count()).sink(
            gs.to_callback(out.append))
        s2.sink(gs.to_callback(lambda rb: None))
        return p.run(checkpoint=gs.Checkpointing(tmp_path / "ck", every_batches=1))

    with pytest.raises(OSError, match="lost power"):
        run(_DiesAtEnd(gs.from_arrow(a, batch_rows=50)), [])
    out: list[pa.RecordBatch] = []
    stats = run(gs.from_arrow(a, batch_rows=50), out)
    assert stats.restored_checkpoint is not None
    got = pa.Table.from_batches(out).to_pylist()
    assert sorted((r["user"], r["n"]) for r in got) == sorted(
        (u, int(n)) for u, n in zip(*np.unique(a["user"].to_numpy(zero_copy_only=False),
                                                return_counts=True), strict=True))


def test_a_union_of_windows_outputs() -> None:
    """Windowed results union like any rows, and a window over the union reads them at
    ``window_end - 1``, none late (each window's rows carry the watermark it passed on
    before them, held to the other input's)."""
    a, b = _events(300, 41, ["ann", "bo"]), _events(200, 42, ["bo", "cy"])

    def windows(p: gs.Pipeline) -> list[gs.Stream]:
        return [p.source(gs.from_arrow(t, batch_rows=40), event_time="ts",
                         watermark=gs.Watermark.bounded(DELAY), name=n)
                .key_by("user").window(gs.Tumbling(100), name=f"w{n}").agg(n=gs.count())
                for n, t in (("a", a), ("b", b))]

    outs = windows(gs.Pipeline(engine="cpu"))
    both = outs[0].union(outs[1]).collect()
    want = sorted((u, s, n) for t in (a, b) for u, s, n, *_ in _duckdb_windows([t], 100))
    assert sorted((r["user"], r["window_start"], r["n"]) for r in both.to_pylist()) == want
    p = gs.Pipeline(engine="cpu")
    outs = windows(p)
    coarse = outs[0].union(outs[1]).key_by("user").window(gs.Tumbling(1000), name="coarse")
    late: list[pa.RecordBatch] = []
    w = coarse.agg(rows=gs.count(), n=gs.col("n").sum())
    w.late.sink(gs.to_callback(late.append))
    got = sorted((r["user"], r["window_start"], r["rows"], r["n"]) for r in w.collect().to_pylist())
    rows = both.to_pylist()
    expect: dict[tuple[str, int], list[int]] = {}
    for r in rows:
        start = (r["window_end"] - 1) // 1000 * 1000
        acc = expect.setdefault((r["user"], start), [0, 0])
        acc[0] += 1
        acc[1] += r["n"]
    assert got == sorted((u, s, c, n) for (u, s), (c, n) in expect.items())
    assert not late


def test_an_input_back_from_idleness_is_late_not_reopening_a_fired_window() -> None:
    """An idle input left out of the union's watermark resumes below it: its rows carry
    the union's watermark, so a window that already fired counts them late instead of
    emitting a second row for it (found by review)."""
    import time as _time

    from gpustream.operators.window import AggSpec, WindowAggOp, WindowSpec

    cpu = select_backend("cpu")
    schema = pa.schema([("k", pa.int64()), ("ts", pa.int64())])
    u = UnionOp(schema, [schema, schema], (None, 0.05), cpu)
    spec = WindowSpec("w", ("k",), "ts", 10, 10, 0, 0, 0,
                      (AggSpec("n", gs.count(), None, pa.int64()),),
                      pa.schema({"k": pa.int64(), "window_start": pa.int64(),
                                 "window_end": pa.int64(), "n": pa.int64()}), False)
    w = WindowAggOp(spec, cpu)
    _time.sleep(0.1)  # input 1 is idle
    a = Batch.from_arrow(pa.record_batch({"k": [1], "ts": [3]}))
    a.watermarks = np.array([0])
    for o in u.process_port(0, a):
        w.process(o)
    _, combined = u.input_watermark(0, 100)
    assert combined == 100 and sum(x.num_rows for x in w.on_watermark(100)) == 1
    b = Batch.from_arrow(pa.record_batch({"k": [1], "ts": [4]}))
    b.watermarks = np.array([2])  # on time on its own stream
    for o in u.process_port(1, b):
        assert o.watermarks is not None and o.watermarks.tolist() == [100]
        w.process(o)
    assert w.on_watermark(200) == [] and w.late_events == 1
