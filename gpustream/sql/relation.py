"""Relations: what a FROM item or a query gives the SQL above it.

A :class:`Rel` is a stream (or a lookup table) and the SQL names of its columns. A name is
bound to a stream column without renaming it (``date_time AS dateTime`` renames nothing
in the plan), so a projection never drops or redefines the event-time column that a
window, join or OVER further up needs; only the final query's columns are renamed, once.

Window columns are tagged (:attr:`Field.kind`): ``window_start`` / ``window_end`` of a
windowing table-valued function (not yet in the stream: the GROUP BY that aggregates the
TVF makes them) or of a time-window aggregation's rows (in the stream).

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> s = p.source(gs.from_arrow({"date_time": [1, 2], "x": [3, 4]}), name="t")
>>> r = Rel.of(s, "t").renamed({"date_time": "dateTime"})
>>> [(f.qual, f.name, f.column) for f in r.fields]
[('t', 'dateTime', 'date_time'), ('t', 'x', 'x')]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from sqlglot import exp

from gpustream.api import Stream
from gpustream.changelog import OP_COLUMN as OP
from gpustream.plan import TableNode
from gpustream.sql.errors import sql_error
from gpustream.sql.windows import Cumulate
from gpustream.windows import WindowAssigner

__all__ = ["Field", "Rel", "Tvf", "Windowed"]

WINDOW_KINDS = ("window_start", "window_end", "window_time")


@dataclass(frozen=True)
class Field:
    """One SQL column: its name, the table alias that qualifies it, the stream column it
    reads (``""`` for a TVF's window column, which no stream has yet), and its kind
    (``""`` or one of ``window_start``, ``window_end``, ``window_time``; ``rank``: a
    ROW_NUMBER the plan does not make)."""

    name: str
    qual: str | None
    column: str
    kind: str = ""


@dataclass(frozen=True)
class Tvf:
    """A windowing table-valued function not yet aggregated: its window and the stream
    column it windows (the stream's event time)."""

    assigner: WindowAssigner | Cumulate
    time_column: str


@dataclass(frozen=True)
class Windowed:
    """Rows that a time-window aggregation made: each carries its window's
    ``window_start`` / ``window_end`` and has the event time ``window_end - 1``."""

    assigner: WindowAssigner


@dataclass
class Rel:
    """A stream (or a lookup table) with SQL names for its columns."""

    stream: Stream | None
    fields: list[Field]
    table: TableNode | None = None
    tvf: Tvf | None = None
    windowed: Windowed | None = None
    hidden: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, stream: Stream, qual: str | None) -> Rel:
        """The stream's columns under their own names (``op`` hidden: a changelog's
        kind of change is not a SQL column; the final projection keeps it).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"a": [1]}), name="t")
        >>> [f.name for f in Rel.of(s, "t").fields]
        ['a']
        """
        names = [n for n in stream.schema.names if n != OP]
        return cls(stream, [Field(n, qual, n) for n in names])

    @classmethod
    def of_table(cls, table: TableNode, qual: str | None) -> Rel:
        """A lookup table's columns.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> t = p.table(gs.from_arrow({"k": [1], "v": ["x"]}), key="k", name="side")
        >>> [f.name for f in Rel.of_table(t, "s").fields]
        ['k', 'v']
        """
        return cls(None, [Field(n, qual, n) for n in table.schema().names], table=table)

    @property
    def changelog(self) -> bool:
        """Whether the rows are a changelog (an ``op`` column).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> Rel.of(p.source(gs.from_arrow({"a": [1]})), None).changelog
        False
        """
        return self.stream is not None and OP in self.stream.schema.names

    def requalified(self, qual: str | None) -> Rel:
        """The same columns, all qualified by ``qual`` (a subquery's or view's alias).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> r = Rel.of(p.source(gs.from_arrow({"a": [1]})), "t").requalified("q")
        >>> r.fields[0].qual
        'q'
        """
        return replace(self, fields=[replace(f, qual=qual) for f in self.fields])

    def renamed(self, names: Mapping[str, str]) -> Rel:
        """Columns renamed (SQL names only; the stream is unchanged).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> r = Rel.of(p.source(gs.from_arrow({"a": [1]})), "t").renamed({"a": "b"})
        >>> (r.fields[0].name, r.fields[0].column)
        ('b', 'a')
        """
        return replace(self, fields=[replace(f, name=names.get(f.name, f.name))
                                     for f in self.fields])

    def with_stream(self, stream: Stream, **changes: object) -> Rel:
        """The same names over a new stream (a step that keeps the columns).

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> s = p.source(gs.from_arrow({"a": [1]}))
        >>> Rel.of(s, None).with_stream(s.filter(gs.col("a") > 0)).stream.schema.names
        ['a']
        """
        return replace(self, stream=stream, **changes)  # type: ignore[arg-type]

    def find(self, name: str, qual: str | None) -> list[Field]:
        """The fields a reference ``qual.name`` (or ``name``) may mean.

        Examples
        --------
        >>> import gpustream as gs
        >>> p = gs.Pipeline(engine="cpu")
        >>> r = Rel.of(p.source(gs.from_arrow({"a": [1]})), "t")
        >>> [f.column for f in r.find("a", "t")], r.find("a", "u")
        (['a'], [])
        """
        return [f for f in self.fields if f.name == name and (qual is None or f.qual == qual)]

    def resolver(self, text: str) -> Callable[[exp.Column], str]:
        """A function from a column reference to the stream column it reads; it raises a
        :class:`~gpustream.sql.errors.SqlError` at the reference when there is none, or
        more than one, or the column is a window's that the query has not made yet.

        Examples
        --------
        >>> import gpustream as gs, sqlglot
        >>> p = gs.Pipeline(engine="cpu")
        >>> r = Rel.of(p.source(gs.from_arrow({"price": [1]})), "b")
        >>> r.resolver("SELECT b.price")(sqlglot.parse_one("SELECT b.price").expressions[0])
        'price'
        """
        def resolve(node: exp.Column) -> str:
            return self.field_of(node, text).column
        return resolve

    def field_of(self, node: exp.Column, text: str) -> Field:
        """The one field ``node`` names (see :meth:`resolver`).

        Examples
        --------
        >>> import gpustream as gs, sqlglot
        >>> p = gs.Pipeline(engine="cpu")
        >>> r = Rel.of(p.source(gs.from_arrow({"price": [1]})), "b")
        >>> r.field_of(sqlglot.parse_one("SELECT prise").expressions[0], "SELECT prise")
        Traceback (most recent call last):
        ...
        gpustream.sql.errors.SqlError: SQL line 1, column 8 ('prise'): unknown column 'prise' (did you mean 'price'?); the columns here: b.price
        """
        qual = node.table or None
        got = self.find(node.name, qual)
        shown = node.sql()
        if len(got) > 1:
            quals = sorted({f.qual or "" for f in got})
            raise sql_error(f"column {shown!r} is ambiguous: it is in "
                            f"{', '.join(q for q in quals if q)}; qualify it, e.g. "
                            f"{quals[-1]}.{node.name}", node, text)
        if not got:
            names = [f.name for f in self.fields]
            near = difflib.get_close_matches(node.name, names, n=1) or [
                n for n in names if n.lower() == node.name.lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            listed = ", ".join(f"{f.qual}.{f.name}" if f.qual else f.name
                               for f in self.fields)
            raise sql_error(f"unknown column {shown!r}{hint}; the columns here: {listed}",
                            node, text)
        f = got[0]
        if f.kind == "rank":
            raise sql_error(f"{shown!r} is a ROW_NUMBER() over the whole stream, which "
                            "gpustream's top-N does not number (its rows are +I/-D "
                            "changes); select the other columns, or rank within a window "
                            "(PARTITION BY window_start, window_end)", node, text)
        if f.kind == "proctime":
            raise sql_error(f"{shown!r} is PROCTIME(), the wall clock, which no column "
                            "holds: use it as a processing-time window's DESCRIPTOR or in "
                            "FOR SYSTEM_TIME AS OF", node, text)
        if not f.column:
            raise sql_error(f"{shown!r} is the window's, made by a GROUP BY window_start, "
                            "window_end (or a window join/top-N) over the windowing "
                            "function; aggregate first, or use it in GROUP BY", node, text)
        return f
