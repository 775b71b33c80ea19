"""String functions on dictionary codes: ``col("name").str.to_lowercase()``.

Each function is computed once per dictionary entry with ``pyarrow.compute`` and
gathered by code (:mod:`gpustream.expr.entries`); a function that gives strings gives a
dictionary-coded column, and ``concat_str`` of two string columns is computed once per
distinct pair of codes in a batch.

Null semantics: a null string gives null; concatenation with a null part gives null (as
SQL's ``||`` and Polars' ``concat_str``); ``extract`` with no match gives null (as Polars
and Flink); ``split_part`` past the last part gives ``''`` (as DuckDB and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.errors import PlanError
from gpustream.expr.column import Column
from gpustream.expr.entries import arrow_ints, concat_columns, per_entry
from gpustream.expr.evaluate import eval_node
from gpustream.expr.nodes import Expr, Lit, wrap
from gpustream.expr.types import describe, node_type
from gpustream.ingest.schema import is_string_type as _is_string

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["ConcatStr", "StrFn", "StrNamespace", "concat_str"]

_LARGE = pa.large_string()
#: the result type of each function (``None``: a string column)
_RESULTS: dict[str, pa.DataType | None] = {
    "to_lowercase": None, "to_uppercase": None, "len_chars": pa.int32(),
    "contains": pa.bool_(), "starts_with": pa.bool_(), "ends_with": pa.bool_(),
    "replace": None, "replace_all": None, "extract": None, "split_part": None,
    "slice": None,
}
_REGEX_OPS = ("contains", "replace", "replace_all", "extract")
_EXTRACTED = "__gpustream_group"


@dataclass(frozen=True, eq=False, repr=False)
class StrFn(Expr):
    """A string function of one string operand, with constant arguments."""

    op: str
    operand: Expr
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return f"{self.operand!r}.str.{self.op}({', '.join(map(repr, self.args))})"

    def _children(self) -> Sequence[Expr]:
        return (self.operand,)

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        t = node_type(self.operand, schema, where)
        if not _is_string(t):
            raise PlanError(f"{where}: str.{self.op}() needs a string column, but "
                            f"{describe(self.operand, t)} is not a string; apply it to a "
                            "string column (numbers do not convert to strings)")
        if isinstance(self.operand, Lit):
            raise PlanError(f"{where}: str.{self.op}() of the literal {self.operand!r}: "
                            "apply it to a string column, or write the result as a literal")
        if self.op in _REGEX_OPS and not self._literal():
            try:  # RE2 compiles the pattern: a bad one fails here, at plan time
                _function(self.op, self.args)(pa.array([""], _LARGE))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PlanError(f"{where}: str.{self.op}(): the pattern {self.args[0]!r} is not "
                                f"a valid regular expression (RE2 syntax): {exc}") from exc
        out = _RESULTS[self.op]
        return pa.string() if out is None else out

    def _literal(self) -> bool:
        return self.op in ("contains", "replace", "replace_all") and bool(self.args[-1])

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        c = eval_node(self.operand, batch, xp)
        assert c.dictionary is not None  # plan-checked: a string column
        return per_entry(c, (self.op, *self.args), _function(self.op, self.args),
                         _RESULTS[self.op], xp)


@dataclass(frozen=True, eq=False, repr=False)
class ConcatStr(Expr):
    """String columns and literals joined with a separator (``concat_str``)."""

    parts: tuple[Expr, ...]
    separator: str = ""

    def __repr__(self) -> str:
        sep = f", separator={self.separator!r}" if self.separator else ""
        return f"concat_str([{', '.join(map(repr, self.parts))}]{sep})"

    def _children(self) -> Sequence[Expr]:
        return self.parts

    def _type(self, schema: pa.Schema, where: str) -> pa.DataType:
        for p in self.parts:
            t = node_type(p, schema, where)
            if not _is_string(t):
                raise PlanError(f"{where}: concat_str() joins strings, but {describe(p, t)} "
                                "is not a string; give string columns or 'literals'")
        if all(isinstance(p, Lit) for p in self.parts):
            raise PlanError(f"{where}: concat_str() of literals only; write the one string")
        return pa.string()

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        return concat_columns(self, [eval_node(p, batch, xp) for p in self.parts],
                              self.separator, xp)


def _str_arg(value: Any, what: str, fn: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"str.{fn}(): {what} must be a str, got {value!r}")
    return value


def _int_arg(value: Any, what: str, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise PlanError(f"str.{fn}(): {what} must be an int, got {value!r}")
    return int(value)


class StrNamespace:
    """``expr.str``: string functions (Polars' names), each computed once per dictionary
    entry with ``pyarrow.compute``.

    Examples
    --------
    >>> from gpustream.expr import col
    >>> col("url").str.extract(r"/item/(\\d+)", 1)
    col('url').str.extract('/item/(\\\\d+)', 1)
    """

    def __init__(self, expr: Expr) -> None:
        self._expr = expr

    def _fn(self, op: str, *args: Any) -> Expr:
        return StrFn(op, self._expr, args)

    def to_lowercase(self) -> Expr:
        """Lower case (Unicode).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.to_lowercase()
        col('s').str.to_lowercase()
        """
        return self._fn("to_lowercase")

    def to_uppercase(self) -> Expr:
        """Upper case (Unicode).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.to_uppercase()
        col('s').str.to_uppercase()
        """
        return self._fn("to_uppercase")

    def len_chars(self) -> Expr:
        """Length in characters (Unicode code points), int32.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.len_chars()
        col('s').str.len_chars()
        """
        return self._fn("len_chars")

    def contains(self, pattern: str, *, literal: bool = False) -> Expr:
        """True where the string matches the regular expression ``pattern`` (RE2 syntax)
        anywhere, or contains it as plain text with ``literal=True``.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.contains("^a.c", literal=False)
        col('s').str.contains('^a.c', False)
        """
        return self._fn("contains", _str_arg(pattern, "the pattern", "contains"), bool(literal))

    def starts_with(self, prefix: str) -> Expr:
        """True where the string starts with ``prefix`` (plain text).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.starts_with("http")
        col('s').str.starts_with('http')
        """
        return self._fn("starts_with", _str_arg(prefix, "the prefix", "starts_with"))

    def ends_with(self, suffix: str) -> Expr:
        """True where the string ends with ``suffix`` (plain text).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.ends_with(".com")
        col('s').str.ends_with('.com')
        """
        return self._fn("ends_with", _str_arg(suffix, "the suffix", "ends_with"))

    def replace(self, pattern: str, value: str, *, literal: bool = False) -> Expr:
        """The first match of ``pattern`` replaced by ``value`` (``\\1`` names a group).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.replace("a+", "b")
        col('s').str.replace('a+', 'b', False)
        """
        return self._fn("replace", _str_arg(pattern, "the pattern", "replace"),
                        _str_arg(value, "the value", "replace"), bool(literal))

    def replace_all(self, pattern: str, value: str, *, literal: bool = False) -> Expr:
        """Every match of ``pattern`` replaced by ``value``.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.replace_all(" ", "_", literal=True)
        col('s').str.replace_all(' ', '_', True)
        """
        return self._fn("replace_all", _str_arg(pattern, "the pattern", "replace_all"),
                        _str_arg(value, "the value", "replace_all"), bool(literal))

    def extract(self, pattern: str, group_index: int = 1) -> Expr:
        """The text the capture group ``group_index`` of ``pattern`` matched (0: the
        whole match); null where the pattern does not match.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("url").str.extract("id=([0-9]+)")
        col('url').str.extract('id=([0-9]+)', 1)
        """
        pattern = _str_arg(pattern, "the pattern", "extract")
        group = _int_arg(group_index, "group_index", "extract")
        _group_pattern(pattern, group)  # a group the pattern does not have fails here
        return self._fn("extract", pattern, group)

    def split_part(self, separator: str, index: int) -> Expr:
        """Part ``index`` (1 is the first, -1 the last) of the string split at
        ``separator``; ``''`` past the last part (SQL's ``split_part``).

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("path").str.split_part("/", 2)
        col('path').str.split_part('/', 2)
        """
        sep = _str_arg(separator, "the separator", "split_part")
        if not sep:
            raise PlanError("str.split_part(): the separator must not be empty")
        index = _int_arg(index, "the index", "split_part")
        if index == 0:
            raise PlanError("str.split_part(): the index counts from 1 (or from -1 at the end); "
                            "0 is not a part")
        return self._fn("split_part", sep, index)

    def slice(self, offset: int, length: int | None = None) -> Expr:
        """``length`` characters from ``offset`` (0-based; negative counts from the end;
        ``None``: to the end), as Polars' ``str.slice``.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("s").str.slice(0, 3)
        col('s').str.slice(0, 3)
        """
        offset = _int_arg(offset, "the offset", "slice")
        if length is not None and _int_arg(length, "the length", "slice") < 0:
            raise PlanError(f"str.slice(): the length must be >= 0, got {length}")
        return self._fn("slice", offset, length)

    def concat(self, *others: Expr | str, separator: str = "") -> Expr:
        """This string and ``others`` (string columns or literals) joined by
        ``separator``; null if any part is null. ``a + b`` joins two strings too.

        Examples
        --------
        >>> from gpustream.expr import col
        >>> col("first").str.concat(col("last"), separator=" ")
        concat_str([col('first'), col('last')], separator=' ')
        """
        return concat_str([self._expr, *others], separator=separator)


def concat_str(exprs: Sequence[Expr | str], separator: str = "") -> Expr:
    """String columns and literals joined by ``separator`` (Polars' ``concat_str``);
    null where any part is null.

    Examples
    --------
    >>> from gpustream.expr import col
    >>> concat_str([col("a"), "-", col("b")])
    concat_str([col('a'), '-', col('b')])
    """
    if isinstance(exprs, str | Expr) or len(exprs) < 2:
        raise PlanError("concat_str() takes a list of two or more string columns or literals")
    _str_arg(separator, "the separator", "concat")
    return ConcatStr(tuple(wrap(e) for e in exprs), separator)


# --------------------------------------------------------------------------------------
# per-entry functions (pyarrow.compute on the dictionary's new entries)
# --------------------------------------------------------------------------------------

def _group_pattern(pattern: str, group: int) -> tuple[str, str]:
    """``pattern`` rewritten for ``pc.extract_regex`` (which takes only named groups), and
    the name of the group to read: other unnamed groups become non-capturing.

    >>> _group_pattern(r"(a)(b[(])", 2)
    ('(?:a)(?P<__gpustream_group>b[(])', '__gpustream_group')
    >>> _group_pattern(r"x(?P<n>\\d)", 1)
    ('x(?P<n>\\\\d)', 'n')
    """
    out: list[str] = []
    count, name, i = 0, _EXTRACTED, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[":  # a character class: up to its closing bracket, taken as it is
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append(pattern[i:j + 1])
            i = j + 1
            continue
        if ch == "(":
            rest = pattern[i + 1:]
            named = rest.startswith(("?P<", "?<")) and not rest.startswith(("?<=", "?<!"))
            if named or not rest.startswith("?"):
                count += 1
                if named and count == group:
                    start = rest.index("<") + 1
                    name = rest[start:rest.index(">")]
                elif not named:
                    out.append("(?P<" + _EXTRACTED + ">" if count == group else "(?:")
                    i += 1
                    continue
        out.append(ch)
        i += 1
    if group < 0 or group > count:
        raise PlanError(f"str.extract(): the pattern {pattern!r} has {count} capture group(s); "
                        f"group_index {group} is not one of them (0 is the whole match)")
    text = "".join(out)
    if group == 0:
        text = f"(?P<{_EXTRACTED}>{text})"
    return text, name


def _split_part(strings: pa.Array, sep: str, index: int) -> pa.Array:
    if not len(strings):
        return strings
    parts = pc.split_pattern(strings, sep)  # a string splits into one part or more
    offsets = parts.offsets.to_numpy()
    lengths = np.diff(offsets)
    if index > 0:
        pos, ok = offsets[:-1] + (index - 1), index <= lengths
    else:
        pos, ok = offsets[1:] + index, -index <= lengths
    picked = parts.flatten().take(arrow_ints(np.where(ok, pos, 0)))
    return pc.if_else(pa.array(ok), picked, pa.scalar("", _LARGE))


def _function(op: str, args: tuple[Any, ...]) -> Callable[[pa.Array], pa.Array]:
    """``op`` as a function of an array of distinct strings (large_string, no nulls)."""
    if op == "to_lowercase":
        return pc.utf8_lower
    if op == "to_uppercase":
        return pc.utf8_upper
    if op == "len_chars":
        return pc.utf8_length
    if op == "contains":
        pattern, literal = args
        match = pc.match_substring if literal else pc.match_substring_regex
        return lambda a: match(a, pattern)
    if op == "starts_with":
        return lambda a: pc.starts_with(a, args[0])
    if op == "ends_with":
        return lambda a: pc.ends_with(a, args[0])
    if op in ("replace", "replace_all"):
        pattern, value, literal = args
        fn = pc.replace_substring if literal else pc.replace_substring_regex
        most = 1 if op == "replace" else None
        return lambda a: fn(a, pattern, value, max_replacements=most)
    if op == "extract":
        regex, name = _group_pattern(*args)
        return lambda a: pc.struct_field(pc.extract_regex(a, regex), [name])
    if op == "split_part":
        return lambda a: _split_part(a, *args)
    if op == "slice":
        offset, length = args
        big = np.iinfo(np.int64).max
        stop = big if length is None or (offset < 0 <= offset + length) else offset + length
        return lambda a: pc.utf8_slice_codeunits(a, offset, stop)
    raise ValueError(f"unknown string function {op!r}")
