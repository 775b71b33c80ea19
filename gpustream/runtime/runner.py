"""Runs a physical plan: sources -> operators -> sinks, batch at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from gpustream.batch import Batch
from gpustream.compilecache import compile_notice
from gpustream.errors import PlanError
from gpustream.ingest.deadletter import DeadLetter, DeadLetterFile, split_missing
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import logical_schema
from gpustream.ingest.source import SourceBatch
from gpustream.ingest.staging import Staged, Stager
from gpustream.ingest.threaded import SourceThreads
from gpustream.metrics import Metrics
from gpustream.operators.base import OperatorCounters
from gpustream.plan.logical import JoinTableNode, SourceNode
from gpustream.plan.physical import PhysicalNode, PhysicalPlan
from gpustream.runtime.checkpoint import Checkpoint, Checkpointing, CheckpointStore, Fingerprint
from gpustream.runtime.stopping import GracefulStop
from gpustream.sinks.base import DeadLetterSink, Sink, write_batch
from gpustream.watermark import NO_WATERMARK

__all__ = ["RunStats", "execute"]

log = logging.getLogger("gpustream")
#: how often the runtime reads its sources' lag() for the metrics (seconds)
_LAG_EVERY_S = 0.5



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
    #: (event, window) pairs an event could not update (its window had fired): the
    #: late events' pairs, and those of events late for only some sliding windows
    dropped_memberships: int = 0
    bad_records: int = 0
    elapsed_s: float = 0.0
    rows_out_by_sink: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    #: where the bad records went (None when there were none)
    dead_letters: str | None = None
    #: bytes copied host -> device through the pinned staging buffers (0 on cpu)
    bytes_staged: int = 0
    #: stopped by Ctrl-C or SIGTERM (what was read up to then went through, a final
    #: checkpoint was taken when the run checkpoints, and the sinks closed)
    interrupted: bool = False
    #: the signal that stopped the run ("SIGINT", "SIGTERM"; None otherwise)
    stopped_by: str | None = None
    #: checkpoints taken in this run, and the one it started from (None: from the start)
    checkpoints: int = 0
    restored_checkpoint: int | None = None
    #: partitions the run had (``Pipeline.run(parallelism=...)``), and how many times a
    #: partitioned run rebuilt them from their last common checkpoint after losing a worker
    partitions: int = 1
    restarts: int = 0
    #: the Dask workers a partitioned run started with (0: not partitioned)
    workers: int = 0

    @property
    def events_per_s(self) -> float:
        """Input events per second of wall time."""
        return self.events_in / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"pipeline {self.pipeline!r} on {self.backend}: {self.events_in} events in "
            f"({self.batches_in} batches), {self.events_out} rows out, {self.late_events} late"
            + (f" ({self.dropped_memberships} (event, window) pairs dropped)"
               if self.dropped_memberships > self.late_events else "")
            + f", {self.bad_records} bad records in {self.elapsed_s:.3f} s "
            f"({self.events_per_s:,.0f} events/s)"
            + (" (stopped at --max-events)" if self.stopped_early else "")
            + ((f" (stopped by {self.stopped_by})" if self.stopped_by else " (interrupted)")
               if self.interrupted else "")
            + (f"; bad records in {self.dead_letters}" if self.dead_letters else "")
        )


class _Runner:
    def __init__(self, plan: PhysicalPlan, stats: RunStats) -> None:
        self.plan = plan
        self.stats = stats
        self.sink_names = {id(s): f"{i}: {s.describe()}" for i, (_, s) in enumerate(plan.sinks)}

    def push(self, pn: PhysicalNode, batch: Batch, port: int = 0) -> None:
        for out in pn.op.process_port(port, batch):
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

        Each operator says what it passes on (``Operator.input_watermark``): its input's,
        the one it computes for its output, or, with several inputs, the smallest of
        theirs, and only when that one moved (None: nothing to pass on)."""
        outs, passed = pn.op.input_watermark(port, watermark)
        for out in outs:
            self.emit(pn, out)
        self.drain(pn)
        if passed is None:
            return
        watermark = passed
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

        An operator with several inputs ends when all have; before that, the end of one
        only moves its watermark."""
        outs, passed, done = pn.op.input_ended(port)
        for out in outs:
            self.emit(pn, out)
        if not done:
            self.drain(pn)
            if passed is not None:
                for child in pn.children:
                    self.advance(child, passed, pn.ports.get(id(child), 0))
            return
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
        counted = pn.op.counters()
        self.stats.late_events += counted.late_events
        self.stats.dropped_memberships += counted.dropped_memberships
        self.stats.bad_records += counted.no_time_events
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
            data, missing = split_missing(data, node.event_time, node.source.name, sb.offset,
                                          sb.locate)
            rejects += missing
        staged = stager.stage(Batch.from_arrow(data, dictionaries)) if data.num_rows else None
        yield _Ingested(staged, rejects, sb.offset)


def _gauges(plan: PhysicalPlan) -> dict[str, int]:
    """Late events and dropped (event, window) pairs so far, windows holding state and
    the bytes of that state (device memory on a GPU), read from the operators."""
    counted = OperatorCounters()
    open_windows = state = 0
    seen: set[int] = set()
    todo = list(plan.sources)
    while todo:
        pn = todo.pop()
        if id(pn) in seen:
            continue
        seen.add(id(pn))
        counted += pn.op.counters()
        open_windows += pn.op.state_rows or 0
        state += pn.op.state_bytes()
        todo += [*pn.children, *(c for cs in pn.side.values() for c in cs)]
    return {"late_events": counted.late_events,
            "dropped_memberships": counted.dropped_memberships,
            "open_windows": open_windows, "state_bytes": state}


def _source_lag(nodes: list[SourceNode]) -> dict[str, dict[str, int]]:
    """Each source's records behind its input, per part, for the sources that can tell.

    Examples
    --------
    >>> import gpustream as gs
    >>> _source_lag([SourceNode(gs.from_arrow({"x": [1]}), name="a")])
    {}
    """
    out: dict[str, dict[str, int]] = {}
    for n in nodes:
        lag = n.source.lag()
        if lag is not None:
            out[n.name] = dict(lag)
    return out


def _all_nodes(plan: PhysicalPlan) -> list[tuple[str, PhysicalNode]]:
    """Every operator with a stable id (traversal order + label), for checkpoints."""
    out: list[tuple[str, PhysicalNode]] = []
    seen: set[int] = set()
    todo = list(plan.sources)
    while todo:
        pn = todo.pop(0)
        if id(pn) in seen:
            continue
        seen.add(id(pn))
        out.append((f"{len(out)}:{pn.node.label}", pn))
        todo += [*pn.children, *(c for cs in pn.side.values() for c in cs)]
    return out


def _dictionary_flows(plan: PhysicalPlan, sources: list[dict[str, StringDictionary]]
                      ) -> dict[int, dict[str, StringDictionary]]:
    """For each operator (by ``id``), the dictionaries of the string columns it reads: its
    sources', along the plan, replaced by those of the steps between that own theirs
    (a union's, a map_batches'); of two inputs, the first's win."""
    parents: dict[int, list[tuple[int, PhysicalNode]]] = {}
    for _, pn in _all_nodes(plan):
        for child in pn.children:
            parents.setdefault(id(child), []).append((pn.ports.get(id(child), 0), pn))
        for child in (c for cs in pn.side.values() for c in cs):
            parents.setdefault(id(child), []).append((0, pn))
    out: dict[int, dict[str, StringDictionary]] = {
        id(pn): dict(d) for pn, d in zip(plan.sources, sources, strict=True)}
    flows: dict[int, dict[str, StringDictionary]] = {}

    def flow_out(pn: PhysicalNode) -> dict[str, StringDictionary]:
        if id(pn) not in out:
            out[id(pn)] = {**flow_in(pn), **pn.op.owned_dictionaries()}
        return out[id(pn)]

    def flow_in(pn: PhysicalNode) -> dict[str, StringDictionary]:
        if id(pn) not in flows:
            merged: dict[str, StringDictionary] = {}
            for _, parent in sorted(parents.get(id(pn), []), key=lambda pp: -pp[0]):
                merged.update(flow_out(parent))
            flows[id(pn)] = merged
        return flows[id(pn)]

    for _, pn in _all_nodes(plan):
        flow_in(pn)
    return flows


def _schema_text(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def plan_fingerprint(plan: PhysicalPlan) -> Fingerprint:
    """What a checkpoint of ``plan`` depends on: each operator's step, what it does and
    its output schema (a source: its name, event time, watermark and schema, not where it
    reads from; a lookup table: its schema, key and changelog), and each sink that commits
    with checkpoints (its kind and where it writes: pointed elsewhere, it would miss the
    rows committed before the checkpoint); sinks that do not (a callback, the console)
    can be added or removed.

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline("doc", engine="cpu")
    >>> _ = p.source(gs.from_arrow({"x": [1]}), name="nums").filter(gs.col("x") > 0).sink(
    ...     gs.to_callback(print))
    >>> from gpustream.plan.physical import build_physical
    >>> for line in plan_fingerprint(build_physical(p._sinks, p.backend)).lines:
    ...     print(line)
    0:step 0 (source) 'nums' event_time=None watermark=None [x: int64]
    1:step 1 (filter) (col('x') > 0) [x: int64]
    """
    lines = []
    ids = {}
    for opid, pn in _all_nodes(plan):
        ids[id(pn)] = opid
        node = pn.node
        if isinstance(node, SourceNode):
            wm = None if node.watermark is None else (
                f"bounded({node.watermark.delay_ms}ms) idleness={node.watermark.idleness_ms}")
            what = f"{node.name!r} event_time={node.event_time} watermark={wm}"
        else:
            what = node.detail()
            if isinstance(node, JoinTableNode):
                t = node.table
                what += f" table [{_schema_text(t.schema())}] key={t.key}"
                if t.changelog is not None:
                    what += (f" changelog={t.changelog.name!r} delete_column={t.delete_column}"
                             f" [{_schema_text(logical_schema(t.changelog.source.schema()))}]")
        lines.append(f"{opid} {what} [{_schema_text(pn.schema)}]")
    committing = [(pn, sink) for pn, sink in plan.sinks if _commits(sink)]
    for i, (pn, sink) in enumerate(committing):  # a sink that commits with checkpoints:
        lines.append(f"sink {i}: {type(sink).__name__} {sink.describe()} of "  # where it
                     f"{ids.get(id(pn), '?')}")  # writes is part of the state
    return Fingerprint(tuple(lines))


def _commits(sink: Sink) -> bool:
    """True for a sink that takes part in checkpoints (its output is part of the state)."""
    return type(sink).prepare is not Sink.prepare


def _sink_key(pipeline: str, i: int, sink: Any) -> str:
    return f"{pipeline}/sink{i}-{type(sink).__name__}"


class _Checkpointer:
    """Restores the newest checkpoint at the start; takes one every N batches / T s.

    Taking one is a two-phase commit with the sinks: each sink makes what it holds
    durable (``prepare``), the checkpoint with their pending output is written, then the
    sinks make it visible (``commit``) and the sources tell their brokers (``commit``)."""

    def __init__(self, config: Checkpointing, plan: PhysicalPlan, pipeline: str,
                 nodes: list[SourceNode],
                 dead_letters: DeadLetterFile | DeadLetterSink | None = None) -> None:
        self.config = config
        self.plan = plan
        self.nodes = nodes
        self.store = CheckpointStore(config.dir, pipeline)
        self.ops = _all_nodes(plan)
        self.fingerprint = plan_fingerprint(plan)
        committing = [s for _, s in plan.sinks if _commits(s)]
        self.sinks: list[tuple[str, Any]] = [
            (_sink_key(pipeline, i, s), s) for i, s in enumerate(committing)]
        if isinstance(dead_letters, DeadLetterFile):  # cut back to the checkpoint's length
            self.sinks.append((f"{pipeline}/dead-letters", dead_letters))
        self.seq = 0
        self.batches = 0
        self.last = time.monotonic()
        self.offsets: list[Any] = [None] * len(nodes)
        self.dictionaries: list[dict[str, StringDictionary]] = [{} for _ in nodes]
        self.restored: int | None = None

    def restore(self, upto: int | None = None) -> None:
        """Restore the newest checkpoint (numbered ``upto`` or less, when given)."""
        ck = self.store.latest(self.fingerprint, upto)
        if ck is None:
            for key, sink in self.sinks:  # discard what a run that died before its
                sink.restore(None, 0, key)  # first checkpoint left in progress
            return
        self.seq = self.restored = ck.seq
        for key, sink in self.sinks:
            sink.restore(ck.sinks.get(key), ck.seq, key)
        for i, n in enumerate(self.nodes):
            self.offsets[i] = ck.offsets.get(n.name)
            prefix = f"{n.name}/"
            self.dictionaries[i] = {k[len(prefix):]: StringDictionary(v)
                                    for k, v in ck.dictionaries.items() if k.startswith(prefix)}
        names = {}
        for d in self.dictionaries:
            names.update(d)
        for opid, pn in self.ops:
            state = ck.state_of(opid)
            if state:
                pn.op.restore(state)
        flows = _dictionary_flows(self.plan, self.dictionaries)
        for _, pn in self.ops:  # to decode string keys of restored state: the
            # dictionaries of the rows each operator reads, by column name
            pn.op.restore_dictionaries({**names, **flows[id(pn)]})
        log.info("restored checkpoint %d from %s", ck.seq, self.store.folder)

    def done(self, i: int, offset: Any) -> None:
        """Source ``i``'s batch ending at ``offset`` went all the way through."""
        self.offsets[i] = offset
        self.batches += 1

    def due(self) -> bool:
        c = self.config
        return bool((c.every_batches is not None and self.batches >= c.every_batches)
                    or (c.every_s is not None and time.monotonic() - self.last >= c.every_s))

    def take(self) -> None:
        """Write a checkpoint, then let the sinks and sources commit what it covers."""
        self.write()
        self.commit()

    def write(self) -> int:
        """Write the next checkpoint (the sinks' output prepared in it); its number."""
        self.seq += 1
        arrays: dict[str, Any] = {}
        for opid, pn in self.ops:
            for k, v in pn.op.snapshot().items():
                arrays[f"{opid}/{k}"] = np.asarray(self.plan.backend.to_host(v))
        dicts = {f"{n.name}/{col}": d.snapshot()
                 for n, ds in zip(self.nodes, self.dictionaries, strict=True)
                 for col, d in list(ds.items())}
        offsets = {n.name: o for n, o in zip(self.nodes, self.offsets, strict=True)}
        pending = {key: sink.prepare(self.seq) for key, sink in
                   sorted(self.sinks, key=lambda ks: isinstance(ks[1], Sink)
                          and ks[1].commits_in_prepare)}
        self.store.write(Checkpoint(self.seq, self.store.pipeline, offsets, arrays, dicts,
                                    self.fingerprint, pending))
        self.batches = 0
        self.last = time.monotonic()
        return self.seq

    def commit(self, prune: bool = True) -> None:
        """Make what the last checkpoint covers visible (sinks) and tell the brokers."""
        for _, sink in self.sinks:
            sink.commit(self.seq)
        for n, o in zip(self.nodes, self.offsets, strict=True):
            if o is not None:
                n.source.commit(o)
        if prune:
            self.store.prune()


def _check_state(plan: PhysicalPlan, limit: int) -> None:
    """Stop with an error naming the operator whose state outgrew ``limit`` bytes."""
    for opid, pn in _all_nodes(plan):
        size = pn.op.state_bytes()
        if size > limit:
            keys = pn.op.state_rows
            held = f" for {keys:,} open (key, window) states" if keys is not None else ""
            raise StateLimitExceeded(
                f"{pn.node.label}: its state holds {size:,} bytes{held}, over "
                f"max_state_bytes={limit:,}. Raise max_state_bytes (Pipeline(..., "
                "max_state_bytes=...), spec max_state_bytes:), or keep less state: fewer "
                "keys, shorter windows or allowed lateness, a lower watermark delay "
                f"(operator {opid}).")


class StateLimitExceeded(PlanError, RuntimeError):
    """An operator's state grew past the pipeline's ``max_state_bytes``."""


def execute(plan: PhysicalPlan, pipeline: str, max_events: int | None = None,
            dead_letters: DeadLetterFile | DeadLetterSink | None = None,
            metrics: Metrics | None = None,
            checkpointing: Checkpointing | None = None,
            max_state_bytes: int | None = None,
            stop: GracefulStop | None = None) -> RunStats:
    """Run a physical plan until its bounded sources end (or ``max_events`` inputs).

    Each source runs on its own thread into one bounded queue (backpressure), where its
    batches are also encoded (strings to dictionary codes) and staged to the device, so
    ingest overlaps compute. Batches are taken in arrival order; their bad records (and
    rows without an event time) are written to ``dead_letters`` and counted, the rest
    pushed through the operators to the sinks. ``metrics`` (the live view's and the
    Prometheus endpoint's) is updated after every batch.

    The first Ctrl-C or SIGTERM stops the run at the next batch boundary: the sources
    stop, a final checkpoint is taken (when checkpointing), the sinks commit and close;
    a second one stops at once. Sources are told what input is done with
    (``Source.commit``: a broker's offset commit) only once the output that depends on
    it is durable: after the checkpoint that covers it, or, without checkpoints, when the
    run ends or stops cleanly and the sinks have closed (a run that dies reads its input
    again from where the last clean run ended: at-least-once).
    """
    backend = plan.backend
    stats = RunStats(pipeline, backend.name)
    log.info("pipeline %r runs on %s", pipeline, backend.describe())
    for pn, sink in plan.sinks:
        sink.checkpointed_run = checkpointing is not None
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
        metrics.phase = compile_notice(plan)
    live = set(range(len(plan.sources)))
    runner = _Runner(plan, stats)
    ck = None
    if checkpointing is not None:
        ck = _Checkpointer(checkpointing, plan, pipeline, nodes, dead_letters)
        ck.store.lock()
        try:
            ck.restore()
        except BaseException:
            ck.store.unlock()
            raise
        stats.restored_checkpoint = ck.restored
    offsets = ck.offsets if ck is not None else [None] * len(nodes)
    dicts = ck.dictionaries if ck is not None else [{} for _ in nodes]
    for n, ds in zip(nodes, dicts, strict=True):
        # every string column's dictionary exists before the source threads start: they
        # only grow dictionaries, never add one to the map a checkpoint reads meanwhile
        for f in logical_schema(n.source.schema()):
            if pa.types.is_string(f.type):
                ds.setdefault(f.name, StringDictionary())
    stop = stop if stop is not None else GracefulStop()
    #: without checkpoints: each source's offset after its last batch that went through,
    #: told to the source (a broker commit) only when the run ends or stops cleanly
    done_with: list[Any] = [None] * len(nodes)
    clean = False
    threads: SourceThreads[_Ingested] = SourceThreads(
        [_ingest(n, n.source.open(o), st, d)
         for n, st, o, d in zip(nodes, stagers, offsets, dicts, strict=True)],
        capacity=2 + 2 * len(nodes), names=[n.name for n in nodes], stop=stop.event,
        idle_ticks=ck is not None and checkpointing is not None
        and checkpointing.every_s is not None)
    lag_next = 0.0  # sources' lag() is read on this thread, at most every _LAG_EVERY_S
    try:
        with stop:
            try:
                for arrival in threads:
                    if metrics is not None and (now := time.monotonic()) >= lag_next:
                        lag_next = now + _LAG_EVERY_S
                        metrics.source_lag = _source_lag(nodes)
                    i = arrival.index
                    if i < 0:  # the sources are quiet: a timed checkpoint may be due
                        if ck is not None and ck.batches and ck.due():
                            ck.take()
                            stats.checkpoints += 1
                        continue
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
                        if ck is not None:
                            ck.done(i, got.offset)
                        else:
                            done_with[i] = got.offset
                        continue
                    t0 = time.perf_counter()
                    batch = stagers[i].land(got.staged)
                    if max_events is not None and stats.events_in + batch.num_rows >= max_events:
                        if ck is None:  # with checkpoints the whole batch goes through:
                            batch = batch.slice(0, max_events - stats.events_in)  # its
                        stats.stopped_early = True  # offset is where a restart resumes
                    stats.events_in += batch.num_rows
                    stats.batches_in += 1
                    runner.push(pn, batch)
                    watermark = pn.op.output_watermark()
                    if watermark is not None and watermark != NO_WATERMARK:
                        runner.advance(pn, watermark)
                    if max_state_bytes is not None:
                        _check_state(plan, max_state_bytes)
                    if metrics is not None:
                        metrics.events_out = stats.events_out
                        metrics.bad_records = stats.bad_records
                        metrics.batch(batch.num_rows, time.perf_counter() - t0,
                                      watermark if watermark != NO_WATERMARK else None)
                        metrics.phase = None  # a batch went through, firing too: compiled
                    if stats.stopped_early and ck is None:
                        break
                    if ck is not None:  # a batch boundary: every operator is consistent
                        ck.done(i, got.offset)
                        if stats.stopped_early:
                            break
                        if ck.due():
                            ck.take()
                            stats.checkpoints += 1
                    else:
                        done_with[i] = got.offset
                threads.close()
                if stop.event.is_set():  # a signal: stop here, open windows stay open
                    stats.interrupted = True
                    stats.stopped_by = stop.signal_name or "stop()"
                elif not (stats.stopped_early and ck is not None):
                    # without checkpoints, max_events fires what is open now; with them
                    # it stops like a signal, open windows kept for the restart
                    for i in sorted(live):
                        runner.end(plan.sources[i])
                if ck is not None:  # resume from here
                    ck.take()
                    stats.checkpoints += 1
                clean = True
            except KeyboardInterrupt:  # a second signal: stop at once, nothing committed
                stats.interrupted = True
                stats.stopped_by = stop.signal_name
        seen: set[int] = set()
        for pn in plan.sources:
            runner.collect_counters(pn, seen)
        if metrics is not None:  # what the end of the sources fired
            metrics.events_out = stats.events_out
            metrics.bad_records = stats.bad_records
            metrics.source_lag = _source_lag(nodes)
    finally:
        threads.close()
        stats.elapsed_s = time.perf_counter() - started
        stats.bytes_staged = sum(st.bytes for st in stagers)
        for _, sink in plan.sinks:
            sink.close()
        if dead_letters is not None:
            dead_letters.close()
        if ck is not None:
            ck.store.unlock()
    if clean and ck is None:  # the sinks closed: what they wrote is where it goes
        for n, offset in zip(nodes, done_with, strict=True):
            if offset is not None:
                n.source.commit(offset)
    log.info("%s", stats.summary())
    return stats
