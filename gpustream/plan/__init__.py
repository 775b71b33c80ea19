"""The plan: what a pipeline computes, before it runs.

``logical``: the immutable nodes the fluent API and YAML specs build, with the schema
checks that name the step and the fix; ``physical``: the planner, from logical nodes to
one backend's operators. The package re-exports the logical plan only, so importing it
loads no operator (import :mod:`gpustream.plan.physical` for the planner).

Examples
--------
>>> from gpustream.plan import SourceNode, output_schema
>>> callable(output_schema) and SourceNode.__name__
'SourceNode'
"""

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
    TableNode,
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
    ranks_windows,
    stream_event_time,
    stream_time,
    time_shift,
)
from gpustream.windows import to_event_units

__all__ = [
    "UNBOUNDED",
    "FilterNode",
    "IntervalJoinNode",
    "JoinTableNode",
    "LateNode",
    "MapBatchesNode",
    "Node",
    "OverNode",
    "RegularJoinNode",
    "RunningAggNode",
    "SelectNode",
    "SourceNode",
    "TableNode",
    "TopKNode",
    "UnionNode",
    "WindowAggNode",
    "WindowJoinNode",
    "WithColumnsNode",
    "changelog_origin",
    "event_time_of",
    "join_columns",
    "lineage",
    "map_time",
    "output_schema",
    "ranks_windows",
    "stream_event_time",
    "stream_time",
    "time_shift",
    "to_event_units",
]
