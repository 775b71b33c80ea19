"""The fluent API: ``gs.Pipeline`` and ``Stream`` (DESIGN.md section 9)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from gpustream.backend import ENGINES, Backend, select_backend
from gpustream.durations import Duration, to_millis
from gpustream.errors import IngestError, PlanError
from gpustream.expr import Agg, Col, Expr, lit
from gpustream.ingest.arrow import from_arrow
from gpustream.ingest.deadletter import DeadLetterFile
from gpustream.ingest.schema import SchemaLike, as_schema
from gpustream.ingest.source import Source
from gpustream.metrics import Metrics
from gpustream.plan.logical import (
    FilterNode,
    IntervalJoinNode,
    JoinTableNode,
    LateNode,
    MapBatchesNode,
    Node,
    OverNode,
    RegularJoinNode,
    RunningAggNode,
    SelectNode,
    SourceNode,
    TableNode,
    TopKNode,
    UnionNode,
    WindowAggNode,
    WindowJoinNode,
    WithColumnsNode,
    output_schema,
    ranks_windows,
)
from gpustream.plan.physical import build_physical, render_plan
from gpustream.runtime.checkpoint import Checkpointing
from gpustream.runtime.runner import RunStats, execute
from gpustream.runtime.stopping import GracefulStop
from gpustream.sinks.base import CollectSink, DeadLetterSink, Sink
from gpustream.watermark import Watermark
from gpustream.windows import WindowAssigner

__all__ = ["JoinStream", "KeyedStream", "OverWindow", "Pipeline", "Stream", "WindowedStream",
           "join_on"]

#: ``on=`` of the joins: a name, a (left, right) pair, or a list of either
JoinOn = str | tuple[str, str] | list[str] | list[tuple[str, str]]


def join_on(on: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Left and right key columns from ``on=``.

    Examples
    --------
    >>> join_on("card", "j"), join_on(("bidder", "id"), "j")
    ((('card',), ('card',)), (('bidder',), ('id',)))
    >>> join_on(["a", ("b", "c")], "j")
    (('a', 'b'), ('a', 'c'))
    """
    items = [on] if isinstance(on, str | tuple) else list(on) if isinstance(on, list) else None
    if not items:
        raise PlanError(f"{where}: on= takes a column name, a (left, right) pair, or a list "
                        f"of them; got {on!r}")
    left, right = [], []
    for item in items:
        if isinstance(item, str):
            left.append(item)
            right.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            left.append(item[0])
            right.append(item[1])
        else:
            raise PlanError(f"{where}: on= takes a column name, a (left, right) pair, or a "
                            f"list of them; got {item!r}")
    return tuple(left), tuple(right)


class Pipeline:
    """A streaming job: sources, the steps applied to them, and sinks.

    Parameters
    ----------
    name
        Names the job in logs, metrics and checkpoints.
    engine
        ``"auto"`` (a GPU when one works, else the CPU, saying why), ``"cpu"`` or
        ``"cuda"``; ``"cudasim"`` runs the cuda backend under numba's simulator (tests).
        ``GPUSTREAM_ENGINE`` overrides it. The backend is chosen once, when the pipeline is
        first planned (``explain()``, ``run()``, ``collect()``).
    dead_letter
        Where bad records go (raw record, source, offset, reason): lines that do not
        parse, values of the wrong type, rows without an event time. A JSONL file path,
        or any sink (``gs.to_parquet(...)``, ``gs.to_kafka(...)`` …). Default
        ``dead-letters/<name>.jsonl`` in the working directory, created only when a bad
        record arrives; ``RunStats`` counts them and names where they went.

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline("demo", engine="cpu")
    >>> s = p.source(gs.from_arrow({"x": [1, 2, 3], "y": [1.0, 2.0, 4.0]}))
    >>> s.filter(gs.col("x") >= 2).with_columns(z=gs.col("x") * gs.col("y")).collect().to_pydict()
    {'x': [2, 3], 'y': [2.0, 4.0], 'z': [4.0, 12.0]}
    """

    def __init__(self, name: str = "pipeline", engine: str = "auto",
                 dead_letter: str | os.PathLike[str] | Sink | None = None,
                 max_state_bytes: int | None = None) -> None:
        if engine not in ENGINES:
            raise PlanError(f"Pipeline {name!r}: engine={engine!r} is not one of "
                            f"{', '.join(ENGINES[:3])}")
        if max_state_bytes is not None and (isinstance(max_state_bytes, bool)
                                            or not isinstance(max_state_bytes, int)
                                            or max_state_bytes < 1):
            raise PlanError(f"Pipeline {name!r}: max_state_bytes must be a positive number "
                            f"of bytes, got {max_state_bytes!r}")
        self.name = name
        self.engine = engine
        #: stop with an error naming the operator when its state grows past this
        self.max_state_bytes = max_state_bytes
        self.dead_letter: Path | Sink = (
            dead_letter if isinstance(dead_letter, Sink)
            else Path(dead_letter if dead_letter is not None
                      else DeadLetterFile.default_path(name)))
        self._sinks: list[tuple[Node, Sink]] = []
        self._nodes: list[Node] = []
        self._source_names: set[str] = set()
        #: the streams of named sources, for SQL (``FROM bid``)
        self._named_streams: dict[str, Stream] = {}
        self._tables: list[TableNode] = []
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        """The backend this pipeline runs on (chosen on first use, then fixed).

        Examples
        --------
        >>> import gpustream as gs
        >>> gs.Pipeline(engine="cpu").backend.name
        'cpu'
        """
        if self._backend is None:
            self._backend = select_backend(self.engine)
        return self._backend

    def source(
        self,
        source: Source | Any,
        event_time: str | None = None,
        watermark: Watermark | None = None,
        name: str | None = None,
    ) -> Stream:
        """Add a source; returns its stream.

        Parameters
        ----------
        source
            E.g. ``gs.read_parquet("bids/")``, ``gs.from_arrow(table, batch_rows=...)``,
            or a DataFrame (pandas, Polars, cudf, a DuckDB relation, a ``pyarrow.Table``:
            read as ``gs.from_arrow(df)``).
        event_time
            The event-time column (timestamp or int milliseconds); windows need it.
        watermark
            E.g. ``gs.Watermark.bounded("2s")``.
        name
            A stable name for this source (default ``source``, ``source_1`` …).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 2]}), event_time="ts",
        ...              watermark=gs.Watermark.bounded("1s"), name="clicks")
        >>> s.schema.names
        ['ts']
        """
        source = _as_source(source, "Pipeline.source")
        if watermark is not None and not isinstance(watermark, Watermark):
            raise PlanError("Pipeline.source: watermark must be gs.Watermark.bounded(delay)")
        if name is None:
            name = "source" if "source" not in self._source_names else (
                f"source_{len(self._source_names)}")
        if name in self._source_names:
            raise PlanError(f"Pipeline {self.name!r}: a source named {name!r} exists already; "
                            "give each source its own name=")
        node = SourceNode(source, event_time, watermark, name)
        schema = output_schema(node)
        self._source_names.add(name)
        stream = self._stream(node, schema)
        self._named_streams[name] = stream
        return stream

    def sql(self, text: str, sources: Mapping[str, Source | Any] | None = None) -> Stream:
        """The stream of a SQL query (Flink SQL) over this pipeline's named sources and
        tables: ``FROM bid`` reads ``p.source(..., name="bid")``.

        ``text`` may start with ``CREATE TABLE`` (a source: its columns and ``WATERMARK
        FOR ts AS ts - INTERVAL 'n' SECOND``) and ``CREATE VIEW`` statements, separated by
        ``;``; the last query's stream is returned, a stream like any other (sinks,
        ``collect()``, ``explain()``). ``sources``: sources by name for those ``CREATE
        TABLE`` statements (added on first use). Windows are Flink's windowing functions
        (``TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))``); see the
        README's SQL section for the whole surface. Errors name the line and column.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> _ = p.source(gs.from_arrow({"item": ["a", "b", "a"], "ts": [1, 2, 3]}),
        ...              event_time="ts", name="views")
        >>> out = p.sql("SELECT item, COUNT(*) AS n FROM views GROUP BY item")
        >>> gs.materialize(out.collect(), key="item").to_pydict()
        {'item': ['a', 'b'], 'n': [2, 1]}
        """
        from gpustream.sql import sql
        return sql(self, text, sources)

    def table(self, source: Source | Any, key: str | list[str] | tuple[str, ...],
              name: str | None = None, changelog: Source | None = None,
              delete_column: str | None = None) -> TableNode:
        """A table for lookup joins (:meth:`Stream.join_table`), read whole from a bounded
        source when the pipeline starts; rows later in the source replace earlier rows of
        the same key.

        ``changelog`` keeps it current: each of its rows replaces the table row of its
        key (or adds one), or deletes it where ``delete_column`` is true, as it arrives;
        each event joins the version current at its arrival. It carries the table's
        columns.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> people = p.table(gs.from_arrow({"id": [1, 2], "name": ["ann", "bo"]}), key="id")
        >>> people.key, people.name
        (('id',), 'table')
        """
        source = _as_source(source, "Pipeline.table")
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise PlanError("Pipeline.table: key= must name one or more columns")
        tname = name or ("table" if not self._tables else f"table_{len(self._tables)}")
        log = None
        if changelog is not None:
            if not isinstance(changelog, Source):
                raise PlanError(f"Pipeline.table: changelog takes a source, got "
                                f"{type(changelog).__name__}")
            log = SourceNode(changelog, None, None, f"{tname} changelog")
            self._source_names.add(log.name)
        node = TableNode(source, keys, tname, log, delete_column)
        node.schema()  # checked now: its columns, its key, a bounded source
        self._tables.append(node)
        return node

    def __getstate__(self) -> dict[str, Any]:
        """What pickling ships (a partitioned run sends the pipeline to its workers): all
        but the stop handle of a run in progress in this process and the backend, which
        each process chooses for itself (``engine``).

        Examples
        --------
        >>> import pickle, gpustream as gs
        >>> p = gs.Pipeline("doc", engine="cpu")
        >>> p.backend.name, pickle.loads(pickle.dumps(p))._backend is None
        ('cpu', True)
        """
        state = dict(self.__dict__)
        state.pop("_stop", None)
        state["_backend"] = None
        return state

    def _dead_letters(self) -> DeadLetterFile | DeadLetterSink:
        if isinstance(self.dead_letter, Sink):
            return DeadLetterSink(self.dead_letter)
        return DeadLetterFile(self.dead_letter)

    def _stream(self, node: Node, schema: pa.Schema) -> Stream:
        self._nodes.append(node)
        return Stream(self, node, schema)

    def _sink(self, node: Node, sink: Sink) -> None:
        self._sinks.append((node, sink))

    def explain(self, parallelism: int | None = None) -> str:
        """The plan, the backend that runs it and, on fallback, why the GPU is not used;
        with ``parallelism`` (a partitioned run's), how it splits into partitions (or why
        it cannot).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline("doc", engine="cpu")
        >>> _ = p.source(gs.from_arrow({"x": [1]}), name="nums").filter(gs.col("x") > 0)
        >>> print(p.explain())
        pipeline 'doc'
        backend: cpu (engine='cpu' was asked for)
        plan:
          (no sink)
            step 1 (filter) (col('x') > 0)  [x: int64]
              step 0 (source) 'nums': from_arrow(1 rows, batch_rows=65536)  [x: int64]
        >>> s = p.source(gs.from_arrow({"ts": [1], "k": ["a"]}), event_time="ts", name="e")
        >>> _ = s.key_by("k").window(gs.Tumbling(10)).agg(n=gs.count()).sink(
        ...     gs.to_parquet("out/"))
        >>> print(p.explain(parallelism=2).split("partitioning:")[1])
        <BLANKLINE>
          partitions: 2, each reading its share of source 'e'
          repartitioned by hash(k) % 2 before step 1 (window 'window@1') (the key of every keyed step)
          watermark of a partition: the smallest of the 2 shares' watermarks
        """
        used = {id(i) for n in self._nodes for i in n.inputs} | {id(n) for n, _ in self._sinks}
        dangling = [n for n in self._nodes if id(n) not in used]
        lines = [f"pipeline {self.name!r}", f"backend: {self.backend.describe()}", "plan:"]
        lines += ["  " + line for line in render_plan(self._sinks, dangling)]
        if parallelism is not None and parallelism > 1:
            from gpustream.cluster.partitioning import partitioning_of

            lines.append("partitioning:")
            try:
                split = partitioning_of([n for n, _ in self._sinks])
            except PlanError as err:
                lines.append(f"  cannot run partitioned: {err}")
            else:
                lines += ["  " + line for line in split.describe(parallelism)]
        return "\n".join(lines)

    def stop(self) -> None:
        """Ask a running :meth:`run` (on another thread) to stop as Ctrl-C does: at the
        next batch boundary, with a final checkpoint, the sinks committed and closed; the
        statistics say ``stopped_by='stop()'``. Nothing happens when it is not running.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline("doc", engine="cpu")
        >>> _ = p.source(gs.from_arrow({"x": [1]})).sink(gs.to_callback(lambda rb: None))
        >>> p.stop()  # not running: nothing to stop
        """
        running = getattr(self, "_stop", None)
        if running is not None:
            running.request()

    def run(self, max_events: int | None = None, metrics: Metrics | None = None,
            checkpoint: Checkpointing | None = None, exit_on_sigterm: bool = True,
            cluster: Any = None, parallelism: int | None = None) -> RunStats:
        """Run until the bounded sources end (or after ``max_events`` input events).

        ``metrics`` (a :class:`gpustream.metrics.Metrics`) is kept current after every
        batch, for a live view or a Prometheus endpoint. Ctrl-C or SIGTERM stops the run
        cleanly at a batch boundary: sources stop, a final checkpoint is taken (when
        checkpointing), sinks commit and close, and the statistics say it was
        interrupted (``stopped_by``); a second signal stops at once. After a clean stop
        on SIGTERM the process then exits with status 143, as a process that SIGTERM
        ends does (the summary is logged); ``exit_on_sigterm=False`` returns the
        statistics instead. With checkpoints, ``max_events`` stops like a signal: at the
        end of the batch that reaches it, open windows kept in the final checkpoint.

        ``checkpoint`` (``gs.Checkpointing(dir, every_batches=...)``): the run starts from
        the newest intact checkpoint in ``dir`` (operator state, source offsets,
        dictionaries, the sinks' pending output), refuses one taken by a different plan,
        and takes one at batch boundaries as often as asked, and at the end. State is
        exactly-once, and so is the output of the file sinks, which commit their files
        with each checkpoint; broker and callback sinks are at-least-once (see README).

        ``cluster`` and ``parallelism`` run the pipeline as ``parallelism`` partitions on
        Dask (``"local:N"``: a LocalCluster of N worker processes started here;
        ``"dask://HOST:PORT"``: a running scheduler; or a ``distributed.Client``): each
        reads its share of the source, rows are repartitioned by the hash of the keyed
        steps' key, and each partition checkpoints its state in ``checkpoint``'s folder;
        a lost worker's partitions resume from the last checkpoint they all took (see
        :mod:`gpustream.cluster`). ``parallelism`` defaults to the number in ``local:N``.

        Returns
        -------
        RunStats
            Events in and out, batches, late events, bad records, elapsed time.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> _ = p.source(gs.from_arrow({"x": [1, 2, 3]})).sink(gs.to_callback(lambda rb: None))
        >>> stats = p.run()
        >>> stats.events_in, stats.events_out
        (3, 3)
        """
        if cluster is not None or (parallelism is not None and parallelism > 1):
            stats = self._run_partitioned(cluster, parallelism, max_events, metrics,
                                          checkpoint)
            if exit_on_sigterm and stats.stopped_by == "SIGTERM":
                raise SystemExit(143)
            return stats
        plan = build_physical(self._sinks, self.backend)
        self._stop: GracefulStop | None = GracefulStop()
        try:
            stats = execute(plan, self.name, max_events, self._dead_letters(), metrics,
                            checkpoint, self.max_state_bytes, self._stop)
        finally:
            self._stop = None
        if exit_on_sigterm and stats.stopped_by == "SIGTERM":
            raise SystemExit(143)  # what SIGTERM does to a process, after a clean stop
        return stats


    def _run_partitioned(self, cluster: Any, parallelism: int | None,
                         max_events: int | None, metrics: Metrics | None,
                         checkpoint: Checkpointing | None) -> RunStats:
        from gpustream.cluster.dask_run import run_partitioned

        if max_events is not None:
            raise PlanError("max_events cannot stop a partitioned run (each partition reads "
                            "its own share); leave it out, or run with parallelism=1")
        if parallelism is None:
            tail = cluster.partition(":")[2] if isinstance(cluster, str) \
                and cluster.startswith("local:") else ""
            if not tail.isdigit():
                raise PlanError("give parallelism= (how many partitions) with cluster="
                                f"{cluster!r}")
            parallelism = int(tail)
        if cluster is None:
            cluster = f"local:{parallelism}"
        self._stop = GracefulStop()
        try:
            return run_partitioned(self, cluster, parallelism, checkpoint, metrics,
                                   self._stop)
        finally:
            self._stop = None


class Stream:
    """A stream of rows with a known schema; methods return new streams.

    Build streams with :meth:`Pipeline.source`; never construct one directly.
    """

    def __init__(self, pipeline: Pipeline, node: Node, schema: pa.Schema) -> None:
        self._pipeline = pipeline
        self._node = node
        self._schema = schema

    @property
    def schema(self) -> pa.Schema:
        """The rows' schema (strings as ``string``, timestamps with their unit).

        Examples
        --------
        >>> import gpustream as gs
        >>> gs.Pipeline().source(gs.from_arrow({"s": ["a"]})).schema.field("s").type
        DataType(string)
        """
        return self._schema

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline this stream belongs to.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline("mine")
        >>> p.source(gs.from_arrow({"x": [1]})).pipeline is p
        True
        """
        return self._pipeline

    def _then(self, node: Node) -> Stream:
        schema = output_schema(node, {id(self._node): self._schema})
        return self._pipeline._stream(node, schema)

    def filter(self, predicate: Expr) -> Stream:
        """Keep the rows where ``predicate`` is true (null counts as false, as in SQL).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"x": [1, None, 3]}))
        >>> s.filter(gs.col("x") > 1).collect()["x"].to_pylist()
        [3]
        """
        if not isinstance(predicate, Expr):
            raise PlanError(f"step {self._node.step + 1} (filter): expected an expression such "
                            f"as gs.col('x') > 0, got {predicate!r}")
        return self._then(FilterNode(self._node, predicate))

    def join_table(self, table: TableNode, on: JoinOn, how: str = "inner") -> Stream:
        """Join each row with the table row of equal key (a lookup join).

        Parameters
        ----------
        table
            From :meth:`Pipeline.table`.
        on
            A column name (the same on both sides), a ``(left, right)`` pair, or a list of
            either for several key columns; the right side must be the table's key.
        how
            ``"inner"`` (rows without a match are dropped) or ``"left"`` (kept, with nulls
            for the table's columns). Null keys match nothing.

        The table's columns follow the stream's; a name the stream has already gets
        ``_right``.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> people = p.table(gs.from_arrow({"id": [1, 2], "name": ["ann", "bo"]}), key="id")
        >>> bids = p.source(gs.from_arrow({"bidder": [2, 1, 9], "price": [5, 6, 7]}))
        >>> bids.join_table(people, on=("bidder", "id")).collect().to_pydict()
        {'bidder': [2, 1], 'price': [5, 6], 'id': [2, 1], 'name': ['bo', 'ann']}
        """
        if not isinstance(table, TableNode):
            raise PlanError(f"step {self._node.step + 1} (join_table): expected a table from "
                            f"Pipeline.table(...), got {type(table).__name__}")
        left_on, right_on = join_on(on, f"step {self._node.step + 1} (join_table)")
        if sorted(right_on) != sorted(table.key):
            raise PlanError(f"step {self._node.step + 1} (join_table): table {table.name!r} is "
                            f"keyed by ({', '.join(table.key)}); on= must name that key, "
                            f"got ({', '.join(right_on)})")
        return self._then(JoinTableNode(self._node, table, left_on, right_on, how))

    def _other(self, other: Stream, what: str) -> None:
        if not isinstance(other, Stream) or isinstance(other, (KeyedStream, WindowedStream)):
            raise PlanError(f"step {self._node.step + 1} ({what}): expected another stream "
                            f"(from Pipeline.source), got {type(other).__name__}")
        if other._pipeline is not self._pipeline:
            raise PlanError(f"step {self._node.step + 1} ({what}): the other stream belongs "
                            "to another pipeline")

    def interval_join(self, other: Stream, on: JoinOn, lower: Duration,
                      upper: Duration) -> Stream:
        """Pairs of rows with equal keys where ``other``'s event time is within
        ``[self.ts + lower, self.ts + upper]`` (Flink's interval join).

        A pair is emitted as soon as its second row arrives. Rows late on their own
        stream (event time below its watermark) are dropped and counted; a row leaves
        the state once the join's watermark (the smaller of both inputs') says no row of
        the other input can match it any more, so state stays bounded.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> bids = p.source(gs.from_arrow({"a": [1, 2, 1], "ts": [100, 400, 900]}),
        ...                 event_time="ts", name="bids")
        >>> views = p.source(gs.from_arrow({"a": [1, 2], "ts": [50, 450]}), event_time="ts",
        ...                  name="views")
        >>> out = bids.interval_join(views, on="a", lower=-100, upper=100).collect()
        >>> sorted(out.to_pylist(), key=lambda r: r["ts"])
        [{'a': 1, 'ts': 100, 'ts_right': 50}, {'a': 2, 'ts': 400, 'ts_right': 450}]
        """
        self._other(other, "interval_join")
        left_on, right_on = join_on(on, f"step {self._node.step + 1} (interval_join)")
        node = IntervalJoinNode(self._node, other._node, left_on, right_on,
                                to_millis(lower, what="interval_join lower"),
                                to_millis(upper, what="interval_join upper"))
        return self._then(node)

    def window_join(self, other: Stream, on: JoinOn, window: WindowAssigner,
                    how: str = "inner") -> Stream:
        """Pairs of rows with equal keys in the same window (Flink's window join),
        emitted when the join's watermark (the smaller of both inputs') passes the
        window's end; the window's rows are dropped then. Output: both sides' columns,
        then ``window_start`` and ``window_end``. Sessions are formed from both inputs'
        rows of a key together.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> bids = p.source(gs.from_arrow({"a": [1, 1, 2], "ts": [100, 1900, 400]}),
        ...                 event_time="ts", name="bids")
        >>> views = p.source(gs.from_arrow({"a": [1, 2], "ts": [700, 1400]}), event_time="ts",
        ...                  name="views")
        >>> bids.window_join(views, on="a", window=gs.Tumbling(1000)).collect().to_pydict()
        {'a': [1], 'ts': [100], 'ts_right': [700], 'window_start': [0], 'window_end': [1000]}
        """
        self._other(other, "window_join")
        where = f"step {self._node.step + 1} (window_join)"
        if how != "inner":
            raise PlanError(f"{where}: how={how!r}: window joins are inner joins")
        if not isinstance(window, WindowAssigner):
            raise PlanError(f"{where}: window= takes gs.Tumbling, gs.Sliding or gs.Session, "
                            f"got {window!r}")
        left_on, right_on = join_on(on, where)
        return self._then(WindowJoinNode(self._node, other._node, left_on, right_on, window))

    def join(self, other: Stream, on: JoinOn, how: str = "inner",
             retention: Duration | None = None, name: str | None = None) -> JoinStream:
        """Every pair of rows with equal keys, whatever their event times (SQL's join,
        Flink's regular join), emitted as soon as its second row arrives.

        Output: this stream's columns, the other's (a key of the same name once, other
        clashes with ``_right``), then, for outer joins, ``op`` (:mod:`gpustream.changelog`).
        ``"inner"`` is append-only (no ``op`` column). ``"left"``, ``"right"`` and ``"full"`` emit a
        changelog: a row without a partner comes at once as ``+I`` with nulls for the
        other side, and when its first partner arrives, ``-D`` of that row then ``+I``
        of the pair (:func:`gpustream.changelog.materialize` gives the join's table);
        steps that need append-only rows (windows, top_k, interval and window joins)
        refuse it (an OVER window over it takes ``order_by=``). Null keys match nothing. An output row's event time is the
        larger of its two rows' (a padded row's: its row's); no column holds it, so
        time-based steps after the join are refused. Without ``retention`` the join
        reads no event time: its inputs may have none, and its rows may be joined again
        (``a.join(b, ...).join(c, ...)``).

        Parameters
        ----------
        other
            The right stream.
        on
            A column name, a ``(left, right)`` pair, or a list of either.
        how
            ``"inner"``, ``"left"``, ``"right"`` or ``"full"``.
        retention
            How long (event time) a row is kept for partners; None keeps every row
            forever, **so state grows with the input**: give one for unbounded streams.
            A row leaves once the join's watermark reaches its time + retention; a row
            whose time + retention is at or below its stream's watermark when it
            arrives is late (``.late`` / ``.late_right``). Two on-time rows join
            exactly when ``max(w_l, w_r) < min(ts_l, ts_r) + retention``, ``w`` each
            row's watermark on arrival (:mod:`gpustream.operators.regular_join`):
            independent of batching, but not the same as ``|ts_l - ts_r| <= retention``.
        name
            Names the step (and its checkpoint state).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> bids = p.source(gs.from_arrow({"a": [1, 2, 3], "ts": [100, 400, 900]}),
        ...                 event_time="ts", name="bids")
        >>> users = p.source(gs.from_arrow({"a": [1, 2], "ts": [5000, 50]}),
        ...                  event_time="ts", name="users")
        >>> out = bids.join(users, on="a", how="left").collect()
        >>> out.column_names
        ['a', 'ts', 'ts_right', 'op']
        >>> sorted((r["a"], r["ts_right"]) for r in gs.materialize(out).to_pylist())
        [(1, 5000), (2, 50), (3, None)]

        (Which padded rows come and go in ``out`` depends on how the inputs
        interleave; ``materialize(out)`` does not.)
        """
        self._other(other, "join")
        where = f"step {self._node.step + 1} (join)"
        left_on, right_on = join_on(on, where)
        kept = None if retention is None else to_millis(retention, what="join retention")
        node = RegularJoinNode(self._node, other._node, left_on, right_on, how, kept,
                               name or f"join@{self._node.step + 1}")
        schema = output_schema(node, {id(self._node): self._schema,
                                      id(other._node): other._schema})
        self._pipeline._nodes.append(node)
        return JoinStream(self._pipeline, node, schema)

    def union(self, *others: Stream) -> Stream:
        """The rows of this stream and of ``others``, as they arrive (SQL's UNION ALL:
        duplicates kept, no order between the streams).

        The streams need the same columns with the same types (in any order: the output
        has this stream's order) and the same event-time column, or none. The union's
        watermark is the smallest of the streams' (idle ones aside, as
        ``Watermark.with_idleness`` says), and each row's watermark the smaller of its
        own and the other streams' when it arrives: a row on time on its own stream is
        on time after the union, so windows after it do not depend on how the streams
        are cut into batches or interleave.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> web = p.source(gs.from_arrow({"user": ["a", "b"], "ts": [1, 12]}),
        ...                event_time="ts", name="web")
        >>> app = p.source(gs.from_arrow({"ts": [3], "user": ["a"]}), event_time="ts",
        ...                name="app")
        >>> out = web.union(app).key_by("user").window(gs.Tumbling(10)).agg(n=gs.count())
        >>> sorted(out.collect().to_pylist(), key=lambda r: (r["window_start"], r["user"]))
        [{'user': 'a', 'window_start': 0, 'window_end': 10, 'n': 2}, {'user': 'b', 'window_start': 10, 'window_end': 20, 'n': 1}]
        """
        where = f"step {self._node.step + 1} (union)"
        if not others:
            raise PlanError(f"{where}: name the stream(s) to add, e.g. a.union(b)")
        for other in others:
            self._other(other, "union")
        node = UnionNode((self._node, *(o._node for o in others)))
        schemas = {id(self._node): self._schema, **{id(o._node): o._schema for o in others}}
        return self._pipeline._stream(node, output_schema(node, schemas))

    def map_batches(self, fn: Callable[[pa.RecordBatch], pa.RecordBatch],
                    schema: SchemaLike, name: str | None = None) -> Stream:
        """Run a Python function on each batch: a ``pyarrow.RecordBatch`` in, one out,
        for what expressions cannot say (a library call, a model, a lookup).

        Parameters
        ----------
        fn
            Takes a batch of this stream's rows, returns a ``pyarrow.RecordBatch`` (or
            ``Table``) with the columns of ``schema``. It may drop rows, add rows and
            change columns, but must keep the event-time column (with its type) when
            the stream has one. Exceptions stop the run, named with the step.
        schema
            The columns ``fn`` returns: a ``pyarrow.Schema`` or a dict of column ->
            Arrow type (``"int64"``, ``"string"``, ``"timestamp[ms]"`` …). Steps after
            this one are planned (typed) against it.
        name
            Names the step in errors and plans (default: the function's name).

        The output's per-event watermarks are recomputed from its event times, as the
        source computes them (the largest event time among the rows ``fn`` returned
        before a row, minus the source's watermark delay), and the step's watermark is
        its output's: rows ``fn`` moves later in time hold windows back no longer than
        the delay, rows it drops hold them back until a later row passes. For results
        that do not depend on batching ``fn`` should be row-wise: each row's output from
        that row alone.

        It runs on the host, one batch at a time, on every backend: on a GPU each batch
        is copied to the host as Arrow and the result back (every column twice, strings
        decoded and encoded again), the one step of a pipeline that leaves the device.
        A YAML spec cannot hold a Python function: ``map_batches`` is Python only.

        Examples
        --------
        >>> import gpustream as gs, pyarrow as pa, pyarrow.compute as pc
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 2, 3], "name": ["Ann", "bo", "Cy"]}),
        ...              event_time="ts")
        >>> def shout(rb: pa.RecordBatch) -> pa.RecordBatch:
        ...     upper = pc.utf8_upper(rb["name"])
        ...     return pa.record_batch([rb["ts"], upper], names=["ts", "loud"])
        >>> s.map_batches(shout, schema={"ts": "int64", "loud": "string"}).collect().to_pydict()
        {'ts': [1, 2, 3], 'loud': ['ANN', 'BO', 'CY']}
        """
        where = f"step {self._node.step + 1} (map_batches)"
        try:
            declared = as_schema(schema, where)
        except IngestError as exc:
            raise PlanError(str(exc)) from None
        label = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
        return self._then(MapBatchesNode(self._node, fn, declared, str(label)))

    def top_k(self, n: int, by: str | Sequence[str], per: str | Sequence[str] = (),
              descending: bool | Sequence[bool] = True, ties: str = "first") -> Stream:
        """The ``n`` rows with the largest ``by`` (``descending=False``: smallest) in each
        window of a window's output, per ``per`` columns, with their ``rank`` (1..n): SQL's
        ``ROW_NUMBER() OVER (PARTITION BY window_start, window_end, per ORDER BY by DESC)
        <= n`` (Nexmark q5, q19).

        Over a stream that is not a window's output it ranks the whole stream per ``per``
        columns (the same SQL without a window; Nexmark q18, q19) and emits a changelog
        (:mod:`gpustream.changelog`): ``+I`` for a row entering its group's top ``n``,
        ``-D`` for one pushed out, no rank; the rows the changelog describes
        (``gs.materialize(rows)``) do not depend on batching.

        ``by`` may list several columns (``descending`` then one flag per column, as
        Polars' ``sort``): rows are ordered by the first, then the next for equal values
        (``ORDER BY price DESC, ts ASC``: ``by=["price", "ts"], descending=[True,
        False]``). Of rows equal in every ``by`` column, the earlier ranks first;
        ``ties="last"``: the later (e.g. ``top_k(1, by="ts", per="user", ties="last")``
        keeps each user's last row even when two share a time, as SQL's ``ORDER BY ts
        DESC, arrival DESC``).

        A window's rows wait here until the watermark passes the window's end, then are
        ranked: ties in ``by`` in the order the window emitted its rows (by its keys),
        nulls after every value, so results do not depend on batching. The ranked rows
        keep the window's event time (a window after this step counts them on time).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 2, 3, 4], "item": [1, 2, 2, 3]}),
        ...              event_time="ts")
        >>> w = s.key_by("item").window(gs.Tumbling(10)).agg(n=gs.count())
        >>> w.top_k(1, by="n").collect().to_pydict()
        {'item': [2], 'window_start': [0], 'window_end': [10], 'n': [2], 'rank': [1]}
        >>> best = s.top_k(1, by="ts", per="item")  # each item's latest row, a changelog
        >>> gs.materialize(best.collect()).to_pydict()
        {'ts': [1, 3, 4], 'item': [1, 2, 3]}
        >>> first = s.top_k(1, by=["item", "ts"], descending=[True, False])  # ts breaks ties
        >>> gs.materialize(first.collect()).to_pydict()
        {'ts': [4], 'item': [3]}
        """
        where = f"step {self._node.step + 1} (top_k)"
        cols = [by] if isinstance(by, str) else list(by)
        flags = [descending] * len(cols) if isinstance(descending, bool) else list(descending)
        if not cols or not all(isinstance(c, str) for c in cols):
            raise PlanError(f"{where}: by= names a column, or a list of columns")
        if len(flags) != len(cols) or not all(isinstance(f, bool) for f in flags):
            raise PlanError(f"{where}: descending= is one bool, or one per by= column "
                            f"({len(cols)}), got {descending!r}")
        if ties not in ("first", "last"):
            raise PlanError(f"step {self._node.step + 1} (top_k): ties={ties!r}: 'first' "
                            "(of rows with equal values, the earlier ranks first) or 'last'")
        groups = (per,) if isinstance(per, str) else tuple(per)
        whole = not ranks_windows(self._node, self._schema)
        return self._then(TopKNode(self._node, n, cols[0], flags[0], groups, whole,
                                   ties == "last", tuple(zip(cols[1:], flags[1:], strict=True))))

    def with_columns(
        self, exprs: Mapping[str, Expr | Any] | None = None, **named: Expr | Any
    ) -> Stream:
        """Add or replace columns (``name=expression``; plain values become literals).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"price": [100, 250]}))
        >>> s.with_columns(usd=gs.col("price") * 0.5).collect()["usd"].to_pylist()
        [50.0, 125.0]
        """
        items = {**(dict(exprs) if exprs else {}), **named}
        if not items:
            raise PlanError(f"step {self._node.step + 1} (with_columns): name at least one "
                            "column, e.g. with_columns(usd=gs.col('price') * 0.9)")
        pairs = tuple((str(n), e if isinstance(e, Expr) else lit(e)) for n, e in items.items())
        return self._then(WithColumnsNode(self._node, pairs))

    def select(self, *columns: str | Expr, **named: Expr | Any) -> Stream:
        """Keep exactly these columns, in this order: names, ``gs.col(...)`` or ``name=expr``.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"a": [1], "b": [2], "c": [3]}))
        >>> s.select("c", "a", d=gs.col("b") + 1).collect().to_pydict()
        {'c': [3], 'a': [1], 'd': [3]}
        """
        pairs: list[tuple[str, Expr]] = []
        for c in columns:
            if isinstance(c, str):
                pairs.append((c, Col(c)))
            elif isinstance(c, Col):
                pairs.append((c.name, c))
            else:
                raise PlanError(
                    f"step {self._node.step + 1} (select): {c!r} needs a name; pass it as "
                    "name=expression"
                )
        pairs += [(str(n), e if isinstance(e, Expr) else lit(e)) for n, e in named.items()]
        return self._then(SelectNode(self._node, tuple(pairs)))

    def key_by(self, *columns: str) -> KeyedStream:
        """Partition by key columns (integers, strings, bools, timestamps) for windows.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"k": ["a", "b", "a"], "ts": [1, 2, 30]}), event_time="ts")
        >>> out = s.key_by("k").window(gs.Tumbling(10), name="w").agg(n=gs.count()).collect()
        >>> out.to_pydict()
        {'k': ['a', 'b', 'a'], 'window_start': [0, 0, 30], 'window_end': [10, 10, 40], 'n': [1, 1, 1]}
        """
        cols = tuple(c for group in columns for c in ([group] if isinstance(group, str)
                                                      else list(group)))
        if not cols:
            raise PlanError(f"step {self._node.step + 1} (key_by): name at least one key column")
        return KeyedStream(self, cols)

    def window(self, assigner: WindowAssigner, name: str | None = None,
               allowed_lateness: Duration = 0) -> WindowedStream:
        """Event-time windows over the whole stream (no key); see :meth:`KeyedStream.window`.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 5, 12]}), event_time="ts")
        >>> s.window(gs.Tumbling(10)).agg(n=gs.count()).collect()["n"].to_pylist()
        [2, 1]
        """
        return KeyedStream(self, ()).window(assigner, name, allowed_lateness)

    def over(self, range: Duration | None = None, rows: int | str | None = None,
             name: str | None = None, order_by: str | None = None) -> OverWindow:
        """An OVER window over the whole stream (no key); see :meth:`KeyedStream.over`.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 5, 3], "v": [1, 2, 3]}), event_time="ts",
        ...              watermark=gs.Watermark.bounded(5))
        >>> s.over(rows=1).agg(hi=gs.col("v").max()).collect().to_pydict()
        {'ts': [1, 3, 5], 'v': [1, 3, 2], 'hi': [1, 3, 3]}
        """
        return KeyedStream(self, ()).over(range, rows, name, order_by)

    def sink(self, sink: Sink) -> Stream:
        """Send this stream's rows to ``sink`` when the pipeline runs; returns this stream.

        Examples
        --------
        >>> import gpustream as gs
        >>> rows = []
        >>> p = gs.Pipeline(engine="cpu")
        >>> _ = p.source(gs.from_arrow({"x": [7]})).sink(gs.to_callback(rows.append))
        >>> _ = p.run()
        >>> rows[0].to_pydict()
        {'x': [7]}
        """
        if not isinstance(sink, Sink):
            raise PlanError(f"Stream.sink takes a sink such as gs.to_console(), got "
                            f"{type(sink).__name__}")
        self._pipeline._sink(self._node, sink)
        return self

    def collect(self) -> pa.Table:
        """Run this stream's part of the pipeline to the end and return its rows.

        Only this stream's upstream runs; the pipeline's sinks are not written. The
        sources must be bounded.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> p.source(gs.from_arrow({"x": [1, 2]})).collect().num_rows
        2
        """
        unbounded = [
            n.name for n in _sources_of(self._node) if not n.source.bounded
        ]
        if unbounded:
            raise PlanError(f"collect() needs bounded sources, but {', '.join(unbounded)} "
                            "never ends; use .sink(...) and Pipeline.run() instead")
        sink = CollectSink()
        plan = build_physical([(self._node, sink)], self._pipeline.backend)
        execute(plan, self._pipeline.name, None, self._pipeline._dead_letters())
        return sink.table()

    def to_pandas(self, arrow_dtypes: bool = False) -> Any:
        """:meth:`collect` as a ``pandas.DataFrame``.

        With ``arrow_dtypes`` the columns are ``pd.ArrowDtype`` over the result's Arrow
        buffers (no copy, nulls kept as nulls in every type); otherwise pandas' usual
        dtypes as ``pyarrow.Table.to_pandas`` makes them (integers with nulls become
        floats, strings objects), freeing the Arrow result as it converts.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> p.source(gs.from_arrow({"x": [1, None]})).to_pandas(arrow_dtypes=True).dtypes
        x    int64[pyarrow]
        dtype: object
        """
        import pandas as pd

        table = self.collect()
        if arrow_dtypes:
            return table.to_pandas(types_mapper=pd.ArrowDtype)
        return table.to_pandas(split_blocks=True, self_destruct=True)

    def to_polars(self) -> Any:
        """:meth:`collect` as a ``polars.DataFrame`` (Polars shares the Arrow buffers).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> p.source(gs.from_arrow({"s": ["a", None]})).to_polars()["s"].to_list()
        ['a', None]
        """
        import polars as pl

        return pl.from_arrow(self.collect(), rechunk=False)

    def to_cudf(self) -> Any:
        """:meth:`collect` as a ``cudf.DataFrame`` on the GPU (one host-to-device copy:
        results are gathered on the host). Needs the ``cudf`` extra and a GPU.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"x": [1]}))
        >>> try:
        ...     print(s.to_cudf()["x"].to_arrow().to_pylist() == [1])
        ... except ImportError as exc:  # no cudf here: the error says how to get it
        ...     print("gpustream[cudf]" in str(exc))
        True
        """
        try:
            import cudf
        except ImportError as exc:
            raise ImportError("to_cudf needs cudf: pip install 'gpustream[cudf]' on a machine "
                              "with an NVIDIA GPU; to_pandas() and to_polars() need none"
                              ) from exc
        return cudf.DataFrame.from_arrow(self.collect())

    def __repr__(self) -> str:
        cols = ", ".join(f"{f.name}: {f.type}" for f in self._schema)
        return f"Stream({self._node.label} of {self._pipeline.name!r}: [{cols}])"


def _as_source(source: Any, where: str) -> Source:
    """A source, or in-memory data (a DataFrame, an Arrow table) as ``gs.from_arrow``."""
    if isinstance(source, Source):
        return source
    try:
        return from_arrow(source)
    except TypeError as exc:
        raise PlanError(f"{where} takes a source such as gs.read_parquet(...) or "
                        f"gs.from_arrow(...), or a DataFrame; got {type(source).__name__}"
                        ) from exc


def _sources_of(node: Node) -> list[SourceNode]:
    from gpustream.plan.logical import lineage

    return [n for n in lineage(node) if isinstance(n, SourceNode)]


class KeyedStream:
    """A stream partitioned by key columns; call :meth:`window` next."""

    def __init__(self, stream: Stream, keys: tuple[str, ...],
                 retention_ms: int | None = None) -> None:
        self._stream = stream
        self.keys = keys
        self.retention_ms = retention_ms

    def _no_retention(self, step: str) -> None:
        if self.retention_ms is not None:
            raise PlanError(f"step {self._stream._node.step + 1} ({step}): with_retention "
                            f"bounds an aggregation without a window; a {step} drops its "
                            "state by the watermark already: remove with_retention")

    def with_retention(self, retention: Duration) -> KeyedStream:
        """Bound the state of :meth:`agg` (without a window) by event time: a key's state
        is dropped once the watermark reaches its last event time + ``retention``, without
        a change emitted (a later row starts the key anew with ``+I``); rows older than
        that when they arrive go to ``.late``.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"k": [1, 1, 2, 1], "ts": [0, 1, 50, 60]}),
        ...              event_time="ts")
        >>> n = s.key_by("k").with_retention(10).agg(n=gs.count())
        >>> gs.materialize(n.collect(), key="k").to_pydict()  # k=1 at 60 started anew
        {'k': [1, 2], 'n': [1, 1]}
        """
        return KeyedStream(self._stream, self.keys, to_millis(retention, what="retention"))

    def agg(self, **aggs: Agg) -> AggStream:
        """Aggregate each key over all its rows so far, without a window (SQL's
        ``GROUP BY``): a changelog (:mod:`gpustream.changelog`) with an ``op`` column,
        ``+I`` for a new key, ``-U``/``+U`` (old row, new row) when its aggregates change.
        Changes are emitted per batch; the table they describe
        (``gs.materialize(rows, key=keys)``) does not depend on batching. State grows
        with the keys unless :meth:`with_retention` bounds it.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"k": ["a", "b", "a"], "v": [1, 2, 3]}))
        >>> totals = s.key_by("k").agg(total=gs.col("v").sum())
        >>> gs.materialize(totals.collect(), key="k").to_pydict()
        {'k': ['a', 'b'], 'total': [4, 2]}
        """
        parent = self._stream
        node = RunningAggNode(parent._node, self.keys, tuple(aggs.items()),
                              f"agg@{parent._node.step + 1}", self.retention_ms)
        schema = output_schema(node, {id(parent._node): parent._schema})
        parent._pipeline._nodes.append(node)
        return AggStream(parent._pipeline, node, schema)

    def window(self, assigner: WindowAssigner, name: str | None = None,
               allowed_lateness: Duration = 0) -> WindowedStream:
        """Event-time windows: ``gs.Tumbling``, ``gs.Sliding`` or ``gs.Session``; or
        windows by the wall clock at which rows arrive, not deterministic:
        ``gs.ProcessingTime.tumbling(size)`` or ``gs.ProcessingTime.sliding(size, slide)``
        (:class:`~gpustream.windows.ProcessingTime`).

        Parameters
        ----------
        assigner
            The windows each event belongs to.
        name
            A stable name for the window's state (keys its checkpoints); default
            ``window@<step>``.
        allowed_lateness
            How long a fired window keeps its state; each late event within it re-fires
            the window with ``revision`` 1, 2, ... (the output gains a ``revision`` column;
            sessions also an ``op`` column, their changelog: ``+I``, ``-U``/``+U`` when a
            session fires again, ``-D`` for a session merged into another).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"k": [1, 1, 1], "ts": [5, 15, 3]}), event_time="ts")
        >>> w = s.key_by("k").window(gs.Tumbling(10), allowed_lateness=20).agg(n=gs.count())
        >>> w.collect().to_pydict()   # ts=3 arrived after [0, 10) fired: it fires again
        {'k': [1, 1, 1], 'window_start': [0, 0, 10], 'window_end': [10, 10, 20], 'n': [1, 2, 1], 'revision': [0, 1, 0]}
        """
        self._no_retention("window")
        if not isinstance(assigner, WindowAssigner):
            raise PlanError(f"step {self._stream._node.step + 1} (window): expected "
                            f"gs.Tumbling, gs.Sliding, gs.Session or gs.ProcessingTime."
                            f"tumbling(...), got {assigner!r}")
        lateness = to_millis(allowed_lateness, what="allowed_lateness")
        return WindowedStream(self._stream, self.keys, assigner, name, lateness)


    def over(self, range: Duration | None = None, rows: int | str | None = None,
             name: str | None = None, order_by: str | None = None) -> OverWindow:
        """An OVER window: per key, aggregates over each row's frame, added to every row.

        As SQL's ``agg(x) OVER (PARTITION BY keys ORDER BY event_time RANGE BETWEEN
        INTERVAL range PRECEDING AND CURRENT ROW)`` (or ``ROWS BETWEEN rows PRECEDING
        AND CURRENT ROW``). Give exactly one frame; then call :meth:`OverWindow.agg`.

        Rows are ordered by event time per key, whatever order they arrive in: each comes
        out once the watermark passes its event time, in (event time, arrival) order. A
        row older than the watermark as of its arrival goes to ``.late`` (counted in
        ``late_events``). Runs on the host on every backend (a GPU run copies each batch
        to the host and back; :mod:`gpustream.operators.over`).

        Parameters
        ----------
        range
            RANGE frame: the key's rows with event time in ``[ts - range, ts]``, rows of
            the same event time all included.
        rows
            ROWS frame: the row and the ``rows`` rows of its key before it (rows of the
            same event time in arrival order); ``"unbounded"``: every row of its key up
            to it (``ROWS UNBOUNDED PRECEDING``: running totals; ``gs.row_number()``
            numbers the rows), each key's aggregates kept instead of its rows.
        name
            A stable name for the state (keys its checkpoints); default ``over@<step>``.
        order_by
            Over a changelog (rows with an ``op`` column: a running aggregation, a
            top_k over a stream, an outer join): the column (integer or timestamp)
            ordering the rows of the table the changelog describes. The result is that
            table's OVER, as a changelog of ``+I``/``-D`` rows that follows every change
            of the input (:mod:`gpustream.operators.over_changelog`); no event time is
            needed. Over an append-only stream rows are ordered by the event time.

        Examples
        --------
        The core of a fraud rule: on every transaction, how many the card made in the
        last 5 minutes and what they spent.

        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> tx = p.source(gs.from_arrow({
        ...     "card": ["a", "a", "b", "a", "a"],
        ...     "ts": [0, 60_000, 90_000, 200_000, 400_000],
        ...     "amount": [10.0, 25.0, 5.0, 40.0, 1.0]}),
        ...     event_time="ts", watermark=gs.Watermark.bounded("10s"))
        >>> recent = tx.key_by("card").over(range="5m", name="recent").agg(
        ...     n=gs.count(), spent=gs.col("amount").sum())
        >>> recent.collect().to_pydict()
        {'card': ['a', 'a', 'b', 'a', 'a'], 'ts': [0, 60000, 90000, 200000, 400000], 'amount': [10.0, 25.0, 5.0, 40.0, 1.0], 'n': [1, 2, 1, 3, 2], 'spent': [10.0, 35.0, 5.0, 75.0, 41.0]}
        """
        where = f"step {self._stream._node.step + 1} (over)"
        self._no_retention("over")
        if (range is None) == (rows is None):
            raise PlanError(f"{where}: give exactly one of range= (event time, e.g. '5m') "
                            "and rows= (a number of preceding rows)")
        span = None if range is None else to_millis(range, what=f"{where} range")
        return OverWindow(self._stream, self.keys, span, rows, name, order_by)


class OverWindow:
    """An OVER window waiting for its aggregations; call :meth:`agg`."""

    def __init__(self, stream: Stream, keys: tuple[str, ...], range_ms: int | None,
                 rows: int | str | None, name: str | None,
                 order_by: str | None = None) -> None:
        self._stream = stream
        self.keys = keys
        self.range_ms = range_ms
        self.rows = rows
        self.name = name
        self.order_by = order_by

    def agg(self, **aggs: Agg) -> AggStream:
        """Add aggregates of each row's frame to every row: ``gs.count()``, and ``sum``,
        ``min``, ``max``, ``mean``, ``count`` of a column (nulls skipped, as SQL).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"k": [1, 1, 1], "ts": [1, 2, 2], "v": [4, None, 6]}),
        ...              event_time="ts")
        >>> s.key_by("k").over(range=0).agg(m=gs.col("v").mean()).collect()["m"].to_pylist()
        [4.0, 6.0, 6.0]
        """
        parent = self._stream
        name = self.name or f"over@{parent._node.step + 1}"
        node = OverNode(parent._node, self.keys, self.range_ms, self.rows,
                        tuple(aggs.items()), name, self.order_by)
        schema = output_schema(node, {id(parent._node): parent._schema})
        parent._pipeline._nodes.append(node)
        return AggStream(parent._pipeline, node, schema)


class WindowedStream:
    """Windows waiting for their aggregations; call :meth:`agg`."""

    def __init__(self, stream: Stream, keys: tuple[str, ...], assigner: WindowAssigner,
                 name: str | None, lateness_ms: int) -> None:
        self._stream = stream
        self.keys = keys
        self.assigner = assigner
        self.name = name
        self.lateness_ms = lateness_ms

    def agg(self, **aggs: Agg) -> AggStream:
        """Aggregate each window: ``agg(n=gs.count(), total=gs.col("v").sum())``.

        Output rows: key columns, ``window_start``, ``window_end``, the aggregates in the
        order given (and ``revision`` with allowed lateness), one row per (key, window)
        when the watermark reaches the window's end.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [1, 2, 3], "v": [1.0, 2.0, 6.0]}), event_time="ts")
        >>> s.window(gs.Tumbling(10)).agg(m=gs.col("v").mean(), hi=gs.col("v").max()).collect().to_pydict()
        {'window_start': [0], 'window_end': [10], 'm': [3.0], 'hi': [6.0]}
        """
        parent = self._stream
        name = self.name or f"window@{parent._node.step + 1}"
        node = WindowAggNode(parent._node, self.keys, self.assigner, tuple(aggs.items()), name,
                             self.lateness_ms)
        schema = output_schema(node, {id(parent._node): parent._schema})
        parent._pipeline._nodes.append(node)
        return AggStream(parent._pipeline, node, schema)


class JoinStream(Stream):
    """The output of :meth:`Stream.join`; with a retention, ``.late`` and
    ``.late_right`` are the streams of each input's late rows."""

    def _late(self, port: int) -> Stream:
        node = self._node
        assert isinstance(node, RegularJoinNode)
        late = LateNode(node, port)
        schema = output_schema(late, {id(node): self._schema})
        return self._pipeline._stream(late, schema)

    @property
    def late(self) -> Stream:
        """Left rows that arrived with their time + retention at or below their
        stream's watermark (they could have missed partners already dropped), unchanged.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> a = p.source(gs.from_arrow({"k": [1, 1], "ts": [500, 100]}), event_time="ts")
        >>> b = p.source(gs.from_arrow({"k": [1], "ts": [450]}), event_time="ts")
        >>> a.join(b, on="k", retention=200).late.collect().to_pydict()
        {'k': [1], 'ts': [100]}
        """
        return self._late(0)

    @property
    def late_right(self) -> Stream:
        """Right rows late as :attr:`late` says, unchanged.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> a = p.source(gs.from_arrow({"k": [1], "ts": [5]}), event_time="ts")
        >>> b = p.source(gs.from_arrow({"k": [1, 1], "ts": [900, 10]}), event_time="ts")
        >>> a.join(b, on="k", retention=100).late_right.collect().to_pydict()
        {'k': [1], 'ts': [10]}
        """
        return self._late(1)


class AggStream(Stream):
    """The output of a windowed aggregation or an OVER window; ``.late`` is its stream of
    late input rows."""

    @property
    def late(self) -> Stream:
        """Input rows that arrived after every window they belong to had fired, unchanged.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"ts": [5, 25, 3], "v": [1, 2, 3]}), event_time="ts")
        >>> w = s.window(gs.Tumbling(10)).agg(total=gs.col("v").sum())
        >>> w.late.collect().to_pydict()
        {'ts': [3], 'v': [3]}
        """
        node = self._node
        assert isinstance(node, (WindowAggNode, OverNode, RunningAggNode))
        late = LateNode(node)
        schema = output_schema(late, {id(node): self._schema,
                                      id(node.input): output_schema(node.input)})
        return self._pipeline._stream(late, schema)
