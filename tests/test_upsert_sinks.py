"""Sinks that understand a changelog (issue 17): ``to_kafka(..., key=, upsert=True)``
writes a running aggregation's changelog as upserts (Flink's upsert-kafka): the topic,
compacted by key (the last message per key, a tombstone deleting it), is the result
table, the same as ``gs.materialize`` of the changelog and pandas' group-by."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from tests.servers import kafka_broker
from tests.test_brokers import _topic


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    with kafka_broker() as bootstrap:
        yield bootstrap


def _messages(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of partition 0, in offset order (read until 3 s bring nothing:
    the test broker reports a partition's end as its last record batch's start + 1)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "upserts",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        out: list[tuple[bytes | None, bytes | None]] = []
        while (msg := c.poll(3)) is not None:
            if msg.error() is None:
                out.append((msg.key(), msg.value()))
        return out
    finally:
        c.close()


def _compacted(messages: list[tuple[bytes | None, bytes | None]]) -> dict[int, Any]:
    table: dict[int, Any] = {}
    for key, value in messages:
        assert key is not None
        if value is None:
            del table[int(key)]  # a tombstone deletes a key the topic holds
        else:
            table[int(key)] = json.loads(value)
    return table


def test_a_changelog_upserted_to_kafka_is_the_result_table(kafka: str) -> None:
    rng = np.random.default_rng(4)
    n = 3000
    bids = pa.table({"auction": rng.integers(0, 30, n), "bidder": rng.integers(0, 12, n),
                     "price": rng.integers(1, 400, n), "ts": np.arange(n, dtype=np.int64)})
    _topic(kafka, "leads", 1)  # one partition: one order of every key's messages
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(bids, batch_rows=100), event_time="ts")
    # how many auctions each bidder leads: -U/+U as leads change, -D when all are lost
    leads = (s.top_k(1, by="price", per="auction").key_by("bidder")
             .agg(n=gs.count(), top=gs.col("price").sum()))
    log: list[pa.RecordBatch] = []
    leads.sink(gs.to_callback(log.append))
    leads.sink(gs.to_kafka("leads", kafka, key="bidder", upsert=True))
    p.run()
    changelog = pa.Table.from_batches(log)
    ops = changelog["op"].to_pylist()
    assert "-D" in ops and "-U" in ops
    messages = _messages(kafka, "leads")
    assert len(messages) == ops.count("+I") + ops.count("+U") + ops.count("-D")
    got = _compacted(messages)
    want = gs.materialize(changelog, key="bidder").to_pylist()
    assert got == {r["bidder"]: r for r in want}
    assert all("op" not in v for v in got.values())
    df = bids.to_pandas()
    best = df.loc[df.sort_values(["price", "ts"], ascending=[False, True])
                  .groupby("auction").head(1).index]
    assert {k: v["n"] for k, v in got.items()} == best.groupby("bidder").size().to_dict()


def test_upsert_needs_a_key_and_json() -> None:
    with pytest.raises(ValueError, match="upsert=True needs key="):
        gs.to_kafka("t", "127.0.0.1:9", upsert=True)
    with pytest.raises(ValueError, match="upsert=True needs key="):
        gs.to_kafka("t", "127.0.0.1:9", key="k", format="arrow", upsert=True)
