"""From logical plan to physical operators for one backend (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from gpustream.backend import Backend
from gpustream.errors import PlanError
from gpustream.operators import FilterOp, Operator, ProjectOp
from gpustream.plan.logical import (
    UNBOUNDED,
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
    TopKNode,
    UnionNode,
    WindowAggNode,
    WindowJoinNode,
    WithColumnsNode,
    changelog_origin,
    event_time_of,
    join_columns,
    lineage,
    map_time,
    output_schema,
    stream_event_time,
    stream_time,
    time_shift,
    to_event_units,
    untimed_join,
)
from gpustream.windows import Session

if TYPE_CHECKING:
    from gpustream.operators.window import WindowSpec
    from gpustream.sinks.base import Sink  # annotations only: the sinks import the runtime

__all__ = ["PhysicalNode", "PhysicalPlan", "build_physical", "render_plan"]


@dataclass(eq=False)
class PhysicalNode:
    """An operator with the nodes and sinks its output feeds."""

    node: Node
    op: Operator
    schema: pa.Schema
    children: list[PhysicalNode] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    #: side outputs (e.g. ``late``) -> the nodes they feed
    side: dict[str, list[PhysicalNode]] = field(default_factory=dict)
    #: id(child) -> the input port of the child this node feeds (0 but for a join's right)
    ports: dict[int, int] = field(default_factory=dict)


@dataclass
class PhysicalPlan:
    """What the runtime executes: sources (in order) feeding a DAG of operators."""

    backend: Backend
    sources: list[PhysicalNode]
    sinks: list[tuple[PhysicalNode, Sink]]


def window_spec(node: WindowAggNode, input_schema: pa.Schema, schema: pa.Schema) -> WindowSpec:
    """The physical description of a windowed step, in event-time units."""
    from gpustream.expr import expr_type
    from gpustream.operators.window import AggSpec, WindowSpec
    event_time, ts_type = event_time_of(node)
    where = node.label
    g = node.assigner.geometry(ts_type, where)
    aggs = []
    for name, agg in node.aggs:
        in_type = None if agg.input is None else expr_type(agg.input, input_schema, where)
        aggs.append(AggSpec(name, agg, in_type, schema.field(name).type))
    return WindowSpec(node.name, node.keys, event_time, g.size, g.slide, g.offset, g.gap,
                      to_event_units(node.allowed_lateness_ms, ts_type, where), tuple(aggs),
                      schema, node.allowed_lateness_ms > 0, time_shift(node.input, where))


def _operator(node: Node, schema: pa.Schema, backend: Backend,
              memo: dict[int, pa.Schema]) -> Operator:
    # operators with kernels load numba only now, when a plan is built
    from gpustream.operators.watermark import WatermarkOp
    from gpustream.operators.window import WindowAggOp

    xp = backend.xp
    if isinstance(node, SourceNode):
        if node.event_time is None:
            return Operator()
        _, ts_type = node, node.source.schema().field(node.event_time).type
        delay = node.watermark.delay_ms if node.watermark else 0
        return WatermarkOp(node.event_time,
                           to_event_units(delay, ts_type, f"{node.label} watermark"), backend)
    if isinstance(node, WindowAggNode):
        spec = window_spec(node, memo[id(node.input)], schema)
        if node.assigner.processing_time:
            from gpustream.operators.proctime import ProcessingTimeWindowOp

            return ProcessingTimeWindowOp(spec, backend)
        if isinstance(node.assigner, Session):
            from gpustream.operators.session import SessionAggOp

            return SessionAggOp(spec, backend)
        return WindowAggOp(spec, backend)
    if isinstance(node, OverNode):
        return _over(node, memo[id(node.input)], schema, backend)
    if isinstance(node, RunningAggNode):
        return _running(node, memo[id(node.input)], schema, backend)
    if isinstance(node, TopKNode):
        from gpustream.operators.topk import TopKOp, TopKSpec, TopNChangelogOp

        ranked = TopKSpec(node.n, node.by, node.descending, node.per, schema, node.keep_last,
                          node.then)
        return TopNChangelogOp(ranked, backend) if node.over_stream else TopKOp(ranked, backend)
    if isinstance(node, LateNode):
        return Operator()
    if isinstance(node, JoinTableNode):
        from gpustream.operators.lookup import LookupJoinOp

        return LookupJoinOp(node, memo[id(node.input)], schema, backend)
    if isinstance(node, (IntervalJoinNode, WindowJoinNode, RegularJoinNode)):
        return _two_stream_join(node, schema, backend, memo)
    if isinstance(node, UnionNode):
        from gpustream.operators.union import UnionOp

        return UnionOp(schema, [memo[id(n)] for n in node.streams],
                       tuple(_idleness_s(n) for n in node.streams), backend)
    if isinstance(node, MapBatchesNode):
        from gpustream.operators.map import MapBatchesOp

        got = map_time(node)
        times = None if got is None else (
            got[0], to_event_units(got[2], got[1], f"{node.label} watermark"))
        return MapBatchesOp(node.fn, schema, node.label, times, backend)
    if isinstance(node, FilterNode):
        return FilterOp(node.predicate, xp)
    if isinstance(node, WithColumnsNode):
        return ProjectOp(node.exprs, schema, True, backend)
    if isinstance(node, SelectNode):
        return ProjectOp(node.exprs, schema, False, backend)
    raise PlanError(f"{node.label}: no physical operator for {type(node).__name__}")


def _over(node: OverNode, input_schema: pa.Schema, schema: pa.Schema,
          backend: Backend) -> Operator:
    """The OVER window operator of ``node``, its frame in event-time units."""
    from gpustream.operators.over import UNBOUNDED_ROWS, OverAgg, OverOp, OverSpec

    where = node.label
    if node.emits_changelog:  # the table's OVER, ordered by a column, as a changelog
        from gpustream.operators.over_changelog import ChangelogOverOp

        assert node.order_by is not None
        ts_type = input_schema.field(node.order_by).type
        span = None if node.range_ms is None else to_event_units(node.range_ms, ts_type,
                                                                 where)
        rows = UNBOUNDED_ROWS if node.rows == UNBOUNDED else node.rows
        assert rows is None or isinstance(rows, int)
        aggs = tuple(OverAgg(name, agg, schema.field(name).type) for name, agg in node.aggs)
        return ChangelogOverOp(OverSpec(node.name, node.keys, node.order_by, span, rows,
                                        aggs, input_schema, schema), backend)
    event_time, ts_type = event_time_of(node)
    span = None if node.range_ms is None else to_event_units(node.range_ms, ts_type, where)
    aggs = tuple(OverAgg(name, agg, schema.field(name).type) for name, agg in node.aggs)
    unbounded = node.rows == UNBOUNDED
    rows = UNBOUNDED_ROWS if unbounded else node.rows
    assert rows is None or isinstance(rows, int)
    return OverOp(OverSpec(node.name, node.keys, event_time, span, rows, aggs,
                           input_schema, schema, time_shift(node.input, where), unbounded),
                  backend)


def _running(node: RunningAggNode, input_schema: pa.Schema, schema: pa.Schema,
             backend: Backend) -> Operator:
    """The running aggregation of ``node``, its retention in event-time units."""
    from gpustream.expr import expr_type
    from gpustream.operators.running import RunningAggOp, RunningSpec
    from gpustream.operators.window import AggSpec

    where = node.label
    aggs = tuple(AggSpec(name, agg, None if agg.input is None
                         else expr_type(agg.input, input_schema, where),
                         schema.field(name).type) for name, agg in node.aggs)
    retracting = changelog_origin(node.input) is not None
    try:  # (without one, no retention: the plan checked it)
        timed = stream_time(node.input, where) is not None
    except PlanError:  # (a stream whose time no step can read: none for this one)
        timed = False
    if not timed:
        return RunningAggOp(RunningSpec(node.name, node.keys, aggs, schema,
                                        retracting=retracting), backend)
    event_time, ts_type = event_time_of(node)
    retention = (None if node.retention_ms is None
                 else to_event_units(node.retention_ms, ts_type, where))
    return RunningAggOp(RunningSpec(node.name, node.keys, aggs, schema, event_time,
                                    retention, time_shift(node.input, where), retracting),
                        backend)


def _idleness_s(node: Node) -> float | None:
    """How long the stream ``node`` may send nothing before it stops holding back the
    watermark of an operator it feeds (its source's ``with_idleness``; None: forever).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.watermark import Watermark
    >>> _idleness_s(SourceNode(from_arrow(pa.table({"t": [1]})), "t",
    ...                        Watermark.bounded(0).with_idleness("2s")))
    2.0
    """
    sources = [n for n in lineage(node) if isinstance(n, SourceNode)]
    limits = [None if s.watermark is None or s.watermark.idleness_ms is None
              else s.watermark.idleness_ms / 1e3 for s in sources]
    return None if not limits or None in limits else max(limits)  # type: ignore[type-var]


def _two_stream_join(node: IntervalJoinNode | WindowJoinNode | RegularJoinNode, schema: pa.Schema,
                     backend: Backend, memo: dict[int, pa.Schema]) -> Operator:
    from gpustream.operators.join import IntervalJoinOp, JoinSpec, WindowJoinOp, string_key_flags

    where = node.label
    left, right = memo[id(node.left)], memo[id(node.right)]
    if untimed_join(node):  # (a regular join without retention reads no time)
        lts = rts = ""
        lshift = rshift = 0
        idle: tuple[float | None, ...] = (None, None)
        ltype = pa.int64()
    else:
        lsrc, lts, ltype, lshift = stream_event_time(node.left, where)
        rsrc, rts, _, rshift = stream_event_time(node.right, where)
        idle = tuple(None if s.watermark is None or s.watermark.idleness_ms is None
                     else s.watermark.idleness_ms / 1e3 for s in (lsrc, rsrc))
    spec = JoinSpec(node.left_on, node.right_on, lts, rts,
                    tuple(join_columns(where, left, right, node.left_on, node.right_on)),
                    schema, string_key_flags(left, node.left_on), idle,  # type: ignore[arg-type]
                    (lshift, rshift))
    if isinstance(node, RegularJoinNode):
        from gpustream.operators.regular_join import RegularJoinOp

        return RegularJoinOp(spec, node.how, None if node.retention_ms is None else
                             to_event_units(node.retention_ms, ltype, where), backend)
    if isinstance(node, IntervalJoinNode):
        return IntervalJoinOp(spec, to_event_units(node.lower_ms, ltype, where),
                              to_event_units(node.upper_ms, ltype, where), backend)
    g = node.assigner.geometry(ltype, where)
    return WindowJoinOp(spec, g.size, g.slide, g.offset, g.gap, backend)


def build_physical(targets: list[tuple[Node, Sink]], backend: Backend) -> PhysicalPlan:
    """Validate every node that feeds a sink and build one operator per node.

    Raises
    ------
    PlanError
        When there is nothing to run, or a step is invalid.
    """
    if not targets:
        raise PlanError(
            "the pipeline has no sinks: add one with Stream.sink(gs.to_console()) or call "
            "Stream.collect()"
        )
    memo: dict[int, pa.Schema] = {}
    phys: dict[int, PhysicalNode] = {}
    sources: list[PhysicalNode] = []
    for target, _ in targets:
        output_schema(target, memo)
        for n in lineage(target):
            if id(n) in phys:
                continue
            pn = PhysicalNode(n, _operator(n, memo[id(n)], backend, memo), memo[id(n)])
            phys[id(n)] = pn
            for port, parent in enumerate(n.inputs):
                if isinstance(n, LateNode):
                    phys[id(parent)].side.setdefault(n.side_output, []).append(pn)
                else:
                    if id(pn) in phys[id(parent)].ports:
                        raise PlanError(f"{n.label}: joining a stream with itself is not "
                                        "supported; join two sources")
                    phys[id(parent)].children.append(pn)
                    phys[id(parent)].ports[id(pn)] = port
            if isinstance(n, SourceNode):
                sources.append(pn)
    sinks = []
    for target, sink in targets:
        pn = phys[id(target)]
        pn.sinks.append(sink)
        sinks.append((pn, sink))
    return PhysicalPlan(backend, sources, sinks)


def render_plan(targets: list[tuple[Node, Sink]], dangling: list[Node]) -> list[str]:
    """The plan as indented lines, from each sink up to its sources.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.sinks import CollectSink
    >>> s = SourceNode(from_arrow(pa.table({"x": [1]})), name="nums")
    >>> print("\\n".join(render_plan([(s, CollectSink())], [])))
    sink collect
      step 0 (source) 'nums': from_arrow(1 rows, batch_rows=65536)  [x: int64]
    """
    memo: dict[int, pa.Schema] = {}
    lines: list[str] = []

    def walk(n: Node, depth: int) -> None:
        schema = output_schema(n, memo)
        cols = ", ".join(f"{f.name}: {f.type}" for f in schema)
        detail = n.detail()
        lines.append(f"{'  ' * depth}{n.label}{' ' + detail if detail else ''}  [{cols}]")
        for i in n.inputs:
            walk(i, depth + 1)

    for target, sink in targets:
        lines.append(f"sink {sink.describe()}")
        walk(target, 1)
    for n in dangling:
        lines.append("(no sink)")
        walk(n, 1)
    return lines
