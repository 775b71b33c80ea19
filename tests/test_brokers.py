"""Kafka (a real Kafka-protocol broker: Tansu), Redis Streams (redis-server), sockets, stdin.

Each source must yield exactly the records written, in order per partition, with bad
records as dead letters and offsets that resume.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.ingest.kafka import avro_schema
from gpustream.ingest.schema import as_schema
from gpustream.ingest.source import Source, SourceBatch
from tests.servers import kafka_broker, redis_server

SCHEMA = {"ts": "timestamp[ms]", "card": "string", "amount": "float64", "n": "int64"}


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(0, 50, n))
    return [{"ts": int(t), "card": f"c{int(c)}", "amount": round(float(a), 2), "n": i}
            for i, (t, c, a) in enumerate(zip(ts, rng.integers(0, 30, n),
                                              rng.uniform(1, 500, n), strict=True))]


def _rows(batches: list[SourceBatch]) -> list[dict[str, Any]]:
    out = []
    for b in batches:
        d = b.data.to_pydict()
        d["ts"] = b.data["ts"].cast(pa.int64()).to_pylist()
        out += [dict(zip(d, vals, strict=True)) for vals in zip(*d.values(), strict=True)]
    return out


def _take(src: Source, rows: int, offset: Any = None,
          timeout: float = 30.0) -> list[SourceBatch]:
    """Read an unbounded source until ``rows`` rows (or the timeout)."""
    got: list[SourceBatch] = []
    deadline = time.monotonic() + timeout
    it = src.open(offset)
    try:
        for b in it:
            got.append(b)
            if sum(x.data.num_rows for x in got) >= rows or time.monotonic() > deadline:
                break
    finally:
        it.close()  # type: ignore[attr-defined]
    return got


# -- Kafka --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with kafka_broker() as bootstrap:
        yield bootstrap


def _topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=partitions,
                                           replication_factor=1)]).values():
        f.result(timeout=20)


def _produce(bootstrap: str, topic: str,
             values: Sequence[tuple[int, bytes | None]]) -> dict[int, int]:
    """Produce with the producer's default batching (linger, batch size); returns each
    partition's end offset as the broker's delivery reports give it."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    ends: dict[int, int] = {}
    failed: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    for partition, value in values:
        producer.produce(topic, value, partition=partition, on_delivery=delivered)
    assert producer.flush(20) == 0 and not failed, failed
    return ends


def _by_partition(events: list[dict[str, Any]], parts: int) -> list[tuple[int, dict[str, Any]]]:
    return [(e["n"] % parts, e) for e in events]


def test_kafka_json_yields_every_record_in_order_per_partition(kafka: str) -> None:
    _topic(kafka, "cards", 3)
    events = _events(3000, seed=1)
    ends = _produce(kafka, "cards",
                    [(p, json.dumps(e).encode()) for p, e in _by_partition(events, 3)])
    assert ends == {0: 1000, 1: 1000, 2: 1000}
    src = gs.kafka("cards", kafka, schema=SCHEMA, max_rows=500, bounded=True)
    batches = list(src.open())
    got = _rows(batches)
    assert len(got) == 3000 and all(b.data.num_rows <= 500 for b in batches)
    for part in range(3):
        assert [r for r in got if r["n"] % 3 == part] == [e for e in events if e["n"] % 3 == part]
    assert batches[-1].offset == {"0": 1000, "1": 1000, "2": 1000}
    assert not any(b.rejects for b in batches)


def test_kafka_bounded_reads_every_batched_record_and_stops_at_the_end_as_of_the_start(
        kafka: str) -> None:
    # the producer batches thousands of records together: a broker may list a partition's
    # end as the last batch's base offset + 1 (Tansu does), far short of the real end
    _topic(kafka, "batched", 1)
    events = _events(5000, seed=13)
    ends = _produce(kafka, "batched", [(0, json.dumps(e).encode()) for e in events])
    assert ends == {0: 5000}
    it = gs.kafka("batched", kafka, schema=SCHEMA, max_rows=700, bounded=True).open()
    first = next(it)
    # records written after the read started are past its end
    _produce(kafka, "batched", [(0, json.dumps(e).encode()) for e in _events(300, seed=14)])
    time.sleep(1.0)  # long enough for the consumer's next fetches to see them
    batches = [first, *it]
    assert _rows(batches) == events
    assert batches[-1].offset == {"0": 5000}


def test_kafka_lag_is_each_partitions_end_less_the_next_offset_to_read(kafka: str) -> None:
    _topic(kafka, "lagging", 3)
    events = _events(3000, seed=15)
    _produce(kafka, "lagging", [(p, json.dumps(e).encode()) for p, e in _by_partition(events, 3)])
    src = gs.kafka("lagging", kafka, schema=SCHEMA, max_rows=100)
    assert src.lag() is None  # nothing read yet
    it = src.open()
    first = next(it)
    lag = src.lag()  # the partitions fetched so far: at least the one this batch came from
    assert lag is not None and lag, lag
    for label, behind in lag.items():
        part = label.removeprefix("lagging/")
        assert behind == 1000 - first.offset[part], (label, lag, first.offset)
    got = [first]
    for b in it:
        got.append(b)
        if sum(x.data.num_rows for x in got) >= 3000:
            break
    it.close()  # type: ignore[attr-defined]
    assert len(_rows(got)) == 3000
    assert src.lag() == {"lagging/0": 0, "lagging/1": 0, "lagging/2": 0}


def test_kafka_resumes_from_offsets_and_commits_for_its_group(kafka: str) -> None:
    _topic(kafka, "resume", 2)
    events = _events(400, seed=2)
    _produce(kafka, "resume", [(p, json.dumps(e).encode()) for p, e in _by_partition(events, 2)])
    src = gs.kafka("resume", kafka, schema=SCHEMA, group="g1", max_rows=64, bounded=True)
    first = _take(src, 150)
    seen = {r["n"] for r in _rows(first)}
    # reading commits nothing: the runtime calls commit() once the output is durable
    assert len(_rows(list(src.open()))) == 400
    src.commit(first[-1].offset)
    # a new run of the group starts where the commit says
    rest = _rows(list(src.open()))
    assert sorted(r["n"] for r in rest) == sorted(set(range(400)) - seen)
    # from explicit offsets (a checkpoint's): exactly the records after them
    src2 = gs.kafka("resume", kafka, schema=SCHEMA, max_rows=64, bounded=True)
    after = _rows(list(src2.open(first[-1].offset)))
    assert {r["n"] for r in after} == set(range(400)) - seen


def test_kafka_bad_messages_become_dead_letters(kafka: str, tmp_path: Path) -> None:
    _topic(kafka, "dirty", 1)
    events = _events(200, seed=3)
    values: list[tuple[int, bytes | None]] = [(0, json.dumps(e).encode()) for e in events]
    values.insert(50, (0, b'{"ts": 1700000000000, "card": "c1", "amount": "lots", "n": -1}'))
    values.insert(100, (0, b"\xff\xfe not json"))
    values.insert(150, (0, None))  # a tombstone
    values.insert(170, (0, b'{"card": "c2", "amount": 3.0, "n": -2}'))  # no event time
    values.insert(10, (0, json.dumps(events[0], indent=2).encode()))  # pretty: still one event
    _produce(kafka, "dirty", values)
    p = gs.Pipeline("kafka-dirty", engine="cpu", dead_letter=tmp_path / "dead.jsonl")
    s = p.source(gs.kafka("dirty", kafka, schema=SCHEMA, bounded=True, max_rows=64),
                 event_time="ts", watermark=gs.Watermark.bounded("1s"))
    out = s.key_by("card").window(gs.Tumbling("1h"), name="w").agg(
        total=gs.col("amount").sum(), c=gs.count())
    rows: list[pa.RecordBatch] = []
    out.sink(gs.to_callback(rows.append))
    stats = p.run()
    assert stats.events_in == 201 and stats.bad_records == 4
    got = pa.Table.from_batches(rows)
    assert sum(got["c"].to_pylist()) == 201
    expected = sum(e["amount"] for e in events) + events[0]["amount"]
    assert abs(sum(got["total"].to_pylist()) - expected) < 1e-6
    letters = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    by_offset = {d["offset"]["offset"]: d for d in letters if "partition" in d["offset"]}
    assert sorted(by_offset) == [51, 101, 151]
    assert "amount" in by_offset[51]["reason"] or "JSON" in by_offset[51]["reason"]
    assert by_offset[101]["raw"].startswith("\\xff\\xfe not json")
    assert by_offset[151]["reason"] == "empty message"
    assert [d["reason"] for d in letters if "row" in d["offset"]] == ["missing event time 'ts'"]


def test_kafka_arrow_and_avro_payloads(kafka: str) -> None:
    import fastavro

    schema = as_schema(SCHEMA, "test")
    events = _events(300, seed=4)
    _topic(kafka, "arrow", 1)
    table = pa.Table.from_pylist([{**e, "ts": e["ts"]} for e in events]).cast(schema)
    payloads: list[tuple[int, bytes | None]] = []
    for start in range(0, 300, 100):  # a message per 100 rows
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, schema) as w:
            w.write_table(table.slice(start, 100))
        payloads.append((0, sink.getvalue()))
    payloads.append((0, b"not arrow"))
    _produce(kafka, "arrow", payloads)
    batches = list(gs.kafka("arrow", kafka, schema=SCHEMA, format="arrow", bounded=True).open())
    assert _rows(batches) == events
    assert [d.offset for b in batches for d in b.rejects] == [{"partition": 0, "offset": 3}]

    _topic(kafka, "avro", 1)
    parsed = fastavro.parse_schema(avro_schema(schema))
    records = []
    for e in events:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, {**e, "ts": e["ts"]})
        records.append((0, buf.getvalue()))
    records.insert(7, (0, b"\x01"))
    _produce(kafka, "avro", records)
    batches = list(gs.kafka("avro", kafka, schema=SCHEMA, format="avro", bounded=True).open())
    assert _rows(batches) == events
    assert [d.offset["offset"] for b in batches for d in b.rejects] == [7]


def test_kafka_unbounded_picks_up_new_messages(kafka: str) -> None:
    _topic(kafka, "live", 1)
    events = _events(50, seed=5)
    _produce(kafka, "live", [(0, json.dumps(e).encode()) for e in events[:20]])
    src = gs.kafka("live", kafka, schema=SCHEMA, max_delay="20ms")
    assert not src.bounded
    got: list[SourceBatch] = []

    def later() -> None:
        time.sleep(0.5)
        _produce(kafka, "live", [(0, json.dumps(e).encode()) for e in events[20:]])
    t = threading.Thread(target=later)
    t.start()
    got = _take(src, 50)
    t.join()
    assert _rows(got) == events
    assert len(got) >= 2  # the first 20 did not wait for the rest: max_delay closed a batch


def test_kafka_errors_are_clear(kafka: str) -> None:
    with pytest.raises(gs.IngestError, match="give schema="):
        gs.kafka("x", kafka, schema=None)
    with pytest.raises(gs.IngestError, match="format='xml' is not one of json, arrow, avro"):
        gs.kafka("x", kafka, schema=SCHEMA, format="xml")
    with pytest.raises(gs.IngestError, match="topic 'missing' is not on"):
        list(gs.kafka("missing", kafka, schema=SCHEMA, bounded=True).open())


# -- Redis Streams ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _xadd(url: str, stream: str, entries: list[dict[str, Any]]) -> list[bytes]:
    import redis

    r = redis.Redis.from_url(url)
    pipe = r.pipeline()
    for e in entries:
        pipe.xadd(stream, {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in e.items()})
    ids = pipe.execute()
    r.close()
    return list(ids)


def test_redis_stream_fields_as_columns_with_group_and_acks(redis_url: str) -> None:
    import redis

    events = _events(1000, seed=6)
    _xadd(redis_url, "payments", events)
    src = gs.redis_stream(redis_url, "payments", group="fraud", consumer="w1", schema=SCHEMA,
                          max_rows=300, bounded=True)
    batches = list(src.open())
    assert _rows(batches) == events
    assert [b.data.num_rows for b in batches] == [300, 300, 300, 100]
    r = redis.Redis.from_url(redis_url)
    # read, not acknowledged: the runtime calls commit() once the output is durable
    assert r.xpending("payments", "fraud")["pending"] == 1000
    src.commit(batches[-1].offset)
    assert r.xpending("payments", "fraud")["pending"] == 0  # every entry acknowledged
    # the group has consumed everything: a new bounded run of it reads nothing
    assert list(src.open()) == []
    # from an offset (a checkpoint's entry id): exactly what came after it
    again = gs.redis_stream(redis_url, "payments", group="fraud", consumer="w1", schema=SCHEMA,
                            bounded=True)
    assert _rows(list(again.open(batches[1].offset))) == events[600:]
    r.close()


def test_redis_stream_lag_is_what_the_group_has_not_finished(redis_url: str) -> None:
    import redis

    events = _events(1000, seed=16)
    _xadd(redis_url, "backlog", events)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("backlog", "g", id="0")
    r.xreadgroup("g", "dead", {"backlog": ">"}, count=40)  # taken by a reader that died
    r.close()
    src = gs.redis_stream(redis_url, "backlog", group="g", consumer="w", schema=SCHEMA,
                          max_rows=300, bounded=True)
    assert src.lag() is None  # nothing read yet
    it = src.open()
    first = next(it)
    assert first.data.num_rows == 300
    # 660 not yet delivered + the dead reader's 40 (the batch in hand is not behind)
    assert src.lag() == {"backlog": 700}
    rest = list(it)
    assert len(_rows([first, *rest])) == 960
    assert src.lag() == {"backlog": 40}  # only the dead reader's entries are left
    plain = gs.redis_stream(redis_url, "backlog", schema=SCHEMA, bounded=True)
    assert len(_rows(list(plain.open()))) == 1000 and plain.lag() is None  # no group: no lag


def test_redis_stream_redelivers_what_a_dead_reader_did_not_ack(redis_url: str) -> None:
    import redis

    events = _events(100, seed=7)
    _xadd(redis_url, "crash", events)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("crash", "g", id="0")
    r.xreadgroup("g", "w", {"crash": ">"}, count=40)  # a reader took 40 and died: no XACK
    assert r.xpending("crash", "g")["pending"] == 40
    src = gs.redis_stream(redis_url, "crash", group="g", consumer="w", schema=SCHEMA,
                          max_rows=30, bounded=True)
    batches = list(src.open())
    assert _rows(batches) == events  # the 40 pending first, then the 60 new
    src.commit(batches[-1].offset)
    assert r.xpending("crash", "g")["pending"] == 0
    r.close()


def test_redis_stream_json_field_and_bad_entries(redis_url: str, tmp_path: Path) -> None:
    events = _events(200, seed=8)
    entries: list[dict[str, Any]] = [{"doc": json.dumps(e)} for e in events]
    entries.insert(20, {"doc": '{"ts": "yesterday", "card": "c1", "amount": 1, "n": 0}'})
    entries.insert(40, {"other": "x"})
    ids = _xadd(redis_url, "docs", entries)
    batches = list(gs.redis_stream(redis_url, "docs", schema=SCHEMA, field="doc",
                                   bounded=True).open())
    assert _rows(batches) == events
    rejects = [d for b in batches for d in b.rejects]
    assert [d.offset["id"] for d in rejects] == [ids[20].decode(), ids[40].decode()]
    assert rejects[1].reason == "no field 'doc'"
    # field-per-column entries with a value of the wrong type
    _xadd(redis_url, "typed", [{"ts": "1700000000000", "card": "c1", "amount": "12.5", "n": "1"},
                               {"ts": "1700000000001", "card": "c2", "amount": "twelve", "n": "2"},
                               {"ts": "2024-01-01T00:00:00", "card": "c3", "amount": "1", "n": "3"}])
    (b,) = list(gs.redis_stream(redis_url, "typed", schema=SCHEMA, bounded=True).open())
    assert b.data["n"].to_pylist() == [1, 3]
    assert b.data["ts"].cast(pa.int64()).to_pylist() == [1_700_000_000_000, 1_704_067_200_000]
    assert "twelve" in b.rejects[0].raw and "double" in b.rejects[0].reason


def test_redis_stream_in_a_pipeline(redis_url: str, tmp_path: Path) -> None:
    events = _events(2000, seed=9)
    _xadd(redis_url, "pipe", events)
    p = gs.Pipeline(engine="cpu", dead_letter=tmp_path / "dead.jsonl")
    s = p.source(gs.redis_stream(redis_url, "pipe", group="p", schema=SCHEMA, max_rows=128,
                                 bounded=True), event_time="ts")
    got = s.key_by("card").window(gs.Tumbling("10s"), name="w").agg(c=gs.count()).collect()
    assert sum(got["c"].to_pylist()) == 2000


def test_redis_unreachable_is_clear() -> None:
    from tests.servers import free_port

    src = gs.redis_stream(f"redis://127.0.0.1:{free_port()}/0", "s", schema=SCHEMA)
    with pytest.raises(gs.IngestError, match=r"cannot reach .* is redis-server running"):
        list(src.open())


# -- socket and stdin ---------------------------------------------------------------------

def test_socket_source_reads_until_the_server_closes(tmp_path: Path) -> None:
    events = _events(5000, seed=10)
    payload = "".join(json.dumps(e) + "\n" for e in events).encode()
    payload = payload.replace(b"\n", b"\nnot json\n", 1)  # one bad line after the first
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        for i in range(0, len(payload), 7919):  # odd pieces: lines split across sends
            conn.sendall(payload[i:i + 7919])
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    p = gs.Pipeline(engine="cpu", dead_letter=tmp_path / "dead.jsonl")
    s = p.source(gs.socket("127.0.0.1", server.getsockname()[1], schema=SCHEMA, max_rows=1000),
                 event_time="ts")
    rows: list[pa.RecordBatch] = []
    s.sink(gs.to_callback(rows.append))
    stats = p.run()
    t.join()
    server.close()
    assert stats.events_in == 5000 and stats.bad_records == 1
    assert pa.Table.from_batches(rows)["n"].to_pylist() == list(range(5000))
    (letter,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["raw"] == "not json" and letter["offset"]["line"] == 2


def test_socket_batches_close_at_max_delay_when_events_trickle() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        for e in _events(3, seed=11):
            conn.sendall((json.dumps(e) + "\n").encode())
            time.sleep(0.3)
        done.wait(10)
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    src = gs.socket("127.0.0.1", server.getsockname()[1], schema=SCHEMA, max_delay="50ms")
    got = _take(src, 3)
    done.set()
    t.join()
    server.close()
    sizes = [b.data.num_rows for b in got]
    # 300 ms apart with max_delay 50 ms: batches close without waiting for max_rows (a
    # machine stalled for over 300 ms may merge two; never all three)
    assert sum(sizes) == 3 and len(sizes) >= 2, sizes


def test_socket_connection_refused_is_clear() -> None:
    from tests.servers import free_port

    src = gs.socket("127.0.0.1", free_port(), schema=SCHEMA)
    with pytest.raises(gs.IngestError, match=r"cannot connect to 127\.0\.0\.1:.*is a server listening"):
        list(src.open())


def test_stdin_source_reads_a_pipe() -> None:
    events = _events(300, seed=12)
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events).encode())
    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as pipe:
        got = _rows(list(gs.stdin(SCHEMA, stream=pipe, max_rows=100).open()))
    t.join()
    assert got == events
