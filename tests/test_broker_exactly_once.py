"""Broker sources commit only what the output made durable; broker sinks commit with
checkpoints (a real Kafka-protocol broker, Tansu, and a real Valkey/Redis server).

- Sources: the group's offsets (Kafka) and acknowledgements (Redis ``XACK``) move only
  when ``commit(offset)`` is called, which the runtime does after the checkpoint holding
  the offset (or, without checkpoints, after the batch went through to the sinks).
- Kafka sink: a transaction per checkpoint, fenced and aborted on restart. Tansu writes the
  transaction markers and fences, but its fetch does not hide aborted records from
  ``read_committed`` consumers, so on Tansu the output of a crashed run is at-least-once
  and the tests check that the repeats are exactly the aborted transaction's rows.
- Redis sink: rows staged, moved into the stream when their checkpoint is on disk.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.threaded import SourceThreads
from gpustream.runtime.checkpoint import CheckpointStore
from gpustream.sinks.brokers import _MOVE_CHUNK
from tests.servers import kafka_broker, redis_server
from tests.test_brokers import SCHEMA, _events, _produce, _topic, _xadd
from tests.test_checkpoints import _Crash as _CrashAfter


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _committed(bootstrap: str, topic: str, group: str, parts: int) -> dict[str, int]:
    """The group's committed offsets as a second consumer of the group sees them."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(parts)], timeout=10)
    finally:
        c.close()
    return {str(tp.partition): tp.offset for tp in got if tp.offset >= 0}


def _read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message's JSON value, in offset order per partition (one partition here)."""
    src = gs.kafka(topic, bootstrap, schema={"n": "int64"}, bounded=True)
    return pa.Table.from_batches([b.data for b in src.open()]).to_pylist()


def _high(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks",
                  "isolation.level": "read_uncommitted"})  # not the last stable offset
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        c.close()


def _batch(ns: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"n": pa.array(ns, pa.int64())})


# -- sources ------------------------------------------------------------------------------

def test_kafka_offsets_are_committed_by_commit_only(kafka: str) -> None:
    _topic(kafka, "held", 2)
    events = _events(600, seed=21)
    _produce(kafka, "held", [(e["n"] % 2, json.dumps(e).encode()) for e in events])
    src = gs.kafka("held", kafka, schema=SCHEMA, group="g-held", max_rows=50)
    # the reader runs on its own thread, waiting in consume(), as in a run
    threads = SourceThreads([src.open()], capacity=2)
    arrivals = iter(threads)
    try:
        first, second = (next(arrivals).item for _ in range(2))
        assert isinstance(first, SourceBatch) and isinstance(second, SourceBatch)
        assert _committed(kafka, "held", "g-held", 2) == {}  # read, not committed
        # commit() from this thread while the reader waits in consume() returns
        # (confluent-kafka blocks a commit through the consumer that is consuming)
        t = threading.Thread(target=src.commit, args=(first.offset,))
        t.start()
        t.join(20)
        assert not t.is_alive(), "commit() hung while the source thread consumed"
        assert _committed(kafka, "held", "g-held", 2) == first.offset
        src.commit(second.offset)
        assert _committed(kafka, "held", "g-held", 2) == second.offset
    finally:
        threads.close()
    # a bounded read that has ended: the final commit still lands, and its client closes
    batches = list(gs.kafka("held", kafka, schema=SCHEMA, group="g-held", max_rows=50,
                            bounded=True).open(second.offset))
    ended = gs.kafka("held", kafka, schema=SCHEMA, group="g-held", bounded=True)
    ended.commit(batches[-1].offset)
    assert _committed(kafka, "held", "g-held", 2) == {"0": 300, "1": 300}
    assert ended._committer is None


def test_redis_entries_stay_pending_until_commit(redis_url: str) -> None:
    import redis

    events = _events(1000, seed=22)
    ids = _xadd(redis_url, "held", events)
    r = redis.Redis.from_url(redis_url)
    src = gs.redis_stream(redis_url, "held", group="g", consumer="w", schema=SCHEMA,
                          max_rows=100, bounded=True)
    it = src.open()
    b1, _, b3 = next(it), next(it), next(it)
    assert r.xpending("held", "g")["pending"] == 300
    # read and not committed is in the pipeline, not behind: 700 undelivered
    assert src.lag() == {"held": 700}
    src.commit(b1.offset)
    held = r.xpending_range("held", "g", min="-", max="+", count=1000)
    assert [h["message_id"] for h in held] == ids[100:300]  # b1's entries acknowledged
    src.commit(b3.offset)  # covers b2 too
    assert r.xpending("held", "g")["pending"] == 0
    rest = list(it)
    assert r.xpending("held", "g")["pending"] == 700
    src.commit(rest[-1].offset)  # the final commit, after the read ended
    assert r.xpending("held", "g")["pending"] == 0 and src._acker is None
    r.close()


def test_redis_restart_from_a_checkpoint_rereads_after_it_and_acks_up_to_it(
        redis_url: str) -> None:
    import redis

    events = _events(600, seed=23)
    _xadd(redis_url, "ck", events)
    r = redis.Redis.from_url(redis_url)
    dead = gs.redis_stream(redis_url, "ck", group="g", consumer="pid-1", schema=SCHEMA,
                           max_rows=100, bounded=True)
    it = dead.open()
    b1, _, _ = next(it), next(it), next(it)
    it.close()  # type: ignore[attr-defined]  # died after a checkpoint at b1: 300 pending
    assert r.xpending("ck", "g")["pending"] == 300
    # a new process (another consumer name) resumes from the checkpoint's offset
    again = gs.redis_stream(redis_url, "ck", group="g", consumer="pid-2", schema=SCHEMA,
                            max_rows=100, bounded=True)
    batches = list(again.open(b1.offset))
    got = [n for b in batches for n in b.data["n"].to_pylist()]
    assert got == [e["n"] for e in events[100:]]  # what pid-1 held after b1, then the rest
    assert r.xpending("ck", "g")["pending"] == 500  # b1's entries: acked on restart
    again.commit(batches[-1].offset)
    assert r.xpending("ck", "g")["pending"] == 0
    r.close()


# -- sinks --------------------------------------------------------------------------------

def test_kafka_sink_commits_a_transaction_per_checkpoint_and_fences_a_dead_run(
        kafka: str) -> None:
    _topic(kafka, "tx", 1)
    schema = pa.schema([("n", pa.int64())])
    first = gs.to_kafka("tx", kafka)
    first.open(schema)
    first.restore(None, 0, "tx-test/sink0")
    assert first.transactional_id == "gpustream-tx-test/sink0"
    first.write(_batch([0, 1, 2]))
    assert first.prepare(1) == {"transactional_id": "gpustream-tx-test/sink0"}
    first.commit(1)
    assert _high(kafka, "tx") == 4  # three records and the transaction's commit marker
    first.write(_batch([3, 4]))  # after checkpoint 1: in the open transaction
    first.producer.flush(10)
    # the run dies; the next one restores checkpoint 1: the dead run is fenced and its
    # open transaction aborted (an abort marker after its two records)
    second = gs.to_kafka("tx", kafka)
    second.open(schema)
    second.restore({"transactional_id": "gpustream-tx-test/sink0"}, 1, "tx-test/sink0")
    assert _high(kafka, "tx") == 7
    first.write(_batch([5]))  # the dead run's producer, were it still alive, is refused
    first.producer.flush(10)
    with pytest.raises(RuntimeError, match=r"checkpoint 2 .* did not commit \(PRODUCER_FENCED"):
        first.prepare(2)
    second.write(_batch([3, 4]))
    second.prepare(2)
    second.commit(2)
    second.close()
    assert _high(kafka, "tx") == 10
    # Tansu shows the aborted 3, 4 to read_committed consumers too (Apache Kafka does not)
    assert [r["n"] for r in _read_topic(kafka, "tx")] == [0, 1, 2, 3, 4, 3, 4]


def test_kafka_sink_closing_aborts_rows_after_the_last_checkpoint(kafka: str) -> None:
    _topic(kafka, "tx-close", 1)
    sink = gs.to_kafka("tx-close", kafka)
    sink.open(pa.schema([("n", pa.int64())]))
    sink.restore(None, 0, "close-test/sink0")
    sink.write(_batch([0, 1]))
    sink.prepare(1)
    sink.commit(1)
    sink.write(_batch([2]))
    sink.producer.flush(10)  # on the broker, in the open transaction
    assert _high(kafka, "tx-close") == 4  # 0, 1, commit marker, 2
    sink.close()  # a run that stops after an error: its restart writes row 2 again
    assert _high(kafka, "tx-close") == 5  # the abort marker: the transaction is over
    # so the restart finds nothing open to abort (no marker added)
    again = gs.to_kafka("tx-close", kafka)
    again.open(pa.schema([("n", pa.int64())]))
    again.restore({}, 1, "close-test/sink0")
    again.close()
    assert _high(kafka, "tx-close") == 5


def test_kafka_sink_without_checkpoints_has_each_batch_on_the_broker_when_write_returns(
        kafka: str) -> None:
    _topic(kafka, "plain", 1)
    sink = gs.to_kafka("plain", kafka)
    sink.open(pa.schema([("n", pa.int64())]))
    sink.write(_batch(list(range(100))))
    # before close(): the runtime commits the source offsets right after write()
    assert [r["n"] for r in _read_topic(kafka, "plain")] == list(range(100))
    assert sink.transactional_id is None
    sink.close()


def test_kafka_sink_falls_back_to_idempotent_writes_without_transactions(
        kafka: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import confluent_kafka
    from confluent_kafka import KafkaError, KafkaException

    class NoTransactions(confluent_kafka.Producer):  # a broker without InitProducerId
        def init_transactions(self, *args: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.UNSUPPORTED_VERSION))

    monkeypatch.setattr(confluent_kafka, "Producer", NoTransactions)
    _topic(kafka, "no-tx", 1)
    sink = gs.to_kafka("no-tx", kafka)
    sink.open(pa.schema([("n", pa.int64())]))
    with caplog.at_level(logging.WARNING, logger="gpustream"):
        sink.restore(None, 0, "no-tx/sink0")
    assert "at-least-once" in caplog.text and sink.transactional_id is None
    sink.write(_batch([1, 2]))
    assert sink.prepare(1) == {}
    sink.close()
    assert [r["n"] for r in _read_topic(kafka, "no-tx")] == [1, 2]


def _stream_ns(url: str, stream: str) -> list[int]:
    import redis

    r = redis.Redis.from_url(url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(stream)  # type: ignore[assignment]
        return [int(f[b"n"]) for _, f in entries]
    finally:
        r.close()


def test_redis_sink_stages_rows_and_moves_them_at_checkpoint_commit(redis_url: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    schema = pa.schema([("n", pa.int64())])
    sink = gs.to_redis_stream(redis_url, "out")
    sink.open(schema)
    sink.restore(None, 0, "p/sink0")
    sink.write(_batch(list(range(_MOVE_CHUNK + 500))))  # more than one move chunk
    assert r.xlen("out") == 0  # staged, not visible
    state = sink.prepare(1)
    sink.write(_batch([-1, -2]))  # after checkpoint 1
    sink.commit(1)
    assert _stream_ns(redis_url, "out") == list(range(_MOVE_CHUNK + 500))
    assert sink.staging is not None and r.xlen(sink.staging) == 2
    # the run dies; the restart from checkpoint 1 drops what it staged after it
    again = gs.to_redis_stream(redis_url, "out")
    again.open(schema)
    again.restore(state, 1, "p/sink0")
    assert r.xlen("out") == _MOVE_CHUNK + 500 and not r.exists(sink.staging)
    # a run that died after the checkpoint was written, before its commit moved the rows:
    # the restart moves them
    again.write(_batch([7, 8]))
    state = again.prepare(2)
    later = gs.to_redis_stream(redis_url, "out")
    later.open(schema)
    later.restore(state, 2, "p/sink0")
    later.restore(state, 2, "p/sink0")  # twice (a restart that died too): still once
    assert _stream_ns(redis_url, "out")[-3:] == [_MOVE_CHUNK + 499, 7, 8]
    for s in (sink, again, later):
        s.close()
    r.close()


# -- end to end ---------------------------------------------------------------------------

class _Crash(_CrashAfter):
    """test_checkpoints' crashing source (``after=None``: no crash), passing commits on."""

    def __init__(self, inner: Source, after: int | None) -> None:
        super().__init__(inner, -1 if after is None else after)
        self.bounded = inner.bounded

    def commit(self, offset: Any) -> None:
        self.inner.commit(offset)


def test_kafka_to_redis_checkpointed_run_crashed_and_restarted_writes_every_row_once(
        kafka: str, redis_url: str, tmp_path: Path) -> None:
    _topic(kafka, "e2e-in", 2)
    events = _events(3000, seed=24)
    _produce(kafka, "e2e-in", [(e["n"] % 2, json.dumps(e).encode()) for e in events])
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)

    def run(after: int | None) -> gs.RunStats:
        p = gs.Pipeline("k2r", engine="cpu")
        src = gs.kafka("e2e-in", kafka, schema=SCHEMA, group="k2r", max_rows=200, bounded=True)
        (p.source(_Crash(src, after), event_time="ts", name="in")
         .filter(gs.col("amount") > 0).sink(gs.to_redis_stream(redis_url, "e2e-out")))
        return p.run(checkpoint=ck)

    with pytest.raises(OSError, match="lost power"):
        run(after=10)  # 10 batches through; checkpoints after batches 3, 6 and 9
    # the group's offsets: those of the last checkpoint, not of the 10th batch
    committed = _committed(kafka, "e2e-in", "k2r", 2)
    last = CheckpointStore(tmp_path / "ck", "k2r").latest()
    assert last is not None and last.seq == 3 and last.offsets["in"] == committed
    # the stream: exactly the rows before those offsets, once (the 10th batch's rows
    # were staged, not visible)
    upto = [e["n"] for e in events if e["n"] // 2 < committed[str(e["n"] % 2)]]
    assert Counter(_stream_ns(redis_url, "e2e-out")) == Counter(upto)
    stats = run(after=None)
    assert stats.restored_checkpoint == 3 and stats.events_in == 3000 - len(upto)
    assert Counter(_stream_ns(redis_url, "e2e-out")) == Counter(e["n"] for e in events)
    assert _committed(kafka, "e2e-in", "k2r", 2) == {"0": 1500, "1": 1500}


def test_redis_to_kafka_checkpointed_run_crashed_and_restarted(
        kafka: str, redis_url: str, tmp_path: Path) -> None:
    import redis

    events = _events(2000, seed=25)
    _xadd(redis_url, "e2e-in", events)
    _topic(kafka, "e2e-out", 1)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=4)

    def run(after: int | None, consumer: str) -> gs.RunStats:
        p = gs.Pipeline("r2k", engine="cpu")
        src = gs.redis_stream(redis_url, "e2e-in", group="r2k", consumer=consumer,
                              schema=SCHEMA, max_rows=100, bounded=True)
        (p.source(_Crash(src, after), event_time="ts", name="in")
         .select("n").sink(gs.to_kafka("e2e-out", kafka)))
        return p.run(checkpoint=ck)

    with pytest.raises(OSError, match="lost power"):
        run(after=10, consumer="pid-1")  # checkpoints after batches 4 and 8
    r = redis.Redis.from_url(redis_url)
    # read after checkpoint 2: the two batches written, and the one read when it died
    assert r.xpending("e2e-in", "r2k")["pending"] == 300
    stats = run(after=None, consumer="pid-2")
    assert stats.restored_checkpoint == 2 and stats.events_in == 2000 - 800
    assert r.xpending("e2e-in", "r2k")["pending"] == 0
    r.close()
    got = Counter(row["n"] for row in _read_topic(kafka, "e2e-out"))
    assert set(got) == {e["n"] for e in events}  # every row, at least once
    # once, but for what the dead run wrote after checkpoint 2 in the transaction it
    # aborted when closing (or its restart would have): read_committed on Apache Kafka
    # hides those, Tansu shows the ones that had reached it
    assert {n for n, c in got.items() if c > 1} <= set(range(800, 1000))
    assert max(got.values()) <= 2
