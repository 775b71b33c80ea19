"""The logical plan: immutable nodes built by the fluent API or a YAML spec.

Each node knows its inputs and its step number along its chain (the source is step 0),
so errors can name the step. :func:`output_schema` type-checks a node and everything
upstream of it against the sources' schemas, raising :class:`PlanError` before anything
runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from gpustream.batch import physical_dtype
from gpustream.errors import PlanError
from gpustream.expr import Col, Expr, expr_type
from gpustream.ingest.source import Source
from gpustream.watermark import Watermark

__all__ = [
    "FilterNode",
    "Node",
    "SelectNode",
    "SourceNode",
    "WithColumnsNode",
    "lineage",
    "output_schema",
]


@dataclass(frozen=True, eq=False)
class Node:
    """A step of a pipeline. ``step`` counts from the source (step 0) along the chain."""

    step: int = field(init=False, default=0)

    @property
    def op(self) -> str:
        """The operation's name as the API spells it."""
        raise NotImplementedError

    @property
    def inputs(self) -> tuple[Node, ...]:
        """Upstream nodes."""
        return ()

    @property
    def label(self) -> str:
        """``"step 2 (filter)"``: how errors and ``explain()`` name this node."""
        return f"step {self.step} ({self.op})"

    def detail(self) -> str:
        """What ``explain()`` prints after the label."""
        return ""

    def _set_step(self) -> None:
        step = max((n.step for n in self.inputs), default=-1) + 1
        object.__setattr__(self, "step", step)


@dataclass(frozen=True, eq=False)
class SourceNode(Node):
    """Events from a source, with the stream's event-time column and watermark."""

    source: Source
    event_time: str | None = None
    watermark: Watermark | None = None
    name: str = "source"

    @property
    def op(self) -> str:
        return "source"

    def detail(self) -> str:
        parts = [f"{self.name!r}: {self.source.describe()}"]
        if self.event_time:
            parts.append(f"event_time={self.event_time}")
        if self.watermark:
            parts.append(f"watermark=bounded({self.watermark.delay_ms}ms)")
        return ", ".join(parts)


@dataclass(frozen=True, eq=False)
class FilterNode(Node):
    """Rows whose predicate is true (null counts as false)."""

    input: Node
    predicate: Expr

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "filter"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        return repr(self.predicate)


@dataclass(frozen=True, eq=False)
class WithColumnsNode(Node):
    """Adds or replaces columns computed from expressions."""

    input: Node
    exprs: tuple[tuple[str, Expr], ...]

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "with_columns"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        return ", ".join(f"{n}={e!r}" for n, e in self.exprs)


@dataclass(frozen=True, eq=False)
class SelectNode(Node):
    """Keeps exactly the given columns or expressions, in order."""

    input: Node
    exprs: tuple[tuple[str, Expr], ...]

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "select"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        return ", ".join(
            n if isinstance(e, Col) and e.name == n else f"{n}={e!r}" for n, e in self.exprs
        )


def lineage(node: Node) -> list[Node]:
    """Every node ``node`` depends on, upstream first, each once.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import col
    >>> s = SourceNode(from_arrow(pa.table({"x": [1]})))
    >>> f = FilterNode(s, col("x") > 0)
    >>> [n.label for n in lineage(f)]
    ['step 0 (source)', 'step 1 (filter)']
    """
    seen: dict[int, Node] = {}

    def visit(n: Node) -> None:
        if id(n) in seen:
            return
        for i in n.inputs:
            visit(i)
        seen[id(n)] = n

    visit(node)
    return list(seen.values())


def _source_schema(node: SourceNode) -> pa.Schema:
    schema = node.source.schema()
    for f in schema:
        try:
            physical_dtype(f.type, column=f.name)
        except TypeError as exc:
            raise PlanError(f"{node.label} {node.name!r}: {exc}") from exc
    if node.event_time is not None:
        if node.event_time not in schema.names:
            raise PlanError(
                f"{node.label} {node.name!r}: event_time column {node.event_time!r} is not in "
                f"the source; its columns are: {', '.join(schema.names)}"
            )
        t = schema.field(node.event_time).type
        if not (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
            raise PlanError(
                f"{node.label} {node.name!r}: event_time column {node.event_time!r} has type "
                f"{t}; it must be a timestamp or an integer (milliseconds)"
            )
    return schema


def _computed_fields(
    node: WithColumnsNode | SelectNode, schema: pa.Schema
) -> list[tuple[str, pa.DataType]]:
    out = []
    names = [n for n, _ in node.exprs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"{node.label}: column name(s) {', '.join(dupes)} given twice")
    for name, e in node.exprs:
        where = f"{node.label} column {name!r}"
        t = expr_type(e, schema, where)
        if (pa.types.is_string(t) or pa.types.is_large_string(t)) and not isinstance(e, Col):
            raise PlanError(
                f"{where}: a string literal can only be compared with a string column"
            )
        out.append((name, t))
    return out


def output_schema(node: Node, _memo: dict[int, pa.Schema] | None = None) -> pa.Schema:
    """Type-check ``node`` and its upstream; return the schema it produces.

    Raises
    ------
    PlanError
        Naming the step, the column and the fix.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import col
    >>> s = SourceNode(from_arrow(pa.table({"x": [1], "y": [2.0]})))
    >>> output_schema(WithColumnsNode(s, (("z", col("x") * col("y")),))).names
    ['x', 'y', 'z']
    """
    memo = _memo if _memo is not None else {}
    for n in lineage(node):
        if id(n) in memo:
            continue
        if isinstance(n, SourceNode):
            memo[id(n)] = _source_schema(n)
        elif isinstance(n, FilterNode):
            schema = memo[id(n.input)]
            t = expr_type(n.predicate, schema, f"{n.label} predicate")
            if not pa.types.is_boolean(t):
                raise PlanError(
                    f"{n.label}: the predicate {n.predicate!r} gives {t}, not a bool; "
                    "compare it, e.g. col('x') > 0"
                )
            memo[id(n)] = schema
        elif isinstance(n, WithColumnsNode):
            schema = memo[id(n.input)]
            fields = {f.name: f.type for f in schema}
            for name, t in _computed_fields(n, schema):
                fields[name] = t
            memo[id(n)] = pa.schema(list(fields.items()))
        elif isinstance(n, SelectNode):
            schema = memo[id(n.input)]
            if not n.exprs:
                raise PlanError(f"{n.label}: select needs at least one column")
            memo[id(n)] = pa.schema(_computed_fields(n, schema))
        else:
            raise PlanError(f"{n.label}: unknown plan node {type(n).__name__}")
    return memo[id(node)]
