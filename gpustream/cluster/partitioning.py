"""How a pipeline splits into partitions: its source's shares and the key it is
repartitioned by.

A partitioned run (``Pipeline.run(cluster=..., parallelism=N)``) runs N copies of one
plan. Each reads its share of the source (``Source.split``); when the plan has keyed
steps, every row is sent to the partition that owns its key (a hash of the key's values,
:mod:`gpustream.cluster.exchange`), so each key's state lives in exactly one partition.
The key is the columns every keyed step (a window, a running aggregation, an OVER
window, top-N per key) groups by, read from the source: a key column that a step before
it computes or renames cannot be hashed at the source, and such a plan is refused with
the step named.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpustream.errors import PlanError
from gpustream.expr.nodes import Col
from gpustream.plan.logical import (
    FilterNode,
    JoinTableNode,
    LateNode,
    Node,
    OverNode,
    RunningAggNode,
    SelectNode,
    SourceNode,
    TopKNode,
    WindowAggNode,
    WithColumnsNode,
    lineage,
)

__all__ = ["Partitioning", "partitioning_of"]

#: the steps a partitioned plan may hold (the others are refused, naming the step)
_STATELESS = (FilterNode, SelectNode, WithColumnsNode, LateNode, JoinTableNode)


@dataclass(frozen=True)
class Partitioning:
    """A plan's split: its one stream source and the source columns rows are hashed by
    (empty: no keyed step, each partition keeps its share as read); see
    :func:`partitioning_of`."""

    source: SourceNode
    keys: tuple[str, ...]
    #: the keyed steps that need the exchange (labels), for explain
    keyed_steps: tuple[str, ...] = ()

    def describe(self, count: int) -> list[str]:
        """Lines for ``explain()``: how the source splits and where rows go.

        Examples
        --------
        >>> import pyarrow as pa
        >>> from gpustream.ingest.arrow import from_arrow
        >>> s = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", name="clicks")
        >>> for line in Partitioning(s, ("k",), ("step 1 (window)",)).describe(2):
        ...     print(line)
        partitions: 2, each reading its share of source 'clicks'
        repartitioned by hash(k) % 2 before step 1 (window) (the key of every keyed step)
        watermark of a partition: the smallest of the 2 shares' watermarks
        """
        lines = [f"partitions: {count}, each reading its share of source {self.source.name!r}"]
        if self.keys:
            lines.append(f"repartitioned by hash({', '.join(self.keys)}) % {count} before "
                         f"{', '.join(self.keyed_steps)} (the key of every keyed step)")
        else:
            lines.append("no keyed step: rows stay in the partition that read them")
        if self.source.event_time is not None:
            lines.append(f"watermark of a partition: the smallest of the {count} shares' "
                         "watermarks")
        return lines


def _passes(node: Node, column: str) -> bool:
    """True when ``node`` hands on its input's ``column`` unchanged, under that name."""
    if isinstance(node, (FilterNode, LateNode, TopKNode)):
        return True  # (top-N passes its input rows on)
    if isinstance(node, WithColumnsNode):
        return column not in {n for n, _ in node.exprs}
    if isinstance(node, SelectNode):
        return any(n == column and isinstance(e, Col) and e.name == column
                   for n, e in node.exprs)
    if isinstance(node, JoinTableNode):
        return True  # the stream's columns keep their names (the table's get _right)
    if isinstance(node, (WindowAggNode, RunningAggNode)):
        return column in node.keys
    if isinstance(node, OverNode):
        return column not in {n for n, _ in node.aggs}  # the input's columns, and its aggs
    return False


def _keys_of(node: Node) -> tuple[str, ...] | None:
    """The columns a keyed step groups its state by (None: not a keyed step)."""
    if isinstance(node, (WindowAggNode, RunningAggNode, OverNode)):
        return node.keys
    if isinstance(node, TopKNode):
        return node.per
    return None


def _unchanged(step: Node, column: str, by_id: dict[int, Node]) -> str:
    """Why ``column`` of the source does not reach ``step`` as read ("": it does)."""
    n = step.inputs[0]
    while not isinstance(n, SourceNode):
        if not _passes(n, column):
            return f"{step.label}: its key {column!r} is computed or renamed by {n.label}"
        n = by_id[id(n.inputs[0])]
    if column not in n.source.schema().names:
        return f"{step.label}: its key {column!r} is not a column of source {n.name!r}"
    return ""


def partitioning_of(targets: list[Node]) -> Partitioning:
    """The split of the plan that feeds ``targets`` (the sinks' nodes).

    Raises
    ------
    PlanError
        For a plan that cannot run partitioned (several stream sources, a lookup table
        refreshed by a changelog, a global aggregate, a step not supported yet, a key
        computed after the source), naming the step and the fix.

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
    sources = [n for n in nodes if isinstance(n, SourceNode)]
    for n in nodes:
        if isinstance(n, JoinTableNode) and n.table.changelog is not None:
            raise PlanError(f"{n.label}: a lookup table refreshed by a changelog cannot run "
                            "partitioned yet (every partition would need the whole "
                            "changelog); run with parallelism=1")
    if len(sources) != 1:
        raise PlanError(f"a partitioned run reads one stream source; this plan has "
                        f"{len(sources)} ({', '.join(repr(s.name) for s in sources)}); run "
                        "it with parallelism=1")
    keyed: list[tuple[Node, tuple[str, ...]]] = []
    for n in nodes:
        keys = _keys_of(n)
        if isinstance(n, WindowAggNode) and n.assigner.processing_time:
            raise PlanError(f"{n.label}: processing-time windows cannot run partitioned "
                            "(their firing depends on each worker's clock); use event "
                            "time or parallelism=1")
        if keys is not None:
            if not keys:
                raise PlanError(f"{n.label}: a {n.op} without keys (over the whole stream) "
                                "cannot be split by key; give it keys (key_by, per=, "
                                "partition by) or run with parallelism=1")
            keyed.append((n, keys))
        elif not isinstance(n, (SourceNode, *_STATELESS)):
            raise PlanError(f"{n.label}: {n.op} cannot run partitioned yet (partitioned runs "
                            "take filters, projections, lookup joins, event-time windows, "
                            "running aggregations, OVER and top-N per key); run with "
                            "parallelism=1")
    if not keyed:
        return Partitioning(sources[0], ())
    common = [k for k in keyed[0][1] if all(k in keys for _, keys in keyed)]
    if not common:
        raise PlanError(f"{', '.join(w.label for w, _ in keyed)} share no key column, so no "
                        "one hash sends each of their keys to one partition; group them "
                        "by a common column or run with parallelism=1")
    by_id = {id(n): n for n in nodes}
    usable: list[str] = []
    why = ""
    for k in common:  # a key column hashed as read must reach every window unchanged
        reason = next((r for w, _ in keyed if (r := _unchanged(w, k, by_id))), "")
        if reason:
            why = why or reason
        else:
            usable.append(k)
    if not usable:  # (a subset of a group's key still sends each group to one place)
        raise PlanError(f"{why}, so rows cannot be sent to their partition as they are "
                        "read; key the step by a source column as well, or run with "
                        "parallelism=1")
    return Partitioning(sources[0], tuple(usable), tuple(w.label for w, _ in keyed))
