"""How a pipeline splits into partitions: its source's shares and the key it is
repartitioned by.

A partitioned run (``Pipeline.run(cluster=..., parallelism=N)``) runs N copies of one
plan. Each reads its share of every source (``Source.split``); when the plan has keyed
steps, every row is sent to the partition that owns its key (a hash of the key's values,
:mod:`gpustream.cluster.exchange`), so each key's state lives in exactly one partition.
The key is the columns every keyed step (a window, a running aggregation, an OVER
window, top-N per key, a join of two streams) groups by, read from the sources: a join
key names a column of each side (``left_on`` / ``right_on``), so rows of both sides with
equal keys meet in one partition. A key column that a step before it computes or
renames cannot be hashed at the source, and such a plan is refused with the step named.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustream.errors import PlanError
from gpustream.expr.nodes import Col
from gpustream.plan.logical import (
    FilterNode,
    IntervalJoinNode,
    JoinTableNode,
    LateNode,
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
    lineage,
    output_schema,
)

__all__ = ["Partitioning", "partitioning_of"]

#: the steps a partitioned plan may hold (the others are refused, naming the step)
_STATELESS = (FilterNode, SelectNode, WithColumnsNode, LateNode, JoinTableNode, UnionNode)
_JOINS = (WindowJoinNode, IntervalJoinNode, RegularJoinNode)


@dataclass(frozen=True)
class Partitioning:
    """A plan's split: its stream sources, and for each the columns its rows are hashed
    by (by source name; empty: no keyed step, each partition keeps its shares as read);
    see :func:`partitioning_of`."""

    sources: tuple[SourceNode, ...]
    by: dict[str, tuple[str, ...]]
    #: the keyed steps that need the exchange (labels), for explain
    keyed_steps: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The first source's key columns (() without a keyed step)."""
        return self.by.get(self.sources[0].name, ())

    def describe(self, count: int) -> list[str]:
        """Lines for ``explain()``: how the sources split and where rows go.

        Examples
        --------
        >>> import pyarrow as pa
        >>> from gpustream.ingest.arrow import from_arrow
        >>> s = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", name="clicks")
        >>> for line in Partitioning((s,), {"clicks": ("k",)}, ("step 1 (window)",)
        ...                          ).describe(2):
        ...     print(line)
        partitions: 2, each reading its share of source 'clicks'
        repartitioned by hash(k) % 2 before step 1 (window) (the key of every keyed step)
        watermark of a partition: the smallest of the 2 shares' watermarks
        """
        names = ", ".join(repr(s.name) for s in self.sources)
        lines = [f"partitions: {count}, each reading its share of source"
                 f"{'s' if len(self.sources) > 1 else ''} {names}"]
        if self.by:
            how = "; ".join(
                f"hash({', '.join(self.by[s.name])})"
                + (f" of {s.name!r}" if len(self.sources) > 1 else "")
                for s in self.sources)
            lines.append(f"repartitioned by {how} % {count} before "
                         f"{', '.join(self.keyed_steps)} (the key of every keyed step)")
        else:
            lines.append("no keyed step: rows stay in the partition that read them")
        if any(s.event_time is not None for s in self.sources):
            lines.append(f"watermark of a partition: the smallest of the {count} shares' "
                         "watermarks" + (", per source" if len(self.sources) > 1 else ""))
        return lines


def _keys_of(node: Node) -> tuple[str, ...] | None:
    """The columns a keyed step groups its state by (a join: its left key; None: not a
    keyed step)."""
    if isinstance(node, (WindowAggNode, RunningAggNode, OverNode)):
        return node.keys
    if isinstance(node, TopKNode):
        return node.per
    if isinstance(node, _JOINS):
        return node.left_on
    return None


def _merge(a: dict[str, str] | str, b: dict[str, str] | str) -> dict[str, str] | str:
    if isinstance(a, str):
        return a
    if isinstance(b, str):
        return b
    clash = [name for name in a if name in b and a[name] != b[name]]
    if clash:
        return (f"source {clash[0]!r} would be hashed by both {a[clash[0]]!r} and "
                f"{b[clash[0]]!r}")
    return {**a, **b}


def _trace(node: Node, column: str) -> dict[str, str] | str:
    """Which column of each source feeds ``node``'s output ``column`` unchanged ({source
    name: its column}), or why none does."""
    if isinstance(node, SourceNode):
        if column in node.source.schema().names:
            return {node.name: column}
        return f"{column!r} is not a column of source {node.name!r}"
    if isinstance(node, LateNode):  # the keyed step's input rows, unchanged
        return _trace(node.input.inputs[node.port], column)
    if isinstance(node, (FilterNode, TopKNode, JoinTableNode)):
        return _trace(node.inputs[0], column)
    if isinstance(node, (WithColumnsNode, SelectNode)):
        made = dict(node.exprs)
        if column in made:  # a column taken as it is (renamed or not) is followed
            e = made[column]
            return _trace(node.input, e.name) if isinstance(e, Col) else \
                f"{node.label} computes {column!r}"
        if isinstance(node, WithColumnsNode):  # (select drops what it does not name)
            return _trace(node.input, column)
    if isinstance(node, (WindowAggNode, RunningAggNode)) and column in node.keys:
        return _trace(node.input, column)
    if isinstance(node, OverNode) and column not in {n for n, _ in node.aggs}:
        return _trace(node.input, column)
    if isinstance(node, UnionNode):
        out: dict[str, str] | str = {}
        for stream in node.streams:
            out = _merge(out, _trace(stream, column))
        return out
    if isinstance(node, _JOINS):
        how = getattr(node, "how", "inner")
        pairs = list(zip(node.left_on, node.right_on, strict=True))
        left_names = output_schema(node.left).names
        for a, b in pairs:  # the output's column of a left key's name is the left one
            if column == a:
                if how in ("right", "full") and a != b:  # right-only rows: null there
                    return (f"{node.label} ({how} join) leaves {column!r} null for the "
                            "right side's unmatched rows")
                return _merge(_trace(node.left, a), _trace(node.right, b))
        for a, b in pairs:  # a right key under its own name (no left column has it)
            if column == b and column not in left_names:
                if how in ("left", "full"):
                    return (f"{node.label} ({how} join) leaves {column!r} null for the "
                            "left side's unmatched rows")
                return _merge(_trace(node.left, a), _trace(node.right, b))
        return f"{node.label} joins on {', '.join(node.left_on)}, not {column!r}"
    return f"{node.label} computes or renames {column!r}"


def partitioning_of(targets: list[Node]) -> Partitioning:
    """The split of the plan that feeds ``targets`` (the sinks' nodes).

    Raises
    ------
    PlanError
        For a plan that cannot run partitioned (a lookup table refreshed by a changelog,
        a step over the whole stream, a step not supported yet, a key computed after the
        source), naming the step and the fix.

    Examples
    --------
    >>> import gpustream as gs
    >>> p = gs.Pipeline(engine="cpu")
    >>> s = p.source(gs.from_arrow({"ts": [1], "user": ["a"], "v": [1.0]}),
    ...              event_time="ts", watermark=gs.Watermark.bounded(0))
    >>> w = s.filter(gs.col("v") > 0).key_by("user").window(gs.Tumbling("1s")).agg(
    ...     n=gs.count())
    >>> part = partitioning_of([w._node])
    >>> part.keys, part.keyed_steps
    (('user',), ("step 2 (window 'window@2')",))
    """
    nodes: list[Node] = []
    seen: set[int] = set()
    for t in targets:
        for n in lineage(t):
            if id(n) not in seen:
                seen.add(id(n))
                nodes.append(n)
    sources = tuple(n for n in nodes if isinstance(n, SourceNode))
    for n in nodes:
        if isinstance(n, JoinTableNode) and n.table.changelog is not None:
            raise PlanError(f"{n.label}: a lookup table refreshed by a changelog cannot run "
                            "partitioned yet (every partition would need the whole "
                            "changelog); run with parallelism=1")
    keyed: list[tuple[Node, tuple[str, ...]]] = []
    for n in nodes:
        keys = _keys_of(n)
        if isinstance(n, WindowAggNode) and n.assigner.processing_time:
            raise PlanError(f"{n.label}: processing-time windows cannot run partitioned "
                            "(their firing depends on each worker's clock); use event "
                            "time or parallelism=1")
        if isinstance(n, (RegularJoinNode, RunningAggNode)) and n.retention_ms is not None:
            raise PlanError(f"{n.label}: retention drops a key's state by the watermark as "
                            "of each row, which a partitioned run does not reproduce (its "
                            "rows carry the smallest of the shares' watermarks); leave "
                            "retention out or run with parallelism=1")
        if keys is not None:
            if not keys:
                raise PlanError(f"{n.label}: a {n.op} without keys (over the whole stream) "
                                "cannot be split by key; give it keys (key_by, per=, "
                                "partition by) or run with parallelism=1")
            keyed.append((n, keys))
        elif not isinstance(n, (SourceNode, *_STATELESS)):
            raise PlanError(f"{n.label}: {n.op} cannot run partitioned yet (partitioned runs "
                            "take filters, projections, unions, lookup joins, joins of two "
                            "streams, event-time windows, running aggregations, OVER and "
                            "top-N per key); run with parallelism=1")
    if not keyed:  # (several sources without a keyed step: a union, passed on as read)
        return Partitioning(sources, {})
    # each keyed step's key columns, traced to the source columns they are read from
    traced: list[list[dict[str, str]]] = []
    why = ""
    for w, keys in keyed:
        found = []
        for k in keys:
            if isinstance(w, _JOINS):  # the join's own key: each side's column
                b = w.right_on[w.left_on.index(k)]
                m = _merge(_trace(w.left, k), _trace(w.right, b))
            else:
                m = _trace(w.inputs[0], k)
            if isinstance(m, str):
                why = why or f"{w.label}: its key {k!r}: {m}"
            else:
                found.append(m)
        if not found:
            raise PlanError(f"{why}, so rows cannot be sent to their partition as they are "
                            "read; key the step by a source column as well, or run with "
                            "parallelism=1")
        traced.append(found)
    # one source column per source that every keyed step it reaches groups by: each key
    # of each step then lives in one partition (sources no keyed step reaches keep their
    # rows where they are read)
    for m in (m for found in traced for m in found):
        if all(any(all(m.get(src) == col for src, col in mine.items()) for mine in found)
               for found in traced):
            by: dict[str, tuple[str, ...]] = {
                src.name: (m[src.name],) if src.name in m else () for src in sources}
            return Partitioning(sources, by, tuple(w.label for w, _ in keyed))
    raise PlanError(f"{', '.join(w.label for w, _ in keyed)} share no key column (traced "
                    "to the sources' columns), so no one hash sends each of their keys to "
                    "one partition; group them by a common column or run with "
                    "parallelism=1")
