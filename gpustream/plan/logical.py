"""The logical plan: immutable nodes built by the fluent API or a YAML spec.

Each node knows its inputs and its step number along its chain (the source is step 0),
so errors can name the step. :func:`output_schema` type-checks a node and everything
upstream of it against the sources' schemas, raising :class:`PlanError` before anything
runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from gpustream.batch import physical_dtype
from gpustream.durations import format_millis
from gpustream.errors import PlanError
from gpustream.expr import Agg, Cast, Col, Expr, Lit, agg_type, expr_type
from gpustream.ingest.schema import logical_schema
from gpustream.ingest.source import Source
from gpustream.watermark import Watermark
from gpustream.windows import PROCESSING_TIME_TYPE, Session, WindowAssigner, to_event_units

__all__ = [
    "FilterNode",
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
    "WithColumnsNode",
    "changelog_origin",
    "event_time_of",
    "lineage",
    "map_time",
    "output_schema",
    "stream_time",
    "time_shift",
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


@dataclass(frozen=True, eq=False)
class WindowAggNode(Node):
    """Keyed event-time windows with aggregations; ``LateNode`` is its ``.late`` output."""

    input: Node
    keys: tuple[str, ...]
    assigner: WindowAssigner
    aggs: tuple[tuple[str, Agg], ...]
    name: str
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "window"

    @property
    def label(self) -> str:
        return f"step {self.step} (window {self.name!r})"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        keys = f"key_by({', '.join(self.keys)}) " if self.keys else ""
        late = f", allowed_lateness={self.allowed_lateness_ms}ms" if self.allowed_lateness_ms else ""
        aggs = ", ".join(f"{n}={a!r}" for n, a in self.aggs)
        return f"{keys}{self.assigner.describe()}{late} agg({aggs})"


@dataclass(frozen=True, eq=False)
class RunningAggNode(Node):
    """Keyed aggregation without a window (SQL's ``GROUP BY`` over a stream): emits a
    changelog (:mod:`gpustream.changelog`) of each key's current aggregates; state per key
    is dropped once the watermark reaches its last event time + ``retention_ms`` (None:
    kept forever)."""

    input: Node
    keys: tuple[str, ...]
    aggs: tuple[tuple[str, Agg], ...]
    name: str
    retention_ms: int | None = None

    #: its rows are a changelog (an ``op`` column), not an append-only stream
    emits_changelog = True

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "agg"

    @property
    def label(self) -> str:
        return f"step {self.step} (agg {self.name!r})"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        keys = f"key_by({', '.join(self.keys)}) " if self.keys else ""
        kept = ("" if self.retention_ms is None
                else f" retention {format_millis(self.retention_ms)}")
        aggs = ", ".join(f"{n}={a!r}" for n, a in self.aggs)
        return f"{keys}running{kept} agg({aggs})"


#: ``rows=UNBOUNDED``: an OVER frame of every row of the key before the current one
UNBOUNDED = "unbounded"


#: the aggregations a running aggregation computes over a changelog (they take rows back)
RETRACTING_AGGS = ("count", "count_valid", "sum", "mean")


#: the aggregations an OVER window computes (``count_valid`` is ``gs.col(x).count()``)
OVER_AGGS = ("count", "count_valid", "sum", "min", "max", "mean", "row_number")


@dataclass(frozen=True, eq=False)
class OverNode(Node):
    """Per key, aggregates over each row's frame, added to every row (SQL's ``agg(x) OVER
    (PARTITION BY keys ORDER BY ts RANGE|ROWS BETWEEN ... PRECEDING AND CURRENT ROW)``):
    ``range_ms`` (the rows of the last that much event time, ties included) or ``rows``
    (the row and that many before it); ``LateNode`` is its ``.late`` output."""

    input: Node
    keys: tuple[str, ...]
    range_ms: int | None
    rows: int | str | None  # a number of rows, or "unbounded"
    aggs: tuple[tuple[str, Agg], ...]
    name: str
    #: the column ordering the rows of an OVER over a changelog (the table it describes:
    #: :mod:`gpustream.operators.over_changelog`); None: the event time
    order_by: str | None = None

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def emits_changelog(self) -> bool:
        """Over a changelog, its rows are one (each change of the input changes rows)."""
        return changelog_origin(self.input) is not None

    @property
    def op(self) -> str:
        return "over"

    @property
    def label(self) -> str:
        return f"step {self.step} (over {self.name!r})"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        keys = f"key_by({', '.join(self.keys)}) " if self.keys else ""
        frame = (f"range {format_millis(self.range_ms)}" if self.range_ms is not None
                 else f"rows {self.rows}")
        aggs = ", ".join(f"{n}={a!r}" for n, a in self.aggs)
        order = f" order_by {self.order_by} (the table of a changelog)" if self.order_by else ""
        return f"{keys}{frame} preceding{order} agg({aggs})"


@dataclass(frozen=True, eq=False)
class LateNode(Node):
    """The input rows that came too late for every window they belong to (of an OVER
    window: rows older than the watermark as of their arrival)."""

    input: WindowAggNode | OverNode | RunningAggNode | RegularJoinNode
    #: a join's input whose late rows these are (0 left: ``.late``, 1 right: ``.late_right``)
    port: int = 0

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "late"

    @property
    def label(self) -> str:
        right = "right " if self.port else ""
        return f"step {self.step} (late {right}of {self.input.op} {self.input.name!r})"

    @property
    def rows_of(self) -> Node:
        """The stream whose rows these are (the window's input; a join's input ``port``)."""
        if isinstance(self.input, RegularJoinNode):
            return self.input.inputs[self.port]
        return self.input.input

    @property
    def side_output(self) -> str:
        """The operator's side output these rows come from."""
        return "late_right" if self.port else "late"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)


@dataclass(frozen=True, eq=False)
class TableNode:
    """A table for lookup joins: a bounded source loaded whole, unique by ``key``."""

    source: Source
    key: tuple[str, ...]
    name: str
    #: upserts (and deletes) by key, applied as they arrive
    changelog: SourceNode | None = None
    #: a bool column of the changelog: true deletes the key
    delete_column: str | None = None

    def schema(self) -> pa.Schema:
        """The table's columns, checked: the key columns exist and can be keys."""
        schema = logical_schema(self.source.schema())
        if self.changelog is not None:
            log = logical_schema(self.changelog.source.schema())
            for f in schema:
                if f.name not in log.names or log.field(f.name).type != f.type:
                    raise PlanError(f"table {self.name!r}: its changelog must carry every "
                                    f"column of the table with the same type; {f.name!r} "
                                    f"({f.type}) is missing or differs")
            if self.delete_column is not None and (
                    self.delete_column not in log.names
                    or not pa.types.is_boolean(log.field(self.delete_column).type)):
                raise PlanError(f"table {self.name!r}: delete_column {self.delete_column!r} "
                                "must be a bool column of the changelog")
        if not self.source.bounded:
            raise PlanError(f"table {self.name!r}: its source {self.source.describe()} never "
                            "ends; a table is loaded whole from a bounded source")
        for k in self.key:
            if k not in schema.names:
                raise PlanError(f"table {self.name!r}: key column {k!r} is not in it; its "
                                f"columns are: {', '.join(schema.names)}")
        for f in schema:
            physical_dtype(f.type, column=f.name)
        return schema


@dataclass(frozen=True, eq=False)
class JoinTableNode(Node):
    """Each row joined with the table row of equal key (``how``: inner or left)."""

    input: Node
    table: TableNode
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: str

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "join_table"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,) if self.table.changelog is None else (self.input,
                                                                    self.table.changelog)

    def detail(self) -> str:
        on = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on, strict=True))
        return f"{self.how} join table {self.table.name!r} on {on}"


@dataclass(frozen=True, eq=False)
class IntervalJoinNode(Node):
    """Pairs of rows with equal keys and ``right.ts - left.ts`` in ``[lower, upper]``."""

    left: Node
    right: Node
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    lower_ms: int
    upper_ms: int

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "interval_join"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.left, self.right)

    def detail(self) -> str:
        on = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on, strict=True))
        return f"on {on}, right.ts - left.ts in [{self.lower_ms}ms, {self.upper_ms}ms]"


@dataclass(frozen=True, eq=False)
class WindowJoinNode(Node):
    """Pairs of rows with equal keys in the same window, when the window fires."""

    left: Node
    right: Node
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    assigner: WindowAssigner

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "window_join"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.left, self.right)

    def detail(self) -> str:
        on = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on, strict=True))
        return f"on {on}, {self.assigner.describe()}"


@dataclass(frozen=True, eq=False)
class RegularJoinNode(Node):
    """Every pair of rows with equal keys, whatever their event times (SQL's join of two
    streams, Flink's regular join); ``how`` other than inner emits a changelog
    (:mod:`gpustream.operators.regular_join`)."""

    left: Node
    right: Node
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: str = "inner"
    retention_ms: int | None = None
    name: str = "join"

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "join"

    @property
    def label(self) -> str:
        return f"step {self.step} (join how={self.how!r})"

    @property
    def emits_changelog(self) -> bool:
        """Outer joins retract padded rows (an ``op`` column); inner ones only insert."""
        return self.how != "inner"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.left, self.right)

    def detail(self) -> str:
        on = ", ".join(f"{a}={b}" for a, b in zip(self.left_on, self.right_on, strict=True))
        kept = ("forever" if self.retention_ms is None
                else format_millis(self.retention_ms))
        return f"{self.name!r} on {on}, state kept {kept}"


@dataclass(frozen=True, eq=False)
class UnionNode(Node):
    """The rows of several streams with the same columns, in arrival order; its
    watermark is the smallest of theirs."""

    streams: tuple[Node, ...]

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "union"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return self.streams

    def detail(self) -> str:
        return "of " + ", ".join(describe_stream(n) for n in self.streams)


@dataclass(frozen=True, eq=False)
class MapBatchesNode(Node):
    """A Python function of each batch (Arrow in, Arrow out, on the host) whose output
    has the declared ``schema``."""

    input: Node
    fn: Callable[[pa.RecordBatch], pa.RecordBatch]
    schema: pa.Schema
    name: str

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "map_batches"

    @property
    def label(self) -> str:
        return f"step {self.step} (map_batches {self.name!r})"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        fn = getattr(self.fn, "__qualname__", None) or type(self.fn).__name__
        return f"{getattr(self.fn, '__module__', None) or '?'}.{fn}"


@dataclass(frozen=True, eq=False)
class TopKNode(Node):
    """The ``n`` rows with the largest (``descending``) or smallest ``by`` in each window
    of a window's output, per ``per`` columns, with their ``rank``; or, over a stream
    that is not a window's output (``over_stream``), per ``per`` columns over the whole
    stream, as a changelog."""

    input: Node
    n: int
    by: str
    descending: bool
    per: tuple[str, ...]
    over_stream: bool = False
    keep_last: bool = False  #: ties keep the later row
    #: further sort columns for rows of equal ``by``: ``(column, descending)``
    then: tuple[tuple[str, bool], ...] = ()

    @property
    def emits_changelog(self) -> bool:
        """Its rows are a changelog when it ranks a whole stream."""
        return self.over_stream

    def __post_init__(self) -> None:
        self._set_step()

    @property
    def op(self) -> str:
        return "top_k"

    @property
    def label(self) -> str:
        return f"step {self.step} (top_k)"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)

    def detail(self) -> str:
        order = "largest" if self.descending else "smallest"
        per = f" per {', '.join(self.per)}" if self.per else ""
        scope = "over the stream (changelog)" if self.over_stream else "per window"
        then = "".join(f", then {c} {'desc' if d else 'asc'}" for c, d in self.then)
        return f"{self.n} {order} {self.by}{then} {scope}{per}"


def _topk_schema(n: TopKNode, input_schema: pa.Schema) -> pa.Schema:
    where = n.label
    if isinstance(n.n, bool) or not isinstance(n.n, int) or n.n < 1:
        raise PlanError(f"{where}: n must be a whole number >= 1, got {n.n!r}")
    order_by = (n.by, *(c for c, _ in n.then))
    for col in (*order_by, *n.per):
        if col not in input_schema.names:
            near = difflib.get_close_matches(col, input_schema.names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise PlanError(f"{where}: column {col!r} is not in the rows it ranks "
                            f"({', '.join(input_schema.names)}){hint}")
    for col in order_by:
        t = input_schema.field(col).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_timestamp(t)):
            raise PlanError(f"{where}: by={col!r} is {t}; rank by a number, bool or "
                            "timestamp")
    if n.over_stream:
        if "op" in input_schema.names:
            raise PlanError(f"{where}: the rows already have a column 'op' (a changelog's "
                            "row kind); top_k over a whole stream needs an append-only "
                            "stream and adds its own op; rename or drop that column")
        return pa.schema([*input_schema, pa.field("op", pa.string(), nullable=False)])
    if "rank" in input_schema.names:
        raise PlanError(f"{where}: the rows already have a column 'rank'; rename it "
                        "(e.g. with_columns or the aggregation's name)")
    return pa.schema([*input_schema, pa.field("rank", pa.int32())])


def ranks_windows(node: Node, schema: pa.Schema) -> bool:
    """Whether a ``top_k`` after ``node`` (rows of ``schema``) ranks each window's rows
    (a window's output, after steps that keep ``window_end``) rather than a whole stream.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> s = SourceNode(from_arrow(pa.table({"ts": [1]})), "ts", None)
    >>> ranks_windows(s, output_schema(s))
    False
    """
    try:
        return time_shift(node, "top_k") == -1 and "window_end" in schema.names
    except PlanError:
        return False


def describe_stream(node: Node) -> str:
    """How errors name a stream: its step, and the source it comes from.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import col
    >>> s = SourceNode(from_arrow(pa.table({"x": [1]})), name="bids")
    >>> describe_stream(s), describe_stream(FilterNode(s, col("x") > 0))
    ("step 0 (source) 'bids'", "step 1 (filter) of source 'bids'")
    """
    if isinstance(node, SourceNode):
        return f"{node.label} {node.name!r}"
    names = [n.name for n in lineage(node) if isinstance(n, SourceNode)]
    return f"{node.label} of source{'s' if len(names) > 1 else ''} " + ", ".join(
        repr(n) for n in names)


def stream_event_time(node: Node, where: str) -> tuple[SourceNode, str, pa.DataType, int]:
    """The source, event-time column, type and time shift (:func:`time_shift`) of the
    stream ``node`` feeds a join with: a chain of one-input steps down to a source that
    has an event time, or to a window's output (column ``window_end``, shift -1, its
    rows' watermarks those the window passed on before firing them; DESIGN.md section
    11) or to a join's output (the column :func:`stream_time` names).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import count
    >>> from gpustream.windows import Tumbling
    >>> s = SourceNode(from_arrow(pa.table({"ts": [1], "k": [1]})), "ts", None, name="ev")
    >>> w = WindowAggNode(s, ("k",), Tumbling(10), (("n", count()),), "w")
    >>> [x if i else x.name for i, x in enumerate(stream_event_time(w, "here"))]
    ['ev', 'window_end', DataType(int64), -1]
    """
    n = node
    while not isinstance(n, SourceNode):
        if isinstance(n, UnionNode):
            raise PlanError(f"{where}: joining the output of a union is not supported yet")
        if isinstance(n, WindowAggNode) and n.allowed_lateness_ms:
            raise PlanError(f"{where}: joining the output of {n.label} needs that window "
                            "without allowed_lateness: its late firings revise rows already "
                            "joined; drop allowed_lateness there")
        if isinstance(n, (WindowAggNode, WindowJoinNode, IntervalJoinNode, RegularJoinNode)):
            got = stream_time(node, where)
            assert got is not None  # (a window's input has an event time)
            src = next(s for s in lineage(n) if isinstance(s, SourceNode)
                       and s.event_time is not None)
            return src, got[0], got[1], time_shift(node, where)
        n = n.inputs[0]
    if n.event_time is None:
        raise PlanError(f"{where}: both inputs need an event time: pass event_time= to "
                        f"Pipeline.source for {n.name!r}")
    got = stream_time(node, where)
    assert got is not None
    return n, got[0], got[1], 0


#: steps whose output rows get a new event time (DESIGN.md section 11)
_TIMED_OUTPUTS = (WindowAggNode, WindowJoinNode, IntervalJoinNode)


def _interval_time(n: IntervalJoinNode, where: str) -> tuple[str, Node]:
    """The output column of an interval join holding each pair's event time, the larger
    of its two rows' (DESIGN.md section 11), and the input it comes from: the left's
    event time where ``upper <= 0`` (the right row is never later), the right's where
    ``lower >= 0``; other intervals have the larger in neither column.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> a = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", None, name="a")
    >>> b = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", None, name="b")
    >>> _interval_time(IntervalJoinNode(a, b, ("k",), ("k",), 0, 50), "here")[0]
    'ts_right'
    >>> _interval_time(IntervalJoinNode(a, b, ("k",), ("k",), -50, 0), "here")[0]
    'ts'
    """
    if n.upper_ms <= 0:
        return stream_event_time(n.left, where)[1], n.left
    if n.lower_ms >= 0:
        rts = stream_event_time(n.right, where)[1]
        cols = dict(join_columns(where, output_schema(n.left), output_schema(n.right),
                                 n.left_on, n.right_on))
        if rts in cols:
            return cols[rts], n.right
        raise PlanError(f"{where}: the right input's event time {rts!r} is a join key, "
                        "so the output has no column with the pairs' event times; join on "
                        "a copy of it (with_columns) for a window after the join")
    raise PlanError(f"{where}: a step after {n.label} needs each pair's event time, the "
                    "later of its two rows' times, which is in neither input's column when "
                    f"lower < 0 < upper (here {n.lower_ms} and {n.upper_ms} ms); make the "
                    "interval one-sided (lower=0 or upper=0), or window the inputs first")


def untimed_join(n: Node) -> bool:
    """Whether ``n`` is a regular join without retention over an input whose event time
    no step can read (no event time, or a regular join's rows): it needs none, as it
    keeps every row and pairs rows whatever their times.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> a = SourceNode(from_arrow(pa.table({"k": [1]})), None, None, "a")
    >>> b = SourceNode(from_arrow(pa.table({"k": [1]})), None, None, "b")
    >>> untimed_join(RegularJoinNode(a, b, ("k",), ("k",), "inner", None, "j"))
    True
    """
    if not isinstance(n, RegularJoinNode) or n.retention_ms is not None:
        return False
    for side in (n.left, n.right):
        try:
            if stream_time(side, n.label) is None:
                return True
        except PlanError:
            # a regular join's rows have no readable time; any other refusal (a window
            # with allowed lateness, whose revisions would join twice) stands
            if any(isinstance(x, RegularJoinNode) for x in lineage(side)):
                return True
            raise
    return False


def _two_input_schema(n: IntervalJoinNode | WindowJoinNode | RegularJoinNode, left: pa.Schema,
                      right: pa.Schema) -> pa.Schema:
    where = n.label
    if untimed_join(n):  # a regular join without retention reads no event time
        mine = {id(x) for x in lineage(n.left) if isinstance(x, SourceNode)}
        if any(id(x) in mine for x in lineage(n.right) if isinstance(x, SourceNode)):
            raise PlanError(f"{where}: joining a stream with itself is not supported; join "
                            "two sources")
        cols = join_columns(where, left, right, n.left_on, n.right_on)
        return pa.schema(list(left) + [pa.field(o, right.field(r).type) for r, o in cols])
    try:
        lsrc, lts, ltype, lshift = stream_event_time(n.left, where)
        rsrc, rts, rtype, rshift = stream_event_time(n.right, where)
    except PlanError as exc:
        if isinstance(n, RegularJoinNode):  # (with retention: it reads the times)
            raise PlanError(f"{exc}; or drop retention= to join without event time "
                            "(every row kept)") from None
        raise
    if lsrc is rsrc and not any(isinstance(x, _TIMED_OUTPUTS)
                                for x in (*lineage(n.left), *lineage(n.right))):
        raise PlanError(f"{where}: joining a stream with itself is not supported; join two "
                        "sources")
    if ltype != rtype and not (pa.types.is_integer(ltype) and pa.types.is_integer(rtype)):
        raise PlanError(f"{where}: the inputs' event times differ in type ({ltype} and "
                        f"{rtype}); read both in one unit")
    for side, ts, schema in (("left", lts, left), ("right", rts, right)):
        if ts not in schema.names:
            raise PlanError(f"{where}: the {side} input dropped its event-time column {ts!r}")
    cols = join_columns(where, left, right, n.left_on, n.right_on)
    fields = list(left) + [pa.field(o, right.field(r).type) for r, o in cols]
    if isinstance(n, WindowJoinNode):
        for name in ("window_start", "window_end"):
            if name in [f.name for f in fields]:
                raise PlanError(
                    f"{where}: an input has a column {name!r}, which the window join adds; "
                    "rename it first" + ("; to pair a window's rows with another window's "
                                         "rows of the same window, use interval_join(on="
                                         "[key, 'window_end'], lower=0, upper=0)"
                                         if lshift or rshift else ""))
        a = n.assigner
        if not isinstance(a, WindowAssigner):
            raise PlanError(f"{where}: {a!r} is not a window; use gs.Tumbling, gs.Sliding or "
                            "gs.Session")
        if a.processing_time:
            raise PlanError(f"{where}: window joins pair rows by event time; "
                            f"{a.describe()} is not supported there: use an event-time "
                            "window (gs.Tumbling, gs.Sliding or gs.Session)")
        a.geometry(ltype, where)
        fields += [pa.field("window_start", ltype), pa.field("window_end", ltype)]
    elif isinstance(n, IntervalJoinNode):
        if n.lower_ms > n.upper_ms:
            raise PlanError(f"{where}: lower ({n.lower_ms} ms) is above upper "
                            f"({n.upper_ms} ms)")
        to_event_units(n.lower_ms, ltype, f"{where} lower")
        to_event_units(n.upper_ms, ltype, f"{where} upper")
    return pa.schema(fields)


def _regular_join_schema(n: RegularJoinNode, left: pa.Schema, right: pa.Schema) -> pa.Schema:
    """Both inputs' columns (as :func:`join_columns` says), then ``op`` (outer joins: a
    changelog; an inner join is append-only)."""
    where = n.label
    if n.how not in ("inner", "left", "right", "full"):
        raise PlanError(f"{where}: how={n.how!r} is not one of 'inner', 'left', 'right', "
                        "'full'")
    fields = list(_two_input_schema(n, left, right))
    if n.how != "inner" and "op" in [f.name for f in fields]:
        raise PlanError(f"{where}: an input has a column 'op', which the join adds (the "
                        "changelog's row kind); rename it first")
    if n.retention_ms is not None:
        if n.retention_ms < 0:
            raise PlanError(f"{where}: retention must be >= 0 (or None: keep state "
                            f"forever), got {n.retention_ms} ms")
        to_event_units(n.retention_ms, stream_event_time(n.left, where)[2],
                       f"{where} retention")
    if n.how == "inner":  # append-only: every row an insert, no op column
        return pa.schema(fields)
    return pa.schema([*fields, pa.field("op", pa.string(), nullable=False)])


def _key_kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}]"
    return None


def join_columns(where: str, left: pa.Schema, right: pa.Schema, left_on: tuple[str, ...],
                 right_on: tuple[str, ...]) -> list[tuple[str, str]]:
    """The right side's columns in the output as (right name, output name).

    A right key column named as its left key is dropped (it equals it); other names that
    the left side has get the suffix ``_right``. Key types must agree (any integer width
    with any; strings with strings).

    Examples
    --------
    >>> l = pa.schema([("card", pa.int64()), ("amount", pa.float64())])
    >>> r = pa.schema([("card", pa.int32()), ("amount", pa.float64()), ("holder", pa.string())])
    >>> join_columns("join", l, r, ("card",), ("card",))
    [('amount', 'amount_right'), ('holder', 'holder')]
    >>> join_columns("join", l, pa.schema([("card", pa.string())]), ("card",), ("card",))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: join: key card (int64) and card (string) cannot be compared; cast one side (e.g. with_columns(card=gs.col('card').cast('string')))
    """
    if len(left_on) != len(right_on) or not left_on:
        raise PlanError(f"{where}: on= needs as many right key columns as left ones")
    for a, b in zip(left_on, right_on, strict=True):
        if a not in left.names:
            expr_type(Col(a), left, f"{where} on (left side)")
        if b not in right.names:
            raise PlanError(f"{where}: the right side has no column {b!r}; its columns are: "
                            f"{', '.join(right.names)}")
        ta, tb = left.field(a).type, right.field(b).type
        ka, kb = _key_kind(ta), _key_kind(tb)
        if ka is None or kb is None or ka != kb:
            raise PlanError(f"{where}: key {a} ({ta}) and {b} ({tb}) cannot be compared; cast "
                            f"one side (e.g. with_columns({a}=gs.col({a!r}).cast('{tb}')))")
    out: list[tuple[str, str]] = []
    for f in right:
        if f.name in right_on and left_on[right_on.index(f.name)] == f.name:
            continue
        name = f.name if f.name not in left.names else f"{f.name}_right"
        if name in left.names or name in [o for _, o in out]:
            raise PlanError(f"{where}: the output would have column {name!r} twice; rename a "
                            "column before the join")
        out.append((f.name, name))
    return out


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


def changelog_origin(node: Node) -> Node | None:
    """The step whose changelog (rows with an ``op`` column: insert, update-before,
    update-after, delete; :mod:`gpustream.changelog`) the rows of ``node`` are, through
    steps that pass rows on as they are (filter, with_columns, select); None for an
    append-only stream. A step is a changelog's origin where its ``emits_changelog``
    says so.

    Raises :class:`PlanError` where a step on the way drops or redefines ``op``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import col
    >>> a = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", name="a")
    >>> b = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1]})), "ts", name="b")
    >>> j = RegularJoinNode(a, b, ("k",), ("k",), "left")
    >>> changelog_origin(FilterNode(j, col("k") > 0)).label
    "step 1 (join how='left')"
    >>> changelog_origin(RegularJoinNode(a, b, ("k",), ("k",), "inner")) is None
    True
    >>> changelog_origin(SelectNode(j, (("k", col("k")),)))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 2 (select): drops the op column of the changelog from step 1 (join how='left'); keep 'op' (select(..., 'op')): without it the rows' retractions read as inserts
    """
    n = node
    while True:
        if getattr(n, "emits_changelog", False):
            return n
        if isinstance(n, UnionNode):  # (a union's inputs share one schema: all or none)
            for i in n.streams:
                up = changelog_origin(i)
                if up is not None:
                    return up
            return None
        if isinstance(n, (JoinTableNode, MapBatchesNode)):  # row by row, op passed on
            up = changelog_origin(n.input)
            if up is not None and isinstance(n, MapBatchesNode) and "op" not in n.schema.names:
                raise PlanError(f"{n.label}: drops the op column of the changelog from "
                                f"{up.label}; keep 'op' in the batches it returns: without "
                                "it the rows' retractions read as inserts")
            return up
        if isinstance(n, (FilterNode, WithColumnsNode, SelectNode)):
            up = changelog_origin(n.input)
            if up is not None and not isinstance(n, FilterNode):
                named = dict(n.exprs)
                kept = named.get("op")
                dropped = kept is None and isinstance(n, SelectNode)
                if dropped or (kept is not None and not (isinstance(kept, Col)
                                                         and kept.name == "op")):
                    did = "drops" if kept is None else "redefines"
                    raise PlanError(f"{n.label}: {did} the op column of the changelog from "
                                    f"{up.label}; keep 'op' (select(..., 'op')): without it "
                                    "the rows' retractions read as inserts")
            return up
        return None


def _refuse_changelog(n: Node) -> None:
    """A windowed or ranking step, or a time-bounded join, needs append-only input."""
    what = {"window": "windows", "over": "OVER windows", "top_k": "top_k",
            "interval_join": "interval joins", "window_join": "window joins",
            "join": "joins"}.get(n.op, n.op)
    for i in n.inputs:
        up = changelog_origin(i)
        if up is not None:
            fix = {"agg": "aggregate the events in a window instead "
                          "(key_by(...).window(...).agg(...))",
                   "top_k": "rank each window's rows instead (a window before top_k)"}.get(
                       up.op, "use how='inner' or an interval_join")
            raise PlanError(f"{n.label}: its input is a changelog (op column) from "
                            f"{up.label}; {what} need an append-only stream: {fix}")


def _source_schema(node: SourceNode) -> pa.Schema:
    raw = node.source.schema()
    for f in raw:
        try:
            physical_dtype(f.type, column=f.name)
        except TypeError as exc:
            raise PlanError(f"{node.label} {node.name!r}: {exc}") from exc
    schema = logical_schema(raw)  # dictionary columns are their values to every step
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
                + (f"; for a text source give schema_overrides={{{node.event_time!r}: "
                   "'timestamp[ms]'} (ISO 8601 text or epoch milliseconds)"
                   if pa.types.is_string(t) or pa.types.is_large_string(t) else "")
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
        while isinstance(e, Cast):  # a string column cast to string is that column
            e = e.operand
        if (pa.types.is_string(t) or pa.types.is_large_string(t)) and isinstance(e, Lit):
            raise PlanError(
                f"{where}: a string literal can only be compared with a string column"
            )
        out.append((name, t))
    return out


def _union_schema(n: UnionNode, schemas: list[pa.Schema]) -> pa.Schema:
    """The first input's schema, once every input has the same columns (in any order)
    with the same types and the same event time (or none)."""
    where = n.label
    if len(n.streams) < 2:
        raise PlanError(f"{where}: union needs at least one other stream")
    if len({id(s) for s in n.streams}) < len(n.streams):
        raise PlanError(f"{where}: a stream is given twice; a union of a stream with itself "
                        "would repeat its rows: add the stream once")
    first, base = n.streams[0], schemas[0]
    for other, schema in zip(n.streams[1:], schemas[1:], strict=True):
        diffs = [f"{f.name!r} is {f.type} in {describe_stream(first)} but "
                 f"{schema.field(f.name).type} in {describe_stream(other)}"
                 for f in base if f.name in schema.names and schema.field(f.name).type != f.type]
        only = [(describe_stream(a), [c for c in sa.names if c not in sb.names])
                for a, sa, sb in ((first, base, schema), (other, schema, base))]
        diffs += [f"{', '.join(map(repr, cols))} only in {who}" for who, cols in only if cols]
        if diffs:
            raise PlanError(f"{where}: the streams' columns differ: {'; '.join(diffs)}. A "
                            "union needs the same columns with the same types: select, "
                            "rename or cast them (with_columns(x=gs.col('x').cast('...'))) "
                            "before the union")
    times = [_traced_time(s, where) for s in n.streams]
    for other, t in zip(n.streams[1:], times[1:], strict=True):
        a, b = times[0], t
        if (a is None) != (b is None) or (a is not None and b is not None and a[0] != b[0]):
            def said(x: tuple[str, pa.DataType, int] | None) -> str:
                return "no event time" if x is None else f"event time {x[0]!r}"

            raise PlanError(f"{where}: {describe_stream(first)} has {said(a)} but "
                            f"{describe_stream(other)} has {said(b)}; give every stream of a "
                            "union the same event-time column (event_time= of their sources) "
                            "or none")
    return base


def _map_schema(n: MapBatchesNode, input_schema: pa.Schema) -> pa.Schema:
    """The declared schema, checked: types a batch can hold, the event time kept."""
    where = n.label
    if not callable(n.fn):
        raise PlanError(f"{where}: map_batches takes a function of a pyarrow.RecordBatch, got "
                        f"{type(n.fn).__name__}")
    if not n.schema.names:
        raise PlanError(f"{where}: schema= must declare at least one column")
    dupes = sorted({c for c in n.schema.names if n.schema.names.count(c) > 1})
    if dupes:
        raise PlanError(f"{where}: schema= names column(s) {', '.join(dupes)} twice")
    for f in n.schema:
        try:
            physical_dtype(f.type, column=f.name)
        except TypeError as exc:
            raise PlanError(f"{where}: schema= {exc}") from exc
    got = map_time(n)
    if got is not None:
        et, ts_type, _ = got
        if et not in n.schema.names or n.schema.field(et).type != ts_type:
            had = "drops" if et not in n.schema.names else (
                f"declares {n.schema.field(et).type} for")
            raise PlanError(f"{where}: schema= {had} the event-time column {et!r} "
                            f"({ts_type}); the function must keep it (with its type) in "
                            "every batch it returns: watermarks and windows downstream are "
                            "computed from it")
    return n.schema


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
        if isinstance(n, (WindowAggNode, TopKNode, IntervalJoinNode,
                          WindowJoinNode, RegularJoinNode)):
            _refuse_changelog(n)
        elif isinstance(n, (SelectNode, WithColumnsNode, MapBatchesNode)):
            changelog_origin(n)  # (it keeps a changelog's op column)
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
        elif isinstance(n, WindowAggNode):
            memo[id(n)] = window_output_schema(n, memo[id(n.input)])
        elif isinstance(n, OverNode):
            memo[id(n)] = over_output_schema(n, memo[id(n.input)])
        elif isinstance(n, RunningAggNode):
            memo[id(n)] = running_output_schema(n, memo[id(n.input)])
        elif isinstance(n, LateNode):
            memo[id(n)] = memo[id(n.rows_of)]
        elif isinstance(n, (IntervalJoinNode, WindowJoinNode)):
            memo[id(n)] = _two_input_schema(n, memo[id(n.left)], memo[id(n.right)])
        elif isinstance(n, RegularJoinNode):
            memo[id(n)] = _regular_join_schema(n, memo[id(n.left)], memo[id(n.right)])
        elif isinstance(n, UnionNode):
            memo[id(n)] = _union_schema(n, [memo[id(i)] for i in n.streams])
        elif isinstance(n, MapBatchesNode):
            memo[id(n)] = _map_schema(n, memo[id(n.input)])
        elif isinstance(n, TopKNode):
            memo[id(n)] = _topk_schema(n, memo[id(n.input)])
        elif isinstance(n, JoinTableNode):
            left = memo[id(n.input)]
            if n.table.changelog is not None and n.table.changelog.event_time is not None:
                raise PlanError(f"{n.label}: a changelog applies in arrival order; read it "
                                "without event_time")
            right = n.table.schema()
            if n.how not in ("inner", "left"):
                raise PlanError(f"{n.label}: how={n.how!r} is not 'inner' or 'left'")
            cols = join_columns(n.label, left, right, n.left_on, n.right_on)
            memo[id(n)] = pa.schema(list(left) + [pa.field(o, right.field(r).type)
                                                  for r, o in cols])
        else:
            raise PlanError(f"{n.label}: unknown plan node {type(n).__name__}")
    return memo[id(node)]


def stream_time(node: Node, where: str) -> tuple[str, pa.DataType, int] | None:
    """The event-time column of the rows ``node`` produces, its type and the watermark
    delay (ms) of the stream's source (the largest of a union's sources); None when the
    stream has no event time.

    A window's output rows have the event time ``window_end - 1`` (DESIGN.md section
    11): their column is ``window_end`` (:func:`time_shift` says it is one past the
    time), their per-row watermark the one the window passed on before firing them.

    A join's rows carry the larger of their two rows' event times and the join's
    watermark as of emitting them: a window join's in ``window_end`` (like a window's),
    an interval join's in the left input's event-time column where ``upper <= 0``, in the
    right's (as the output names it) where ``lower >= 0``.

    Raises :class:`PlanError` where a window's rows may be revised (allowed lateness),
    an interval join's pairs have their time in neither column, or a step dropped or
    redefined the event-time column.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.watermark import Watermark
    >>> s = SourceNode(from_arrow(pa.table({"ts": [1]})), "ts", Watermark.bounded(5))
    >>> stream_time(SelectNode(s, (("ts", Col("ts")),)), "here")
    ('ts', DataType(int64), 5)
    >>> stream_time(SelectNode(s, (("t", Col("ts")),)), "here")
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: here: step 1 (select) drops the event-time column 'ts'; keep it unchanged up to here
    """
    if isinstance(node, SourceNode):
        if node.event_time is None:
            return None
        delay = node.watermark.delay_ms if node.watermark is not None else 0
        return node.event_time, node.source.schema().field(node.event_time).type, delay
    if isinstance(node, LateNode):  # the window's input rows, as they came
        return stream_time(node.rows_of, where)
    if isinstance(node, RegularJoinNode):
        raise PlanError(f"{where}: {node.label} gives each row the later of its two rows' "
                        "event times, which is in neither input's column, and its rows "
                        "carry no per-event watermark; window the inputs first, or use "
                        "an interval_join (its pairs' time is one side's)")
    if isinstance(node, WindowAggNode):  # (an aggregate named like the source's event
        _no_processing_time(node, where)  # time is just an aggregate here)
        if node.allowed_lateness_ms:
            raise PlanError(
                f"{where}: a window over the output of {node.label} needs that window "
                "without allowed_lateness: its late firings revise rows already emitted "
                "(revision > 0), which a window further down would count twice; drop "
                "allowed_lateness there, or window the source's events with the coarser "
                "window")
        return "window_end", event_time_of(node)[1], 0
    if isinstance(node, RunningAggNode) or (isinstance(node, OverNode)
                                            and node.emits_changelog):
        return None  # a changelog: its rows have no event time
    if isinstance(node, UnionNode):
        times = [stream_time(n, where) for n in node.streams]
        if any(t is None for t in times):
            return None
        return times[0][0], times[0][1], max(t[2] for t in times)  # type: ignore[index]
    if isinstance(node, MapBatchesNode):
        got = stream_time(node.input, where)
        if got is not None and time_shift(node.input, where):
            raise PlanError(f"{where}: windows over {node.label} of a window's output are "
                            "not supported (the step would take window_end as the rows' "
                            "event time); window before map_batches, or map the source's "
                            "events")
        return None if got is None else (got[0], node.schema.field(got[0]).type, got[2])
    if isinstance(node, WindowJoinNode):  # (like a window's rows: time window_end - 1)
        return "window_end", stream_event_time(node.left, where)[2], 0
    if isinstance(node, IntervalJoinNode):
        column, side = _interval_time(node, where)
        got = stream_time(side, where)
        assert got is not None
        return column, got[1], got[2]
    got = stream_time(node.inputs[0], where)
    if got is not None and isinstance(node, (WithColumnsNode, SelectNode)):
        et = got[0]
        named = dict(node.exprs)
        kept = named.get(et)
        redefined = kept is not None and not (isinstance(kept, Col) and kept.name == et)
        dropped = isinstance(node, SelectNode) and et not in named
        if redefined or dropped:
            raise PlanError(f"{where}: {node.label} {'redefines' if redefined else 'drops'} "
                            f"the event-time column {et!r}; keep it unchanged up to here")
    return got


def _traced_time(node: Node, where: str) -> tuple[str, pa.DataType, int] | None:
    """:func:`stream_time`, None also where the rows carry no per-event watermark (a
    join's or a window's output): a window further down says why it cannot be."""
    try:
        return stream_time(node, where)
    except PlanError:
        return None


def map_time(node: MapBatchesNode) -> tuple[str, pa.DataType, int] | None:
    """The event time of the rows a ``map_batches`` step reads (as :func:`stream_time`);
    None also when they carry no per-event watermark (a join's output) or are a window's
    output: the step then keeps no event time, and a window after it says why."""
    got = _traced_time(node.input, node.label)
    try:
        return None if got is None or time_shift(node.input, node.label) else got
    except PlanError:
        return None


def time_shift(node: Node, where: str) -> int:
    """What to add to the event-time column of the rows ``node`` produces to get their
    event time: -1 where that column is a window's ``window_end`` (the rows of a window,
    after steps that keep it), else 0.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import count
    >>> from gpustream.windows import Tumbling
    >>> s = SourceNode(from_arrow(pa.table({"ts": [1], "k": [1]})), "ts", None)
    >>> w = WindowAggNode(s, ("k",), Tumbling(10), (("n", count()),), "w")
    >>> time_shift(s, "here"), time_shift(FilterNode(w, Col("n") > 1), "here")
    (0, -1)
    """
    n = node
    while True:
        if isinstance(n, SourceNode):
            return 0
        if isinstance(n, LateNode):  # the window's input rows
            n = n.rows_of
            continue
        if isinstance(n, (WindowAggNode, WindowJoinNode)):
            if isinstance(n, WindowAggNode):
                _no_processing_time(n, where)
            return -1
        if isinstance(n, IntervalJoinNode):
            n = _interval_time(n, where)[1]
            continue
        if isinstance(n, UnionNode):
            shifts = {time_shift(s, where) for s in n.streams}
            if len(shifts) > 1:
                raise PlanError(f"{where}: {n.label} mixes windows' rows with events; a "
                                "window over it needs one kind (window the events first)")
            return shifts.pop()
        if len(n.inputs) != 1:
            return 0
        n = n.inputs[0]


def event_time_of(node: Node) -> tuple[str, pa.DataType]:
    """The event-time column a windowed step reads, and its type.

    Raises :class:`PlanError` when the stream has no event time, or a step before the
    window dropped or redefined the event-time column.
    """
    where = node.label
    if isinstance(node, WindowAggNode) and node.assigner.processing_time:
        return "", PROCESSING_TIME_TYPE  # (its rows get the clock, in no column)
    got = stream_time(node.inputs[0], where)
    if got is None:
        names = [n.name for n in lineage(node) if isinstance(n, SourceNode)
                 and n.event_time is None]
        raise PlanError(f"{where}: windows need an event time: pass event_time='<column>' to "
                        f"Pipeline.source for {', '.join(repr(n) for n in names)}"
                        + (" (or window by the wall clock: gs.ProcessingTime.tumbling(...))"
                           if isinstance(node, WindowAggNode) else ""))
    return got[0], got[1]


def _no_processing_time(node: WindowAggNode, where: str) -> None:
    """Raise where a step after ``node`` needs the time of its rows and ``node`` is a
    processing-time window, whose rows have none."""
    if node.assigner.processing_time:
        raise PlanError(f"{where}: the rows of {node.label}, a {node.assigner.describe()} "
                        "window, have no event time to window, join, rank or retain them by "
                        "(they fire by the wall clock); aggregate the source's events in one "
                        "processing-time window, or use event-time windows (gs.Tumbling, "
                        "gs.Sliding) up to here")


def _no_row_number(where: str, aggs: tuple[tuple[str, Agg], ...]) -> None:
    """``row_number()`` is an OVER window's: a window or a running aggregation refuses it."""
    for name, agg in aggs:
        if isinstance(agg, Agg) and agg.kind == "row_number":
            raise PlanError(f"{where} agg {name!r}: row_number() numbers rows in an OVER "
                            "window: key_by(...).over(rows='unbounded').agg("
                            f"{name}=gs.row_number()); a count here is gs.count()")


def window_output_schema(node: WindowAggNode, schema: pa.Schema) -> pa.Schema:
    """Keys, window_start, window_end, the aggregates in order, and ``revision`` with lateness
    (and ``op`` for sessions: their changelog, :mod:`gpustream.operators.session`)."""
    where = node.label
    a = node.assigner
    if not isinstance(a, WindowAssigner):
        raise PlanError(f"{where}: {a!r} is not a window; use gs.Tumbling, gs.Sliding or "
                        "gs.Session")
    event_time, ts_type = event_time_of(node)
    if a.processing_time:
        if node.allowed_lateness_ms:
            raise PlanError(f"{where}: allowed_lateness does not apply to {a.describe()} "
                            "windows: no row is late by the wall clock; drop allowed_lateness")
    elif event_time not in schema.names:
        raise PlanError(f"{where}: the event-time column {event_time!r} is missing")
    fields = _key_fields(where, node.keys, schema)
    if not node.aggs:
        raise PlanError(f"{where}: agg needs at least one aggregation, e.g. n=gs.count()")
    fields += [("window_start", ts_type), ("window_end", ts_type)]
    _no_row_number(where, node.aggs)
    for name, agg in node.aggs:
        if not isinstance(agg, Agg):
            raise PlanError(f"{where} agg {name!r}: {agg!r} is not an aggregation; use e.g. "
                            "gs.count() or gs.col('v').sum()")
        fields.append((name, agg_type(agg, schema, f"{where} agg {name!r}")))
    if node.allowed_lateness_ms:
        fields.append(("revision", pa.int32()))
        if isinstance(node.assigner, Session):  # a changelog: +I, -U, +U, -D
            fields.append(("op", pa.string()))
    names = [n for n, _ in fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PlanError(f"{where}: output column(s) {', '.join(clash)} appear twice; rename "
                        "the aggregation(s)")
    if node.allowed_lateness_ms < 0:
        raise PlanError(f"{where}: allowed_lateness must be >= 0")
    a.geometry(ts_type, where)
    to_event_units(node.allowed_lateness_ms, ts_type, f"{where} allowed_lateness")
    return pa.schema(fields)


def running_output_schema(node: RunningAggNode, schema: pa.Schema) -> pa.Schema:
    """Keys, the aggregates in order, then ``op`` (the changelog's row kind).

    Raises :class:`PlanError` (naming the step and the fix) where a key column cannot be
    a key, an aggregation is not one, names clash, the retention is negative or the stream
    has no event time for it.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import count
    >>> s = SourceNode(from_arrow(pa.table({"k": ["a"], "ts": [1]})), "ts", None)
    >>> running_output_schema(RunningAggNode(s, ("k",), (("n", count()),), "a"),
    ...                       output_schema(s)).names
    ['k', 'n', 'op']
    """
    where = node.label
    fields = _key_fields(where, node.keys, schema)
    if not node.aggs:
        raise PlanError(f"{where}: agg needs at least one aggregation, e.g. n=gs.count()")
    up = changelog_origin(node.input)
    _no_row_number(where, node.aggs)
    for name, agg in node.aggs:
        if not isinstance(agg, Agg):
            raise PlanError(f"{where} agg {name!r}: {agg!r} is not an aggregation; use e.g. "
                            "gs.count() or gs.col('v').sum()")
        if up is not None and (agg.kind not in RETRACTING_AGGS or agg.where is not None):
            raise PlanError(f"{where} agg {name!r}: its input is a changelog (from "
                            f"{up.label}), whose -U/-D rows take back earlier rows; over a "
                            "changelog an aggregation can be count(), count, sum or mean of a "
                            f"column (without .filter), not {agg!r}")
        fields.append((name, agg_type(agg, schema, f"{where} agg {name!r}")))
    fields.append(("op", pa.string()))
    names = [n for n, _ in fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PlanError(f"{where}: output column(s) {', '.join(clash)} appear twice; rename "
                        "the aggregation(s) (op is the changelog's row kind)")
    if node.retention_ms is not None:
        if node.retention_ms < 0:
            raise PlanError(f"{where}: retention must be >= 0, got {node.retention_ms} ms")
        if stream_time(node.input, where) is None:
            raise PlanError(f"{where}: retention is measured in event time, and the stream "
                            "has none: pass event_time='<column>' to Pipeline.source, or "
                            "drop retention (state then grows with the keys)")
        _, ts_type = event_time_of(node)
        to_event_units(node.retention_ms, ts_type, f"{where} retention")
    return pa.schema([pa.field(n, t, nullable=n != "op") for n, t in fields])


def _key_fields(where: str, keys: tuple[str, ...], schema: pa.Schema
                ) -> list[tuple[str, pa.DataType]]:
    """The key columns of a keyed step and their types, checked (they exist, can be keys,
    are listed once, at most 62)."""
    fields: list[tuple[str, pa.DataType]] = []
    for k in keys:
        if k not in schema.names:
            expr_type(Col(k), schema, f"{where} key_by")
        t = schema.field(k).type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_boolean(t)
                or pa.types.is_timestamp(t)):
            raise PlanError(f"{where}: key column {k!r} has type {t}; keys must be integers, "
                            "strings, bools or timestamps (cast floats with .cast('int64'))")
        fields.append((k, t))
    if len(set(keys)) != len(keys):
        raise PlanError(f"{where}: key_by lists a column twice")
    if len(keys) > 62:
        raise PlanError(f"{where}: at most 62 key columns")
    return fields


def over_output_schema(node: OverNode, schema: pa.Schema) -> pa.Schema:
    """Every input column, then the aggregates in order.

    Raises :class:`PlanError` (naming the step and the fix) where the stream has no event
    time, a key column cannot be a key, an aggregation is not one an OVER window computes,
    an output name clashes with an input column, or the frame is not exactly one of a
    range >= 0 (in whole units of the event-time column) and a number of rows >= 0.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from gpustream.ingest.arrow import from_arrow
    >>> from gpustream.expr import count
    >>> from gpustream.expr import col
    >>> s = SourceNode(from_arrow(pa.table({"k": [1], "ts": [1], "v": [2.0]})), "ts", None)
    >>> over_output_schema(OverNode(s, ("k",), 300_000, None, (("n", count()),), "o"),
    ...                    output_schema(s)).names
    ['k', 'ts', 'v', 'n']
    >>> over_output_schema(OverNode(s, ("k",), None, 5, (("v", col("v").std()),), "o"),
    ...                    output_schema(s))
    Traceback (most recent call last):
    ...
    gpustream.errors.PlanError: step 1 (over 'o') agg 'v': OVER windows compute count, sum, min, max, mean, row_number; col('v').std() is not one of them (aggregate it in a window instead)
    """
    where = node.label
    changelog = changelog_origin(node.input) is not None
    if changelog:  # the table's OVER: ordered by a column, no event time needed
        if node.order_by is None or node.order_by not in schema.names:
            raise PlanError(f"{where}: an OVER window over a changelog (op column) orders "
                            "the rows of the table it describes by a column: give "
                            "order_by='<column>'" + (f" (not {node.order_by!r}: the columns "
                                                     f"are {', '.join(schema.names)})"
                                                     if node.order_by else ""))
        ts_type = schema.field(node.order_by).type
        if not (pa.types.is_integer(ts_type) or pa.types.is_timestamp(ts_type)):
            raise PlanError(f"{where}: order_by={node.order_by!r} is {ts_type}; order by an "
                            "integer or timestamp column")
        if node.rows == UNBOUNDED and any(a.kind in ("min", "max") for _, a in node.aggs
                                          if isinstance(a, Agg)):
            raise PlanError(f"{where}: min/max over an unbounded frame of a changelog are "
                            "not supported; give rows=n")
    else:
        event_time, ts_type = event_time_of(node)
        if event_time not in schema.names:
            raise PlanError(f"{where}: the event-time column {event_time!r} is missing")
        if node.order_by is not None and node.order_by != event_time:
            raise PlanError(f"{where}: an OVER window orders rows by the event time "
                            f"({event_time!r}); order_by= is for OVER over a changelog")
    if (node.range_ms is None) == (node.rows is None):
        raise PlanError(f"{where}: give exactly one of range= (event time, e.g. '5m') and "
                        "rows= (a number of preceding rows)")
    if node.range_ms is not None:
        if node.range_ms < 0:
            raise PlanError(f"{where}: range must be >= 0, got {node.range_ms} ms")
        to_event_units(node.range_ms, ts_type, f"{where} range")
    elif node.rows != UNBOUNDED and (isinstance(node.rows, bool)
                                     or not isinstance(node.rows, int) or node.rows < 0):
        raise PlanError(f"{where}: rows must be a whole number >= 0 (the rows before the "
                        f"current one in its frame) or 'unbounded' (all of them), got "
                        f"{node.rows!r}")
    _key_fields(where, node.keys, schema)
    if not node.aggs:
        raise PlanError(f"{where}: agg needs at least one aggregation, e.g. n=gs.count()")
    fields = [(f.name, f.type) for f in schema if not (changelog and f.name == "op")]
    for name, agg in node.aggs:
        what = f"{where} agg {name!r}"
        if not isinstance(agg, Agg):
            raise PlanError(f"{what}: {agg!r} is not an aggregation; use e.g. gs.count() or "
                            "gs.col('v').sum()")
        if agg.kind not in OVER_AGGS:
            raise PlanError(f"{what}: OVER windows compute count, sum, min, max, mean, "
                            f"row_number; {agg!r} is not one of them (aggregate it in a "
                            "window instead)")
        if agg.kind == "row_number" and node.rows != UNBOUNDED:
            raise PlanError(f"{what}: row_number() numbers every row of its key: use "
                            "over(rows='unbounded')")
        if name in schema.names:
            raise PlanError(f"{what}: the input already has a column {name!r} (an OVER "
                            "window keeps every input column); name the aggregate otherwise")
        fields.append((name, agg_type(agg, schema, what)))
    names = [n for n, _ in fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PlanError(f"{where}: output column(s) {', '.join(clash)} appear twice; rename "
                        "the aggregation(s)")
    if changelog:
        fields.append(("op", pa.string()))
    return pa.schema(fields)
