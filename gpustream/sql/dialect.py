"""The SQL dialect gpustream reads: Flink SQL, as sqlglot's default grammar extended with
what Flink's streaming SQL adds.

- ``TABLE name`` as an argument of a windowing table-valued function
  (``TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND)``): the table, not
  Postgres' ``TABLE name`` query (which would swallow the arguments after it);
- ``WATERMARK FOR ts AS ts - INTERVAL '5' SECOND`` in ``CREATE TABLE`` (sqlglot's
  ``WatermarkColumnConstraint``, as its RisingWave dialect parses it);
- identifiers quoted with backticks (Flink) or double quotes.

Parse errors become :class:`~gpustream.sql.errors.SqlError` with the line and column.

Examples
--------
>>> tvf = parse("SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '1' SECOND))")
>>> [type(a).__name__ for a in tvf[0].find(exp.Anonymous).expressions[0].expressions]
['Table', 'Anonymous', 'Interval']
>>> parse("SELECT FROM WHERE")
Traceback (most recent call last):
...
gpustream.sql.errors.SqlError: SQL line 1, column 13: cannot parse the query here (at 'WHERE'): Expected table name but got 'WHERE'; write it as Flink SQL ...
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from sqlglot import exp, tokens
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError
from sqlglot.parser import Parser as SqlglotParser
from sqlglot.tokens import TokenType

from gpustream.sql.errors import SqlError

__all__ = ["Flink", "parse"]


class Flink(Dialect):
    """Flink SQL for sqlglot (the parts gpustream runs)."""

    class Tokenizer(tokens.Tokenizer):
        IDENTIFIERS: ClassVar[list[str | tuple[str, str]]] = ['"', "`"]
        # SESSION(ts, gap) is a group window function in Flink, not SET SESSION's keyword
        KEYWORDS: ClassVar[dict[str, TokenType]] = {
            k: v for k, v in tokens.Tokenizer.KEYWORDS.items() if k != "SESSION"}

    class Parser(SqlglotParser):
        CONSTRAINT_PARSERS: ClassVar[dict[str, Any]] = {
            **SqlglotParser.CONSTRAINT_PARSERS,
            "WATERMARK": lambda self: self.expression(
                exp.WatermarkColumnConstraint(
                    this=self._match(TokenType.FOR) and self._parse_column(),
                    expression=self._match(TokenType.ALIAS) and self._parse_disjunction(),
                )
            ),
        }
        SCHEMA_UNNAMED_CONSTRAINTS: ClassVar[set[str]] = {
            *SqlglotParser.SCHEMA_UNNAMED_CONSTRAINTS, "WATERMARK"}

        def _parse_select_or_expression(self, alias: bool = False) -> exp.Expr | None:
            # ``TABLE name`` inside a call: the table itself (a TVF's input)
            if self._curr and self._curr.token_type == TokenType.TABLE and self._next \
                    and self._next.token_type in self.ID_VAR_TOKENS:
                self._advance()
                return self._parse_table_parts()
            return super()._parse_select_or_expression(alias)


def parse(text: str) -> list[exp.Expression]:
    """The statements of ``text`` (separated by ``;``), as sqlglot trees.

    Examples
    --------
    >>> [type(s).__name__ for s in parse("CREATE VIEW v AS SELECT 1; SELECT * FROM v;")]
    ['Create', 'Select']
    """
    try:
        trees = Flink().parse(text)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        near = first.get("highlight") or ""
        line, col = first.get("line"), first.get("col")
        if isinstance(col, int) and near:
            col = max(1, col - len(near) + 1)  # sqlglot gives the token's last column
        what = re.sub(r"<Token token_type: [^,]*, text: ([^,]*),[^>]*>", r"'\1'",
                      first.get("description") or str(exc))
        raise SqlError(f"SQL line {line}, column {col}: cannot parse the query here"
                       f"{f' (at {near!r})' if near else ''}: {what}; write it as Flink SQL "
                       "(see the README's SQL section)", line, col) from None
    out = [t for t in trees if isinstance(t, exp.Expression)]
    if not out:
        raise SqlError("SQL: the text holds no statement")
    return out
