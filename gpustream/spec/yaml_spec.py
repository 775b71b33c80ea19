"""YAML pipeline specs (DESIGN.md section 10): parse, validate, build a ``gs.Pipeline``.

The spec mirrors the Python API one to one. It is read with YAML's safe loader, each
part validated by a pydantic model, and expressions (``"price > 100"``, ``"sum(v)"``)
parsed by :mod:`gpustream.expr.text`, never evaluated. Every error names the file, the
line, the field and a fix, and is raised before anything runs::

    spec.yaml:14: steps[2].agg.x: unknown aggregation 'avgg'; did you mean 'avg'?

Checking goes on past an error, so one run reports them all: a section whose structure
is wrong is left out of the later checks, and after a step that fails the later steps
are still parsed (syntax, function and aggregation names, windows) though no longer
checked against columns and types. :func:`check_spec` with ``need_inputs=False`` (what
``gpustream validate`` does) needs no input file: a text source whose ``schema:`` gives
every column is checked against that schema, with a warning, when its file is missing.

A spec may say its pipeline in SQL instead: ``sql:`` (Flink SQL, run by
:meth:`gpustream.Pipeline.sql`) reads the spec's ``sources:`` (and a named ``source:``,
and ``tables:``) by name; ``steps:`` then apply to the query's rows, and the sinks take
them. An error in the query names the spec's line of the query's line, and the SQL line
and column.

A spec cannot make checking it expensive: YAML anchors and aliases (``&a``, ``*a``),
which can expand a few lines into gigabytes, and nesting deeper than
:data:`MAX_YAML_DEPTH` are refused before any structure is built, and expression text is
capped in length and depth (:data:`gpustream.expr.text.MAX_EXPR_CHARS`,
:data:`gpustream.expr.MAX_EXPR_DEPTH`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from gpustream.errors import GpustreamError, PlanError
from gpustream.expr.text import parse_agg, parse_expr
from gpustream.ingest.files import ArrowIpcSource, ParquetSource

__all__ = ["FILE_SUFFIXES", "Spec", "SpecCheck", "SpecError", "build_pipeline", "check_spec",
           "file_reader", "file_type", "load_spec", "output_sink", "pipeline_from_spec"]

Duration = str | int
T = TypeVar("T")


class SpecError(PlanError):
    """A spec that cannot run, with where (file, line, field) and how to fix it.

    ``messages`` holds every error found, one ``file:line: field: message`` each (the
    exception's text is them joined by newlines).

    Examples
    --------
    >>> err = SpecError("two errors", ["a.yaml:3: sink: is required", "a.yaml:5: x: y"])
    >>> err.messages[1]
    'a.yaml:5: x: y'
    """

    def __init__(self, message: str, messages: list[str] | None = None) -> None:
        super().__init__(message)
        self.messages = list(messages) if messages else [message]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


M = TypeVar("M", bound=BaseModel)


class SourceSpec(_Model):
    """``source:`` (and each of ``tables:``)."""

    type: Literal["parquet", "csv", "jsonl", "arrow_ipc", "nexmark", "kafka", "redis_stream",
                  "socket", "stdin"]
    name: str | None = None
    path: str | None = None
    event_time: str | None = None
    watermark: Duration | None = None
    max_rows: int | None = None
    max_delay: Duration | None = None
    schema_: dict[str, str] | None = Field(None, alias="schema")
    schema_overrides: dict[str, str] | None = None
    has_header: bool = True
    delimiter: str = ","
    follow: bool = False
    poll_interval: Duration | None = None
    max_bad_fraction: float = 0.5
    on_bad_file: Literal["fail", "skip"] | None = None
    format: str | None = None
    # brokers and sockets
    topic: str | None = None
    bootstrap: str | None = None
    group: str | None = None
    bounded: bool = False
    url: str | None = None
    stream: str | None = None
    consumer: str | None = None
    field: str | None = None
    host: str | None = None
    port: int | None = None
    # nexmark
    events: int | None = None
    seed: int = 0
    rate: float = 10_000.0
    pace: bool = False
    # tables (joins)
    key: str | list[str] | None = None
    changelog: SourceSpec | None = None
    delete_column: str | None = None


SourceSpec.model_rebuild()


class SinkSpec(_Model):
    """``sink:``, ``late:`` and ``dead_letter:``."""

    type: Literal["console", "parquet", "csv", "jsonl", "kafka", "redis_stream"]
    path: str | None = None
    rows_per_file: int = 1_000_000
    mode: Literal["error", "overwrite", "append"] | None = None
    max_rows: int = 20
    topic: str | None = None
    bootstrap: str | None = None
    format: Literal["json", "arrow"] = "json"
    key: str | None = None
    upsert: bool = False
    url: str | None = None
    stream: str | None = None


class WindowSpec(_Model):
    """``window:`` (exactly one of tumbling, sliding + slide, session; ``time: processing``
    windows tumbling or sliding by the wall clock, :class:`gpustream.ProcessingTime`)."""

    tumbling: Duration | None = None
    sliding: Duration | None = None
    slide: Duration | None = None
    session: Duration | None = None
    offset: Duration = 0
    name: str | None = None
    allowed_lateness: Duration = 0
    time: Literal["event", "processing"] = "event"


class OverSpec(_Model):
    """``over:`` (exactly one of range, rows; ``as`` or ``name`` names its state; ``agg``
    here, or in an ``agg:`` step right after it)."""

    range: Duration | None = None
    rows: StrictInt | Literal["unbounded"] | None = None
    name: str | None = Field(None, alias="as")
    agg: dict[str, Any] | None = None


class KeyBySpec(_Model):
    """``key_by:`` in its long form: the key columns and, for an ``agg:`` right after it
    (no window: a running aggregation), the state's retention."""

    columns: str | list[str]
    retention: Duration | None = None


class CheckpointSpec(_Model):
    """``checkpoint:``."""

    dir: str | None = None
    every_batches: int | None = None
    every: Duration | None = None


class Spec(_Model):
    """A whole spec file: ``source:`` and ``steps:``, or ``sql:`` (a query over the
    spec's named sources, ``sources:`` and/or a ``source:`` with a ``name``, and its
    ``tables:``) and then, optionally, ``steps:`` on the query's result."""

    name: str = "pipeline"
    engine: Literal["auto", "cpu", "cuda"] = "auto"
    source: SourceSpec | None = None
    sources: dict[str, SourceSpec] = {}
    sql: str | None = None
    tables: dict[str, SourceSpec] = {}
    steps: list[dict[str, Any]] = []
    sink: SinkSpec | list[SinkSpec] | None = None
    late: SinkSpec | None = None
    dead_letter: SinkSpec | None = None
    checkpoint: CheckpointSpec | None = None
    max_state_bytes: StrictInt | str | None = None
    #: a partitioned run on Dask (``local:N`` or ``dask://HOST:PORT``); the CLI's
    #: ``--cluster`` overrides it
    cluster: str | None = Field(None, min_length=1)
    #: how many partitions (``--parallelism`` overrides it)
    parallelism: StrictInt | None = Field(None, ge=1)


STEP_KINDS = ("filter", "with_columns", "select", "key_by", "window", "over", "agg",
              "top_k", "join_table", "window_join", "interval_join", "join", "union")


# -- locating fields in the YAML text ---------------------------------------------------

def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = (*path, k.value)
            _lines(v, sub, out)
            out[sub] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, (*path, i), out)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Skip(Exception):
    """A check that cannot go on for a reason already reported (nothing new to say)."""


class _Where:
    """The spec file, the line of each field, and what checking it has found so far."""

    def __init__(self, file: str, lines: dict[tuple[Any, ...], int]) -> None:
        self.file, self.lines = file, lines
        self.base = Path(file).resolve().parent
        self.messages: list[str] = []
        self.warnings: list[str] = []
        #: top-level sections whose structure is wrong: reported, left out of later checks
        self.bad: set[str] = set()
        #: False (``gpustream validate``): a missing text input with a full schema warns
        self.need_inputs = True
        #: ``sql:``: the file line of the query's first line, when its lines are the
        #: file's (a literal block ``sql: |``, or one line); else None
        self.sql_first_line: int | None = None

    def line(self, path: tuple[Any, ...]) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def at(self, path: tuple[Any, ...], msg: str) -> str:
        return f"{self.file}:{self.line(path)}: {_dotted(path) or '(top)'}: {msg}"

    def error(self, path: tuple[Any, ...], msg: str) -> SpecError:
        return SpecError(self.at(path, msg))

    def sql_error(self, err: Any) -> SpecError:
        """A :class:`~gpustream.sql.SqlError` of ``sql:``, placed at the file line of the
        query's line it names (the ``sql:`` key's line where the two cannot be matched)."""
        line = self.line(("sql",))
        if err.line is not None and self.sql_first_line is not None:
            line = self.sql_first_line + err.line - 1
        return SpecError(f"{self.file}:{line}: sql: {err}")

    def note(self, err: SpecError) -> None:
        self.messages += [m for m in err.messages if m not in self.messages]

    def warn(self, path: tuple[Any, ...], msg: str) -> None:
        self.warnings.append(self.at(path, msg))

    def raise_errors(self) -> None:
        """Raise one :class:`SpecError` with every error noted, if there is any."""
        if self.messages:
            raise SpecError("\n".join(self.messages), self.messages)

    def attempt(self, path: tuple[Any, ...], fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None after noting its error (an API error is placed at
        ``path``)."""
        try:
            return fn(*args)
        except _Skip:
            return None
        except SpecError as err:
            self.note(err)
        except (GpustreamError, ValueError, TypeError) as err:
            self.note(self.error(path, str(err).removeprefix(f"{_dotted(path)}: ")))
        return None


def _gather(checks: list[Callable[[], Any]]) -> list[Any]:
    """Run every check; raise one SpecError with all their messages if any failed."""
    out: list[Any] = []
    messages: list[str] = []
    for check in checks:
        try:
            out.append(check())
        except SpecError as err:
            messages += err.messages
    if messages:
        raise SpecError("\n".join(messages), messages)
    return out


def _is_union_tag(part: Any) -> bool:
    """pydantic's name for a branch of a union in an error's location (``SinkSpec``,
    ``list[str]``, ``int``): never a field name, which is lower-case snake case."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part
                                      or part[:1].isupper())


#: what each of pydantic's type errors expected, for a union's combined message
_EXPECTED = {"model_type": "a mapping", "model_attributes_type": "a mapping",
             "dict_type": "a mapping", "list_type": "a list", "string_type": "a string",
             "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
             "float_parsing": "a number", "bool_type": "true or false",
             "bool_parsing": "true or false"}


def _pydantic_errors(err: ValidationError, base: tuple[Any, ...], where: _Where,
                     model: type[BaseModel]) -> SpecError:
    """Every error of a validation, one message each. Of a union (``sink:`` a mapping or
    a list, a duration a string or an integer), the branches this input did not take are
    left out, and where every branch failed on the type, one message says what it takes."""
    found: list[tuple[tuple[Any, ...], Any, bool]] = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not _is_union_tag(p))
        found.append((loc, e, len(loc) != len(e["loc"])))
    by_loc: dict[tuple[Any, ...], list[Any]] = {}
    for loc, e, in_union in found:
        deeper = any(len(other) > len(loc) and other[:len(loc)] == loc for other, _, _ in found)
        if in_union and e["type"] in _EXPECTED and deeper:
            continue  # a branch of a union this input did not take
        by_loc.setdefault(loc, []).append(e)
    messages = []
    for loc, errors in by_loc.items():
        if len(errors) > 1 and all(e["type"] in _EXPECTED for e in errors):
            wanted = dict.fromkeys(_EXPECTED[e["type"]] for e in errors)
            messages.append(where.at((*base, *loc), f"expected {' or '.join(wanted)} "
                                                     f"(got {errors[0]['input']!r})"))
        else:
            messages.append(_pydantic_message(errors[0], loc, base, where, model))
    return SpecError("\n".join(messages), messages)


def _pydantic_message(e: Any, loc: tuple[Any, ...], base: tuple[Any, ...], where: _Where,
                      model: type[BaseModel]) -> str:
    path = (*base, *loc)
    if e["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(fields)}"
        return where.at(path, f"unknown field{hint}")
    if e["type"] == "literal_error":
        return where.at(path, f"{e['input']!r} is not one of "
                              f"{e['ctx']['expected'].replace(' or ', ', ')}")
    if e["type"] == "missing":
        return where.at(path, "is required")
    return where.at(path, f"{e['msg'].lower()} (got {e['input']!r})")


def _validate(model: type[M], data: Any, path: tuple[Any, ...], where: _Where) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _pydantic_errors(err, path, where, model) from None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        ann = info.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for c in (cand, *getattr(cand, "__args__", ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
    return [f.alias or n for n, f in getattr(current, "model_fields", {}).items()]


#: the deepest nesting of mappings and lists a spec may have (a real one needs under 10)
MAX_YAML_DEPTH = 64
#: the largest spec file read (a real one is a few kilobytes)
MAX_SPEC_BYTES = 1 << 20


def _refuse_expansion(text: str, file: str) -> None:
    """Refuse YAML anchors and aliases, and nesting deeper than :data:`MAX_YAML_DEPTH`,
    from the parser's events, before any structure is built: nine lines of aliases
    (``b: [*a, *a, ...]``, "billion laughs") expand to gigabytes once read, and deep
    nesting overflows the recursive reader. Raises :class:`SpecError` naming the line
    and the field (the first such place, with a count of the others)."""
    frames: list[list[Any]] = []  # per open mapping or list: [is_mapping, key or index, want_key]
    found: list[str] = []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionEndEvent):
            frames.pop()
            _next_node(frames)
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        in_key = bool(frames) and frames[-1][0] and frames[-1][2]
        path = tuple(f[1] for f in (frames[:-1] if in_key else frames) if f[1] is not None)
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        where = f"{file}:{line}: {_dotted(path) or '(top)'}: "
        if isinstance(event, yaml.AliasEvent):
            found.append(f"{where}a YAML alias (*{event.anchor}) is not allowed in a spec")
        elif event.anchor is not None:
            found.append(f"{where}a YAML anchor (&{event.anchor}) is not allowed in a spec")
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) == MAX_YAML_DEPTH:
                where = f"{file}:{line}: {_dotted(path[:4])}...: "
                raise SpecError(f"{where}nested more than {MAX_YAML_DEPTH} levels deep; a "
                                "spec needs only a few (is a bracket left open?)")
            is_map = isinstance(event, yaml.MappingStartEvent)
            frames.append([is_map, None if is_map else 0, is_map])
            continue
        if in_key and isinstance(event, yaml.ScalarEvent):
            frames[-1][1] = event.value
        _next_node(frames)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise SpecError(f"{found[0]}{more}: an alias repeats its anchor's value wherever it "
                        "is used, and a few lines of them can expand to gigabytes; write "
                        "each value out in full")


def _next_node(frames: list[list[Any]]) -> None:
    """A node ended: what the innermost open mapping or list reads next."""
    if frames:
        if frames[-1][0]:
            frames[-1][2] = not frames[-1][2]  # a key, then its value
        else:
            frames[-1][1] += 1


def _read(path: str | os.PathLike[str]) -> tuple[Spec, _Where]:
    """The spec's structure, every structural error noted in the returned ``_Where``.

    A section with errors is named in ``where.bad`` and has its default in the returned
    spec (``source`` a placeholder), so the other sections can still be checked.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:  # never more than the limit (a spec of /dev/zero)
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise SpecError(f"{file}: cannot read the spec ({err.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{file}: the spec is over {MAX_SPEC_BYTES:,} bytes, the limit; is it "
                        "the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        at = raw[:err.start].count(b"\n") + 1
        raise SpecError(f"{file}:{at}: not UTF-8 text ({err.reason}); save the spec as "
                        "UTF-8") from None
    try:
        _refuse_expansion(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{file}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    where = _Where(file, lines)
    where.sql_first_line = _sql_first_line(node)
    if not isinstance(data, dict):
        raise where.error((), "a spec is a mapping with at least 'source' and 'sink'")
    try:
        return Spec.model_validate(data), where
    except ValidationError as err:
        where.note(_pydantic_errors(err, (), where, Spec))
        where.bad |= {str(e["loc"][0]) for e in err.errors() if e["loc"]}
    good = {k: v for k, v in data.items() if k in Spec.model_fields and k not in where.bad}
    if "source" in where.bad:
        good["source"] = {"type": "stdin"}  # a placeholder: never built ("source" is bad)
    try:
        return Spec.model_validate(good), where
    except ValidationError:  # pragma: no cover - the sections were validated one by one
        where.raise_errors()
        raise


def _sql_first_line(node: yaml.Node | None) -> int | None:
    """The file line (1-based) of the first line of a top-level ``sql:`` text whose
    lines are the file's: a literal block (``sql: |``, its text from the next line) or a
    scalar on one line; None for a folded or multi-line plain or quoted scalar."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value != "sql" or not isinstance(value, yaml.ScalarNode):
            continue
        if value.style == "|":
            return int(value.start_mark.line) + 2
        if value.start_mark.line == value.end_mark.line:
            return int(value.start_mark.line) + 1
    return None


def load_spec(path: str | os.PathLike[str]) -> tuple[Spec, _Where]:
    """Read and validate a spec file (structure only; see :func:`build_pipeline`).

    Every structural error is reported at once (one per line of the exception).

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = f.write_text("name: x\\nsource:\\n  type: parquet\\n  pathh: a.parquet\\n")
    >>> load_spec(f)
    Traceback (most recent call last):
    ...
    gpustream.spec.yaml_spec.SpecError: ...p.yaml:4: source.pathh: unknown field; did you mean 'path'?
    """
    spec, where = _read(path)
    where.raise_errors()
    return spec, where


# -- building ---------------------------------------------------------------------------

def _need(spec: BaseModel, names: list[str], path: tuple[Any, ...], where: _Where,
          kind: str) -> None:
    fields = type(spec).model_fields
    missing = [where.at((*path, fields[n].alias or n), f"is required for type {kind}")
               for n in names if getattr(spec, n) is None]
    if missing:
        raise SpecError("\n".join(missing), missing)


TEXT_TYPES = ("csv", "jsonl")
FILE_TYPES = ("parquet", "arrow_ipc", "csv", "jsonl")
#: a file source's type by the file's suffix (``gpustream sql --source name=path``)
FILE_SUFFIXES: dict[str, str] = {**dict.fromkeys(ParquetSource.suffix, "parquet"),
                                 **dict.fromkeys(ArrowIpcSource.suffix, "arrow_ipc"),
                                 ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                                 ".json": "jsonl"}


def file_reader(kind: str) -> Callable[..., Any]:
    """The reader of a file source type (``parquet``, ``arrow_ipc``, ``csv``, ``jsonl``).

    Examples
    --------
    >>> file_reader("arrow_ipc").__name__
    'read_arrow_ipc'
    """
    import gpustream as gs

    readers = {"parquet": gs.read_parquet, "arrow_ipc": gs.read_arrow_ipc,
               "csv": gs.read_csv, "jsonl": gs.read_jsonl}
    return readers[kind]  # type: ignore[return-value]


def file_type(path: str | os.PathLike[str]) -> str:
    """The file source type of ``path`` by its suffix (see :data:`FILE_SUFFIXES`): of a
    file or a glob, or of a directory by the files in it (all of one type).

    Examples
    --------
    >>> file_type("data/bids.parquet"), file_type("logs/*.ndjson"), file_type("b.feather")
    ('parquet', 'jsonl', 'arrow_ipc')
    >>> file_type("bids.txt")
    Traceback (most recent call last):
    ...
    ValueError: cannot tell the format of 'bids.txt' from its suffix: give a file, glob or folder of .parquet, .arrow, .arrows, .feather, .ipc, .csv, .jsonl, .ndjson or .json files
    """
    p = Path(path)
    found = {p.suffix.lower()}
    if p.is_dir():
        found = {f.suffix.lower() for f in p.iterdir() if f.suffix.lower() in FILE_SUFFIXES}
    kinds = {FILE_SUFFIXES[x] for x in found if x in FILE_SUFFIXES}
    if len(kinds) == 1:
        return kinds.pop()
    known = list(FILE_SUFFIXES)
    if len(kinds) > 1:
        raise ValueError(f"the folder {os.fspath(path)!r} holds files of several formats "
                         f"({', '.join(sorted(kinds))}): give a glob such as "
                         f"'{os.fspath(path)}/*.parquet'")
    raise ValueError(f"cannot tell the format of {os.fspath(path)!r} from its suffix: give a "
                     f"file, glob or folder of {', '.join(known[:-1])} or {known[-1]} files")


def _source(s: SourceSpec, path: tuple[Any, ...], where: _Where, base: Path) -> Any:
    import gpustream as gs

    def file(p: str) -> str:
        return p if os.path.isabs(p) or p == "-" else str(base / p)

    kw: dict[str, Any] = {}
    if s.on_bad_file is not None:
        if s.type not in FILE_TYPES or s.path == "-":
            raise where.error((*path, "on_bad_file"), "applies only to a source that reads "
                              f"files (type {', '.join(FILE_TYPES)} with a path), not to "
                              f"{'stdin' if s.path == '-' else s.type}; remove it")
        kw["on_bad_file"] = s.on_bad_file
    if s.type in FILE_TYPES:
        _need(s, ["path"], path, where, s.type)
        assert s.path is not None
        if s.path == "-" and s.type in TEXT_TYPES:
            _need(s, ["schema_"], path, where, "stdin")
            return gs.stdin(s.schema_, format=s.type, **_batching(s))
        if s.type in ("parquet", "arrow_ipc"):
            if s.max_rows:
                kw["batch_rows"] = s.max_rows
            if s.poll_interval is not None:
                kw["poll_interval"] = s.poll_interval
            columnar = file_reader(s.type)
            return _input(lambda follow: columnar(file(s.path), follow=follow, **kw),  # type: ignore[arg-type]
                          s, path, where)
        if s.poll_interval is not None:
            kw["poll_interval"] = s.poll_interval
        if s.type == "csv":
            kw.update(has_header=s.has_header, delimiter=s.delimiter)
        text = file_reader(s.type)
        return _input(lambda follow: text(
            file(s.path), schema=s.schema_, schema_overrides=s.schema_overrides,  # type: ignore[arg-type]
            follow=follow, max_bad_fraction=s.max_bad_fraction, **_batching(s), **kw),
            s, path, where)
    if s.type == "nexmark":
        stream = s.stream or "bids"
        if stream not in ("persons", "auctions", "bids"):
            raise where.error((*path, "stream"), f"{stream!r} is not one of persons, auctions, "
                                                 "bids")
        return getattr(gs.nexmark(events=s.events, seed=s.seed, rate=s.rate, pace=s.pace),
                       stream)
    if s.type == "kafka":
        _need(s, ["topic", "bootstrap", "schema_"], path, where, "kafka")
        return gs.kafka(s.topic, s.bootstrap, s.schema_, group=s.group,  # type: ignore[arg-type]
                        format=s.format or "json", bounded=s.bounded,
                        max_bad_fraction=s.max_bad_fraction, **_batching(s))
    if s.type == "redis_stream":
        _need(s, ["url", "stream", "schema_"], path, where, "redis_stream")
        return gs.redis_stream(s.url, s.stream, s.schema_, group=s.group,  # type: ignore[arg-type]
                               consumer=s.consumer, field=s.field, bounded=s.bounded,
                               max_bad_fraction=s.max_bad_fraction, **_batching(s))
    if s.type == "socket":
        _need(s, ["host", "port", "schema_"], path, where, "socket")
        return gs.socket(s.host, s.port, s.schema_, format=s.format or "jsonl",  # type: ignore[arg-type]
                         max_bad_fraction=s.max_bad_fraction, **_batching(s))
    _need(s, ["schema_"], path, where, "stdin")
    return gs.stdin(s.schema_, format=s.format or "jsonl",
                    max_bad_fraction=s.max_bad_fraction, **_batching(s))


def _input(make: Callable[[bool], Any], s: SourceSpec, path: tuple[Any, ...],
           where: _Where) -> Any:
    """A file source, its input missing or unreadable reported at ``path.path``.

    Without ``need_inputs`` (``gpustream validate``), a text source whose ``schema:``
    gives every column stands in for its missing file, with a warning.
    """
    try:
        return make(s.follow)
    except FileNotFoundError as err:
        problem = str(err) if err.strerror is None else f"{err.filename}: {err.strerror}"
    except OSError as err:
        raise where.error((*path, "path"), f"cannot read {err.filename}: {err.strerror}"
                          ) from None
    if not where.need_inputs and s.type in TEXT_TYPES and s.schema_ is not None:
        where.warn((*path, "path"), f"{problem} (not there yet?); the rest of the spec is "
                                    "checked against the schema it gives")
        return make(True)  # following, a text source waits for its files: none is needed
    if not where.need_inputs and s.type in TEXT_TYPES:
        problem += ("; to check a spec before its input exists, give schema: with every "
                    "column (then a missing file is only a warning)")
    raise where.error((*path, "path"), problem)


def _batching(s: SourceSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if s.max_rows is not None:
        kw["max_rows"] = s.max_rows
    if s.max_delay is not None:
        kw["max_delay"] = s.max_delay
    return kw


def _sink(s: SinkSpec, path: tuple[Any, ...], where: _Where, base: Path) -> Any:
    import gpustream as gs

    file_types = ("parquet", "csv", "jsonl")
    if s.mode is not None and s.type not in file_types:
        raise where.error((*path, "mode"), f"applies only to file sinks (type "
                                           f"{', '.join(file_types)}), not {s.type}; remove it")
    if s.type == "console":
        return gs.to_console(max_rows=s.max_rows)
    if s.type in file_types:
        _need(s, ["path"], path, where, s.type)
        assert s.path is not None
        target = s.path if os.path.isabs(s.path) else str(base / s.path)
        kw = {} if s.mode is None else {"mode": s.mode}
        made = getattr(gs, f"to_{s.type}")(target, rows_per_file=s.rows_per_file, **kw)
        if s.mode is not None and not made.single:
            where.warn((*path, "mode"), f"{s.path!r} is a folder of part files, which never "
                                        "replace one another, so mode is ignored; it applies "
                                        f"to one file (a path ending in .{s.type})")
        return made
    if s.type == "kafka":
        _need(s, ["topic", "bootstrap"], path, where, "kafka")
        return gs.to_kafka(s.topic, s.bootstrap, format=s.format,  # type: ignore[arg-type]
                           key=s.key, upsert=s.upsert)
    _need(s, ["url", "stream"], path, where, "redis_stream")
    return gs.to_redis_stream(s.url, s.stream)  # type: ignore[arg-type]


def _sql_sources(spec: Spec, p: Any, where: _Where) -> dict[str, Any] | None:
    """The named sources a ``sql:`` query reads: those with an ``event_time`` added to
    ``p``; the others returned by name, for ``p.sql(..., sources=)`` (so a ``CREATE
    TABLE`` in the query can give them a watermark). None if any of them failed."""
    named: list[tuple[str, SourceSpec, tuple[Any, ...]]] = []
    ok = "source" not in where.bad and "sources" not in where.bad
    if spec.source is not None and "source" not in where.bad:
        if spec.source.name is None:
            where.note(where.error(("source", "name"), "is required with sql: the name the "
                                                       "query reads it by (FROM name)"))
            ok = False
        else:
            named.append((spec.source.name, spec.source, ("source",)))
    for key, s in spec.sources.items():
        path: tuple[Any, ...] = ("sources", key)
        if s.name is not None and s.name != key:
            where.note(where.error((*path, "name"), f"{s.name!r} is not its key {key!r}, the "
                                                    "name the query reads it by; remove name:"))
            ok = False
        elif spec.source is not None and spec.source.name == key:
            where.note(where.error(path, f"the name {key!r} is the source:'s name too; give "
                                         "each input its own name"))
            ok = False
        else:
            named.append((key, s.model_copy(update={"name": key}), path))
    if not named and ok:
        where.note(where.error(("sql",), "needs its inputs: sources: {name: {type: parquet, "
                                         "path: ...}} (FROM name), or a source: with a name"))
        return None
    pending: dict[str, Any] = {}
    for name, s, path in named:
        if s.event_time is None and s.watermark is None:
            made = where.attempt(path, _source, s, path, where, where.base)
            pending[name] = made
        else:
            made = where.attempt(path, _stream_of, p, s, path, where)
        ok = ok and made is not None
    return pending if ok else None


def _sql(p: Any, text: str, sources: dict[str, Any], where: _Where) -> Any:
    """The stream of ``p.sql(text)``, a :class:`~gpustream.sql.SqlError` placed at the
    spec's line of the query's line it names."""
    from gpustream.sql import SqlError

    if not text.strip():
        raise where.error(("sql",), "is empty: give a query, e.g. sql: SELECT * FROM bids")
    try:
        return p.sql(text, sources=sources)
    except SqlError as err:
        raise where.sql_error(err) from None


def output_sink(out: str, max_rows: int = 20, mode: str | None = None) -> Any:
    """The sink a spec's ``sink:`` would make of the CLI's ``--out``: ``console`` (a
    table of at most ``max_rows`` rows per batch), a path ending in ``.parquet``,
    ``.csv`` or ``.jsonl`` (that file; ``mode``: error, overwrite or append), or any
    other path (a folder of Parquet part files).

    Examples
    --------
    >>> output_sink("console", max_rows=5).name
    'console (max_rows=5)'
    >>> type(output_sink("out/result.csv")).__name__, type(output_sink("out/q5")).__name__
    ('CsvSink', 'ParquetSink')
    """
    kind = "console" if out == "console" else {".csv": "csv", ".jsonl": "jsonl"}.get(
        Path(out).suffix.lower(), "parquet")
    if kind == "console" and mode is not None:
        raise ValueError(f"mode={mode!r} applies to a file output, not console")
    spec = SinkSpec.model_validate({"type": kind, "path": None if kind == "console" else out,
                                    "max_rows": max_rows, "mode": mode})
    return _sink(spec, ("--out",), _Where("--out", {}), Path.cwd())


def _stream_of(p: Any, s: SourceSpec, path: tuple[Any, ...], where: _Where) -> Any:
    """``p.source(...)`` for a source spec (``source:`` or a join's ``other:``)."""
    import gpustream as gs

    src = _source(s, path, where, where.base)
    wm = None
    if s.watermark is not None:
        wm = where.attempt((*path, "watermark"), gs.Watermark.bounded, s.watermark)
        if wm is None:
            raise _Skip
    return p.source(src, event_time=s.event_time, watermark=wm, name=s.name)


#: the steps one of which must come right after these
_NEXT = {"key_by": ("window", "over", "agg"), "window": ("agg",), "over": ("agg",)}


def build_pipeline(spec: Spec, where: _Where, engine: str | None = None,
                   base: Path | None = None) -> Any:
    """The ``gs.Pipeline`` a spec describes, checked step by step (nothing runs).

    ``engine`` overrides the spec's; relative paths are relative to ``base`` (the
    spec's folder). Every error found is raised at once, in one :class:`SpecError`.
    """
    p = _build(spec, where, engine, base)
    where.raise_errors()
    return p


def _build(spec: Spec, where: _Where, engine: str | None, base: Path | None) -> Any:
    """The pipeline, every error noted in ``where`` (its parts that failed left out)."""
    import gpustream as gs

    if base is not None:
        where.base = base
    dead: Any = None
    if spec.dead_letter is not None:
        d = spec.dead_letter
        dead = where.attempt(("dead_letter",), _sink, d, ("dead_letter",), where, where.base)
    limit = None
    if spec.max_state_bytes is not None:
        limit = where.attempt(("max_state_bytes",), _bytes, spec.max_state_bytes,
                              ("max_state_bytes",), where)
    p = gs.Pipeline(spec.name, engine=engine or spec.engine, dead_letter=dead,
                    max_state_bytes=limit)
    stream: Any = None
    pending: dict[str, Any] | None = None
    uses_sql = spec.sql is not None or "sql" in where.bad
    if spec.sql is not None:
        pending = _sql_sources(spec, p, where)
    elif uses_sql:
        pass  # a sql: that is not text, reported
    elif spec.source is None:
        if "source" not in where.bad:
            where.note(where.error(("source",), "is required (or sql: with its sources:)"))
    elif "source" not in where.bad:
        stream = where.attempt(("source",), _stream_of, p, spec.source, ("source",), where)
    if spec.sources and not uses_sql:
        where.note(where.error(("sources",), "names the inputs of a sql: query; without sql:, "
                                             "a spec reads one source: (join or union the "
                                             "others in steps), or add the sql:"))
    tables: dict[str, Any] = {}
    for tname, t in spec.tables.items():
        tables[tname] = where.attempt(("tables", tname), _table, p, tname, t, where)
    if spec.sql is not None and pending is not None and "tables" not in where.bad \
            and None not in tables.values():  # else its inputs' errors are reported
        stream = where.attempt(("sql",), _sql, p, spec.sql, pending, where)
    windowed: Any = None
    has_agg = False
    previous: str | None = None
    for i, step in enumerate(spec.steps):
        path: tuple[Any, ...] = ("steps", i)
        if not isinstance(step, dict) or len(step) != 1:
            where.note(where.error(path, "each step is a mapping with one key, one of "
                                         f"{', '.join(STEP_KINDS)}"))
            stream, previous = None, None
            continue
        kind, arg = next(iter(step.items()))
        if kind == "map_batches":
            where.note(where.error(path, "map_batches runs a Python function, which a YAML "
                                         "spec cannot hold: build this pipeline in Python "
                                         "(Stream.map_batches(fn, schema=...)), or say the "
                                         "step with filter, with_columns and select"))
            stream, previous = None, None
            continue
        if kind not in STEP_KINDS:
            close = difflib.get_close_matches(str(kind), STEP_KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; one of {', '.join(STEP_KINDS)}"
            where.note(where.error(path, f"unknown step {kind!r}{hint}"))
            stream, previous = None, None
            continue
        path = (*path, kind)
        order = _order(previous, kind)
        if order is not None:
            where.note(where.error(path, order))
        previous = kind
        if kind == "over" and isinstance(arg, dict) and "agg" in arg:
            previous = "agg"  # an over step with its aggregations
        has_agg = has_agg or previous == "agg"
        apply = where.attempt(path, _step, kind, arg, path, where, tables, p)
        if apply is None or order is not None:
            stream = stream if kind == "filter" and order is None else None
            continue
        if stream is not None:
            done = where.attempt(path, apply, stream)
            if done is not None or kind != "filter":
                stream = done
            if previous == "agg":
                windowed = done
    if previous in _NEXT:
        nxt = " or ".join(_NEXT[previous])
        where.note(where.error(("steps", len(spec.steps) - 1, previous),
                               f"{previous} needs {'an' if nxt[0] in 'ao' else 'a'} {nxt} "
                               "step after it" + (" (or agg: inside the over step)"
                                                  if previous == "over" else "")))
        stream = None
    if spec.sink is None:
        if "sink" not in where.bad:
            where.note(where.error((), "a spec needs a sink: e.g. 'sink: {type: console}'"))
    else:
        sinks = spec.sink if isinstance(spec.sink, list) else [spec.sink]
        for j, s in enumerate(sinks):
            spath: tuple[Any, ...] = ("sink", j) if isinstance(spec.sink, list) else ("sink",)
            made = where.attempt(spath, _sink, s, spath, where, where.base)
            if made is not None and stream is not None:
                if s.key is not None and s.key not in stream.schema.names:
                    where.note(where.error((*spath, "key"), f"no column {s.key!r} in the "
                                           f"stream; its columns are: "
                                           f"{', '.join(stream.schema.names)}"))
                where.attempt(spath, stream.sink, made)
    if spec.late is not None:
        late = spec.late
        if not has_agg:
            where.note(where.error(("late",), "late: needs a window step or an over step (late "
                                              "events are those too late for every window, or "
                                              "older than the watermark for an over step)"))
        else:
            made = where.attempt(("late",), _sink, late, ("late",), where, where.base)
            if made is not None and windowed is not None:
                where.attempt(("late",), lambda: windowed.late.sink(made))
    return p


_BYTE_SIZE = TypeAdapter(ByteSize)


def _bytes(value: int | str, path: tuple[Any, ...], where: _Where) -> int:
    """A number of bytes from an integer or a size text ("512MiB", "2GB", "1.5 GiB")."""
    try:
        size = int(_BYTE_SIZE.validate_python(value))
    except ValidationError:
        raise where.error(path, f"expected a number of bytes or a size such as 512MiB, 2GB "
                                f"or 1.5 GiB (got {value!r})") from None
    if size < 1:
        raise where.error(path, f"must be at least 1 byte (got {value!r})")
    return size


def _order(previous: str | None, kind: str) -> str | None:
    """What is wrong with ``kind`` coming right after ``previous`` (None: nothing)."""
    if previous in _NEXT and kind not in _NEXT[previous]:
        steps = "over, agg (or over with agg: inside)" if previous == "over" else "window, agg"
        if previous == "key_by":
            steps = "window or over, then agg; or agg right after key_by (no window)"
        return (f"{kind} cannot come right after {previous}: the steps go key_by (optional), "
                f"{steps}")
    if kind == "agg" and previous not in ("window", "over", "key_by"):
        return "agg needs a key_by, window or over step before it"
    return None


def _table(p: Any, name: str, t: SourceSpec, where: _Where) -> Any:
    path: tuple[Any, ...] = ("tables", name)
    if t.key is None:
        raise where.error((*path, "key"), "is required: the column(s) a table is keyed by")
    parts = _gather([
        lambda: _source(t, path, where, where.base),
        lambda: None if t.changelog is None else _source(t.changelog, (*path, "changelog"),
                                                         where, where.base)])
    return p.table(parts[0], key=t.key, name=name, changelog=parts[1],
                   delete_column=t.delete_column)


def _text(parse: Any, text: Any, path: tuple[Any, ...], where: _Where) -> Any:
    """Parse an expression of the spec, its errors pointing at its own line."""
    label = _dotted(path)
    try:
        return parse(text, label)
    except PlanError as err:
        msg = str(err).removeprefix(f"{label}: ")
        raise where.error(path, msg) from None


class WindowJoinSpec(_Model):
    """``window_join:``: the other stream as a source spec, the key, the window."""

    other: SourceSpec
    on: str | list[str] | list[list[str]]
    window: WindowSpec


class IntervalJoinSpec(_Model):
    """``interval_join:``: the other stream as a source spec, the key, the bounds."""

    other: SourceSpec
    on: str | list[str] | list[list[str]]
    lower: Duration
    upper: Duration


class RegularJoinSpec(_Model):
    """``join:``: the other stream as a source spec, the key, ``how`` and the state's
    ``retention`` (``Stream.join``; none: rows are kept forever)."""

    other: SourceSpec
    on: str | list[str] | list[list[str]]
    how: Literal["inner", "left", "right", "full"] = "inner"
    retention: Duration | None = None
    name: str | None = None


class UnionSpec(_Model):
    """``union:``: the other stream(s), each a source spec with the same columns."""

    other: SourceSpec | list[SourceSpec]


class TopKSpec(_Model):
    """``top_k:``: the ``n`` rows with the largest (``descending: false``: smallest)
    ``by`` in each window of the window before it, per ``per`` columns; ``by`` may list
    several columns (then ``descending`` one flag per column: ``by: [price, ts]``,
    ``descending: [true, false]``)."""

    n: int
    by: str | list[str]
    per: str | list[str] = []
    descending: bool | list[bool] = True
    ties: Literal["first", "last"] = "first"


class JoinTableSpec(_Model):
    """``join_table:``."""

    table: str
    on: str | list[str] | list[list[str]]
    how: Literal["inner", "left"] = "inner"


def _on(on: Any) -> Any:
    """``on:`` of a spec: a name, ``[left, right]``, or a list of ``[left, right]`` pairs."""
    if isinstance(on, str):
        return on
    if len(on) == 2 and all(isinstance(x, str) for x in on):
        return (on[0], on[1])
    return [tuple(x) if isinstance(x, list) else x for x in on]


def _window(w: WindowSpec, path: tuple[Any, ...], where: _Where) -> Any:
    """The window assigner of a ``window:`` mapping."""
    import gpustream as gs

    given = [k for k in ("tumbling", "sliding", "session") if getattr(w, k) is not None]
    if len(given) != 1:
        raise where.error(path, "give exactly one of tumbling, sliding (with slide) or session")
    if w.time == "processing" and w.session is not None:
        raise where.error((*path, "time"), "processing-time windows are tumbling or sliding; "
                                           "use time: event for a session")
    if w.tumbling is not None:
        window: Any = gs.Tumbling(w.tumbling, offset=w.offset)
    elif w.sliding is not None:
        if w.slide is None:
            raise where.error((*path, "slide"), "is required with sliding")
        window = gs.Sliding(w.sliding, w.slide, offset=w.offset)
    else:
        return gs.Session(w.session)  # type: ignore[arg-type]
    return gs.ProcessingTime(window) if w.time == "processing" else window


def _names(arg: Any, path: tuple[Any, ...], where: _Where) -> list[str]:
    cols = [arg] if isinstance(arg, str) else arg
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        raise where.error(path, "expected a column name or a list of them")
    return cols


def _mapping(arg: Any, parse: Any, path: tuple[Any, ...], where: _Where,
             expected: str) -> dict[str, Any]:
    """Each value of a ``name: expression`` mapping parsed, every bad one reported."""
    if not isinstance(arg, dict) or not arg:
        raise where.error(path, expected)
    names = list(arg)
    parsed = _gather([partial(_text, parse, arg[k], (*path, k), where) for k in names])
    return dict(zip(names, parsed, strict=True))


def _step(kind: str, arg: Any, path: tuple[Any, ...], where: _Where,
          tables: dict[str, Any], p: Any) -> Callable[[Any], Any]:
    """Check a step by itself (syntax, names, windows, the other input of a join) and
    return what applies it to the stream before it (which checks columns and types)."""
    if isinstance(arg, dict):  # YAML 1.1 reads a bare `on:` key as true
        arg = {("on" if k is True else k): v for k, v in arg.items()}
    if kind == "interval_join":
        ij = _validate(IntervalJoinSpec, arg, path, where)
        other = _stream_of(p, ij.other, (*path, "other"), where)
        return lambda s: s.interval_join(other, on=_on(ij.on), lower=ij.lower, upper=ij.upper)
    if kind == "join":
        rj = _validate(RegularJoinSpec, arg, path, where)
        other_j = _stream_of(p, rj.other, (*path, "other"), where)
        return lambda s: s.join(other_j, on=_on(rj.on), how=rj.how, retention=rj.retention,
                                name=rj.name)
    if kind == "window_join":
        wj = _validate(WindowJoinSpec, arg, path, where)
        parts = _gather([lambda: _stream_of(p, wj.other, (*path, "other"), where),
                         lambda: _window(wj.window, (*path, "window"), where)])
        return lambda s: s.window_join(parts[0], on=_on(wj.on), window=parts[1])
    if kind == "union":
        u = _validate(UnionSpec, arg, path, where)
        specs = u.other if isinstance(u.other, list) else [u.other]
        opath: tuple[Any, ...] = (*path, "other")
        others = _gather([partial(_stream_of, p, o, (*opath, i) if isinstance(u.other, list)
                                  else opath, where) for i, o in enumerate(specs)])
        return lambda s: s.union(*others)
    if kind == "top_k":
        t = _validate(TopKSpec, arg, path, where)
        return lambda s: s.top_k(t.n, by=t.by, per=t.per, descending=t.descending,
                                 ties=t.ties)
    if kind == "join_table":
        j = _validate(JoinTableSpec, arg, path, where)
        if "tables" in where.bad:
            raise _Skip
        if j.table not in tables:
            raise where.error((*path, "table"), f"no table {j.table!r} under tables:; known: "
                                                f"{', '.join(tables) or '(none)'}")
        table = tables[j.table]
        if table is None:  # the table's own errors are reported
            raise _Skip
        return lambda s: s.join_table(table, on=_on(j.on), how=j.how)
    if kind == "filter":
        predicate = _text(parse_expr, arg, path, where)
        return lambda s: s.filter(predicate)
    if kind == "with_columns":
        exprs = _mapping(arg, parse_expr, path, where,
                         "expected a mapping of new column -> expression")
        return lambda s: s.with_columns(**exprs)
    if kind == "select":
        cols = _names(arg, path, where)
        return lambda s: s.select(*cols)
    if kind == "key_by":
        if isinstance(arg, dict):  # {columns: [...], retention: 1h}
            k = _validate(KeyBySpec, arg, path, where)
            keys = _names(k.columns, (*path, "columns"), where)
            if k.retention is not None:
                retention = k.retention
                return lambda s: s.key_by(*keys).with_retention(retention)
        else:
            keys = _names(arg, path, where)
        return lambda s: s.key_by(*keys)
    if kind == "window":
        w = _validate(WindowSpec, arg, path, where)
        assigner = _window(w, path, where)
        return lambda s: s.window(assigner, name=w.name, allowed_lateness=w.allowed_lateness)
    if kind == "over":
        o = _validate(OverSpec, arg, path, where)
        if (o.range is None) == (o.rows is None):
            raise where.error(path, "give exactly one of range (event time, e.g. 5m) and rows "
                                    "(a number of preceding rows)")
        if isinstance(o.rows, int) and o.rows < 0:
            raise where.error((*path, "rows"), f"must be >= 0 (got {o.rows})")
        if o.agg is None:
            return lambda s: s.over(range=o.range, rows=o.rows, name=o.name)
        over_aggs = _aggs(o.agg, (*path, "agg"), where)
        return lambda s: s.over(range=o.range, rows=o.rows, name=o.name).agg(**over_aggs)
    assert kind == "agg"
    aggs = _aggs(arg, path, where)
    return lambda s: s.agg(**aggs)


def _aggs(arg: Any, path: tuple[Any, ...], where: _Where) -> dict[str, Any]:
    """The aggregations of an ``agg:`` mapping, parsed."""
    return _mapping(arg, parse_agg, path, where, "expected a mapping of output column -> "
                                                 "aggregation, e.g. {n: count(), total: sum(v)}")


def checkpointing_from_spec(spec: Spec, where: _Where, checkpoint_dir: str | None = None,
                            base: Path | None = None) -> Any:
    """The run's ``gs.Checkpointing`` (None without a checkpoint section or directory).

    ``checkpoint_dir`` (the CLI's ``--checkpoint-dir``) overrides the spec's ``dir``; with
    no section it checkpoints every 100 batches.
    """
    from gpustream.durations import to_millis
    from gpustream.runtime.checkpoint import Checkpointing, is_url

    c = spec.checkpoint
    if c is None and checkpoint_dir is None:
        return None
    base = base or where.base
    folder = checkpoint_dir or (c.dir if c is not None else None)
    if folder is None:
        raise where.error(("checkpoint", "dir"), "is required (or give --checkpoint-dir)")
    every_batches = c.every_batches if c is not None else None
    every = c.every if c is not None else None
    if every_batches is None and every is None:
        every_batches = 100
    try:
        return Checkpointing(folder if os.path.isabs(folder) or checkpoint_dir
                             or is_url(folder) else str(base / folder), every_batches,
                             None if every is None else to_millis(every, what="every") / 1e3)
    except (GpustreamError, ValueError, TypeError) as err:
        raise where.error(("checkpoint",), str(err).removeprefix("checkpoint: ")) from None


@dataclass
class SpecCheck:
    """What checking a spec file found (see :func:`check_spec`).

    ``errors`` and ``warnings`` are ``file:line: field: message`` lines; ``pipeline`` and
    ``checkpoint`` are what the spec builds, ``cluster`` and ``parallelism`` its
    partitioned run (None: in one process) (use them only when there is no error).
    """

    file: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    name: str | None = None
    pipeline: Any = None
    checkpoint: Any = None
    cluster: str | None = None
    parallelism: int | None = None

    def raise_errors(self) -> None:
        """Raise one :class:`SpecError` with every error, if there is any.

        Examples
        --------
        >>> SpecCheck("p.yaml").raise_errors()  # no errors: nothing raised
        >>> SpecCheck("p.yaml", errors=["p.yaml:3: steps[0]: a", "p.yaml:5: sink: b"]).raise_errors()
        Traceback (most recent call last):
        ...
        gpustream.spec.yaml_spec.SpecError: p.yaml:3: steps[0]: a
        p.yaml:5: sink: b
        """
        if self.errors:
            raise SpecError("\n".join(self.errors), self.errors)


def check_spec(path: str | os.PathLike[str], engine: str | None = None, *,
               need_inputs: bool = True, checkpoint_dir: str | None = None) -> SpecCheck:
    """Check a whole spec file, collecting every error instead of stopping at the first.

    ``need_inputs=False`` (``gpustream validate``): a missing input file is an error
    naming its ``path`` field, except for a CSV/JSONL source whose ``schema:`` gives every
    column: then it is a warning and the steps are checked against that schema. Nothing
    runs, no GPU is touched and no file is written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = f.write_text('''
    ... source: {type: jsonl, path: later.jsonl, schema: {ts: int64, k: string, v: float64}}
    ... steps:
    ...   - filter: "vv > 3"
    ...   - key_by: k
    ...   - window: {tumbling: 10}
    ...   - agg: {x: avgg(v)}
    ... sink: {type: console}
    ... ''')
    >>> c = check_spec(f, need_inputs=False)
    >>> print("\\n".join(m.split("p.yaml")[1] for m in c.warnings + c.errors))
    :2: source.path: no file matches '...later.jsonl'; ... (not there yet?); the rest of the spec is checked against the schema it gives
    :4: steps[0].filter: ...unknown column 'vv'; did you mean 'v'?...
    :7: steps[3].agg.x: unknown aggregation 'avgg'; did you mean 'avg'?...
    """
    try:
        spec, where = _read(path)
    except SpecError as err:
        return SpecCheck(os.fspath(path), errors=list(err.messages))
    where.need_inputs = need_inputs
    p = _build(spec, where, engine, None)
    checkpoint = None
    if "checkpoint" not in where.bad:
        checkpoint = where.attempt(("checkpoint",), checkpointing_from_spec, spec, where,
                                   checkpoint_dir)
    return SpecCheck(where.file, list(where.messages), list(where.warnings), spec.name, p,
                     checkpoint, spec.cluster, spec.parallelism)


def pipeline_from_spec(path: str | os.PathLike[str], engine: str | None = None) -> Any:
    """Load, validate and build: the pipeline a spec file describes.

    Every error in the spec is raised at once, in one :class:`SpecError`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = f.write_text('''
    ... name: counts
    ... engine: cpu
    ... source: {type: nexmark, stream: bids, events: 1000, event_time: date_time, watermark: 1s}
    ... steps:
    ...   - filter: "price > 1000"
    ...   - key_by: auction
    ...   - window: {tumbling: 10s}
    ...   - agg: {bids: count(), top: max(price)}
    ... sink: {type: jsonl, path: out.jsonl}
    ... ''')
    >>> p = pipeline_from_spec(f)
    >>> p.run().events_in
    920
    """
    checked = check_spec(path, engine)
    checked.raise_errors()
    return checked.pipeline
