"""Specs cannot hurt the host (issue 16): YAML aliases and deep nesting are refused before
anything is built, expression text and expressions are capped in size and depth, and the
spec fields on_bad_file, max_state_bytes and a file sink's mode are checked and passed on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.expr import MAX_EXPR_DEPTH, check_expr_size
from gpustream.expr.text import MAX_EXPR_CHARS, parse_agg, parse_expr
from gpustream.spec import MAX_SPEC_BYTES, MAX_YAML_DEPTH, check_spec, pipeline_from_spec

#: "billion laughs": 9 ** 8 (43 million) strings once the aliases are expanded
BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, c in zip(["", *"abcdefg"], "abcdefgh", strict=True)
) + "source: {type: nexmark}\nsink: {type: console}\n"


def _spec(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _errors(path: Path) -> list[str]:
    return check_spec(path, "cpu", need_inputs=False).errors


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUSTREAM_ENGINE"}
    return subprocess.run([sys.executable, "-m", "gpustream.cli", "validate", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)


# -- YAML ------------------------------------------------------------------------------

def test_an_alias_bomb_is_refused_before_any_structure_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _spec(tmp_path, BOMB)
    assert len(path.read_bytes()) < 600 and "*g" in BOMB

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the spec reached the YAML composer or constructor")

    monkeypatch.setattr(yaml, "compose", never)
    monkeypatch.setattr(yaml, "safe_load", never)
    errors = _errors(path)
    assert len(errors) == 1
    assert re.fullmatch(r".*p\.yaml:1: a: a YAML anchor \(&a\) is not allowed in a spec "
                        r"\(and 70 more\): an alias repeats .* write each value out in full",
                        errors[0]), errors


def test_an_alias_is_refused_at_its_line_and_field(tmp_path: Path) -> None:
    path = _spec(tmp_path, """\
        source: {type: nexmark}
        steps:
          - filter: "price > 1"
          - with_columns:
              x: &price "price * 2"
              y: *price
        sink: {type: console}
        """)
    errors = _errors(path)
    assert len(errors) == 1
    assert "p.yaml:5: steps[1].with_columns.x: a YAML anchor (&price) is not allowed in a " \
           "spec (and 1 more)" in errors[0]
    # the same spec with the value written out is fine
    fixed = _spec(tmp_path, path.read_text().replace("&price ", "").replace(
        "*price", '"price * 2"'), "fixed.yaml")
    assert _errors(fixed) == []


def test_yaml_nested_too_deep_is_a_spec_error(tmp_path: Path) -> None:
    path = _spec(tmp_path, "source: {type: nexmark}\nsink: " + "[" * 20_000 + "]" * 20_000
                 + "\n")
    errors = _errors(path)
    assert len(errors) == 1
    assert f"p.yaml:2: sink[0][0][0]...: nested more than {MAX_YAML_DEPTH} levels deep" \
        in errors[0]


def test_a_huge_or_binary_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text("source: {type: nexmark}\nsink: {type: console}\n"
                    + "#" * MAX_SPEC_BYTES + "\n")
    assert _errors(huge) == [f"{huge}: the spec is over {MAX_SPEC_BYTES:,} bytes, the limit; "
                             "is it the right file?"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"source: {type: nexmark}\nsink: {type: \"\xff\"}\n")
    assert _errors(binary) == [f"{binary}:2: not UTF-8 text (invalid start byte); save the "
                               "spec as UTF-8"]
    out = _validate(binary)
    assert out.returncode == 2 and "not UTF-8 text" in out.stderr, out.stderr


# -- expressions -----------------------------------------------------------------------

def test_huge_and_deep_expression_text_is_a_spec_error_naming_field_and_limit(
        tmp_path: Path) -> None:
    terms = " + ".join(["p"] * 100_000)
    parens = "(" * 20_000 + "price" + ")" * 20_000 + " > 1"
    minus = "-" * 5_000 + "price > 1"  # short enough, nested too deep to walk
    ors = " or ".join(f"price == {i}" for i in range(300))  # 300 deep as an expression
    path = _spec(tmp_path, f"""\
        source: {{type: nexmark}}
        steps:
          - filter: "{parens}"
          - with_columns: {{x: "{terms}", y: "price * 2"}}
          - filter: "{minus}"
          - filter: "{ors}"
          - key_by: auction
          - window: {{tumbling: 10s}}
          - agg: {{s: "sum({' + '.join(['v'] * 5_000)})"}}
        sink: {{type: console}}
        """)
    errors = [e.split("p.yaml", 1)[1] for e in _errors(path)]
    limit = f"the limit is {MAX_EXPR_CHARS:,}"
    assert errors == [
        f":3: steps[0].filter: the expression is 40,009 characters long; {limit}: compute "
        "parts of it in earlier with_columns steps",
        f":4: steps[1].with_columns.x: the expression is 399,997 characters long; {limit}: "
        "compute parts of it in earlier with_columns steps",
        f":5: steps[2].filter: the expression is nested more than {MAX_EXPR_DEPTH} levels "
        "deep, the limit: compute parts of it in earlier with_columns steps",
        f":6: steps[3].filter: the expression is nested 301 levels deep; the limit is "
        f"{MAX_EXPR_DEPTH} (each operator of a chain such as a + b + c adds a level): "
        "compute parts of it in earlier with_columns steps",
        f":9: steps[6].agg.s: the expression is 20,002 characters long; {limit}: compute "
        "parts of it in earlier with_columns steps",
    ]
    small = _spec(tmp_path, f"""\
        source: {{type: nexmark}}
        steps:
          - filter: "{parens}"
          - filter: "{ors}"
        sink: {{type: console}}
        """, "small.yaml")
    out = _validate(small)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "small.yaml:3: steps[0].filter: the expression is 40,009 characters long" \
        in out.stderr
    assert "small.yaml:4: steps[1].filter: the expression is nested 301 levels deep" \
        in out.stderr
    assert "2 errors" in out.stderr


def test_an_expression_at_the_depth_limit_still_runs() -> None:
    text = "v" + " + 1" * (MAX_EXPR_DEPTH - 1)  # 199 additions on a column: 200 deep
    e = parse_expr(text, "x")
    p = gs.Pipeline("deep", engine="cpu")
    s = p.source(gs.from_arrow({"v": [1, 2]}))
    keep = parse_expr("v" + " + 1" * (MAX_EXPR_DEPTH - 2) + " > 199", "filter")  # 200 deep
    out = s.filter(keep).with_columns(x=e).collect()
    assert out["x"].to_pylist() == [MAX_EXPR_DEPTH + 1]
    deeper = f"nested more than {MAX_EXPR_DEPTH} levels deep"
    with pytest.raises(PlanError, match=rf"^x: the expression is {deeper}"):
        parse_expr(text + " + 1", "x")
    with pytest.raises(PlanError, match=rf"^a: the expression is {deeper}"):
        parse_agg(f"sum({text})", "a")


def test_deep_or_huge_python_expressions_are_plan_errors_not_recursion_errors() -> None:
    deep = gs.col("x")
    for _ in range(20_000):
        deep = deep + 1
    shared = gs.col("x")
    for _ in range(80):  # 2 ** 80 parts, 81 objects
        shared = shared + shared
    p = gs.Pipeline("t", engine="cpu")
    s = p.source(gs.from_arrow({"x": [1, 2]}))
    with pytest.raises(PlanError, match=r"step 1 \(filter\) predicate: the expression is "
                                        r"nested 20,002 levels deep; the limit is 200"):
        s.filter(deep > 0)
    with pytest.raises(PlanError, match=r"column 'y': the expression has "
                                        r"2,417,851,639,229,258,349,412,351 parts"):
        s.with_columns(y=shared)
    check_expr_size(gs.col("x") + 1 > 2)  # a small one passes


# -- new spec fields -------------------------------------------------------------------

def _write_parquet(path: Path) -> None:
    pq.write_table(pa.table({"ts": [1, 2, 3], "v": [1.0, 2.0, 3.0]}), path)


@pytest.mark.parametrize(("value", "want"), [
    ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5 GiB", 3 * 2**29), ("1000", 1000),
    (4096, 4096)])
def test_max_state_bytes_takes_bytes_or_a_size_text(tmp_path: Path, value: Any,
                                                     want: int) -> None:
    shown = f'"{value}"' if isinstance(value, str) else value
    path = _spec(tmp_path, f"""\
        max_state_bytes: {shown}
        source: {{type: nexmark, events: 10}}
        sink: {{type: console}}
        """)
    checked = check_spec(path, "cpu", need_inputs=False)
    assert checked.errors == []
    assert checked.pipeline.max_state_bytes == want


def test_bad_new_fields_are_all_reported_at_once(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "in.parquet")
    path = _spec(tmp_path, """\
        max_state_bytes: lots
        source: {type: parquet, path: in.parquet, on_bad_file: ignore}
        tables:
          t: {type: nexmark, key: auction, on_bad_file: skip}
        sink:
          - {type: jsonl, path: out.jsonl, mode: overwrite}
          - {type: console, mode: overwrite}
        dead_letter: {type: jsonl, path: dead.jsonl, mode: replace}
        """)
    errors = [e.split("p.yaml", 1)[1] for e in _errors(path)]
    assert errors == [
        ":2: source.on_bad_file: 'ignore' is not one of 'fail', 'skip'",
        ":8: dead_letter.mode: 'replace' is not one of 'error', 'overwrite', 'append'",
        ":1: max_state_bytes: expected a number of bytes or a size such as 512MiB, 2GB or "
        "1.5 GiB (got 'lots')",
        ":4: tables.t.on_bad_file: applies only to a source that reads files (type parquet, "
        "arrow_ipc, csv, jsonl with a path), not to nexmark; remove it",
        ":7: sink[1].mode: applies only to file sinks (type parquet, csv, jsonl), not "
        "console; remove it",
    ]
    out = _validate(path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "source.on_bad_file: 'ignore' is not one of 'fail', 'skip'" in out.stderr
    assert "max_state_bytes: expected a number of bytes" in out.stderr
    assert "sink[1].mode: applies only to file sinks" in out.stderr


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be at least 1 byte (got 0)"),
    ("true", "expected an integer or a string (got True)"),
    ("1.5", "expected an integer or a string (got 1.5)"),
    ("-1", "expected a number of bytes or a size such as 512MiB, 2GB or 1.5 GiB (got -1)"),
    ("5 XB", "expected a number of bytes or a size such as 512MiB, 2GB or 1.5 GiB "
             "(got '5 XB')")])
def test_max_state_bytes_errors_name_the_field(tmp_path: Path, value: str,
                                               message: str) -> None:
    path = _spec(tmp_path, f"max_state_bytes: {value}\nsource: {{type: nexmark}}\n"
                           "sink: {type: console}\n")
    assert [e.split("p.yaml", 1)[1] for e in _errors(path)] == [
        f":1: max_state_bytes: {message}"]


def test_on_bad_file_is_refused_for_stdin(tmp_path: Path) -> None:
    path = _spec(tmp_path, """\
        source: {type: jsonl, path: "-", schema: {v: int64}, on_bad_file: skip}
        sink: {type: console}
        """)
    assert [e.split("p.yaml", 1)[1] for e in _errors(path)] == [
        ":1: source.on_bad_file: applies only to a source that reads files (type parquet, "
        "arrow_ipc, csv, jsonl with a path), not to stdin; remove it"]


@pytest.mark.parametrize("kind", ["parquet", "arrow_ipc", "csv", "jsonl"])
def test_on_bad_file_is_passed_to_the_file_source(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  kind: str) -> None:
    reader = {"parquet": "read_parquet", "arrow_ipc": "read_arrow_ipc", "csv": "read_csv",
              "jsonl": "read_jsonl"}[kind]
    seen: list[Any] = []
    real = getattr(gs, reader)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("on_bad_file", "(not given)"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gs, reader, spy)
    table = pa.table({"ts": [1, 2], "v": [1, 2]})
    data = tmp_path / f"in.{kind}"
    if kind == "parquet":
        pq.write_table(table, data)
    elif kind == "arrow_ipc":
        with pa.ipc.new_file(data, table.schema) as w:
            w.write_table(table)
    elif kind == "csv":
        data.write_text("ts,v\n1,1\n2,2\n")
    else:
        data.write_text('{"ts": 1, "v": 1}\n{"ts": 2, "v": 2}\n')
    for value in ("skip", "fail"):
        path = _spec(tmp_path, f"source: {{type: {kind}, path: {data.name}, "
                               f"on_bad_file: {value}}}\nsink: {{type: console}}\n")
        assert _errors(path) == []
    path = _spec(tmp_path, f"source: {{type: {kind}, path: {data.name}}}\n"
                           "sink: {type: console}\n")
    assert _errors(path) == []
    assert seen == ["skip", "fail", "(not given)"]


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_on_bad_file_skip_passes_over_a_bad_file_and_fail_stops(tmp_path: Path,
                                                                 kind: str) -> None:
    data = tmp_path / "in"
    data.mkdir()
    if kind == "parquet":
        _write_parquet(data / "a.parquet")
        (data / "b.parquet").write_bytes(b"PAR1 not a parquet file")
    else:
        (data / "a.jsonl").write_text("".join(f'{{"ts": {t}, "v": {t}.0}}\n'
                                              for t in (1, 2, 3)))
        (data / "b.jsonl").write_text("not json\n" * 2000)  # all bad: over max_bad_fraction
    text = f"""\
        engine: cpu
        source: {{type: {kind}, path: in, on_bad_file: %s}}
        sink: {{type: jsonl, path: out.jsonl, mode: overwrite}}
        dead_letter: {{type: jsonl, path: dead.jsonl, mode: overwrite}}
        """
    skip = _spec(tmp_path, text % "skip", "skip.yaml")
    assert pipeline_from_spec(skip).run().events_in == 3
    fail = _spec(tmp_path, text % "fail", "fail.yaml")
    with pytest.raises(gs.GpustreamError, match=re.escape(f"b.{kind}")):
        pipeline_from_spec(fail).run()


def test_a_file_sinks_mode_is_passed_on(tmp_path: Path) -> None:
    (tmp_path / "out.jsonl").write_text("old\n")
    text = """\
        engine: cpu
        source: {type: nexmark, events: 10, stream: persons}
        steps:
          - select: [id]
        sink: {type: jsonl, path: out.jsonl%s}
        """
    refuse = _spec(tmp_path, text % "", "refuse.yaml")
    with pytest.raises(PlanError, match=r"out\.jsonl exists; give mode='overwrite'"):
        pipeline_from_spec(refuse).run()
    overwrite = _spec(tmp_path, text % ", mode: overwrite", "overwrite.yaml")
    pipeline_from_spec(overwrite).run()
    first = (tmp_path / "out.jsonl").read_text().splitlines()
    assert first and "old" not in first
    append = _spec(tmp_path, text % ", mode: append", "append.yaml")
    pipeline_from_spec(append).run()
    assert (tmp_path / "out.jsonl").read_text().splitlines() == first * 2


def test_mode_on_a_folder_sink_is_a_warning(tmp_path: Path) -> None:
    path = _spec(tmp_path, """\
        source: {type: nexmark, events: 10}
        sink: {type: parquet, path: out, mode: overwrite}
        """)
    checked = check_spec(path, "cpu", need_inputs=False)
    assert checked.errors == []
    assert [w.split("p.yaml", 1)[1] for w in checked.warnings] == [
        ":2: sink.mode: 'out' is a folder of part files, which never replace one another, "
        "so mode is ignored; it applies to one file (a path ending in .parquet)"]
