"""Partitioned runs on Dask: N partitions of one plan as long-lived state on workers.

``Pipeline.run(cluster="local:2", parallelism=2)`` (or ``gpustream run --cluster``):

- the cluster is Dask's: ``local:N`` starts a ``LocalCluster`` of N worker processes (a
  ``LocalCUDACluster``, one worker per GPU, where dask-cuda is installed and the
  pipeline runs on cuda), ``dask://host:port`` joins a running scheduler, and a
  ``distributed.Client`` is used as given;
- each partition is built once in a worker's process (:mod:`gpustream.cluster.partition`)
  and driven through rounds by tasks pinned to that worker; the rows a partition sends
  another travel as task results, through Dask's own worker-to-worker transfers (UCX
  between GPUs where the cluster is configured for it), never through this process;
- the partitions checkpoint together: in a round that takes one, each writes its own
  (in ``<checkpoint dir>/partition-<i>-of-<N>``) and commits its sinks' output in the next
  round, once every partition's is on disk. When a worker is lost, every partition is
  rebuilt on the workers there are and resumes from the newest checkpoint that all of
  them took: exactly-once, as a single process is.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpustream.cluster.partition import (
    Opened,
    PartitionLost,
    StepDone,
    done_of,
    drop_orphans,
    drop_run,
    finish,
    open_partition,
    partition_folder,
    piece,
    step,
)
from gpustream.cluster.partitioning import Partitioning, partitioning_of
from gpustream.errors import PlanError
from gpustream.metrics import Metrics
from gpustream.operators.base import WATERMARK_END
from gpustream.runtime.checkpoint import Checkpointing, CheckpointStore, is_url
from gpustream.runtime.runner import RunStats
from gpustream.runtime.stopping import GracefulStop
from gpustream.watermark import NO_WATERMARK

__all__ = ["WorkerLost", "connect", "global_checkpoint", "run_partitioned"]

log = logging.getLogger("gpustream")
#: how often a round's wait looks whether its workers are still there (seconds)
_POLL_S = 0.5
#: how many times a run rebuilds its partitions after losing workers before giving up
MAX_RESTARTS = 5


class WorkerLost(RuntimeError):
    """A worker that held a partition left the cluster (died or was removed)."""


def connect(cluster: Any, parallelism: int, engine: str = "cpu"
            ) -> tuple[Any, Callable[[], None]]:
    """A ``distributed.Client`` for ``cluster``, and what closes what this started.

    ``"local:N"``: a new ``LocalCluster`` of N worker processes (one thread each), or a
    ``LocalCUDACluster`` when ``engine`` is ``"cuda"`` and dask-cuda is installed;
    ``"dask://HOST:PORT"`` (or ``tcp://``, ``ucx://``): a running scheduler; a
    ``distributed.Client``: itself.

    Examples
    --------
    >>> connect("yarn://x", 2)
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: cluster='yarn://x': give local:N (a LocalCluster of N workers here), dask://HOST:PORT (a running Dask scheduler) or a distributed.Client
    """
    if not isinstance(cluster, str):
        return cluster, lambda: None
    if cluster.startswith("local:") or cluster == "local":
        try:
            workers = int(cluster.partition(":")[2] or parallelism)
        except ValueError:
            raise PlanError(f"cluster={cluster!r}: local:N needs a number of workers, e.g. "
                            "local:2") from None
        if workers < 1:
            raise PlanError(f"cluster={cluster!r}: give at least one worker")
        from distributed import Client

        if engine == "cuda":
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                log.warning("dask-cuda is not installed: a plain LocalCluster runs the GPU "
                            "partitions (pip install dask-cuda for one worker per GPU)")
            else:
                cuda = LocalCUDACluster(n_workers=workers, threads_per_worker=1,
                                        dashboard_address=":0")
                return _owned(Client(cuda), cuda)
        from distributed import LocalCluster

        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0")
        return _owned(Client(local), local)
    for scheme in ("dask://", "tcp://", "ucx://", "tls://"):
        if cluster.startswith(scheme):
            from distributed import Client

            address = "tcp://" + cluster[len(scheme):] if scheme == "dask://" else cluster
            client = Client(address)
            return client, client.close
    raise PlanError(f"cluster={cluster!r}: give local:N (a LocalCluster of N workers here), "
                    "dask://HOST:PORT (a running Dask scheduler) or a distributed.Client")


def _owned(client: Any, cluster: Any) -> tuple[Any, Callable[[], None]]:
    def close() -> None:
        client.close()
        cluster.close()
    return client, close


def global_checkpoint(checkpoint: Checkpointing | None, count: int, pipeline: str) -> int:
    """The newest checkpoint every one of the ``count`` partitions took (0: none).

    Raises
    ------
    PlanError
        When the folder holds partitions of another parallelism (state is not moved
        between partitions yet).

    Examples
    --------
    >>> import tempfile
    >>> global_checkpoint(Checkpointing(tempfile.mkdtemp(), every_batches=1), 2, "p")
    0
    """
    if checkpoint is None:
        return 0
    root = str(checkpoint.dir)
    if is_url(root):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(root)
        found = [str(p) for p in fs.glob(f"{path.rstrip('/')}/partition-*-of-*")]
    else:
        from pathlib import Path

        found = [str(p) for p in Path(root).glob("partition-*-of-*") if p.is_dir()]
    other = sorted({p.rstrip("/").rpartition("-of-")[2] for p in found} - {f"{count:03d}"})
    if other:
        raise PlanError(f"checkpoint dir {root} holds the checkpoints of a run with "
                        f"parallelism {int(other[0])}; resume it with that parallelism "
                        "(moving state between partitions is not supported yet), or give "
                        "another checkpoint dir")
    tops = []
    for i in range(count):
        seqs = CheckpointStore(partition_folder(root, i, count), pipeline).seqs()
        tops.append(seqs[-1] if seqs else 0)
    return min(tops)


def _check_sinks(pipeline: Any) -> None:
    from gpustream.sinks.base import CallbackSink, CollectSink, ConsoleSink
    from gpustream.sinks.files import FileSink

    for node, sink in pipeline._sinks:
        if isinstance(sink, (CallbackSink, CollectSink, ConsoleSink)):
            raise PlanError(f"sink {sink.describe()} of {node.label}: a partitioned run writes "
                            "from its workers, not from this process; give a sink that "
                            "writes somewhere they share (a folder of files, Kafka, Redis)")
        if isinstance(sink, FileSink) and sink.single:
            raise PlanError(f"sink {sink.describe()} of {node.label}: one file cannot be "
                            "written by several partitions; give a folder (a path without "
                            f"the {sink.suffix} suffix): each partition writes its part "
                            "files there")


@dataclass
class _Round:
    """The coordinator's view of the partitions between rounds."""

    reports: list[StepDone]
    #: each source's watermark (the smallest over the partitions' shares) before and after
    #: the rows the next round consumes
    before: list[int]
    after: list[int]


def _wait(client: Any, futures: list[Any], places: list[str]) -> list[Any]:
    """The futures' results; :class:`WorkerLost` when a worker they need left."""
    from distributed import wait

    while True:
        try:
            wait(futures, timeout=_POLL_S)
        except TimeoutError:
            alive = set(client.scheduler_info().get("workers", {}))
            gone = sorted(set(places) - alive)
            if gone:
                raise WorkerLost(f"worker(s) {', '.join(gone)} left the cluster") from None
            continue
        try:
            return list(client.gather(futures))
        except PartitionLost as err:  # a worker restarted at the same address, or a
            raise WorkerLost(str(err)) from err  # lost result Dask tried to recompute


def _clients(dask_scheduler: Any) -> list[str]:
    """The ids of the clients connected to the scheduler (runs on the scheduler)."""
    return list(dask_scheduler.clients)


def _placement(client: Any, count: int, want: int) -> list[str]:
    """A worker for each partition: round robin over the workers there are, sorted, once
    ``want`` of them are there (a lost worker's replacement: at most 60 s)."""
    with contextlib.suppress(TimeoutError, OSError):  # fewer than that: partitions share
        client.wait_for_workers(max(want, 1), timeout=60)
    workers = sorted(client.scheduler_info().get("workers", {}))
    if not workers:
        raise PlanError("the Dask cluster has no workers; start some (dask worker ADDRESS)")
    return [workers[i % len(workers)] for i in range(count)]


def run_partitioned(pipeline: Any, cluster: Any, parallelism: int,
                    checkpoint: Checkpointing | None = None, metrics: Metrics | None = None,
                    stop: GracefulStop | None = None,
                    on_round: Callable[[int, list[StepDone]], None] | None = None) -> RunStats:
    """Run ``pipeline`` as ``parallelism`` partitions on a Dask cluster (module docstring).

    ``on_round(round, reports)`` is called after every round (tests and the live view).

    Raises
    ------
    PlanError
        For a plan that cannot run partitioned, an unusable cluster or sink, or a worker
        lost by a run without checkpoints (nothing to resume from).
    """
    if parallelism < 1:
        raise PlanError(f"parallelism must be >= 1, got {parallelism}")
    split: Partitioning = partitioning_of([n for n, _ in pipeline._sinks])
    _check_sinks(pipeline)
    client, close = connect(cluster, parallelism, pipeline.backend.name)
    stats = RunStats(pipeline.name, pipeline.backend.name)
    stats.partitions = parallelism
    stop = stop if stop is not None else GracefulStop()
    started = time.perf_counter()
    try:
        with stop:
            restarts = 0
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise PlanError("the Dask cluster has no workers after 60 s; start some "
                                "(dask worker ADDRESS)") from None
            #: the workers a life waits for: as many as the run started with
            stats.workers = len(client.scheduler_info().get("workers", {}))
            while True:
                try:
                    _attempt(client, pipeline, split, parallelism, checkpoint, metrics, stop,
                             stats, on_round)
                    break
                except WorkerLost as err:
                    if checkpoint is None:
                        raise PlanError(f"{err}; the run has no checkpoint to resume from "
                                        "(give checkpoint=..., spec checkpoint:) and stops"
                                        ) from err
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        raise
                    log.warning("%s: rebuilding the %d partitions from their last common "
                                "checkpoint (restart %d)", err, parallelism, restarts)
                    stats.restarts = restarts
    finally:
        stats.elapsed_s = time.perf_counter() - started
        close()
    log.info("%s", stats.summary())
    return stats


def _attempt(client: Any, pipeline: Any, split: Partitioning, count: int,
             checkpoint: Checkpointing | None, metrics: Metrics | None, stop: GracefulStop,
             stats: RunStats, on_round: Callable[[int, list[StepDone]], None] | None) -> None:
    """One life of the partitions: open (restoring the common checkpoint), rounds, finish."""
    run = uuid.uuid4().hex[:12]
    upto = global_checkpoint(checkpoint, count, pipeline.name)
    places = _placement(client, count, stats.workers)
    futures: list[Any] = []
    try:
        # partitions whose coordinator died without dropping them hold their folders
        live = client.run_on_scheduler(_clients)
        try:
            client.run(drop_orphans, live)
        except Exception as err:  # a worker still starting again cannot answer (it holds
            log.debug("dropping orphaned partitions: %s", err)  # no partition either)
        # shipped again in each life: a lost worker may have held the only copy
        import cloudpickle

        shipped = client.scatter(cloudpickle.dumps(pipeline), broadcast=True, hash=False)
        futures = [client.submit(open_partition, run, shipped, i, count, split.by,
                                 checkpoint, upto, client.id, workers=[places[i]], pure=False,
                                 key=f"gs-open-{run}-{i}") for i in range(count)]
        opened: list[Opened] = _wait(client, futures, places)
        restored = {o.restored for o in opened}
        stats.restored_checkpoint = restored.pop() if len(restored) == 1 else None
        start = _smallest([o.watermarks for o in opened])
        state = _Round([], start, start)
        pieces: list[list[Any]] = [[None] * count for _ in range(count)]
        commit = False
        rounds_since = 0
        last_ck = time.monotonic()
        r = 0
        while True:
            ended = bool(state.reports) and all(rep.done for rep in state.reports)
            interrupted = stop.event.is_set() and not ended
            due = checkpoint is not None and (
                ended or interrupted
                or (checkpoint.every_batches is not None
                    and rounds_since >= checkpoint.every_batches)
                or (checkpoint.every_s is not None
                    and time.monotonic() - last_ck >= checkpoint.every_s))
            t0 = time.perf_counter()
            futures = [client.submit(step, run, j, r, pieces[j], state.before, state.after,
                                     ended, due, commit, workers=[places[j]], pure=False,
                                     key=f"gs-step-{run}-{r}-{j}") for j in range(count)]
            metas = [client.submit(done_of, f, workers=[places[j]], pure=False,
                                   key=f"gs-done-{run}-{r}-{j}")
                     for j, f in enumerate(futures)]
            reports: list[StepDone] = _wait(client, metas, places)
            if not ended:
                pieces = [[client.submit(piece, futures[i], j, workers=[places[i]],
                                         pure=False, key=f"gs-piece-{run}-{r}-{i}-{j}")
                           for i in range(count)] for j in range(count)]
            commit = due
            rounds_since = 0 if due else rounds_since + 1
            if due:
                last_ck = time.monotonic()
                stats.checkpoints += 1
            state = _Round(reports, state.after, _smallest([rep.watermarks for rep in reports]))
            _account(stats, metrics, reports, time.perf_counter() - t0, min(state.after))
            if on_round is not None:
                on_round(r, reports)
            r += 1
            if ended or interrupted:
                break
        futures = [client.submit(finish, run, j, commit, workers=[places[j]], pure=False,
                                 key=f"gs-finish-{run}-{j}") for j in range(count)]
        finals: list[StepDone] = _wait(client, futures, places)
        _account(stats, metrics, finals, 0.0, min(state.after))
        if interrupted:
            stats.interrupted = True
            stats.stopped_by = stop.signal_name or "stop()"
    except BaseException:
        client.cancel(futures)
        try:
            client.run(drop_run, run)
        except Exception as err:  # a worker that is going away cannot answer
            log.debug("dropping the partitions of run %s: %s", run, err)
        raise


def _smallest(marks: list[list[int]]) -> list[int]:
    """Each source's watermark: the smallest of its shares' (``marks[partition][source]``).

    Examples
    --------
    >>> _smallest([[5, 9], [7, 2]])
    [5, 2]
    """
    return [min(column) for column in zip(*marks, strict=True)]


def _account(stats: RunStats, metrics: Metrics | None, reports: list[StepDone],
             seconds: float, watermark: int) -> None:
    """Totals over the partitions (each report counts since its partition opened)."""
    before = stats.events_in
    stats.events_in = sum(r.events_in for r in reports)
    stats.batches_in = sum(r.batches_in for r in reports)
    stats.events_out = sum(r.events_out for r in reports)
    stats.bad_records = sum(r.bad_records for r in reports)
    stats.late_events = sum(r.late_events for r in reports)
    stats.dropped_memberships = sum(r.dropped_memberships for r in reports)
    by_sink: dict[str, int] = {}
    for r in reports:
        for k, v in r.rows_out_by_sink.items():
            by_sink[k] = by_sink.get(k, 0) + v
    stats.rows_out_by_sink = by_sink
    if metrics is not None:
        gauges = {"late_events": stats.late_events,
                  "dropped_memberships": stats.dropped_memberships,
                  "state_bytes": sum(r.state_bytes for r in reports),
                  "open_windows": sum(r.open_windows for r in reports)}
        metrics.gauges = lambda: dict(gauges)
        metrics.events_out = stats.events_out
        metrics.bad_records = stats.bad_records
        shown = None if watermark in (NO_WATERMARK, WATERMARK_END) else watermark
        metrics.batch(max(stats.events_in - before, 0), seconds, shown)
        metrics.set_partitions([
            {"events_in": r.events_in, "events_out": r.events_out,
             "bad_records": r.bad_records, "late_events": r.late_events,
             "state_bytes": r.state_bytes, "round_seconds": r.seconds,
             "watermark": None if r.watermark in (NO_WATERMARK, WATERMARK_END)
             else r.watermark}
            for r in reports])
