"""YAML pipeline specs (DESIGN.md section 10): parse, validate, build a ``gs.Pipeline``.

The spec mirrors the Python API one to one. It is read with YAML's safe loader, each
part validated by a pydantic model, and expressions (``"price > 100"``, ``"sum(v)"``)
parsed by :mod:`gpustream.exprtext`, never evaluated. Every error names the file, the
line, the field and a fix, and is raised before anything runs::

    spec.yaml:14: steps[2].agg.x: unknown aggregation 'avgg'; did you mean 'avg'?
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpustream.errors import GpustreamError, PlanError
from gpustream.exprtext import parse_agg, parse_expr

__all__ = ["Spec", "SpecError", "build_pipeline", "load_spec", "pipeline_from_spec"]

Duration = str | int


class SpecError(PlanError):
    """A spec that cannot run, with where (file, line, field) and how to fix it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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
    max_rows: int = 20
    topic: str | None = None
    bootstrap: str | None = None
    format: Literal["json", "arrow"] = "json"
    key: str | None = None
    url: str | None = None
    stream: str | None = None


class WindowSpec(_Model):
    """``window:`` (exactly one of tumbling, sliding + slide, session)."""

    tumbling: Duration | None = None
    sliding: Duration | None = None
    slide: Duration | None = None
    session: Duration | None = None
    offset: Duration = 0
    name: str | None = None
    allowed_lateness: Duration = 0


class CheckpointSpec(_Model):
    """``checkpoint:``."""

    dir: str | None = None
    every_batches: int | None = None
    every: Duration | None = None


class Spec(_Model):
    """A whole spec file."""

    name: str = "pipeline"
    engine: Literal["auto", "cpu", "cuda"] = "auto"
    source: SourceSpec
    tables: dict[str, SourceSpec] = {}
    steps: list[dict[str, Any]] = []
    sink: SinkSpec | list[SinkSpec] | None = None
    late: SinkSpec | None = None
    dead_letter: SinkSpec | None = None
    checkpoint: CheckpointSpec | None = None


STEP_KINDS = ("filter", "with_columns", "select", "key_by", "window", "agg", "join_table",
              "window_join", "interval_join")


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


class _Where:
    def __init__(self, file: str, lines: dict[tuple[Any, ...], int]) -> None:
        self.file, self.lines = file, lines
        self.base = Path(file).resolve().parent

    def line(self, path: tuple[Any, ...]) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: tuple[Any, ...], msg: str) -> SpecError:
        return SpecError(f"{self.file}:{self.line(path)}: {_dotted(path) or '(top)'}: {msg}")


def _pydantic_error(err: ValidationError, base: tuple[Any, ...], where: _Where,
                    model: type[BaseModel]) -> SpecError:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in
                                            ("SinkSpec", "list[SinkSpec]")))
    path = (*base, *loc)
    if e["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(fields)}"
        return where.error(path, f"unknown field{hint}")
    if e["type"] == "literal_error":
        return where.error(path, f"{e['input']!r} is not one of "
                                 f"{e['ctx']['expected'].replace(' or ', ', ')}")
    if e["type"] == "missing":
        return where.error(path, "is required")
    return where.error(path, f"{e['msg'].lower()} (got {e['input']!r})")


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for c in (cand, *getattr(cand, "__args__", ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
    return [f.alias or n for n, f in getattr(current, "model_fields", {}).items()]


def load_spec(path: str | os.PathLike[str]) -> tuple[Spec, _Where]:
    """Read and validate a spec file (structure only; see :func:`build_pipeline`).

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = f.write_text("name: x\\nsource:\\n  type: parquet\\n  pathh: a.parquet\\n")
    >>> load_spec(f)
    Traceback (most recent call last):
    ...
    gpustream.spec.SpecError: ...p.yaml:4: source.pathh: unknown field; did you mean 'path'?
    """
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"{file}: cannot read the spec ({err.strerror})") from None
    try:
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
    if not isinstance(data, dict):
        raise where.error((), "a spec is a mapping with at least 'source' and 'sink'")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise _pydantic_error(err, (), where, Spec) from None
    return spec, where


# -- building ---------------------------------------------------------------------------

def _need(spec: BaseModel, names: list[str], path: tuple[Any, ...], where: _Where,
          kind: str) -> None:
    for n in names:
        if getattr(spec, n) is None:
            raise where.error((*path, n), f"is required for type {kind}")


def _source(s: SourceSpec, path: tuple[Any, ...], where: _Where, base: Path) -> Any:
    import gpustream as gs

    def file(p: str) -> str:
        return p if os.path.isabs(p) or p == "-" else str(base / p)

    kw: dict[str, Any] = {}
    if s.type in ("parquet", "arrow_ipc", "csv", "jsonl"):
        _need(s, ["path"], path, where, s.type)
        assert s.path is not None
        if s.path == "-" and s.type in ("csv", "jsonl"):
            _need(s, ["schema_"], path, where, "stdin")
            return gs.stdin(s.schema_, format=s.type, **_batching(s))
        if s.type in ("parquet", "arrow_ipc"):
            if s.max_rows:
                kw["batch_rows"] = s.max_rows
            if s.poll_interval is not None:
                kw["poll_interval"] = s.poll_interval
            columnar: Any = gs.read_parquet if s.type == "parquet" else gs.read_arrow_ipc
            return columnar(file(s.path), follow=s.follow, **kw)
        if s.poll_interval is not None:
            kw["poll_interval"] = s.poll_interval
        if s.type == "csv":
            kw.update(has_header=s.has_header, delimiter=s.delimiter)
        text: Any = gs.read_csv if s.type == "csv" else gs.read_jsonl
        return text(file(s.path), schema=s.schema_, schema_overrides=s.schema_overrides,
                      follow=s.follow, max_bad_fraction=s.max_bad_fraction, **_batching(s), **kw)
    if s.type == "nexmark":
        stream = s.stream or "bids"
        if stream not in ("persons", "auctions", "bids"):
            raise where.error((*path, "stream"), f"{stream!r} is not one of persons, auctions, "
                                                 "bids")
        return getattr(gs.nexmark(events=s.events, seed=s.seed, rate=s.rate), stream)
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


def _batching(s: SourceSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if s.max_rows is not None:
        kw["max_rows"] = s.max_rows
    if s.max_delay is not None:
        kw["max_delay"] = s.max_delay
    return kw


def _sink(s: SinkSpec, path: tuple[Any, ...], where: _Where, base: Path) -> Any:
    import gpustream as gs

    if s.type == "console":
        return gs.to_console(max_rows=s.max_rows)
    if s.type in ("parquet", "csv", "jsonl"):
        _need(s, ["path"], path, where, s.type)
        assert s.path is not None
        target = s.path if os.path.isabs(s.path) else str(base / s.path)
        return getattr(gs, f"to_{s.type}")(target, rows_per_file=s.rows_per_file)
    if s.type == "kafka":
        _need(s, ["topic", "bootstrap"], path, where, "kafka")
        return gs.to_kafka(s.topic, s.bootstrap, format=s.format,  # type: ignore[arg-type]
                           key=s.key)
    _need(s, ["url", "stream"], path, where, "redis_stream")
    return gs.to_redis_stream(s.url, s.stream)  # type: ignore[arg-type]


def build_pipeline(spec: Spec, where: _Where, engine: str | None = None,
                   base: Path | None = None) -> Any:
    """The ``gs.Pipeline`` a spec describes, checked step by step (nothing runs).

    ``engine`` overrides the spec's; relative paths are relative to ``base`` (the
    spec's folder).
    """
    import gpustream as gs

    base = base or Path(where.file).resolve().parent
    dead: Any = None
    if spec.dead_letter is not None:
        dead = _sink(spec.dead_letter, ("dead_letter",), where, base)
    try:
        p = gs.Pipeline(spec.name, engine=engine or spec.engine, dead_letter=dead)
        src = spec.source
        watermark = gs.Watermark.bounded(src.watermark) if src.watermark is not None else None
        stream: Any = p.source(_source(src, ("source",), where, base), event_time=src.event_time,
                               watermark=watermark, name=src.name)
    except SpecError:
        raise
    except (GpustreamError, ValueError, TypeError) as err:
        raise where.error(("source",), str(err)) from None
    tables: dict[str, Any] = {}
    for tname, t in spec.tables.items():
        tpath: tuple[Any, ...] = ("tables", tname)
        if t.key is None:
            raise where.error((*tpath, "key"), "is required: the column(s) a table is keyed by")
        try:
            log = None if t.changelog is None else _source(t.changelog, (*tpath, "changelog"),
                                                           where, base)
            tables[tname] = p.table(_source(t, tpath, where, base), key=t.key, name=tname,
                                    changelog=log, delete_column=t.delete_column)
        except SpecError:
            raise
        except (GpustreamError, ValueError, TypeError) as err:
            raise where.error(tpath, str(err)) from None
    windowed: Any = None
    for i, step in enumerate(spec.steps):
        path: tuple[Any, ...] = ("steps", i)
        if not isinstance(step, dict) or len(step) != 1:
            raise where.error(path, "each step is a mapping with one key, one of "
                                    f"{', '.join(STEP_KINDS)}")
        kind, arg = next(iter(step.items()))
        path = (*path, kind)
        if kind not in STEP_KINDS:
            close = difflib.get_close_matches(kind, STEP_KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; one of {', '.join(STEP_KINDS)}"
            raise where.error(path[:-1], f"unknown step {kind!r}{hint}")
        try:
            stream, windowed = _step(stream, windowed, kind, arg, path, where, tables)
        except SpecError:
            raise
        except (GpustreamError, ValueError, TypeError) as err:
            raise where.error(path, str(err).removeprefix(f"{_dotted(path)}: ")) from None
    if spec.sink is None:
        raise where.error((), "a spec needs a sink: e.g. 'sink: {type: console}'")
    sinks = spec.sink if isinstance(spec.sink, list) else [spec.sink]
    for j, s in enumerate(sinks):
        spath: tuple[Any, ...] = ("sink", j) if isinstance(spec.sink, list) else ("sink",)
        stream.sink(_sink(s, spath, where, base))
    if spec.late is not None:
        if windowed is None:
            raise where.error(("late",), "late: needs a window step (late events are those "
                                         "too late for every window)")
        windowed.late.sink(_sink(spec.late, ("late",), where, base))
    return p


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


def _step(stream: Any, windowed: Any, kind: str, arg: Any, path: tuple[Any, ...],
          where: _Where, tables: dict[str, Any] | None = None) -> tuple[Any, Any]:
    import gpustream as gs

    if isinstance(arg, dict):  # YAML 1.1 reads a bare `on:` key as true
        arg = {("on" if k is True else k): v for k, v in arg.items()}
    if kind in ("window_join", "interval_join"):
        model: Any = WindowJoinSpec if kind == "window_join" else IntervalJoinSpec
        try:
            j2 = model.model_validate(arg)
        except ValidationError as err:
            raise _pydantic_error(err, path, where, model) from None
        o = j2.other
        wm = gs.Watermark.bounded(o.watermark) if o.watermark is not None else None
        other = stream.pipeline.source(_source(o, (*path, "other"), where, where.base),
                                       event_time=o.event_time, watermark=wm, name=o.name)
        if kind == "interval_join":
            return stream.interval_join(other, on=_on(j2.on), lower=j2.lower,
                                        upper=j2.upper), windowed
        w = j2.window
        given = [k for k in ("tumbling", "sliding", "session") if getattr(w, k) is not None]
        if len(given) != 1:
            raise where.error((*path, "window"), "give exactly one of tumbling, sliding (with "
                                                 "slide) or session")
        if w.sliding is not None and w.slide is None:
            raise where.error((*path, "window", "slide"), "is required with sliding")
        joined: Any = (gs.Tumbling(w.tumbling, offset=w.offset) if w.tumbling is not None
                       else gs.Sliding(w.sliding, w.slide or w.sliding, offset=w.offset)
                       if w.sliding is not None else gs.Session(w.session))
        return stream.window_join(other, on=_on(j2.on), window=joined), windowed
    if kind == "join_table":
        try:
            j = JoinTableSpec.model_validate(arg)
        except ValidationError as err:
            raise _pydantic_error(err, path, where, JoinTableSpec) from None
        known = tables or {}
        if j.table not in known:
            raise where.error((*path, "table"), f"no table {j.table!r} under tables:; known: "
                                                f"{', '.join(known) or '(none)'}")
        return stream.join_table(known[j.table], on=_on(j.on), how=j.how), windowed
    if kind == "filter":
        return stream.filter(_text(parse_expr, arg, path, where)), windowed
    if kind == "with_columns":
        if not isinstance(arg, dict) or not arg:
            raise where.error(path, "expected a mapping of new column -> expression")
        return stream.with_columns(**{k: _text(parse_expr, v, (*path, k), where)
                                      for k, v in arg.items()}), windowed
    if kind == "select":
        cols = [arg] if isinstance(arg, str) else arg
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise where.error(path, "expected a column name or a list of them")
        return stream.select(*cols), windowed
    if kind == "key_by":
        cols = [arg] if isinstance(arg, str) else arg
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise where.error(path, "expected a column name or a list of them")
        return stream.key_by(*cols), windowed
    if kind == "window":
        try:
            w = WindowSpec.model_validate(arg)
        except ValidationError as err:
            raise _pydantic_error(err, path, where, WindowSpec) from None
        given = [k for k in ("tumbling", "sliding", "session") if getattr(w, k) is not None]
        if len(given) != 1:
            raise where.error(path, "give exactly one of tumbling, sliding (with slide) or "
                                    "session")
        if w.tumbling is not None:
            assigner: Any = gs.Tumbling(w.tumbling, offset=w.offset)
        elif w.sliding is not None:
            if w.slide is None:
                raise where.error((*path, "slide"), "is required with sliding")
            assigner = gs.Sliding(w.sliding, w.slide, offset=w.offset)
        else:
            assigner = gs.Session(w.session)  # type: ignore[arg-type]
        return stream.window(assigner, name=w.name, allowed_lateness=w.allowed_lateness), windowed
    if kind == "agg":
        if not isinstance(arg, dict) or not arg:
            raise where.error(path, "expected a mapping of output column -> aggregation, "
                                    "e.g. {n: count(), total: sum(v)}")
        if not hasattr(stream, "agg"):
            raise where.error(path, "agg needs a window step before it")
        out = stream.agg(**{k: _text(parse_agg, v, (*path, k), where) for k, v in arg.items()})
        return out, out
    raise where.error(path, f"{kind} is not implemented in this version yet")


def checkpointing_from_spec(spec: Spec, where: _Where, checkpoint_dir: str | None = None,
                            base: Path | None = None) -> Any:
    """The run's ``gs.Checkpointing`` (None without a checkpoint section or directory).

    ``checkpoint_dir`` (the CLI's ``--checkpoint-dir``) overrides the spec's ``dir``; with
    no section it checkpoints every 100 batches.
    """
    from gpustream.checkpoint import Checkpointing
    from gpustream.durations import to_millis

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
        return Checkpointing(folder if os.path.isabs(folder) or checkpoint_dir else
                             str(base / folder), every_batches,
                             None if every is None else to_millis(every, what="every") / 1e3)
    except (GpustreamError, ValueError, TypeError) as err:
        raise where.error(("checkpoint",), str(err).removeprefix("checkpoint: ")) from None


def pipeline_from_spec(path: str | os.PathLike[str], engine: str | None = None) -> Any:
    """Load, validate and build: the pipeline a spec file describes.

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
    spec, where = load_spec(path)
    return build_pipeline(spec, where, engine)
