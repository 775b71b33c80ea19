"""``when/then/otherwise`` (SQL CASE) and ``is_in`` (SQL IN), against DuckDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.expr import expr_type
from gpustream.expr.text import parse_expr
from tests.test_expr_strings import _duckdb, _strings, run_spec


def _table(seed: int, n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "x": pa.array(rng.integers(-20, 20, n), mask=rng.random(n) < 0.15),
        "y": pa.array(rng.integers(-3, 4, n).astype(np.int32), mask=rng.random(n) < 0.15),
        "z": pa.array(rng.normal(0, 5, n), mask=rng.random(n) < 0.15),
        "f": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.2),
        "s": _strings(rng, n, 30),
        "t": _strings(rng, n, 20),
    })


#: column -> (the Python API, DuckDB's SQL for the same)
CASES: dict[str, tuple[gs.Expr, str]] = {
    "sign": (gs.when(gs.col("x") > 0).then(1).when(gs.col("x") < 0).then(-1).otherwise(0),
             "CASE WHEN x > 0 THEN 1 WHEN x < 0 THEN -1 ELSE 0 END"),
    "no_else": (gs.when(gs.col("f")).then(gs.col("x") * 2),
                "CASE WHEN f THEN x * 2 END"),
    "mixed": (gs.when(gs.col("y") >= 0).then(gs.col("z")).otherwise(gs.col("y")),
              "CASE WHEN y >= 0 THEN z ELSE y END"),
    "div": (gs.when(gs.col("y") != 0).then(gs.col("x") // gs.col("y")).otherwise(gs.col("x")),
            "CASE WHEN y <> 0 THEN CAST(floor(x / y) AS BIGINT) ELSE x END"),  # floored
    "null_then": (gs.when(gs.col("x") > 5).then(None).otherwise(gs.col("x")),
                  "CASE WHEN x > 5 THEN NULL ELSE x END"),
    "bools": (gs.when(gs.col("x").is_null()).then(gs.col("f")).otherwise(gs.col("x") > 0),
              "CASE WHEN x IS NULL THEN f ELSE x > 0 END"),
    "strs": (gs.when(gs.col("x") > 10).then("big").when(gs.col("x") > 0).then(gs.col("s"))
             .when(gs.col("f")).then(gs.col("t")).otherwise(gs.col("s")),
             "CASE WHEN x > 10 THEN 'big' WHEN x > 0 THEN s WHEN f THEN t ELSE s END"),
    "str_no_else": (gs.when(gs.col("f") & (gs.col("x") > 0)).then(gs.col("t")),
                    "CASE WHEN f AND x > 0 THEN t END"),
    "in": (gs.col("x").is_in([1, 2, 3, -7]), "x IN (1, 2, 3, -7)"),
    "in_null": (gs.col("y").is_in([0, None]), "y IN (0, NULL)"),
    "not_in_null": (~gs.col("y").is_in([0, 1, None]), "y NOT IN (0, 1, NULL)"),
    "in_float": (gs.col("x").is_in([1.0, 2.5]), "x IN (1.0, 2.5)"),
    "in_empty": (gs.col("x").is_in([]), "CASE WHEN x IS NOT NULL THEN false END"),
    "in_bool": (gs.col("f").is_in([True]), "f IN (true)"),
    "in_str": (gs.col("s").is_in(["x", "Ab", "zz"]), "s IN ('x', 'Ab', 'zz')"),
}


@pytest.mark.parametrize("seed", [7, 8])
def test_when_and_is_in_match_duckdb_through_a_pipeline(backend: gs.Backend, seed: int) -> None:
    table = _table(seed, 600 if backend.name == "cudasim" else 3000)
    p = gs.Pipeline(engine=backend.name)
    got = (p.source(gs.from_arrow(table, batch_rows=300))
           .with_columns({k: e for k, (e, _) in CASES.items()}).collect())
    want = _duckdb(table, {k: sql for k, (_, sql) in CASES.items()})
    for name in CASES:
        g, w = got[name].to_pylist(), want[name].to_pylist()
        if name == "mixed":
            np.testing.assert_allclose(np.array(g, dtype=float), np.array(w, dtype=float))
        else:
            assert g == w, name


def test_when_result_types_follow_the_branches() -> None:
    schema = pa.schema({"a": pa.int32(), "b": pa.float32(), "f": pa.bool_(), "s": pa.string(),
                        "ts": pa.timestamp("ms")})
    a, f = gs.col("a"), gs.col("f")
    assert expr_type(gs.when(f).then(a).otherwise(0), schema) == pa.int32()  # weak literal
    assert expr_type(gs.when(f).then(a).otherwise(0.5), schema) == pa.float64()
    assert expr_type(gs.when(f).then(a).otherwise(gs.col("b")), schema) == pa.float64()
    assert expr_type(gs.when(f).then(gs.col("s")).otherwise("x"), schema) == pa.string()
    assert expr_type(gs.when(f).then(gs.col("ts")), schema) == pa.timestamp("ms")
    assert expr_type(gs.col("s").is_in(["a"]), schema) == pa.bool_()


@pytest.mark.parametrize(("expr", "message"), [
    (gs.when(gs.col("a")).then(1),
     r"step 4 \(filter\): when\(\) needs a bool condition, but column 'a' \(int32\) is not; "
     r"compare it, e.g. col\('x'\) > 0"),
    (gs.when(gs.col("f")).then(gs.col("s")).otherwise(1),
     r"the branches of when\(\) give different types: column 's' \(string\) and int literal 1"),
    (gs.when(gs.col("f")).then(gs.col("ts")).otherwise(gs.col("a")),
     r"different types: column 'ts' \(timestamp\[ms\]\) and column 'a' \(int32\); cast them"),
    (gs.when(gs.col("f")).then(gs.col("u8")).otherwise(300), r"300 does not fit uint8"),
    (gs.when(gs.col("f")).then(None), r"every branch of .* is null; give one a value"),
    (gs.when(gs.col("f")).then(gs.col("nope")), r"unknown column 'nope'"),
])
def test_when_errors_name_the_step_and_the_fix(expr: gs.Expr, message: str) -> None:
    schema = pa.schema({"a": pa.int32(), "f": pa.bool_(), "s": pa.string(),
                        "ts": pa.timestamp("ms"), "u8": pa.uint8()})
    with pytest.raises(PlanError, match=message):
        expr_type(expr, schema, "step 4 (filter)")


def test_when_builder_misuse_is_refused() -> None:
    done = gs.when(gs.col("f")).then(1).otherwise(2)
    with pytest.raises(PlanError, match=r"\.when\(\) after \.otherwise\(\)"):
        done.when(gs.col("f"))  # type: ignore[attr-defined]
    with pytest.raises(PlanError, match="takes a condition"):
        gs.when("f")  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="takes a list of values"):
        gs.col("s").is_in("abc")


def test_a_when_filter_keeps_rows_whose_case_is_true() -> None:
    table = _table(9, 1000)
    p = gs.Pipeline(engine="cpu")
    cond = gs.when(gs.col("x") > 0).then(gs.col("f")).otherwise(gs.col("y") == 1)
    got = p.source(gs.from_arrow(table, batch_rows=128)).filter(cond).select("x").collect()
    want = _duckdb(table, {"keep": "CASE WHEN x > 0 THEN f ELSE y = 1 END", "x": "x"})
    assert got["x"].to_pylist() == [x for k, x in zip(want["keep"].to_pylist(),
                                                      want["x"].to_pylist(), strict=True) if k]


def test_text_forms_parse_to_the_python_api() -> None:
    assert repr(parse_expr("when(x > 0, 'pos', x < 0, 'neg', 'zero')")) == repr(
        gs.when(gs.col("x") > 0).then("pos").when(gs.col("x") < 0).then("neg")
        .otherwise("zero"))
    assert repr(parse_expr("when(f, x)")) == repr(gs.when(gs.col("f")).then(gs.col("x")))
    assert repr(parse_expr("1 if f else null")) == repr(
        gs.when(gs.col("f")).then(1).otherwise(None))
    assert repr(parse_expr("x not in (1, 2, null)")) == repr(~gs.col("x").is_in([1, 2, None]))
    with pytest.raises(PlanError, match=r"steps\[0\].filter: 'in' takes a list of values"):
        parse_expr("x in y", "steps[0].filter")
    with pytest.raises(PlanError, match=r"when\(\) takes 2 or more argument\(s\)"):
        parse_expr("when(f)")
    with pytest.raises(PlanError, match=r"mixes strings and numbers.* at column 1"):
        parse_expr("x in (1, 'a')")


def test_spec_text_when_and_in_run(tmp_path: Path) -> None:
    table = _table(10, 800)
    got = run_spec(tmp_path, table, """\
        - filter: "y in (0, 1, 2) or x is null"
        - with_columns:
            sign: "when(x > 0, 1, x < 0, -1, 0)"
            label: "'big' if x > 10 else s if x > 0 else null"
            picked: "s not in ('x', 'Ab')"
        - select: [x, y, sign, label, picked]
        """)
    con_rows = _duckdb(table, {
        "keep": "y IN (0, 1, 2) OR x IS NULL", "x": "x", "y": "y",
        "sign": "CASE WHEN x > 0 THEN 1 WHEN x < 0 THEN -1 ELSE 0 END",
        "label": "CASE WHEN x > 10 THEN 'big' WHEN x > 0 THEN s END",
        "picked": "s NOT IN ('x', 'Ab')"})
    keep = con_rows["keep"].to_pylist()
    assert got.column_names == ["x", "y", "sign", "label", "picked"]
    for name in got.column_names:
        want = [v for k, v in zip(keep, con_rows[name].to_pylist(), strict=True) if k]
        assert got[name].to_pylist() == want, name
