"""Sources on threads: bounded queue (backpressure), errors raised in the consumer."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.ingest.source import Source, SourceBatch
from gpustream.ingest.threaded import SourceThreads


def test_a_slow_consumer_holds_the_sources_back() -> None:
    produced = [0]

    def endless() -> Iterator[int]:
        for i in itertools.count():
            produced[0] += 1
            yield i

    with SourceThreads([endless()], capacity=3) as threads:
        it = iter(threads)
        first = [next(it).item for _ in range(5)]
        time.sleep(0.3)  # the consumer dawdles: the source must wait, not run ahead
        # at most: the 5 taken, 3 queued, 1 blocked in put, 1 being made
        assert produced[0] <= 5 + 3 + 2
    assert first == [0, 1, 2, 3, 4]


def test_a_source_error_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk on fire")

    with SourceThreads([failing()]) as threads, pytest.raises(OSError, match="disk on fire"):
        list(threads)


class _Boom(Source):
    name = "boom"

    def schema(self) -> pa.Schema:
        return pa.schema([("x", pa.int64())])

    def open(self, offset: object = None) -> Iterator[SourceBatch]:
        yield SourceBatch(pa.record_batch({"x": [1, 2]}), 2)
        raise ConnectionError("broker went away")


def test_a_pipeline_fails_with_its_source_error_and_closes_its_sinks() -> None:
    closed: list[bool] = []

    class Sink(gs.Sink):
        def write(self, batch: pa.RecordBatch) -> None:
            pass

        def close(self) -> None:
            closed.append(True)

    p = gs.Pipeline(engine="cpu")
    p.source(_Boom()).sink(Sink())
    with pytest.raises(ConnectionError, match="broker went away"):
        p.run()
    assert closed == [True]


def test_max_events_stops_an_unbounded_source() -> None:
    class Endless(Source):
        name = "endless"
        bounded = False

        def schema(self) -> pa.Schema:
            return pa.schema([("x", pa.int64())])

        def open(self, offset: object = None) -> Iterator[SourceBatch]:
            for i in itertools.count():
                yield SourceBatch(pa.record_batch({"x": [i] * 10}), i)

    got: list[int] = []
    p = gs.Pipeline(engine="cpu")
    p.source(Endless()).sink(gs.to_callback(lambda rb: got.extend(rb["x"].to_pylist())))
    stats = p.run(max_events=95)
    assert stats.events_in == 95 and stats.stopped_early and len(got) == 95
