"""String functions on dictionary codes: ``col("name").str.to_lowercase()``.

A string column is int32 codes into a :class:`~gpustream.ingest.dictionary.StringDictionary`
(DESIGN.md section 2), so a function of a string is computed once per dictionary entry,
with ``pyarrow.compute``, and the batch only gathers the per-entry result by code (on the
device too: the per-entry result moves there once, and again only for entries the
dictionary gained since). A function that gives strings gives a dictionary-coded column:
codes into a derived dictionary that grows, append-only, in the order of its input
dictionary, so its codes are a pure function of that dictionary (stable across batches
and rebuilt the same after a checkpoint restores the input's dictionary).

Concatenating two string columns cannot use one dictionary: it is computed on the
distinct (code, code) pairs of each batch, found with ``xp.unique``, so a batch costs one
string join per distinct pair, never per row. Its dictionary grows in the order pairs
first appear.

Null semantics: a null string gives null; concatenation with a null part gives null (as
SQL's ``||`` and Polars' ``concat_str``); ``extract`` with no match gives null (as Polars
and Flink); ``split_part`` past the last part gives ``''`` (as DuckDB and PostgreSQL).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpustream.batch import physical_dtype
from gpustream.errors import PlanError
from gpustream.expr import Column, Expr, Lit, _describe, _expr_type, _is_string, _wrap
from gpustream.ingest.dictionary import StringDictionary

if TYPE_CHECKING:
    from gpustream.batch import Batch

__all__ = ["ConcatStr", "StrFn", "StrNamespace", "concat_columns", "concat_str"]

_LARGE = pa.large_string()
#: the result type of each function (``None``: a string column)
_RESULTS: dict[str, pa.DataType | None] = {
    "to_lowercase": None, "to_uppercase": None, "len_chars": pa.int32(),
    "contains": pa.bool_(), "starts_with": pa.bool_(), "ends_with": pa.bool_(),
    "replace": None, "replace_all": None, "extract": None, "split_part": None,
    "slice": None, "concat_left": None, "concat_right": None,
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
        t = _expr_type(self.operand, schema, where)
        if not _is_string(t):
            raise PlanError(f"{where}: str.{self.op}() needs a string column, but "
                            f"{_describe(self.operand, t)} is not a string; apply it to a "
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
        from gpustream.expr import _eval

        c = _eval(self.operand, batch, xp)
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
            t = _expr_type(p, schema, where)
            if not _is_string(t):
                raise PlanError(f"{where}: concat_str() joins strings, but {_describe(p, t)} "
                                "is not a string; give string columns or 'literals'")
        if all(isinstance(p, Lit) for p in self.parts):
            raise PlanError(f"{where}: concat_str() of literals only; write the one string")
        return pa.string()

    def _evaluate(self, batch: Batch, xp: ModuleType) -> Column:
        from gpustream.expr import _eval

        return concat_columns(self, [_eval(p, batch, xp) for p in self.parts],
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
    return ConcatStr(tuple(_wrap(e) for e in exprs), separator)


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
    picked = parts.flatten().take(_arrow_ints(np.where(ok, pos, 0)))
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
    if op in ("concat_left", "concat_right"):
        text, sep = (pa.scalar(args[0], _LARGE), pa.scalar(args[1], _LARGE))
        if op == "concat_left":
            return lambda a: pc.binary_join_element_wise(text, a, sep)
        return lambda a: pc.binary_join_element_wise(a, text, sep)
    raise ValueError(f"unknown string function {op!r}")


def _arrow_ints(values: np.ndarray) -> pa.Array:
    """An int64 Arrow array over numpy values (``pa.array`` of numpy would load pandas)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def to_host(values: Any) -> np.ndarray:
    """A numpy copy of a device array (the array itself when already on the host).

    >>> to_host(np.arange(2)).tolist()
    [0, 1]
    """
    return values if isinstance(values, np.ndarray) else values.get()


class _Table:
    """A function's result for every entry of one dictionary, grown as it grows.

    ``values[code]`` is the result for entry ``code`` (for string results: a code into
    ``out``), ``valid[code]`` whether it is non-null (None: all are).
    """

    def __init__(self, fn: Callable[[pa.Array], pa.Array], result: pa.DataType | None,
                 out: StringDictionary | None = None) -> None:
        self.fn = fn
        self.result = result
        if result is None and out is None:
            out = StringDictionary()
        self.out = out
        dtype = np.dtype(np.int32) if result is None else physical_dtype(result)
        self.values = np.zeros(0, dtype=dtype)
        self.valid: np.ndarray | None = None
        self._device: tuple[int, Any, Any] | None = None

    def grow(self, strings: pa.Array) -> None:
        n = len(self.values)
        if len(strings) <= n:
            return
        got = self.fn(strings.slice(n))
        if self.result is None:
            assert self.out is not None
            values, valid = self.out.encode(got)
        else:
            valid = got.is_valid().to_numpy(zero_copy_only=False) if got.null_count else None
            if got.null_count:
                got = pc.coalesce(got, pa.scalar(False if pa.types.is_boolean(got.type) else 0,
                                                 got.type))
            values = got.to_numpy(zero_copy_only=False).astype(self.values.dtype, copy=False)
        if valid is not None or self.valid is not None:
            old = self.valid if self.valid is not None else np.ones(n, dtype=bool)
            new = valid if valid is not None else np.ones(len(values), dtype=bool)
            self.valid = np.concatenate([old, new])
        self.values = np.concatenate([self.values, values])

    def on(self, xp: ModuleType) -> tuple[Any, Any]:
        """``values`` and ``valid`` on ``xp``'s device: only new entries are copied."""
        if xp is np:
            return self.values, self.valid
        n = len(self.values)
        have, dv, dvalid = self._device or (0, xp.zeros(0, dtype=self.values.dtype), None)
        if have < n:  # only the entries the dictionary gained move to the device
            dv = xp.concatenate([dv, xp.asarray(self.values[have:])])
            if self.valid is not None:
                dvalid = xp.asarray(self.valid) if dvalid is None else \
                    xp.concatenate([dvalid, xp.asarray(self.valid[have:])])
            self._device = (n, dv, dvalid)
        return dv, dvalid


_LOCK = threading.RLock()
#: dictionary -> function key -> its per-entry table (gone with the dictionary)
_TABLES: weakref.WeakKeyDictionary[StringDictionary, dict[Any, _Table]] = \
    weakref.WeakKeyDictionary()
#: id of an expression node -> (a weak reference to it, its state): derived dictionaries
#: of concatenations, CASE and strftime (by id: an ``Expr``'s ``==`` builds an expression)
_NODES: dict[int, tuple[weakref.ref[Expr], Any]] = {}


def _forget(node_id: int) -> Callable[[weakref.ref[Expr]], None]:
    def forget(ref: weakref.ref[Expr]) -> None:
        with _LOCK:
            if node_id in _NODES and _NODES[node_id][0] is ref:
                del _NODES[node_id]
    return forget


def node_state(node: Expr, make: Callable[[], Any]) -> Any:
    """The state an expression node keeps across batches, made on first use.

    >>> from gpustream.expr import col
    >>> e = col("a")
    >>> node_state(e, StringDictionary) is node_state(e, StringDictionary)
    True
    """
    with _LOCK:
        held = _NODES.get(id(node))
        if held is None or held[0]() is not node:
            held = _NODES[id(node)] = (weakref.ref(node, _forget(id(node))), make())
        return held[1]


def gather(table: _Table, strings: pa.Array, c: Column, xp: ModuleType) -> Column:
    """``table`` grown to ``strings`` (a snapshot of ``c``'s dictionary), gathered by
    ``c``'s codes: the result for each row, null where ``c`` or the result is null."""
    with _LOCK:
        table.grow(strings)
        values, valid = table.on(xp)
    n = len(c.values)
    if not len(values):  # an empty dictionary: every row is null
        return Column(xp.zeros(n, dtype=values.dtype), xp.zeros(n, dtype=np.bool_),
                      table.out if table.result is None else None)
    codes = c.values if c.valid is None else xp.where(c.valid, c.values, 0)
    out_valid = c.valid
    if valid is not None:
        out_valid = valid[codes] if out_valid is None else xp.logical_and(out_valid, valid[codes])
    return Column(values[codes], out_valid, table.out if table.result is None else None)


def per_entry(c: Column, key: Any, fn: Callable[[pa.Array], pa.Array],
              result: pa.DataType | None, xp: ModuleType) -> Column:
    """``fn`` of each entry of ``c``'s dictionary (cached under ``key``), by code.

    ``result`` is the Arrow type of a number or bool result; ``None`` for a string result,
    which comes back as codes into a derived dictionary.

    >>> from gpustream.expr import Column
    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["Ab", None, "ab", "Ab"]))
    >>> out = per_entry(Column(codes, valid, d), "lower", pc.utf8_lower, None, np)
    >>> out.dictionary.decode(out.values, out.valid).to_pylist()
    ['ab', None, 'ab', 'ab']
    """
    d = c.dictionary
    assert d is not None
    strings = d.values  # one snapshot: every code of the batch is below its length
    with _LOCK:
        tables = _TABLES.setdefault(d, {})
        table = tables.get(key)
        if table is None:
            table = tables[key] = _Table(fn, result)
    return gather(table, strings, c, xp)


def encode_distinct(keys: Any, valid: Any | None, xp: ModuleType,
                    strings_of: Callable[[np.ndarray], pa.Array],
                    out: StringDictionary) -> Column:
    """A string column from per-row integer ``keys``: ``strings_of`` of each distinct
    valid key (in order of first appearance), encoded into ``out``, gathered back.

    >>> out = StringDictionary()
    >>> col = encode_distinct(np.array([5, 3, 5]), None, np,
    ...                       lambda k: pc.cast(pa.array(k), pa.string()), out)
    >>> col.values.tolist(), out.values.to_pylist()
    ([0, 1, 0], ['5', '3'])
    """
    n = len(keys)
    null_key = keys.dtype.type(np.iinfo(keys.dtype).min)
    if valid is not None:  # null rows share one key, never turned into a string
        keys = xp.where(valid, keys, null_key)
    uniq, first, inverse = xp.unique(keys, return_index=True, return_inverse=True)
    uniq_h, first_h = to_host(uniq), to_host(first)
    real = np.ones(len(uniq_h), dtype=bool)
    if valid is not None and len(uniq_h) and uniq_h[0] == null_key:
        real[0] = bool(valid[int(first_h[0])])  # a valid row holding that very value
    codes = np.zeros(len(uniq_h), dtype=np.int32)
    order = np.argsort(first_h[real], kind="stable")
    if len(order):
        got, got_valid = out.encode(strings_of(uniq_h[real][order]))
        assert got_valid is None, "strings of valid keys are never null"
        placed = np.zeros(len(order), dtype=np.int32)
        placed[order] = got
        codes[real] = placed
    rows = xp.asarray(codes)[inverse.reshape(-1)] if n else xp.zeros(0, dtype=np.int32)
    return Column(rows, valid, out)


def _literal_of(c: Column) -> str | None:
    return c.values if c.dictionary is None and isinstance(c.values, str) else None


def concat_columns(node: Expr, parts: list[Column], separator: str, xp: ModuleType) -> Column:
    """String columns and literals (evaluated) joined by ``separator``, left to right.

    >>> from gpustream.expr import col, Column
    >>> d = StringDictionary()
    >>> codes, valid = d.encode(pa.array(["a", "b", None]))
    >>> a = Column(codes, valid, d)
    >>> out = concat_columns(col("x"), [a, Column("-", None), a], "", np)
    >>> out.dictionary.decode(out.values, out.valid).to_pylist()
    ['a-a', 'b-b', None]
    """
    acc = parts[0]
    for i, part in enumerate(parts[1:]):
        left, right = _literal_of(acc), _literal_of(part)
        if left is not None and right is not None:
            acc = Column(left + separator + right, None)
        elif right is not None:
            acc = per_entry(acc, ("concat_right", right, separator),
                            _function("concat_right", (right, separator)), None, xp)
        elif left is not None:
            acc = per_entry(part, ("concat_left", left, separator),
                            _function("concat_left", (left, separator)), None, xp)
        else:
            acc = _concat_pairs(node_state(node, dict), i, acc, part, separator, xp)
    return acc


def _concat_pairs(state: dict[int, StringDictionary], step: int, left: Column,
                  right: Column, separator: str, xp: ModuleType) -> Column:
    """Two string columns joined, computed once per distinct (code, code) pair."""
    assert left.dictionary is not None and right.dictionary is not None
    with _LOCK:
        out = state.setdefault(step, StringDictionary())
    lstrings, rstrings = left.dictionary.values, right.dictionary.values
    width = max(len(rstrings), 1)
    keys = left.values.astype(np.int64) * width + right.values
    valid = left.valid if right.valid is None else (
        right.valid if left.valid is None else xp.logical_and(left.valid, right.valid))
    sep = pa.scalar(separator, _LARGE)

    def strings_of(pairs: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(lstrings.take(_arrow_ints(pairs // width)),
                                           rstrings.take(_arrow_ints(pairs % width)), sep)

    return encode_distinct(keys, valid, xp, strings_of, out)
