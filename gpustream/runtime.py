"""Runs a physical plan: sources -> operators -> sinks, batch at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from gpustream.batch import Batch
from gpustream.ingest.deadletter import DeadLetter, DeadLetterFile, split_missing
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.source import SourceBatch
from gpustream.ingest.staging import Staged, Stager
from gpustream.ingest.threaded import SourceThreads
from gpustream.metrics import Metrics
from gpustream.operators.base import WATERMARK_END, TwoInputOperator
from gpustream.plan import SourceNode
from gpustream.planner import PhysicalNode, PhysicalPlan
from gpustream.sinks import DeadLetterSink, write_batch
from gpustream.watermark import NO_WATERMARK

__all__ = ["RunStats", "execute"]

log = logging.getLogger("gpustream")



@dataclass
class RunStats:
    """What a run did.

    Examples
    --------
    >>> s = RunStats("p", "cpu", events_in=10, events_out=4, batches_in=2, elapsed_s=0.5)
    >>> s.events_per_s
    20.0
    >>> print(s.summary())
    pipeline 'p' on cpu: 10 events in (2 batches), 4 rows out, 0 late, 0 bad records in 0.500 s (20 events/s)
    """

    pipeline: str
    backend: str
    events_in: int = 0
    events_out: int = 0
    batches_in: int = 0
    late_events: int = 0
    bad_records: int = 0
    elapsed_s: float = 0.0
    rows_out_by_sink: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    #: where the bad records went (None when there were none)
    dead_letters: str | None = None
    #: bytes copied host -> device through the pinned staging buffers (0 on cpu)
    bytes_staged: int = 0
    #: stopped by Ctrl-C (what was read up to then went through and the sinks closed)
    interrupted: bool = False

    @property
    def events_per_s(self) -> float:
        """Input events per second of wall time."""
        return self.events_in / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"pipeline {self.pipeline!r} on {self.backend}: {self.events_in} events in "
            f"({self.batches_in} batches), {self.events_out} rows out, {self.late_events} late, "
            f"{self.bad_records} bad records in {self.elapsed_s:.3f} s "
            f"({self.events_per_s:,.0f} events/s)"
            + (" (stopped at --max-events)" if self.stopped_early else "")
            + (" (interrupted)" if self.interrupted else "")
            + (f"; bad records in {self.dead_letters}" if self.dead_letters else "")
        )


class _Runner:
    def __init__(self, plan: PhysicalPlan, stats: RunStats) -> None:
        self.plan = plan
        self.stats = stats
        self.sink_names = {id(s): f"{i}: {s.describe()}" for i, (_, s) in enumerate(plan.sinks)}

    def push(self, pn: PhysicalNode, batch: Batch, port: int = 0) -> None:
        op = pn.op
        outs = op.process_port(port, batch) if isinstance(op, TwoInputOperator) else \
            op.process(batch)
        for out in outs:
            self.emit(pn, out)
        self.drain(pn)

    def drain(self, pn: PhysicalNode) -> None:
        """Route what the operator put on its side outputs (``.late``) to their nodes."""
        for port, batches in pn.op.side_outputs().items():
            for child in pn.side.get(port, []):
                for b in batches:
                    self.emit(child, b)

    def advance(self, pn: PhysicalNode, watermark: int, port: int = 0) -> None:
        """The stream's watermark moved: let every operator below fire what is due.

        An operator with two inputs passes on the smaller of its inputs' watermarks,
        and only when that one moved."""
        if isinstance(pn.op, TwoInputOperator):
            outs, combined = pn.op.input_watermark(port, watermark)
            for out in outs:
                self.emit(pn, out)
            self.drain(pn)
            if combined is None:
                return
            watermark = combined
        else:
            for out in pn.op.on_watermark(watermark):
                self.emit(pn, out)
            self.drain(pn)
        for child in pn.children:
            self.advance(child, watermark, pn.ports.get(id(child), 0))

    def emit(self, pn: PhysicalNode, batch: Batch) -> None:
        if not batch.num_rows:
            return
        for sink in pn.sinks:
            write_batch(sink, batch)
            self.stats.events_out += batch.num_rows
            key = self.sink_names[id(sink)]
            self.stats.rows_out_by_sink[key] = self.stats.rows_out_by_sink.get(key, 0) + batch.num_rows
        for child in pn.children:
            self.push(child, batch, pn.ports.get(id(child), 0))

    def end(self, pn: PhysicalNode, port: int = 0) -> None:
        """An input ended: fire everything (+infinity watermark), flush, and pass it on.

        An operator with two inputs ends when both have; before that, the end of one
        only moves its watermark."""
        if isinstance(pn.op, TwoInputOperator):
            outs, combined, done = pn.op.input_ended(port)
            for out in outs:
                self.emit(pn, out)
            self.drain(pn)
            if not done:
                if combined is not None:
                    for child in pn.children:
                        self.advance(child, combined, pn.ports.get(id(child), 0))
                return
        else:
            for out in pn.op.on_watermark(WATERMARK_END):
                self.emit(pn, out)
        for out in pn.op.finish():
            self.emit(pn, out)
        self.drain(pn)
        for child in pn.children:
            self.end(child, pn.ports.get(id(child), 0))
        for child in (c for cs in pn.side.values() for c in cs):
            self.end(child)

    def collect_counters(self, pn: PhysicalNode, seen: set[int]) -> None:
        if id(pn) in seen:
            return
        seen.add(id(pn))
        self.stats.late_events += getattr(pn.op, "late_events", 0)
        self.stats.bad_records += getattr(pn.op, "no_time_events", 0)
        for child in [*pn.children, *(c for cs in pn.side.values() for c in cs)]:
            self.collect_counters(child, seen)


@dataclass
class _Ingested:
    """A source batch as it leaves its source thread: rows encoded and staged."""

    staged: Staged | None
    rejects: tuple[DeadLetter, ...]
    offset: Any


def _ingest(node: SourceNode, batches: Iterator[SourceBatch], stager: Stager,
            dictionaries: dict[str, StringDictionary]) -> Iterator[_Ingested]:
    """Runs on the source's thread: rows without an event time to dead letters, strings
    to dictionary codes, and the copy to the device started (pinned, on a copy stream)."""
    for sb in batches:
        data, rejects = sb.data, sb.rejects
        if node.event_time is not None:
            data, missing = split_missing(data, node.event_time, node.source.name, sb.offset)
            rejects += missing
        staged = stager.stage(Batch.from_arrow(data, dictionaries)) if data.num_rows else None
        yield _Ingested(staged, rejects, sb.offset)


def _gauges(plan: PhysicalPlan) -> dict[str, int]:
    """Late events so far and windows holding state, read from the operators."""
    late = open_windows = 0
    seen: set[int] = set()
    todo = list(plan.sources)
    while todo:
        pn = todo.pop()
        if id(pn) in seen:
            continue
        seen.add(id(pn))
        late += getattr(pn.op, "late_events", 0)
        table = getattr(pn.op, "table", None)
        open_windows += getattr(table, "live_count", 0)
        todo += [*pn.children, *(c for cs in pn.side.values() for c in cs)]
    return {"late_events": late, "open_windows": open_windows}


def execute(plan: PhysicalPlan, pipeline: str, max_events: int | None = None,
            dead_letters: DeadLetterFile | DeadLetterSink | None = None,
            metrics: Metrics | None = None) -> RunStats:
    """Run a physical plan until its bounded sources end (or ``max_events`` inputs).

    Each source runs on its own thread into one bounded queue (backpressure), where its
    batches are also encoded (strings to dictionary codes) and staged to the device, so
    ingest overlaps compute. Batches are taken in arrival order; their bad records (and
    rows without an event time) are written to ``dead_letters`` and counted, the rest
    pushed through the operators to the sinks. ``metrics`` (the live view's and the
    Prometheus endpoint's) is updated after every batch.
    """
    backend = plan.backend
    stats = RunStats(pipeline, backend.name)
    log.info("pipeline %r runs on %s", pipeline, backend.describe())
    for pn, sink in plan.sinks:
        sink.open(pn.schema)
    started = time.perf_counter()
    nodes: list[SourceNode] = []
    for pn in plan.sources:
        assert isinstance(pn.node, SourceNode)
        nodes.append(pn.node)
    stagers = [Stager(backend) for _ in nodes]
    if metrics is not None:
        metrics.gauges = lambda: _gauges(plan)
        for n in nodes:
            if n.event_time is not None:
                t = n.source.schema().field(n.event_time).type
                metrics.unit = t.unit if pa.types.is_timestamp(t) else "ms"
    live = set(range(len(plan.sources)))
    runner = _Runner(plan, stats)
    threads: SourceThreads[_Ingested] = SourceThreads(
        [_ingest(n, n.source.open(), st, {}) for n, st in zip(nodes, stagers, strict=True)],
        capacity=2 + 2 * len(nodes), names=[n.name for n in nodes])
    try:
        try:
            for arrival in threads:
                i = arrival.index
                pn = plan.sources[i]
                if arrival.done:
                    live.discard(i)
                    runner.end(pn)
                    continue
                got = arrival.item
                assert got is not None
                if got.rejects:
                    if dead_letters is None:
                        raise RuntimeError("bad records but no dead-letter sink")  # pragma: no cover
                    dead_letters.write(got.rejects)
                    stats.bad_records += len(got.rejects)
                    stats.dead_letters = str(dead_letters.path)
                if got.staged is None:
                    if metrics is not None:
                        metrics.bad_records = stats.bad_records
                    continue
                t0 = time.perf_counter()
                batch = stagers[i].land(got.staged)
                if max_events is not None and stats.events_in + batch.num_rows >= max_events:
                    batch = batch.slice(0, max_events - stats.events_in)
                    stats.stopped_early = True
                stats.events_in += batch.num_rows
                stats.batches_in += 1
                runner.push(pn, batch)
                watermark = getattr(pn.op, "current", None)
                if watermark is not None and watermark != NO_WATERMARK:
                    runner.advance(pn, watermark)
                if metrics is not None:
                    metrics.events_out = stats.events_out
                    metrics.bad_records = stats.bad_records
                    metrics.batch(batch.num_rows, time.perf_counter() - t0,
                                  watermark if watermark != NO_WATERMARK else None)
                if stats.stopped_early:
                    break
            threads.close()
            for i in sorted(live):  # stopped at max_events: what is open fires now
                runner.end(plan.sources[i])
        except KeyboardInterrupt:  # Ctrl-C: stop cleanly, keep what was done, say so
            stats.interrupted = True
        seen: set[int] = set()
        for pn in plan.sources:
            runner.collect_counters(pn, seen)
        if metrics is not None:  # what the end of the sources fired
            metrics.events_out = stats.events_out
            metrics.bad_records = stats.bad_records
    finally:
        threads.close()
        stats.elapsed_s = time.perf_counter() - started
        stats.bytes_staged = sum(st.bytes for st in stagers)
        for _, sink in plan.sinks:
            sink.close()
        if dead_letters is not None:
            dead_letters.close()
    log.info("%s", stats.summary())
    return stats
