"""Partitioned runs on Dask (issue 19): a LocalCluster of 2 worker processes, results
equal to one process's (which the rest of the suite checks against pandas), a worker
killed mid-run, a run that dies and is started again, and the plans it refuses."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpustream as gs
from gpustream.cluster.dask_run import global_checkpoint, run_partitioned
from gpustream.cluster.exchange import _string_words, partition_of, split_rows
from gpustream.cluster.partitioning import partitioning_of
from gpustream.errors import PlanError

distributed = pytest.importorskip("distributed")

FILES = 4
ROWS = 3_000
USERS = 60


def _events(seed: int, files: int = FILES, rows: int = ROWS) -> list[pa.Table]:
    """``files`` tables of events: each file the next minute, out of order by < 5 s (so
    that no event is late in one process reading the files in order)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in range(files):
        ts = np.sort(rng.integers(f * 60_000, f * 60_000 + 55_000, rows))
        ts = ts + rng.integers(0, 4_000, rows)  # disorder within the watermark's 5 s
        v = rng.normal(10, 3, rows)
        out.append(pa.table({
            "ts": pa.array(ts, pa.timestamp("ms")),
            "user": pa.array([f"u{k}" for k in rng.integers(0, USERS, rows)]),
            "v": pa.array(np.where(rng.random(rows) < 0.05, np.nan, v)).fill_null(0.0),
        }))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("events")
    for i, t in enumerate(_events(7)):
        pq.write_table(t, d / f"part-{i}.parquet", row_group_size=500)
    return d


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _read(path: Path, by: list[str]) -> pd.DataFrame:
    return pq.read_table(path).to_pandas().sort_values(by).reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) and len(a) > 0
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


def _tumbling(source: Any, out: Path, name: str = "cl") -> gs.Pipeline:
    p = gs.Pipeline(name, engine="cpu")
    s = p.source(source, event_time="ts", watermark=gs.Watermark.bounded("5s"), name="ev")
    (s.filter(gs.col("v") > 4).key_by("user").window(gs.Tumbling("10s"))
     .agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(), hi=gs.col("v").max())
     .sink(gs.to_parquet(out)))
    return p


BY = ["user", "window_start"]


def test_tumbling_window_on_two_workers_equals_one_process_and_pandas(
        folder: Path, client: Any, tmp_path: Path) -> None:
    one = _tumbling(gs.read_parquet(folder, batch_rows=700), tmp_path / "one").run()
    stats = _tumbling(gs.read_parquet(folder, batch_rows=700), tmp_path / "two").run(
        cluster=client, parallelism=2)
    assert stats.partitions == 2 and stats.events_in == one.events_in == FILES * ROWS
    assert stats.late_events == one.late_events == 0
    a, b = _read(tmp_path / "one", BY), _read(tmp_path / "two", BY)
    _same(a, b)
    # pandas, in batch, on the same rows
    df = pa.concat_tables(_events(7)).to_pandas()
    df = df[df.v > 4]
    df["window_start"] = df.ts.dt.floor("10s")
    ref = df.groupby(["user", "window_start"]).v.agg(["count", "sum"]).reset_index()
    ref = ref.sort_values(BY).reset_index(drop=True)
    assert b.n.tolist() == ref["count"].tolist()
    np.testing.assert_allclose(b.total.to_numpy(), ref["sum"].to_numpy(), rtol=1e-9)


def test_session_window_and_lookup_join_on_two_workers_equal_one_process(
        folder: Path, client: Any, tmp_path: Path) -> None:
    regions = pa.table({"user": [f"u{k}" for k in range(USERS)],
                        "region": [f"r{k % 7}" for k in range(USERS)],
                        "weight": [float(k % 5) for k in range(USERS)]})

    def build(out: Path) -> gs.Pipeline:
        p = gs.Pipeline("sess", engine="cpu")
        t = p.table(gs.from_arrow(regions), key="user", name="regions")
        s = p.source(gs.read_parquet(folder, batch_rows=900), event_time="ts",
                     watermark=gs.Watermark.bounded("5s"), name="ev")
        j = s.join_table(t, on="user").with_columns(w=gs.col("v") * gs.col("weight"))
        (j.key_by("user", "region").window(gs.Session("2s"))
         .agg(n=gs.count(), w=gs.col("w").sum(), first=gs.col("v").first())
         .sink(gs.to_parquet(out)))
        return p

    build(tmp_path / "one").run()
    build(tmp_path / "two").run(cluster=client, parallelism=2)
    by = ["user", "window_start"]
    _same(_read(tmp_path / "one", by), _read(tmp_path / "two", by))


def test_three_partitions_share_two_workers(folder: Path, client: Any, tmp_path: Path) -> None:
    _tumbling(gs.read_parquet(folder, batch_rows=1_000), tmp_path / "one").run()
    stats = _tumbling(gs.read_parquet(folder, batch_rows=1_000), tmp_path / "three").run(
        cluster=client, parallelism=3)
    assert stats.partitions == 3
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "three", BY))


@pytest.mark.parametrize("where", ["folder", "url"])
def test_a_worker_killed_mid_run_the_partitions_resume_and_the_output_is_exactly_once(
        folder: Path, client: Any, tmp_path: Path, where: str) -> None:
    _tumbling(gs.read_parquet(folder, batch_rows=300), tmp_path / "one").run()
    pids = client.run(os.getpid)
    killed: list[str] = []

    def kill(r: int, reports: list[Any]) -> None:
        # after the second common checkpoint, once windows have fired (output committed)
        if not killed and r >= 8 and sum(x.events_out for x in reports) > 0:
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    p = _tumbling(gs.read_parquet(folder, batch_rows=300), tmp_path / "two")
    # a folder, or a URL: the checkpoints go through fsspec, as to an object store
    ck = tmp_path / "ck" if where == "folder" else f"file://{tmp_path}/ck"
    stats = run_partitioned(p, client, 2, gs.Checkpointing(ck, every_batches=3),
                            on_round=kill)
    assert killed and stats.restarts == 1
    assert stats.restored_checkpoint is not None and stats.restored_checkpoint >= 1
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "two", BY))
    client.wait_for_workers(2, timeout=60)


class _Crash(RuntimeError):
    pass


def test_a_run_that_dies_resumes_from_the_partitions_checkpoints(
        folder: Path, client: Any, tmp_path: Path) -> None:
    _tumbling(gs.read_parquet(folder, batch_rows=400), tmp_path / "one").run()
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=2)

    def die(r: int, reports: list[Any]) -> None:
        if r == 9:
            raise _Crash("the coordinator dies")

    p = _tumbling(gs.read_parquet(folder, batch_rows=400), tmp_path / "two")
    with pytest.raises(_Crash):
        run_partitioned(p, client, 2, ck, on_round=die)
    assert global_checkpoint(ck, 2, "cl") >= 2
    stats = _tumbling(gs.read_parquet(folder, batch_rows=400), tmp_path / "two").run(
        cluster=client, parallelism=2, checkpoint=ck)
    assert stats.restored_checkpoint is not None and stats.restored_checkpoint >= 2
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "two", BY))
    with pytest.raises(PlanError, match="parallelism 2"):
        _tumbling(gs.read_parquet(folder), tmp_path / "three").run(
            cluster=client, parallelism=3, checkpoint=ck)


def _changelog(path: Path) -> pa.Table:
    """A changelog folder's rows in the order each partition wrote them (part files by
    name: a key's changes all come from one partition, in order)."""
    return pa.concat_tables([pq.read_table(f) for f in sorted(path.glob("part-*.parquet"))])


def test_running_aggregation_over_and_top_n_per_key_on_two_workers(
        folder: Path, client: Any, tmp_path: Path) -> None:
    def build(out: Path) -> gs.Pipeline:
        p = gs.Pipeline("keyed", engine="cpu")
        s = p.source(gs.read_parquet(folder, batch_rows=800), event_time="ts",
                     watermark=gs.Watermark.bounded("5s"), name="ev").filter(gs.col("v") > 4)
        s.key_by("user").agg(n=gs.count(), total=gs.col("v").sum()).sink(
            gs.to_parquet(out / "running"))
        s.key_by("user").over(range="2s").agg(recent=gs.col("v").max()).sink(
            gs.to_parquet(out / "over"))
        s.top_k(3, by="v", per="user").sink(gs.to_parquet(out / "top"))
        return p

    build(tmp_path / "one").run()
    stats = build(tmp_path / "two").run(cluster=client, parallelism=2)
    assert stats.partitions == 2
    one, two = tmp_path / "one", tmp_path / "two"
    # the running aggregation: the table its changelog describes, and pandas' group-by
    got = gs.materialize(_changelog(two / "running"), key="user").to_pandas()
    want = gs.materialize(_changelog(one / "running"), key="user").to_pandas()
    _same(want.sort_values("user").reset_index(drop=True),
          got.sort_values("user").reset_index(drop=True))
    df = pa.concat_tables(_events(7)).to_pandas()
    ref = df[df.v > 4].groupby("user").v.agg(["count", "sum"]).reset_index()
    got = got.sort_values("user").reset_index(drop=True)
    assert got.n.tolist() == ref["count"].tolist()
    np.testing.assert_allclose(got.total.to_numpy(), ref["sum"].to_numpy(), rtol=1e-9)
    # OVER (a RANGE frame: ties in event time are all in it, whatever their order)
    by = ["user", "ts", "v"]
    _same(_read(one / "over", by), _read(two / "over", by))
    # top-N per key over the stream: the rows its changelog describes
    top = [gs.materialize(_changelog(d / "top")).to_pandas().sort_values(["user", "v"])
           .reset_index(drop=True) for d in (one, two)]
    _same(top[0], top[1])
    assert len(top[1]) == 3 * USERS


@pytest.fixture(scope="module")
def payments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second stream over the same users and minutes: ``uid``, ``amount``."""
    d = tmp_path_factory.mktemp("payments")
    for i, t in enumerate(_events(8, files=3, rows=2_000)):
        pq.write_table(t.rename_columns(["ts", "uid", "amount"]), d / f"part-{i}.parquet")
    return d


def test_joins_of_two_streams_and_a_union_on_two_workers_equal_one_process(
        folder: Path, payments: Path, client: Any, tmp_path: Path) -> None:
    def build(out: Path) -> gs.Pipeline:
        p = gs.Pipeline("two-streams", engine="cpu")
        ev = p.source(gs.read_parquet(folder, batch_rows=700), event_time="ts",
                      watermark=gs.Watermark.bounded("5s"), name="ev")
        pay = p.source(gs.read_parquet(payments, batch_rows=500), event_time="ts",
                       watermark=gs.Watermark.bounded("5s"), name="pay")
        ev.window_join(pay, on=("user", "uid"), window=gs.Tumbling("10s")).sink(
            gs.to_parquet(out / "window_join"))
        ev.interval_join(pay, on=("user", "uid"), lower="-1s", upper="1s").sink(
            gs.to_parquet(out / "interval_join"))
        both = ev.select("ts", "user", "v").union(
            pay.select("ts", user=gs.col("uid"), v=gs.col("amount")))
        (both.key_by("user").window(gs.Tumbling("10s")).agg(n=gs.count())
         .sink(gs.to_parquet(out / "union")))
        return p

    one = build(tmp_path / "one").run()
    two = build(tmp_path / "two").run(cluster=client, parallelism=2,
                                      checkpoint=gs.Checkpointing(tmp_path / "ck",
                                                                  every_batches=3))
    assert one.late_events == two.late_events == 0
    assert two.events_in == one.events_in == FILES * ROWS + 3 * 2_000
    for name, by in (("window_join", ["user", "ts", "ts_right", "v", "amount"]),
                     ("interval_join", ["user", "ts", "ts_right", "v", "amount"]),
                     ("union", ["user", "window_start"])):
        a, b = _read(tmp_path / "one" / name, by), _read(tmp_path / "two" / name, by)
        _same(a, b)
    # the window join against pandas: pairs of equal user in the same 10 s window
    ev = pa.concat_tables(_events(7)).to_pandas()
    pay = pa.concat_tables(_events(8, files=3, rows=2_000)).to_pandas()
    ev["w"], pay["w"] = ev.ts.dt.floor("10s"), pay.ts.dt.floor("10s")
    pairs = ev.merge(pay.rename(columns={"user": "uid", "v": "amount"}),
                     left_on=["user", "w"], right_on=["uid", "w"])
    assert len(_read(tmp_path / "two" / "window_join", ["user"])) == len(pairs)


# -- what a partitioned run refuses, before anything runs ---------------------------------
def _source(**cols: Any) -> Any:
    return gs.from_arrow({"ts": [1, 2], "k": ["a", "b"], "v": [1.0, 2.0], "c": [3, 4],
                          **cols})


def test_a_key_computed_after_the_source_is_refused_naming_the_step() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(_source(), event_time="ts")
    w = s.with_columns(k=gs.col("ts") * 2).key_by("k").window(gs.Tumbling(10)).agg(
        n=gs.count())
    with pytest.raises(PlanError,
                       match=r"its key 'k': step 1 \(with_columns\) computes 'k'"):
        partitioning_of([w._node])


def test_plans_that_cannot_be_split_are_refused() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(_source(), event_time="ts")
    with pytest.raises(PlanError, match="without keys"):
        partitioning_of([s.window(gs.Tumbling(10)).agg(n=gs.count())._node])
    other = p.source(_source(), event_time="ts", name="other")
    # a union alone has no key: each partition passes its shares on as read
    assert partitioning_of([s.union(other)._node]).by == {}
    joined = s.window_join(other, on="k", window=gs.Tumbling(10))
    by_c = joined.key_by("c").window(gs.Tumbling(10)).agg(n=gs.count())
    with pytest.raises(PlanError, match="joins on k, not 'c'"):
        partitioning_of([by_c._node])
    # a window over the join keyed by the join key: both sides are hashed by it
    by_k = joined.key_by("k").window(gs.Tumbling(10)).agg(n=gs.count())
    assert partitioning_of([by_k._node]).by == {"source": ("k",), "other": ("k",)}


def _two(**right: Any) -> tuple[gs.Pipeline, Any, Any]:
    p = gs.Pipeline(engine="cpu")
    left = p.source(gs.from_arrow({"ts": [1], "user": ["a"], "peer": ["b"], "v": [1.0]}),
                    event_time="ts", name="l")
    cols = {"ts": [1], "uid": ["a"], "peer": ["b"], "amount": [2.0], **right}
    return p, left, p.source(gs.from_arrow(cols), event_time="ts", name="r")


def test_join_keys_are_traced_to_the_column_each_side_reads() -> None:
    # crossed keys: the output's 'peer' is the left side's; rows are hashed by what the
    # window after the join groups by on each side
    _, left, right = _two()
    crossed = left.window_join(right, on=[("user", "peer"), ("peer", "uid")],
                               window=gs.Tumbling(10))
    w = crossed.key_by("peer").window(gs.Tumbling(10)).agg(n=gs.count())
    assert partitioning_of([w._node]).by == {"l": ("peer",), "r": ("uid",)}
    # a key of the right side under its own name, and a step on the right stream alone
    _, left, right = _two()
    j = left.window_join(right, on=("user", "uid"), window=gs.Tumbling(10))
    alone = right.key_by("uid").agg(n=gs.count())
    assert partitioning_of([j._node, alone._node]).by == {"l": ("user",), "r": ("uid",)}
    # a stream no keyed step reaches keeps its rows where they are read
    _, left, right = _two()
    w = left.key_by("user").window(gs.Tumbling(10)).agg(n=gs.count())
    assert partitioning_of([w._node, right.filter(gs.col("amount") > 0)._node]).by == {
        "l": ("user",), "r": ()}
    # a rename: two steps keyed by one source column under two names
    _, left, _ = _two()
    a = left.key_by("user").agg(n=gs.count())
    b = left.select("ts", u=gs.col("user")).key_by("u").agg(n=gs.count())
    assert partitioning_of([a._node, b._node]).by == {"l": ("user",)}


def test_keys_an_outer_join_pads_with_nulls_and_retention_are_refused() -> None:
    _, left, right = _two()
    full = left.join(right, on=("user", "uid"), how="full")
    assert partitioning_of([full._node]).by == {"l": ("user",), "r": ("uid",)}
    with pytest.raises(PlanError, match=r"step 2 \(agg 'agg@2'\): its key 'user': "
                       r"step 1 \(join how='full'\) \(full join\) leaves 'user' null"):
        partitioning_of([full.key_by("user").agg(n=gs.count())._node])
    _, left, right = _two()
    kept = left.join(right, on=("user", "uid"), retention="10s")
    with pytest.raises(PlanError, match="retention drops a key's state"):
        partitioning_of([kept._node])


def test_sinks_a_partitioned_run_cannot_use_are_refused(tmp_path: Path) -> None:
    p = gs.Pipeline(engine="cpu")
    p.source(_source(), event_time="ts").sink(gs.to_callback(lambda rb: None))
    with pytest.raises(PlanError, match="writes from its workers"):
        p.run(cluster="local:2")
    q = gs.Pipeline(engine="cpu")
    q.source(_source(), event_time="ts").sink(gs.to_parquet(tmp_path / "one.parquet"))
    with pytest.raises(PlanError, match="one file cannot be written by several"):
        q.run(cluster="local:2")
    r = gs.Pipeline(engine="cpu")
    r.source(_source(), event_time="ts").sink(gs.to_parquet(tmp_path / "out"))
    with pytest.raises(PlanError, match="give local:N"):
        run_partitioned(r, "yarn://x", 2)


def test_explain_shows_the_partitioning() -> None:
    p = gs.Pipeline("ex", engine="cpu")
    s = p.source(_source(), event_time="ts", name="ev")
    s.key_by("k").window(gs.Tumbling(10)).agg(n=gs.count()).sink(gs.to_parquet("unused/"))
    text = p.explain(parallelism=4)
    assert "partitions: 4, each reading its share of source 'ev'" in text
    assert "repartitioned by hash(k) % 4" in text
    bad = gs.Pipeline("ex", engine="cpu")
    bad.source(_source(), event_time="ts").window(gs.Tumbling(10)).agg(
        n=gs.count()).sink(gs.to_parquet("unused/"))
    assert "cannot run partitioned" in bad.explain(parallelism=2)


# -- the exchange's hash -----------------------------------------------------------------
def test_string_hash_is_fnv1a_of_the_utf8_bytes() -> None:
    # published FNV-1a 64-bit values: the hash cannot drift between versions or workers
    words = _string_words(pa.array(["", "a", "foobar"]))
    assert words.tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]


def test_partition_of_ignores_the_encoding_and_keeps_nulls_together() -> None:
    values = ["x", None, "y", "x", "zz", None]
    plain = pa.record_batch({"k": pa.array(values), "n": list(range(6))})
    large = pa.record_batch({"k": pa.array(values, pa.large_string()), "n": list(range(6))})
    cats = pa.record_batch({"k": pa.array(values).dictionary_encode(), "n": list(range(6))})
    view = pa.record_batch({"k": pa.array(values, pa.string_view()), "n": list(range(6))})
    for count in (2, 5, 7, 64):
        want = partition_of(plain, ["k"], count)
        for rb in (large, cats, view):
            assert partition_of(rb, ["k"], count).tolist() == want.tolist(), (rb, count)
        assert want[0] == want[3] and want[1] == want[5]
    # numbers: a dictionary of int64 hashes as the plain column does, and int32 as int64,
    # nulls included (a Parquet or IPC file may keep either encoding)
    nums = pa.array([7, None, 3, 7, 1 << 40, None], pa.int64())
    for count in (2, 7, 64):
        want = partition_of(pa.record_batch({"k": nums}), ["k"], count).tolist()
        cats_n = pa.record_batch({"k": nums.dictionary_encode()})
        assert partition_of(cats_n, ["k"], count).tolist() == want
        small = pa.array([7, None, 3, 7, 1, None])
        assert partition_of(pa.record_batch({"k": small.cast(pa.int32())}), ["k"], count
                            ).tolist() == partition_of(pa.record_batch({"k": small}), ["k"],
                                                       count).tolist()
    pieces = split_rows(plain, ["k", "n"], 3)
    assert sorted(n for piece in pieces if piece is not None
                  for n in piece["n"].to_pylist()) == list(range(6))


# -- a Kafka topic of 4 partitions (the real Kafka-protocol broker, Tansu) -----------------
def test_kafka_topic_of_four_partitions_on_two_workers_equals_one_process(
        client: Any, tmp_path: Path) -> None:
    from tests.servers import kafka_broker
    from tests.test_source_split import SCHEMA, _kafka_topic, _table

    events = _table(4_000, seed=5)
    with kafka_broker() as bootstrap:
        _kafka_topic(bootstrap, "clicks", 4, events)

        def build(out: Path) -> gs.Pipeline:
            p = gs.Pipeline("kafka-cl", engine="cpu")
            # a delay longer than the topic's span: how the consumer interleaves the four
            # partitions cannot make an event late in either run
            s = p.source(gs.kafka("clicks", bootstrap, schema=SCHEMA, max_rows=300,
                                  bounded=True), event_time="ts",
                         watermark=gs.Watermark.bounded("1h"), name="clicks")
            (s.key_by("k").window(gs.Tumbling("5s")).agg(n=gs.count(), v=gs.col("v").sum())
             .sink(gs.to_parquet(out)))
            return p

        one = build(tmp_path / "one").run()
        two = build(tmp_path / "two").run(cluster=client, parallelism=2,
                                          checkpoint=gs.Checkpointing(tmp_path / "ck",
                                                                      every_batches=4))
    assert one.events_in == two.events_in == 4_000
    by = ["k", "window_start"]
    a, b = _read(tmp_path / "one", by), _read(tmp_path / "two", by)
    _same(a, b)
    df = events.to_pandas()
    df["window_start"] = df.ts.dt.floor("5s")
    ref = df.groupby(by).v.agg(["count", "sum"]).reset_index().sort_values(by)
    assert b.n.tolist() == ref["count"].tolist()


# -- batching and parallelism do not change results ----------------------------------------
_REFERENCE: dict[str, pd.DataFrame] = {}


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_rows=st.sampled_from([97, 512, 2_000]), parallelism=st.integers(1, 3))
def test_results_do_not_depend_on_batching_or_parallelism(
        folder: Path, client: Any, tmp_path_factory: pytest.TempPathFactory,
        batch_rows: int, parallelism: int) -> None:
    if "ref" not in _REFERENCE:
        out = tmp_path_factory.mktemp("ref") / "out"
        _tumbling(gs.read_parquet(folder), out).run()
        _REFERENCE["ref"] = _read(out, BY)
    out = tmp_path_factory.mktemp("run") / "out"
    _tumbling(gs.read_parquet(folder, batch_rows=batch_rows), out).run(
        cluster=client, parallelism=parallelism)
    _same(_REFERENCE["ref"], _read(out, BY))


# -- the cuda backend's code on the workers, under the simulator ---------------------------
@pytest.mark.cudasim
def test_partitions_on_the_cuda_backend_equal_one_cpu_process(client: Any,
                                                              tmp_path: Path) -> None:
    from tests.conftest import cudasim_on

    if not cudasim_on():
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (make test runs it in the cudasim step)")
    small = tmp_path / "in"
    small.mkdir()
    for i, t in enumerate(_events(11, files=2, rows=150)):
        pq.write_table(t, small / f"part-{i}.parquet")

    def build(out: Path, engine: str) -> gs.Pipeline:
        p = gs.Pipeline("sim", engine=engine)
        s = p.source(gs.read_parquet(small, batch_rows=60), event_time="ts",
                     watermark=gs.Watermark.bounded("5s"), name="ev")
        (s.key_by("user").window(gs.Tumbling("20s")).agg(n=gs.count(), hi=gs.col("v").max())
         .sink(gs.to_parquet(out)))
        return p

    build(tmp_path / "one", "cpu").run()
    stats = build(tmp_path / "two", "cudasim").run(cluster=client, parallelism=2)
    assert stats.backend == "cudasim"
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "two", BY))


def test_a_coordinator_killed_mid_run_leaves_no_partition_holding_the_folder(
        folder: Path, client: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    _tumbling(gs.read_parquet(folder, batch_rows=300), tmp_path / "one").run()
    ck = tmp_path / "ck"
    child = subprocess.Popen(
        [sys.executable, "-c", f"""
import time, distributed, gpustream as gs
from gpustream.cluster.dask_run import run_partitioned
from tests.test_cluster import _tumbling
def slow(r, reports):
    time.sleep(0.2)
    if r == 6:
        print("round 6", flush=True)
c = distributed.Client({client.scheduler.address!r})
run_partitioned(_tumbling(gs.read_parquet({str(folder)!r}, batch_rows=300),
                          {str(tmp_path / "two")!r}),
                c, 2, gs.Checkpointing({str(ck)!r}, every_batches=3), on_round=slow)
"""], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if "round 6" in line:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    # its partitions are still in the workers, holding their checkpoint folders' locks;
    # the next run drops them (their coordinator's client is gone) and resumes
    stats = _tumbling(gs.read_parquet(folder, batch_rows=300), tmp_path / "two").run(
        cluster=client, parallelism=2, checkpoint=gs.Checkpointing(ck, every_batches=3))
    assert stats.restored_checkpoint is not None and stats.restored_checkpoint >= 1
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "two", BY))


# -- on a real GPU: dask-cuda's LocalCUDACluster (one worker per GPU) ----------------------
@pytest.mark.cuda
def test_partitions_on_a_gpu_equal_one_cpu_process(folder: Path, tmp_path: Path) -> None:
    from gpustream.probe import probe_gpu

    probe = probe_gpu()
    if not probe.ok:
        pytest.skip(f"cuda case needs a working NVIDIA GPU: {probe.reason}")
    _tumbling(gs.read_parquet(folder, batch_rows=1_000), tmp_path / "one").run()
    p = gs.Pipeline("gpu-cl", engine="cuda")
    s = p.source(gs.read_parquet(folder, batch_rows=1_000), event_time="ts",
                 watermark=gs.Watermark.bounded("5s"), name="ev")
    (s.filter(gs.col("v") > 4).key_by("user").window(gs.Tumbling("10s"))
     .agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(), hi=gs.col("v").max())
     .sink(gs.to_parquet(tmp_path / "two")))
    # local:1 starts a LocalCUDACluster where dask-cuda is installed (else, with a
    # warning, a LocalCluster of one worker on the GPU)
    stats = p.run(cluster="local:1", parallelism=2)
    assert stats.backend == "cuda" and stats.partitions == 2
    _same(_read(tmp_path / "one", BY), _read(tmp_path / "two", BY))
