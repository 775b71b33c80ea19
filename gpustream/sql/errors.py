"""Errors in SQL text: each names the line and column of the query and the fix.

sqlglot records where each identifier, literal and function name was in the text
(``meta['start']``, a character offset); an error about any part of the tree is placed at
the first such token inside it.

Examples
--------
>>> import sqlglot
>>> text = "SELECT a,\\n       prise FROM t"
>>> node = sqlglot.parse_one(text).expressions[1]
>>> raise sql_error("unknown column 'prise'", node, text)
Traceback (most recent call last):
...
gpustream.sql.errors.SqlError: SQL line 2, column 8 ('prise'): unknown column 'prise'
"""

from __future__ import annotations

from sqlglot import exp

from gpustream.errors import PlanError

__all__ = ["SqlError", "offset_of", "sql_error", "where"]


class SqlError(PlanError):
    """A query that cannot run as written, with where in the text (``line``, ``column``,
    1-based; ``None`` where the error is about the whole query).

    Examples
    --------
    >>> e = SqlError("SQL line 1, column 8: unknown table 'bidz'", 1, 8)
    >>> e.line, e.column
    (1, 8)
    """

    def __init__(self, message: str, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def offset_of(node: exp.Expression | None) -> int | None:
    """The character offset of the first token of ``node`` whose place sqlglot kept.

    Examples
    --------
    >>> import sqlglot
    >>> offset_of(sqlglot.parse_one("SELECT  x + 1 FROM t").expressions[0])
    8
    """
    if node is None:
        return None
    starts = [n.meta["start"] for n in node.walk()
              if isinstance(n, exp.Expression) and "start" in n.meta]
    return min(starts) if starts else None


def where(node: exp.Expression | None, text: str) -> tuple[int | None, int | None, str]:
    """``(line, column, prefix)`` of ``node`` in ``text``: the prefix starts a message.

    Examples
    --------
    >>> import sqlglot
    >>> where(sqlglot.parse_one("SELECT\\n  x FROM t").expressions[0], "SELECT\\n  x FROM t")
    (2, 3, "SQL line 2, column 3 ('x'): ")
    """
    start = offset_of(node)
    if start is None:
        return None, None, "SQL: "
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    end = text.find("\n", start)
    token = text[start:end if end >= 0 else len(text)].split()[0] if text[start:].strip() else ""
    token = token.rstrip(",;)")[:30]
    return line, column, f"SQL line {line}, column {column} ({token!r}): "


def sql_error(message: str, node: exp.Expression | None, text: str) -> SqlError:
    """A :class:`SqlError` placed at ``node`` in ``text``.

    Examples
    --------
    >>> sql_error("no FROM", None, "SELECT 1").args[0]
    'SQL: no FROM'
    """
    line, column, prefix = where(node, text)
    return SqlError(prefix + message, line, column)
