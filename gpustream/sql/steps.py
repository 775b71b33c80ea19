"""What every part of the SQL translator shares: the catalog of names, the text (for
errors), and the helpers that turn expressions into columns and plan errors into SQL
errors (:class:`Steps`, the base of :class:`~gpustream.sql.query.Translator`).

Examples
--------
>>> import gpustream as gs
>>> p = gs.Pipeline(engine="cpu")
>>> _ = p.source(gs.from_arrow({"x": [1]}), name="t")
>>> Catalog(p).names()
['t']
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlglot import exp

from gpustream.api import Pipeline, Stream
from gpustream.errors import PlanError
from gpustream.expr import Expr
from gpustream.plan import TableNode, stream_time
from gpustream.sql.errors import SqlError, sql_error
from gpustream.sql.relation import Rel
from gpustream.sql.scalar import Scalars

__all__ = ["HIDDEN", "Catalog", "Steps"]

T = TypeVar("T")
#: the kind of the columns a clause makes for the select list (aggregates, grouping
#: expressions, OVER results): not columns of the query (``*`` leaves them out)
HIDDEN = "hidden"


@dataclass
class Catalog:
    """What SQL can name in one pipeline: its named sources and tables, sources given to
    :meth:`~gpustream.Pipeline.sql` that no statement has read yet, and views."""

    pipeline: Pipeline
    pending: dict[str, object] = field(default_factory=dict)
    views: dict[str, Rel] = field(default_factory=dict)

    def streams(self) -> dict[str, Stream]:
        """The pipeline's streams by source name."""
        return dict(self.pipeline._named_streams)

    def tables(self) -> dict[str, TableNode]:
        """The pipeline's lookup tables by name."""
        return {t.name: t for t in self.pipeline._tables}

    def names(self) -> list[str]:
        """Every name a FROM can use."""
        return sorted({*self.streams(), *self.tables(), *self.pending, *self.views})


class Steps:
    """The translator's state and helpers (:class:`~gpustream.sql.query.Translator`)."""

    def __init__(self, catalog: Catalog, text: str) -> None:
        self.catalog = catalog
        self.text = text
        self._ids = itertools.count()
        self._pre = Rel(None, [])  # the last SELECT's relation before its select list

    def query(self, node: exp.Expression, ctes: Mapping[str, Rel]) -> Rel:
        """The relation of a query (the translator's)."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------
    def error(self, message: str, node: exp.Expression | None) -> SqlError:
        return sql_error(message, node, self.text)

    def scalars(self, rel: Rel) -> Scalars:
        schema = rel.stream.schema if rel.stream is not None else None
        return Scalars(self.text, rel.resolver(self.text), schema)

    def scalar(self, rel: Rel, node: exp.Expression) -> Expr:
        return self.scalars(rel).expr(node)

    def fresh(self, rel: Rel, base: str) -> str:
        taken = set(rel.stream.schema.names) if rel.stream is not None else set()
        name = base if base.isidentifier() and base not in taken else f"_{base}"
        while name in taken or not name.isidentifier():
            name = f"_{base}{next(self._ids)}" if base.isidentifier() else f"_c{next(self._ids)}"
        return name

    def compute(self, rel: Rel, exprs: list[tuple[str, Expr]]) -> tuple[Rel, list[str]]:
        """Add computed columns under fresh names (never replacing a column)."""
        assert rel.stream is not None
        names: list[str] = []
        pairs: dict[str, Expr] = {}
        for base, e in exprs:
            if isinstance(e, exp.Expression):  # pragma: no cover - a translator bug
                raise TypeError(e)
            name = self.fresh(rel, base)
            while name in pairs:
                name = f"{name}_{next(self._ids)}"
            pairs[name] = e
            names.append(name)
        if not pairs:
            return rel, names
        return rel.with_stream(rel.stream.with_columns(pairs)), names

    def plan(self, step: str, node: exp.Expression | None, fn: Callable[[], T]) -> T:
        """Run ``fn``; a PlanError from the plan becomes an SqlError at ``node``."""
        try:
            return fn()
        except SqlError:
            raise
        except PlanError as exc:
            raise self.error(f"{step}: {exc}", node) from None

    @staticmethod
    def time_of(rel: Rel) -> tuple[str, Any, int] | None:
        """The stream's event-time column (type, delay), or None where it has none or no
        step can read it (a regular join's rows)."""
        if rel.stream is None:
            return None
        try:
            return stream_time(rel.stream._node, "SQL")
        except PlanError:
            return None
