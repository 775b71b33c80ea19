"""Source.split: the shares of a source for the partitions of a scaled-out pipeline.

For every splittable source the shares of ``0..count-1`` must be disjoint, hold every
record of the unsplit source together, keep its order within each share, have its schema,
resume from their own offsets, and pickle (Dask ships them to workers).
"""

from __future__ import annotations

import importlib
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpustream as gs
from gpustream.ingest.files import FileShare
from gpustream.ingest.source import Source, SourceBatch
from tests.servers import kafka_broker, redis_server
from tests.test_brokers import _take

SCHEMA = {"ts": "timestamp[ms]", "k": "string", "v": "float64", "n": "int64"}


def _table(n: int, seed: int, start: int = 0) -> pa.Table:
    """Seeded random events; ``n`` numbers the rows (unique across tables by ``start``)."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(0, 50, n))
    return pa.table({"ts": pa.array(ts, pa.timestamp("ms")),
                     "k": [f"k{int(c)}" for c in rng.integers(0, 20, n)],
                     "v": rng.uniform(-100, 100, n).round(3),
                     "n": np.arange(start, start + n, dtype=np.int64)})


def _cloudpickle() -> Any:
    """cloudpickle, which Dask ships tasks with (it has no type hints)."""
    return importlib.import_module("cloudpickle")


def _rows(batches: list[SourceBatch]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for b in batches:
        d = b.data.select(["ts", "k", "v", "n"])
        cols = [d["ts"].cast(pa.int64()).to_pylist(), d["k"].to_pylist(), d["v"].to_pylist(),
                d["n"].to_pylist()]
        out += list(zip(*cols, strict=True))
    return out


def _check_shares(src: Source, count: int, resume: bool = True, ordered: bool = True
                  ) -> list[list[tuple[Any, ...]]]:
    """The split contract for a bounded source; returns each share's rows. ``ordered``:
    a share keeps the unsplit source's order (not Kafka, whose reads interleave the
    partitions as fetches come back: its callers check the order per partition)."""
    whole = _rows(list(src.open()))
    assert len(whole) == len({r[3] for r in whole})  # the row ids are unique
    place = {r[3]: i for i, r in enumerate(whole)}
    shares = [src.split(i, count) for i in range(count)]
    got = []
    for i, share in enumerate(shares):
        assert share.schema() == src.schema()
        assert share.describe() == f"{src.describe()} [share {i}/{count}]"
        assert share.shared_as == (i, count) and src.shared_as is None
        batches = list(share.open())
        rows = _rows(batches)
        at = [place[r[3]] for r in rows]
        if ordered:
            assert at == sorted(at), f"share {i} is not in the unsplit source's order"
        if resume and len(batches) >= 3:  # from a mid offset: exactly the rest
            k = len(batches) // 2
            rest = _rows(list(share.open(batches[k - 1].offset)))
            if ordered:
                assert rest == _rows(batches[k:])
            else:
                assert Counter(rest) == Counter(_rows(batches[k:]))
        got.append(rows)
    together = [r for rows in got for r in rows]
    assert Counter(together) == Counter(whole)  # every record, none twice
    assert len(together) == len(whole)
    return got


# -- validation and the sources that cannot be split --------------------------------------

@pytest.mark.parametrize(("index", "count", "match"), [
    (2, 2, r"index must be in 0\.\.1"), (-1, 3, r"index must be in 0\.\.2"),
    (0, 0, "count must be >= 1"), (True, 2, "index must be an int"),
    (0, 2.0, "count must be an int")])
def test_split_checks_index_and_count(index: Any, count: Any, match: str) -> None:
    src = gs.from_arrow(_table(10, seed=1))
    with pytest.raises(ValueError, match=match):
        src.split(index, count)


def test_a_share_is_not_split_again() -> None:
    share = gs.from_arrow(_table(10, seed=1)).split(0, 2)
    with pytest.raises(ValueError, match=r"already share 0/2; split the whole source"):
        share.split(1, 2)


def test_sources_that_cannot_split_say_so_and_count_one_is_the_source() -> None:
    sock = gs.socket("127.0.0.1", 9, schema=SCHEMA)
    with pytest.raises(gs.IngestError, match=(
            r"socket\(127\.0\.0\.1:9\) cannot be split across partitions; use a splittable "
            r"source \(files, Parquet, Kafka, Redis with group=, from_arrow\) or "
            r"parallelism=1")):
        sock.split(0, 2)
    assert sock.split(0, 1) is sock
    with pytest.raises(gs.IngestError, match="stdin cannot be split"):
        gs.stdin(schema=SCHEMA).split(1, 3)


# -- from_arrow ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_from_arrow_shares_are_contiguous_row_ranges(count: int) -> None:
    table = _table(1001, seed=2)
    src = gs.from_arrow(table, batch_rows=64)
    if count == 1:
        one = src.split(0, 1)
        assert one is not src and one.describe() == src.describe()
        assert _rows(list(one.open())) == _rows(list(src.open()))
        return
    got = _check_shares(src, count)
    n = table.num_rows
    for i, rows in enumerate(got):
        assert [r[3] for r in rows] == list(range(i * n // count, (i + 1) * n // count))


def test_shares_pickle_without_their_siblings_rows() -> None:
    cloudpickle = _cloudpickle()

    table = _table(30_000, seed=3)
    src = gs.from_arrow(table, batch_rows=5000)
    share = src.split(2, 3)
    blob = cloudpickle.dumps(share)
    assert len(blob) < 0.5 * len(cloudpickle.dumps(src))  # a third of the rows, not all
    back = cloudpickle.loads(blob)
    assert back.describe() == share.describe()
    assert _rows(list(back.open())) == _rows(list(share.open()))


# -- files --------------------------------------------------------------------------------

def _parquet_dir(d: Path, files: int, rows: int, row_group: int, seed: int) -> Path:
    d.mkdir()
    for f in range(files):
        pq.write_table(_table(rows, seed=seed + f, start=f * rows), d / f"part-{f:03d}.parquet",
                       row_group_size=row_group)
    return d


@pytest.mark.parametrize("count", [2, 3])
def test_parquet_shares_are_files_by_position(tmp_path: Path, count: int) -> None:
    d = _parquet_dir(tmp_path / "pq", files=5, rows=700, row_group=300, seed=10)
    src = gs.read_parquet(d, batch_rows=256)
    got = _check_shares(src, count)
    for i, rows in enumerate(got):  # whole files, by position in the sorted listing
        assert sorted({r[3] // 700 for r in rows}) == list(range(5))[i::count]
    back = _cloudpickle().loads(_cloudpickle().dumps(src.split(0, count)))
    assert _rows(list(back.open())) == got[0]


def test_parquet_with_fewer_files_than_shares_splits_row_groups(tmp_path: Path) -> None:
    d = _parquet_dir(tmp_path / "pq", files=2, rows=1000, row_group=250, seed=20)
    src = gs.read_parquet(d, batch_rows=100)
    got = _check_shares(src, 3)
    # row groups numbered across the files in order, group g to share g % 3
    for i, rows in enumerate(got):
        assert sorted({r[3] // 250 for r in rows}) == list(range(8))[i::3]
    # a share's offset is [file, row number in the file]: resume inside a later group
    share = src.split(1, 3)
    first = next(iter(share.open()))
    assert first.offset == [str(d / "part-000.parquet"), 250 + 100]
    rest = _rows(list(share.open(first.offset)))
    assert [r[3] for r in rest][:3] == [350, 351, 352] and len(rest) == len(got[1]) - 100


def test_arrow_ipc_shares(tmp_path: Path) -> None:
    for f in range(3):
        t = _table(400, seed=30 + f, start=f * 400)
        with pa.OSFile(str(tmp_path / f"p{f}.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, t.schema) as w:
            w.write_table(t, max_chunksize=150)
    src = gs.read_arrow_ipc(tmp_path, batch_rows=100)
    got = _check_shares(src, 2)
    assert [sorted({r[3] // 400 for r in rows}) for rows in got] == [[0, 2], [1]]
    got = _check_shares(src, 4)  # more shares than files: one share reads nothing
    assert [len(rows) for rows in got] == [400, 400, 400, 0]


def _text_files(d: Path, kind: str, names: list[str], rows: int, seed: int) -> None:
    d.mkdir(exist_ok=True)
    for f, name in enumerate(names):
        t = _table(rows, seed=seed + f, start=f * rows).to_pylist()
        with open(d / name, "w") as out:
            if kind == "csv":
                out.write("ts,k,v,n\n")
                out.writelines(f"{int(r['ts'].timestamp() * 1000)},{r['k']},{r['v']},{r['n']}\n"
                               for r in t)
            else:
                out.writelines(json.dumps({"ts": int(r["ts"].timestamp() * 1000), "k": r["k"],
                                           "v": r["v"], "n": r["n"]}) + "\n" for r in t)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("count", [2, 3])
def test_text_file_shares_are_files_by_position(tmp_path: Path, kind: str, count: int) -> None:
    names = [f"f{i}.{kind}" for i in range(5)]
    _text_files(tmp_path / "d", kind, names, rows=300, seed=40)
    reader = gs.read_csv if kind == "csv" else gs.read_jsonl
    src = reader(tmp_path / "d", schema=SCHEMA, max_rows=128)
    got = _check_shares(src, count)
    for i, rows in enumerate(got):
        assert sorted({r[3] // 300 for r in rows}) == list(range(5))[i::count]
    share = src.split(1, count)  # its offsets name only its files, in the unsplit form
    last = list(share.open())[-1].offset
    assert sorted(last) == [str(tmp_path / "d" / n) for n in names[1::count]]
    assert all(isinstance(v, list) and len(v) == 2 for v in last.values())
    back = _cloudpickle().loads(_cloudpickle().dumps(share))  # Dask ships it to a worker
    assert back.describe() == share.describe()
    assert _rows(list(back.open())) == got[1]


def test_followed_files_are_shared_by_name_hash_and_new_files_keep_their_share(
        tmp_path: Path) -> None:
    d = tmp_path / "d"
    names = [f"part-{i:02d}.jsonl" for i in range(6)]
    _text_files(d, "jsonl", names, rows=200, seed=50)
    share_of = {n: zlib.crc32(n.encode()) % 2 for n in names}
    assert set(share_of.values()) == {0, 1}  # the names chosen fill both shares
    src = gs.read_jsonl(d, schema=SCHEMA, max_rows=150, max_delay="20ms", follow=True,
                        poll_interval="20ms")
    shares = [src.split(i, 2) for i in range(2)]
    files = sorted(d.iterdir())
    before = [[f.name for f in s.file_share.files(files)] for s in shares]  # type: ignore[attr-defined]
    got = []
    for i, share in enumerate(shares):
        want = 200 * sum(1 for n in names if share_of[n] == i)
        rows = _rows(_take(share, want))
        assert len(rows) == want and sorted({r[3] // 200 for r in rows}) == [
            k for k, n in enumerate(names) if share_of[n] == i]
        got.append(rows)
    assert sorted(r[3] for rows in got for r in rows) == list(range(1200))
    # new files join one share each; the old ones stay where they were
    _text_files(d, "jsonl", [f"part-{i:02d}.jsonl" for i in range(6, 12)], rows=1, seed=60)
    files = sorted(d.iterdir())
    after = [[f.name for f in s.file_share.files(files)] for s in shares]  # type: ignore[attr-defined]
    assert [[n for n in a if n in names] for a in after] == before
    assert sorted(after[0] + after[1]) == [f.name for f in files]


def test_file_share_by_position_and_by_row_group() -> None:
    files = [Path(f"d/{c}.parquet") for c in "abc"]
    assert FileShare.of(files, 0, 2, False).picked == {"d/a.parquet": None, "d/c.parquet": None}
    groups = {"a": 3, "b": None, "c": 2}  # b: a footer that cannot be read now
    share = FileShare.of(files, 1, 4, False, lambda f: groups[f.stem])
    # units in order: a0 a1 a2 b c0 c1 -> numbers 0..5; share 1 takes 1 and 5
    assert share.picked == {"d/a.parquet": [1], "d/c.parquet": [1]}
    assert FileShare.of(files, 3, 4, False, lambda f: groups[f.stem]).picked == {"d/b.parquet": None}


def test_file_shares_keep_their_own_bad_file_lists(tmp_path: Path) -> None:
    d = _parquet_dir(tmp_path / "pq", files=2, rows=10, row_group=10, seed=70)
    (d / "part-005.parquet").write_bytes(b"not parquet")
    src = gs.read_parquet(d, on_bad_file="skip")
    share = src.split(0, 2)  # part-000 and part-005
    assert share.bad_files is not src.bad_files  # type: ignore[attr-defined]
    rows = _rows(list(share.open()))
    assert [r[3] for r in rows] == list(range(10))
    assert share.skipped_files == [str(d / "part-005.parquet")]  # type: ignore[attr-defined]
    assert src.skipped_files == []


# -- Kafka --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with kafka_broker() as bootstrap:
        yield bootstrap


def _kafka_topic(bootstrap: str, topic: str, partitions: int, table: pa.Table) -> None:
    """Create ``topic``; row ``n`` goes to partition ``n % partitions`` as JSON."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                           replication_factor=1)]).values():
        f.result(timeout=20)
    producer = Producer({"bootstrap.servers": bootstrap})
    failed: list[Any] = []
    for r in table.to_pylist():
        value = json.dumps({"ts": int(r["ts"].timestamp() * 1000), "k": r["k"], "v": r["v"],
                            "n": r["n"]}).encode()
        producer.produce(topic, value, partition=r["n"] % partitions,
                         on_delivery=lambda err, _m: failed.append(err) if err else None)
    assert producer.flush(20) == 0 and not failed, failed


@pytest.mark.parametrize("count", [2, 3])
def test_kafka_shares_are_partitions_by_position(kafka: str, count: int) -> None:
    topic = f"split{count}"
    _kafka_topic(kafka, topic, 4, _table(2000, seed=80))
    src = gs.kafka(topic, kafka, schema=SCHEMA, group=f"g{count}", max_rows=200, bounded=True)
    got = _check_shares(src, count, ordered=False)
    for i, rows in enumerate(got):
        mine = [0, 1, 2, 3][i::count]
        assert sorted({r[3] % 4 for r in rows}) == mine
        for p in mine:  # each partition whole, in its order
            assert [r[3] for r in rows if r[3] % 4 == p] == list(range(p, 2000, 4))
        share = src.split(i, count)
        batches = list(share.open())
        # offsets and lag cover the share's partitions alone, in the unsplit form
        assert batches[-1].offset == {str(p): 500 for p in mine}
        assert share.lag() == {f"{topic}/{p}": 0 for p in mine}
        # commits too: a new run of share i without a checkpoint reads nothing again,
        # and the other shares' partitions are still uncommitted
        share.commit(batches[-1].offset)
        assert list(src.split(i, count).open()) == []
    assert _rows(list(src.split(count - 1, count).open())) == []
    assert len(_rows(list(gs.kafka(topic, kafka, schema=SCHEMA, bounded=True).open()))) == 2000


def test_kafka_share_pickles_and_reads_on_its_own(kafka: str) -> None:
    cloudpickle = _cloudpickle()

    _kafka_topic(kafka, "shipped", 4, _table(400, seed=81))
    src = gs.kafka("shipped", kafka, schema=SCHEMA, max_rows=64, bounded=True)
    share = src.split(1, 2)
    assert share._lock is not src._lock  # type: ignore[attr-defined]
    back = cloudpickle.loads(cloudpickle.dumps(share))
    assert back.describe() == "kafka(shipped@" + kafka + ", json) [share 1/2]"
    assert sorted(r[3] for r in _rows(list(back.open()))) == [
        n for n in range(400) if n % 4 in (1, 3)]
    one = src.split(0, 1)  # count 1: the whole topic
    assert one.shared_as is None and len(_rows(list(one.open()))) == 400


# -- Redis streams ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _xadd(url: str, stream: str, table: pa.Table) -> None:
    import redis

    r = redis.Redis.from_url(url)
    pipe = r.pipeline()
    for row in table.to_pylist():
        pipe.xadd(stream, {"ts": int(row["ts"].timestamp() * 1000), "k": row["k"],
                           "v": repr(row["v"]), "n": row["n"]})
    pipe.execute()
    r.close()


def _round_robin(shares: list[Source], offsets: list[Any] | None = None,
                 stop_after: dict[int, int] | None = None) -> list[list[SourceBatch]]:
    """Read bounded shares a batch at a time in turn, as parallel partitions would;
    share ``i`` stops after ``stop_after[i]`` batches."""
    its = [s.open(None if offsets is None else offsets[i]) for i, s in enumerate(shares)]
    got: list[list[SourceBatch]] = [[] for _ in shares]
    live = set(range(len(shares)))
    while live:
        for i in sorted(live):
            if stop_after is not None and len(got[i]) >= stop_after.get(i, 1 << 30):
                its[i].close()  # type: ignore[attr-defined]
                live.discard(i)
                continue
            b = next(its[i], None)
            if b is None:
                live.discard(i)
            else:
                got[i].append(b)
    return got


def test_redis_shares_are_consumers_of_one_group(redis_url: str) -> None:
    import redis

    table = _table(1000, seed=90)
    _xadd(redis_url, "orders", table)
    src = gs.redis_stream(redis_url, "orders", group="g", consumer="w", schema=SCHEMA,
                          max_rows=60, bounded=True)
    shares = [src.split(i, 3) for i in range(3)]
    assert [s.describe() for s in shares] == [
        f"redis_stream(orders, group g) [share {i}/3]" for i in range(3)]
    got = _round_robin(list(shares))
    rows = [_rows(b) for b in got]
    assert all(rows), [len(r) for r in rows]  # each share took part
    for share_rows in rows:  # stream order within a share
        assert [r[3] for r in share_rows] == sorted(r[3] for r in share_rows)
    assert Counter(r for rs in rows for r in rs) == Counter(_rows(list(gs.from_arrow(
        table).open())))
    r = redis.Redis.from_url(redis_url)
    consumers = {c["name"].decode(): c["pending"] for c in r.xinfo_consumers("orders", "g")}
    assert consumers == {f"w-{i}": len(rows[i]) for i in range(3)}
    for share, batches in zip(shares, got, strict=True):  # each acks only its own entries
        share.commit(batches[-1].offset)
    assert r.xpending("orders", "g")["pending"] == 0
    r.close()


def test_redis_share_resumes_from_its_offset_without_moving_the_group(redis_url: str) -> None:
    table = _table(600, seed=91)
    _xadd(redis_url, "resume", table)
    src = gs.redis_stream(redis_url, "resume", group="g", consumer="w", schema=SCHEMA,
                          max_rows=50, bounded=True)
    shares = [src.split(i, 2) for i in range(2)]
    # share 0 reads 3 batches and dies (nothing committed); share 1 reads on meanwhile
    first = _round_robin(list(shares), stop_after={0: 3, 1: 4})
    # both restart from their checkpoints: share 0's after its batch 1 (its batches 2 and
    # 3 come again, first), share 1's after its last batch (nothing again); the group is
    # not moved back to share 0's offset, so share 1 gets none of share 0's entries
    again = _round_robin([src.split(0, 2), src.split(1, 2)],
                         offsets=[first[0][0].offset, first[1][-1].offset])
    assert _rows(again[0][:2]) == _rows(first[0][1:3])
    done = _rows(first[0][:1]) + _rows(again[0]) + _rows(first[1]) + _rows(again[1])
    assert Counter(done) == Counter(_rows(list(gs.from_arrow(table).open())))


def test_redis_needs_a_group_to_split_and_shares_pickle(redis_url: str) -> None:
    cloudpickle = _cloudpickle()

    plain = gs.redis_stream(redis_url, "any", schema=SCHEMA)
    with pytest.raises(gs.IngestError, match=r"redis_stream\(any\): a stream is split across "
                       r"partitions by a consumer group; give group="):
        plain.split(0, 2)
    assert plain.split(0, 1).consumer == plain.consumer  # type: ignore[attr-defined]
    share = gs.redis_stream(redis_url, "any", group="g", schema=SCHEMA).split(1, 2)
    back = cloudpickle.loads(cloudpickle.dumps(share))
    assert back.consumer == f"gpustream-{os.getpid()}-1"
    assert back.shared_as == (1, 2) and back._lock is not share._lock  # type: ignore[attr-defined]
