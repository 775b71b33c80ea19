"""One partition of a partitioned run, as it lives in a Dask worker's process.

The coordinator (:mod:`gpustream.cluster.dask_run`) drives every partition through
rounds. In a round each partition

1. commits the output of the checkpoint every partition took in the round before (its
   two-phase commit's second phase, so a failure between the phases leaves nothing
   visible that the restored checkpoint does not hold);
2. consumes the rows every partition sent it in the round before (in partition order,
   source by source: deterministic), each source's with the watermark known before they
   arrived, then moves each source to the smallest of its shares' watermarks after them;
3. takes a checkpoint when asked: operator state, its shares' offsets and producer
   watermarks, in the single-process format, in its own folder. No row is in flight at
   that point, so the partitions' checkpoints of one round are a consistent cut;
4. reads each share's next batch and splits it by the key's hash, one piece per partition.

Results are those of one process that reads each source's shares one after another (a
row is late in a partition only where it is late there); the watermark of a source in a
partition is the smallest of its shares' watermarks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.backend import Backend
from gpustream.batch import Batch
from gpustream.cluster.exchange import split_rows
from gpustream.errors import PlanError
from gpustream.ingest.deadletter import DeadLetter, DeadLetterFile, split_missing
from gpustream.ingest.dictionary import StringDictionary
from gpustream.ingest.schema import logical_schema
from gpustream.ingest.source import SourceBatch
from gpustream.ingest.threaded import SourceThreads
from gpustream.operators.base import WATERMARK_END
from gpustream.operators.watermark import WatermarkOp
from gpustream.plan.logical import SourceNode
from gpustream.plan.physical import PhysicalNode
from gpustream.runtime.checkpoint import Checkpointing, is_url
from gpustream.runtime.runner import RunStats
from gpustream.sinks.base import DeadLetterSink
from gpustream.watermark import NO_WATERMARK

__all__ = ["Opened", "Partition", "PartitionLost", "StepDone", "drop_orphans", "drop_run",
           "open_partition", "partition_folder", "step"]

log = logging.getLogger("gpustream")

#: this process's partitions, by (run id, index): a Dask worker holds them between rounds
_LIVE: dict[tuple[str, int], Partition] = {}
_LIVE_LOCK = threading.Lock()


def partition_folder(root: str | os.PathLike[str], index: int, count: int) -> str:
    """Where partition ``index`` of ``count`` keeps its checkpoints (a folder, or a URL
    under a URL).

    Examples
    --------
    >>> partition_folder("ck", 1, 4)
    'ck/partition-001-of-004'
    >>> partition_folder("s3://bucket/ck/", 0, 2)
    's3://bucket/ck/partition-000-of-002'
    """
    name = f"partition-{index:03d}-of-{count:03d}"
    if is_url(root):
        return f"{str(root).rstrip('/')}/{name}"
    return (Path(root) / name).as_posix()


class SharedWatermarkOp(WatermarkOp):
    """The source step of a partition: rows carry the watermark the coordinator gave
    (``given``: the smallest of the shares' watermarks before they arrived). ``running``
    and :attr:`current` are those of this partition's own share (its producer watermark),
    saved in checkpoints as :class:`~gpustream.operators.watermark.WatermarkOp` saves
    them; the share's rows are scanned on its reading thread, not here.

    Examples
    --------
    >>> from gpustream.backend import select_backend
    >>> op = SharedWatermarkOp("ts", 2, select_backend("cpu"))
    >>> op.given = 5
    >>> out = op.process(Batch.from_arrow(pa.record_batch({"ts": [10, 7]})))[0]
    >>> out.watermarks.tolist(), op.output_watermark()
    ([5, 5], 5)
    """

    def __init__(self, event_time: str, delay: int, backend: Backend) -> None:
        super().__init__(event_time, delay, backend)
        self.given = NO_WATERMARK

    def output_watermark(self) -> int:
        return self.given

    def process(self, batch: Batch) -> list[Batch]:
        wm = self.backend.xp.full(batch.num_rows, self.given, dtype=np.int64)
        return [Batch(batch.columns, batch.schema,
                      {n: batch.validity(n) for n in batch.column_names},
                      batch.dictionaries, wm)]


@dataclass
class Opened:
    """What a partition reports when it opens: its shares' watermarks (one per source),
    the checkpoint it restored (None: it starts from the beginning)."""

    watermarks: list[int]
    restored: int | None


@dataclass
class StepDone:
    """What a round did in one partition (counters are totals since it opened)."""

    #: its shares' watermarks, one per source (the plan's order)
    watermarks: list[int]
    #: every share read to its end
    done: bool
    events_in: int
    batches_in: int
    events_out: int
    bad_records: int
    #: the checkpoint it took in this round (None: none asked)
    checkpoint: int | None = None
    late_events: int = 0
    dropped_memberships: int = 0
    state_bytes: int = 0
    open_windows: int = 0
    rows_out_by_sink: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def watermark(self) -> int:
        """The smallest of its shares' watermarks (for the metrics)."""
        return min(self.watermarks) if self.watermarks else NO_WATERMARK


@dataclass
class _Read:
    """A batch of the share as the reading thread prepared it."""

    pieces: list[pa.RecordBatch | None]
    rows: int
    rejects: tuple[DeadLetter, ...]
    offset: Any
    top: Any


def _dictionary_strings(data: pa.RecordBatch) -> pa.RecordBatch:
    """String columns dictionary-encoded (on the reading thread): the piece a partition
    receives then encodes into its own dictionaries by their few distinct values, and
    hashing and cutting by partition touch each distinct string once.

    Examples
    --------
    >>> rb = _dictionary_strings(pa.record_batch({"s": ["a", "b", "a"], "n": [1, 2, 3]}))
    >>> str(rb.schema.field("s").type), rb.column(0).dictionary.to_pylist()
    ('dictionary<values=string, indices=int32, ordered=0>', ['a', 'b'])
    """
    columns = [pc.dictionary_encode(c) if pa.types.is_string(c.type)
               or pa.types.is_large_string(c.type) or pa.types.is_string_view(c.type) else c
               for c in data.columns]
    return pa.RecordBatch.from_arrays(columns, names=data.schema.names)


def _dead_letter_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.partition-{index:03d}{path.suffix}")


class _Share:
    """One source's share in a partition: its reader (a thread that reads, hashes and
    cuts ahead), its source step and its dictionaries."""

    def __init__(self, pn: PhysicalNode, index: int, count: int, keys: tuple[str, ...],
                 backend: Backend) -> None:
        self.pn, self.index, self.count, self.keys = pn, index, count, keys
        node = pn.node
        assert isinstance(node, SourceNode)
        self.node = node
        # this worker's copy of the plan reads the share (the checkpoint's fingerprint
        # names a source by name, event time and schema, not by where it reads)
        object.__setattr__(node, "source", node.source.split(index, count))
        self.op: SharedWatermarkOp | None = None
        if node.event_time is not None:
            self.op = SharedWatermarkOp(node.event_time, getattr(pn.op, "delay", 0), backend)
            pn.op = self.op
        self.dictionaries: dict[str, StringDictionary] = {}
        self.offset: Any = None
        self.done = False
        self.reading: SourceThreads[_Read] | None = None
        self.arrivals: Iterator[Any] = iter(())

    def start(self, offset: Any, dictionaries: dict[str, StringDictionary]) -> None:
        """Read from ``offset`` on, strings encoded into ``dictionaries`` (restored)."""
        self.offset = offset
        self.dictionaries = dictionaries
        for f in logical_schema(self.node.source.schema()):
            if pa.types.is_string(f.type):
                self.dictionaries.setdefault(f.name, StringDictionary())
        # the share is read, cut by key and hashed ahead on a thread of its own (as a
        # single process's sources are), at most two batches ahead
        self.reading = SourceThreads([self._prepared(self.node.source.open(offset))],
                                     capacity=2,
                                     names=[f"{self.node.name}-share-{self.index}"])
        self.arrivals = iter(self.reading)

    def _prepared(self, batches: Iterator[SourceBatch]) -> Iterator[_Read]:
        """On the reading thread: rows without an event time to dead letters, the
        batch's largest event time, its rows cut by partition."""
        event_time = self.node.event_time
        for sb in batches:
            data, rejects = sb.data, sb.rejects
            if event_time is not None:
                data, missing = split_missing(data, event_time, self.node.source.name,
                                              sb.offset, sb.locate)
                rejects += missing
            top = None
            if event_time is not None and data.num_rows:
                ts = data.column(event_time)
                if pa.types.is_timestamp(ts.type):
                    ts = ts.view(pa.int64())
                top = pc.max(ts).as_py()
            pieces: list[pa.RecordBatch | None] = [None] * self.count
            if data.num_rows:
                data = _dictionary_strings(data)
                if self.keys:
                    pieces = split_rows(data, self.keys, self.count)
                else:
                    pieces[self.index] = data
            yield _Read(pieces, data.num_rows, rejects, sb.offset, top)

    def produce(self, stats: RunStats, dead_letters: DeadLetterFile | DeadLetterSink
                ) -> list[pa.RecordBatch | None]:
        """The share's next batch; its rows, one piece per partition."""
        if self.done:
            return [None] * self.count
        got = next(self.arrivals, None)
        if got is None or got.done or got.item is None:
            self.done = True
            return [None] * self.count
        read = got.item
        if read.rejects:
            dead_letters.write(read.rejects)
            stats.bad_records += len(read.rejects)
        self.offset = read.offset
        if read.rows:
            stats.events_in += read.rows
            stats.batches_in += 1
        if self.op is not None and read.top is not None:
            self.op.running = max(self.op.running, int(read.top))
        return read.pieces

    def watermark(self) -> int:
        """This share's watermark (+infinity once it is read to its end)."""
        if self.done and self.node.source.bounded:
            return WATERMARK_END
        return self.op.current if self.op is not None else NO_WATERMARK

    def close(self) -> None:
        if self.reading is not None:
            self.reading.close()


class Partition:
    """One partition of a plan: its share of each source, its keys' state, its sinks."""

    def __init__(self, pipeline: Any, index: int, count: int,
                 by: dict[str, tuple[str, ...]], checkpoint: Checkpointing | None, upto: int,
                 owner: str = "") -> None:
        from gpustream.ingest.staging import Stager
        from gpustream.plan.physical import build_physical
        from gpustream.runtime.runner import _Checkpointer, _Runner

        self.index, self.count = index, count
        #: the Dask client (the coordinator) that opened it; the round it runs next
        self.owner = owner
        self.round = 0
        if isinstance(pipeline, bytes):  # each partition its own objects (sources, sinks),
            import cloudpickle  # even beside another partition in one worker

            pipeline = cloudpickle.loads(pipeline)
        backend = pipeline.backend
        self.plan = build_physical(pipeline._sinks, backend)
        self.shares = [_Share(pn, index, count, by.get(getattr(pn.node, "name", ""), ()),
                              backend) for pn in self.plan.sources]
        nodes = [sh.node for sh in self.shares]
        self.stats = RunStats(pipeline.name, backend.name)
        self.runner = _Runner(self.plan, self.stats)
        dead = pipeline._dead_letters()
        if isinstance(dead, DeadLetterFile):
            dead = DeadLetterFile(_dead_letter_path(dead.path, index))
        self.dead_letters: DeadLetterFile | DeadLetterSink = dead
        self.ck: Any = None
        for pn, sink in self.plan.sinks:
            sink.for_partition(index)
            sink.checkpointed_run = checkpoint is not None
            sink.open(pn.schema)
        offsets: list[Any] = [None] * len(nodes)
        dictionaries: list[dict[str, StringDictionary]] = [{} for _ in nodes]
        self.restored: int | None = None
        if checkpoint is not None:
            own = Checkpointing(partition_folder(checkpoint.dir, index, count),
                                every_batches=1)
            # the partition in the name: sink keys (a Kafka transactional id) differ
            self.ck = _Checkpointer(own, self.plan, f"{pipeline.name}/partition-{index}",
                                    nodes, dead)
            self.ck.store.lock()
            try:
                self.ck.store.discard_after(upto)  # what only some partitions took is undone
                self.ck.restore(upto)
                if upto and self.ck.restored != upto:  # its part of the common cut is lost:
                    raise PlanError(  # an older one of its own would not fit the others'
                        f"partition {index} of {count}: its checkpoint {upto} (which every "
                        f"partition took) does not load from {own.dir}; the partitions "
                        "cannot resume from one cut. Restore the folder, or start over with "
                        "another checkpoint dir and output path")
            except BaseException:
                self.ck.store.unlock()
                raise
            self.restored = self.ck.restored
            offsets, dictionaries = self.ck.offsets, self.ck.dictionaries
        self.stager = Stager(backend)
        for sh, offset, dicts in zip(self.shares, offsets, dictionaries, strict=True):
            sh.start(offset, dicts)

    @property
    def done(self) -> bool:
        """Every share is read to its end."""
        return all(sh.done for sh in self.shares)

    def produce(self) -> list[list[pa.RecordBatch | None]]:
        """Each share's next batch, cut by partition: ``[source][partition]``."""
        return [sh.produce(self.stats, self.dead_letters) for sh in self.shares]

    def watermarks(self) -> list[int]:
        """The shares' watermarks, one per source."""
        return [sh.watermark() for sh in self.shares]

    def consume(self, pieces: list[list[pa.RecordBatch | None] | None], before: list[int],
                after: list[int]) -> None:
        """Push the rows the partitions sent (``pieces[producer][source]``), each source's
        with its watermark ``before``, then move each source's watermark to ``after``."""
        for s, sh in enumerate(self.shares):
            rows = [rb for got in pieces if got is not None
                    for rb in (got[s],) if rb is not None and rb.num_rows]
            if not rows:
                continue
            # each piece on its own: pieces of files that encode a string column
            # differently (a dictionary, plain) are one column once encoded
            host = Batch.concat([Batch.from_arrow(p, sh.dictionaries) for p in rows], np)
            batch = self.stager.land(self.stager.stage(host))
            if sh.op is not None:
                sh.op.given = before[s]
            self.runner.push(sh.pn, batch)
        for s, sh in enumerate(self.shares):
            if sh.op is not None and after[s] > before[s] and after[s] != NO_WATERMARK:
                sh.op.given = after[s]
                self.runner.advance(sh.pn, after[s])

    def end(self) -> None:
        """Every share is read and every row delivered: fire what is open."""
        for sh in self.shares:
            self.runner.end(sh.pn)

    def checkpoint(self) -> int:
        """Write this partition's checkpoint of the round (first phase); its number."""
        for i, sh in enumerate(self.shares):
            self.ck.done(i, sh.offset)
        seq: int = self.ck.write()
        return seq

    def commit(self) -> None:
        """Second phase: make the output of the last checkpoint visible."""
        self.ck.commit()

    def report(self, seq: int | None, seconds: float) -> StepDone:
        from gpustream.runtime.runner import _gauges

        gauges = _gauges(self.plan)
        return StepDone(self.watermarks(), self.done, self.stats.events_in,
                        self.stats.batches_in, self.stats.events_out,
                        self.stats.bad_records,
                        seq, int(gauges["late_events"]), int(gauges["dropped_memberships"]),
                        int(gauges["state_bytes"]), int(gauges["open_windows"]),
                        dict(self.stats.rows_out_by_sink), seconds)

    def close(self) -> None:
        """Close the readers, sinks and dead letters, and let the checkpoint folder go."""
        try:
            for sh in self.shares:
                sh.close()
            for _, sink in self.plan.sinks:
                sink.close()
            self.dead_letters.close()
        finally:
            if self.ck is not None:
                self.ck.store.unlock()


# -- the tasks the coordinator submits (they run in the worker's process) ------------------
def open_partition(run: str, pipeline: Any, index: int, count: int,
                   by: dict[str, tuple[str, ...]], checkpoint: Checkpointing | None,
                   upto: int, owner: str = "") -> Opened:
    """Build partition ``index`` in this process (restoring checkpoint ``upto``) for the
    coordinator whose Dask client id is ``owner``; ``by``: each source's key columns."""
    part = Partition(pipeline, index, count, by, checkpoint, upto, owner)
    with _LIVE_LOCK:
        _LIVE[(run, index)] = part
    return Opened(part.watermarks(), part.restored)


def _live(run: str, index: int) -> Partition:
    with _LIVE_LOCK:
        part = _LIVE.get((run, index))
    if part is None:
        raise PartitionLost(f"partition {index} of run {run} is not in this worker (its "
                            "worker was lost or replaced)")
    return part


class PartitionLost(RuntimeError):
    """A round reached a worker that does not hold its partition."""


#: a round's result in a partition's worker: its pieces ``[source][partition]`` and report
Result = tuple[list[list[pa.RecordBatch | None]], StepDone]


def step(run: str, index: int, round_no: int,
         pieces: list[list[pa.RecordBatch | None] | None], before: list[int],
         after: list[int], ended: bool, checkpoint: bool, commit: bool) -> Result:
    """Round ``round_no`` of partition ``index`` (see the module docstring): ``pieces``
    holds what each partition sent it (``[producer][source]``, None: nothing yet);
    ``before`` / ``after``: each source's watermark before and after those rows. Returns
    the pieces of its next batches, by source and partition, and what it did. A round
    runs once: Dask recomputing a lost result by running an earlier round again is
    refused (:class:`PartitionLost`)."""
    import time

    t0 = time.perf_counter()
    part = _live(run, index)
    if round_no != part.round:
        raise PartitionLost(f"partition {index} of run {run} is at round {part.round}, "
                            f"not {round_no} (a result of an earlier round was lost)")
    part.round += 1
    if commit:
        part.commit()
    part.consume(pieces, before, after)
    if ended:
        part.end()
    seq = part.checkpoint() if checkpoint else None
    out = part.produce() if not ended else [[None] * part.count for _ in part.shares]
    return out, part.report(seq, time.perf_counter() - t0)


def piece(result: Result, j: int) -> list[pa.RecordBatch | None]:
    """The rows of a round's result for partition ``j``, by source."""
    return [by_partition[j] for by_partition in result[0]]


def done_of(result: Result) -> StepDone:
    """What a round did."""
    return result[1]


def finish(run: str, index: int, commit: bool) -> StepDone:
    """Commit the final checkpoint's output (when there is one) and close."""
    part = _live(run, index)
    try:
        if commit:
            part.commit()
        seen: set[int] = set()
        for pn in part.plan.sources:
            part.runner.collect_counters(pn, seen)
        return part.report(None, 0.0)
    finally:
        part.close()
        with _LIVE_LOCK:
            _LIVE.pop((run, index), None)


def drop_orphans(live_clients: list[str]) -> int:
    """Close and forget this process's partitions whose coordinator (Dask client) is no
    longer connected to the scheduler (it died without dropping them): they hold their
    checkpoint folders' locks. How many there were.

    Examples
    --------
    >>> drop_orphans([])
    0
    """
    with _LIVE_LOCK:
        runs = {run for (run, _), part in _LIVE.items() if part.owner not in live_clients}
    return sum(drop_run(run) for run in runs)


def drop_run(run: str) -> int:
    """Close and forget this process's partitions of ``run`` without committing (the run
    failed elsewhere and restarts from its last checkpoint); how many there were.

    Examples
    --------
    >>> drop_run("no-such-run")
    0
    """
    with _LIVE_LOCK:
        mine = [k for k in _LIVE if k[0] == run]
        parts = [_LIVE.pop(k) for k in mine]
    for part in parts:
        try:
            part.close()
        except Exception as err:  # a broken partition must not keep its folder locked
            log.warning("closing partition %d of run %s: %s", part.index, run, err)
    return len(parts)
