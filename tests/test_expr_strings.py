"""String functions on dictionary codes, against DuckDB and Polars on the same data."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import gpustream as gs
import gpustream.expr.strings as es
from gpustream.batch import Batch
from gpustream.errors import PlanError
from gpustream.expr import concat_str, evaluate, expr_type
from gpustream.spec import pipeline_from_spec

_PIECES = ["Ab", "ab", "x", "é", "ÄÖ", "12", "7", "-", "-", "/", "_", "zz", "Q9", ""]


def _strings(rng: np.random.Generator, n: int, distinct: int) -> pa.Array:
    """``n`` strings drawn from ``distinct`` random ones (so dictionaries repeat), 15 % null."""
    pool = ["".join(rng.choice(_PIECES, rng.integers(0, 6))) for _ in range(distinct)]
    picked = [pool[i] for i in rng.integers(0, distinct, n)]
    return pa.array(picked, pa.string(), mask=rng.random(n) < 0.15)


def _table(seed: int, n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"s": _strings(rng, n, 300), "t": _strings(rng, n, 40),
                     "v": pa.array(rng.integers(0, 100, n), mask=rng.random(n) < 0.1)})


def _duckdb(table: pa.Table, exprs: dict[str, str]) -> pa.Table:
    """``exprs`` (column -> SQL) computed by DuckDB over ``table``, row order kept."""
    con = duckdb.connect()
    con.register("data", table)
    sql = ", ".join(f"{e} AS {name}" for name, e in exprs.items())
    rows = con.sql(f"SELECT {sql} FROM data").fetchall()
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(exprs)})


def run_spec(tmp_path: Path, table: pa.Table, steps: str) -> pa.Table:
    """``table`` as a parquet source, through the spec's ``steps:`` (YAML text), out."""
    pq.write_table(table, tmp_path / "in.parquet")
    (tmp_path / "p.yaml").write_text(
        "name: exprs\nengine: cpu\nsource: {type: parquet, path: in.parquet}\nsteps:\n"
        + textwrap.indent(textwrap.dedent(steps), "  ") + "sink: {type: parquet, path: out}\n")
    pipeline_from_spec(tmp_path / "p.yaml").run()
    return pq.read_table(tmp_path / "out")


_P = "([a-zA-Z]+)-([0-9]+)"
#: column -> (the Python API, DuckDB's SQL for the same)
CASES: dict[str, tuple[gs.Expr, str]] = {
    "lower": (gs.col("s").str.to_lowercase(), "lower(s)"),
    "upper": (gs.col("s").str.to_uppercase(), "upper(s)"),
    "len": (gs.col("s").str.len_chars(), "length(s)"),
    "has": (gs.col("s").str.contains("b-", literal=True), "contains(s, 'b-')"),
    "rx": (gs.col("s").str.contains("^[A-Z].*[0-9]$"), "regexp_matches(s, '^[A-Z].*[0-9]$')"),
    "starts": (gs.col("s").str.starts_with("Ab"), "starts_with(s, 'Ab')"),
    "ends": (gs.col("s").str.ends_with("x"), "suffix(s, 'x')"),
    "rep_all": (gs.col("s").str.replace_all("-", "+", literal=True), "replace(s, '-', '+')"),
    "rep_rx": (gs.col("s").str.replace("[0-9]+", "#"), "regexp_replace(s, '[0-9]+', '#')"),
    "rep_rx_all": (gs.col("s").str.replace_all("[0-9]+", "#"),
                   "regexp_replace(s, '[0-9]+', '#', 'g')"),
    "ext2": (gs.col("s").str.extract(_P, 2),
             f"CASE WHEN regexp_matches(s, '{_P}') THEN regexp_extract(s, '{_P}', 2) END"),
    "ext0": (gs.col("s").str.extract(_P, 0),
             f"CASE WHEN regexp_matches(s, '{_P}') THEN regexp_extract(s, '{_P}', 0) END"),
    "part2": (gs.col("s").str.split_part("-", 2), "split_part(s, '-', 2)"),
    "part_last": (gs.col("s").str.split_part("-", -1), "split_part(s, '-', -1)"),
    "sub": (gs.col("s").str.slice(1, 3), "substring(s, 2, 3)"),
    "cat": (gs.col("s") + "/" + gs.col("t"), "s || '/' || t"),
    "cat_sep": (concat_str([gs.col("t"), gs.col("s"), "!"], separator="_"),
                "t || '_' || s || '_!'"),
    "cat_lit": ("<" + gs.col("t").str.to_uppercase(), "'<' || upper(t)"),
    "in": (gs.col("t").is_in(["x", "ab", "12"]), "t IN ('x', 'ab', '12')"),
    "in_null": (gs.col("t").is_in(["x", None]), "t IN ('x', NULL)"),
    "not_in": (~gs.col("t").is_in(["x", "ab"]), "t NOT IN ('x', 'ab')"),
    "chained": (gs.col("s").str.to_lowercase().str.contains("ab") & (gs.col("v") > 50),
                "contains(lower(s), 'ab') AND v > 50"),
}


@pytest.mark.parametrize("seed", [1, 2])
def test_string_functions_match_duckdb_through_a_pipeline(backend: gs.Backend, seed: int
                                                          ) -> None:
    table = _table(seed, 600 if backend.name == "cudasim" else 3000)
    p = gs.Pipeline(engine=backend.name)
    got = (p.source(gs.from_arrow(table, batch_rows=256))  # dictionaries grow batch by batch
           .with_columns({k: e for k, (e, _) in CASES.items()}).collect())
    want = _duckdb(table, {k: sql for k, (_, sql) in CASES.items()})
    for name in CASES:
        assert got[name].to_pylist() == want[name].to_pylist(), name
    assert got.schema.field("len").type == pa.int32()
    assert got.schema.field("lower").type == pa.string()


def test_slice_matches_polars_on_negative_offsets() -> None:
    table = _table(3)
    cases = [(1, 3), (0, None), (-3, 2), (-2, None), (4, 0), (-9, 4)]
    b = Batch.from_arrow(table)
    for offset, length in cases:
        out = evaluate(gs.col("s").str.slice(offset, length), b, np)
        assert out.dictionary is not None
        got = out.dictionary.decode(out.values, out.valid).to_pylist()
        want = pl.from_arrow(table["s"]).str.slice(offset, length).to_list()  # type: ignore[union-attr]
        assert got == want, (offset, length)


def test_each_dictionary_entry_is_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = pc.utf8_lower

    def lower(strings: pa.Array) -> pa.Array:
        seen.append(len(strings))
        return real(strings)

    monkeypatch.setattr(es.pc, "utf8_lower", lower)
    table = _table(4, 4000)
    dicts: dict[str, Any] = {}
    expr = gs.col("s").str.to_lowercase()
    outs = []
    for rb in table.to_batches(max_chunksize=500):
        outs.append(evaluate(expr, Batch.from_arrow(rb, dicts), np))
    assert sum(seen) == len(dicts["s"]), "each entry once, not once per row or per batch"
    assert len(seen) <= 8 and sum(seen) < table.num_rows / 5
    # one derived dictionary for the whole stream: equal strings, equal codes
    assert all(o.dictionary is outs[0].dictionary for o in outs)
    got = pa.chunked_array([o.dictionary.decode(o.values, o.valid) for o in outs])  # type: ignore[union-attr]
    assert got.to_pylist() == pc.utf8_lower(table["s"]).to_pylist()


def test_concatenation_of_two_columns_works_on_distinct_pairs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    joined: list[int] = []
    real = pc.binary_join_element_wise

    def join(*args: Any, **kwargs: Any) -> Any:
        joined.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(es.pc, "binary_join_element_wise", join)
    rng = np.random.default_rng(5)
    table = pa.table({"a": _strings(rng, 5000, 7), "b": _strings(rng, 5000, 5)})
    out = evaluate(gs.col("a") + gs.col("b"), Batch.from_arrow(table), np)
    assert out.dictionary is not None
    pairs = {(a, b) for a, b in zip(table["a"].to_pylist(), table["b"].to_pylist(), strict=True)
             if a is not None and b is not None}
    assert sum(joined) == len(pairs) <= 35
    want = pc.binary_join_element_wise(table["a"], table["b"], "").to_pylist()
    assert out.dictionary.decode(out.values, out.valid).to_pylist() == want


@pytest.mark.parametrize(("expr", "message"), [
    (gs.col("price").str.to_lowercase(),
     r"step 2 \(with_columns\): str.to_lowercase\(\) needs a string column, but column 'price' "
     r"\(double\) is not a string"),
    (gs.col("s").str.contains("(unclosed"), r"the pattern '\(unclosed' is not a valid regular"),
    (concat_str([gs.col("s"), gs.col("price")]), r"concat_str\(\) joins strings, but column "
                                                 r"'price' \(double\) is not a string"),
    (gs.col("s") + 1, r"'\+' needs numbers, but column 's' \(string\) is not a number"),
    (gs.col("price").is_in(["a"]), r"is_in\(\) compares column 'price' \(double\) with 'a'"),
    (gs.col("s").is_in([1]), r"is_in\(\) compares column 's' \(string\) with 1"),
])
def test_plan_time_errors_name_the_step_the_column_and_the_fix(expr: gs.Expr, message: str
                                                               ) -> None:
    schema = pa.schema({"s": pa.string(), "price": pa.float64()})
    with pytest.raises(PlanError, match=message):
        expr_type(expr, schema, "step 2 (with_columns)")


def test_builders_refuse_wrong_arguments() -> None:
    with pytest.raises(PlanError, match="has 1 capture group"):
        gs.col("s").str.extract("(a)", 2)
    with pytest.raises(PlanError, match="counts from 1"):
        gs.col("s").str.split_part("-", 0)
    with pytest.raises(PlanError, match="mixes strings and numbers"):
        gs.col("s").is_in(["a", 1])
    with pytest.raises(PlanError, match="must be a str"):
        gs.col("s").str.starts_with(3)  # type: ignore[arg-type]


def test_a_pipeline_refuses_a_string_function_of_a_number_before_running() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow({"price": [1.5]}))
    with pytest.raises(PlanError, match=r"column 'x'.*str.to_uppercase\(\) needs a string"):
        s.with_columns(x=gs.col("price").str.to_uppercase()).collect()


def test_string_results_key_a_window() -> None:
    table = pa.table({"ts": list(range(0, 4000, 100)),
                      "s": ["Ab-1", "ab-2", "AB-3", "x-1"] * 10})
    p = gs.Pipeline(engine="cpu")
    got = (p.source(gs.from_arrow(table, batch_rows=7), event_time="ts")
           .with_columns(k=gs.col("s").str.split_part("-", 1).str.to_lowercase())
           .key_by("k").window(gs.Tumbling("10s"), name="w").agg(n=gs.count())
           .collect().sort_by("k"))
    assert got["k"].to_pylist() == ["ab", "x"] and got["n"].to_pylist() == [30, 10]


def test_spec_text_string_functions_run(tmp_path: Path) -> None:
    table = _table(6, 500)
    texts = {
        "lo": "lower(s)", "up": "upper(s)", "n": "len(s) + length(t)",
        "has": "contains(s, 'b-')", "rx": "regexp_match(s, '^[A-Z].*[0-9]$')",
        "sw": "starts_with(s, 'Ab') or ends_with(s, 'x')", "rep": "replace(s, '-', '+')",
        "ext": f"regexp_extract(s, '{_P}', 2)", "ext0": f"regexp_extract(s, '{_P}')",
        "part": "split_part(s, '-', 2)", "sub": "substring(s, 2, 3)",
        "cat": "concat(s, '/', t)", "plus": "s + '/' + t", "isin": "t in ('x', 'ab')",
        "notin": "t not in ('x', null)",
    }
    got = run_spec(tmp_path, table, "- with_columns:\n" + "".join(
        f"    {k}: \"{v}\"\n" for k, v in texts.items()))
    want = _duckdb(table, {
        "lo": "lower(s)", "up": "upper(s)", "n": "length(s) + length(t)",
        "has": "contains(s, 'b-')", "rx": "regexp_matches(s, '^[A-Z].*[0-9]$')",
        "sw": "starts_with(s, 'Ab') OR suffix(s, 'x')", "rep": "replace(s, '-', '+')",
        "ext": CASES["ext2"][1], "ext0": CASES["ext0"][1], "part": "split_part(s, '-', 2)",
        "sub": "substring(s, 2, 3)", "cat": "s || '/' || t", "plus": "s || '/' || t",
        "isin": "t IN ('x', 'ab')", "notin": "t NOT IN ('x', NULL)",
    })
    for name in texts:
        assert got[name].to_pylist() == want[name].to_pylist(), name
