"""Expressions: plan-time typing with clear errors, vectorized SQL-null evaluation."""

from __future__ import annotations

import ast
from collections.abc import Callable
from graphlib import TopologicalSorter
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.batch import Batch
from gpustream.errors import PlanError
from gpustream.expr import evaluate, expr_type
from tests.reference import to_pandas

SCHEMA = pa.schema({"a": pa.int32(), "b": pa.float64(), "f": pa.bool_(), "s": pa.string(),
                    "ts": pa.timestamp("ms"), "u8": pa.uint8()})


@pytest.mark.parametrize(("expr", "message"), [
    (gs.col("c") > 1, r"step 3 \(filter\): unknown column 'c'. The columns are: a, b, f, s, ts, u8"),
    (gs.col("aa") > 1, r"unknown column 'aa'; did you mean 'a'\?"),
    (gs.col("s") + 1, r"'\+' needs numbers, but column 's' \(string\) is not a number"),
    (gs.col("f") * 2, r"'\*' needs numbers, but column 'f' \(bool\) is not a number"),
    (gs.col("s") > "x", r"strings support only == and !=, not '>'"),
    (gs.col("s") == 3, r"cannot compare column 's' \(string\) with int literal 3"),
    (gs.col("s") == gs.col("s"), r"comparing two string columns is not supported yet"),
    (gs.col("a") & gs.col("f"), r"'&' combines conditions, but column 'a' \(int32\) is not a bool"),
    (~gs.col("a"), r"'~' needs a bool, but column 'a' \(int32\) is not"),
    (gs.col("u8") + 300, r"Python integer 300 out of bounds for uint8.*cast the column"),
    (gs.col("f") < gs.col("f"), r"cannot compare column 'f' \(bool\) with column 'f' \(bool\)"),
    (gs.col("s").cast("int64"), r"casting column 's' \(string\) to int64 is not supported"),
    (gs.col("a").fill_null(0.5), r"fill_null\(0.5\) does not fit column 'a' \(int32\)"),
])
def test_type_errors_name_the_step_column_and_fix(expr: gs.Expr, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        expr_type(expr, SCHEMA, "step 3 (filter)")


def test_result_types_follow_weak_literals() -> None:
    assert expr_type(gs.col("a") + 1, SCHEMA) == pa.int32()
    assert expr_type(gs.col("a") * 1.5, SCHEMA) == pa.float64()
    assert expr_type(gs.col("a") / gs.col("a"), SCHEMA) == pa.float64()
    assert expr_type(gs.col("a") // 2, SCHEMA) == pa.int32()
    assert expr_type(gs.col("ts") - 1000, SCHEMA) == pa.int64()
    assert expr_type(gs.col("ts") > 5, SCHEMA) == pa.bool_()
    assert expr_type(gs.col("a").cast("timestamp[ms]"), SCHEMA) == pa.timestamp("ms")
    assert expr_type(gs.col("s").is_null(), SCHEMA) == pa.bool_()


def test_expression_has_no_truth_value() -> None:
    with pytest.raises(TypeError, match=r"combine conditions with & \| ~"):
        bool(gs.col("a") > 1)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: gs.lit([1, 2]), r"literal \[1, 2\] of type list is not supported"),  # type: ignore[arg-type]
    (lambda: gs.col(3), r"col\(\) takes a column name \(a non-empty str\), got 3"),  # type: ignore[arg-type]
    (lambda: gs.col(""), r"col\(\) takes a column name"),
    (lambda: gs.col("a").cast("int99"), r"cast\(\): unknown type 'int99'; use e.g. 'int64'"),
    (lambda: gs.col("a").cast(dict), r"cast\(\): unknown type"),
    (lambda: gs.col("a") * [1], r"literal \[1\] of type list"),
    (lambda: gs.col("a").max_by(1),  # type: ignore[arg-type]
     r"max_by\(\) takes a column name or an expression"),
])
def test_builder_errors_are_plan_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        build()


def test_an_aggregation_is_an_expression_refused_outside_an_agg_step() -> None:
    agg = gs.col("a").sum().filter(gs.col("f"))
    assert isinstance(agg, gs.Expr) and isinstance(gs.count(), gs.Expr)
    assert agg.columns() == {"a", "f"}
    with pytest.raises(PlanError, match=r"step 3 \(filter\): col\('a'\).sum\(\) is an "
                                        r"aggregation, which only an agg step computes"):
        expr_type(gs.col("a").sum() > 1, SCHEMA, "step 3 (filter)")
    batch = Batch.from_arrow(pa.record_batch({"a": [1, 2]}))
    with pytest.raises(PlanError, match="cannot be evaluated as a column"):
        evaluate(gs.col("a").sum(), batch, np)

    def source() -> gs.Stream:
        p = gs.Pipeline(engine="cpu")
        return p.source(gs.from_arrow({"ts": [1, 2], "a": [1, 2]}), event_time="ts")

    with pytest.raises(PlanError, match=r"step 1 \(with_columns\) column 'm': col\('a'\).max\(\) "
                                        "is an aggregation"):
        source().with_columns(m=gs.col("a").max()).collect()
    with pytest.raises(PlanError, match=r"step 1 \(filter\) predicate: col\('a'\).sum\(\) is an "
                                        "aggregation"):
        source().filter(gs.col("a").sum() > 1).collect()
    with pytest.raises(PlanError, match=r"agg 'm': col\('a'\).sum\(\) is an aggregation"):
        source().window(gs.Tumbling(10)).agg(m=gs.col("a").sum().max()).collect()


def _random_batch(seed: int, n: int = 2000) -> tuple[pa.RecordBatch, Batch]:
    rng = np.random.default_rng(seed)
    rb = pa.record_batch({
        "x": pa.array(rng.integers(-50, 50, n), mask=rng.random(n) < 0.2),
        "y": pa.array(rng.integers(-3, 4, n).astype(np.int32), mask=rng.random(n) < 0.2),
        "z": pa.array(rng.normal(0, 10, n), mask=rng.random(n) < 0.2),
        "p": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.3),
        "q": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.3),
    })
    return rb, Batch.from_arrow(rb)


def _ours(expr: gs.Expr, b: Batch) -> pd.Series:
    out = evaluate(expr, b, np)
    values = pd.Series(out.values).astype(object)
    if out.valid is not None:
        values[~out.valid] = None
    return values


def _check(ours: pd.Series, ref: pd.Series) -> None:
    ref = ref.astype(object).where(~ref.isna(), None)
    assert ours.isna().tolist() == ref.isna().tolist()
    keep = ~ours.isna().to_numpy(dtype=bool)
    np.testing.assert_allclose(ours[keep].astype(float), ref[keep].astype(float), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arithmetic_and_comparisons_match_pandas(seed: int) -> None:
    rb, b = _random_batch(seed)
    df = to_pandas(pa.Table.from_batches([rb]))
    x, y, z = gs.col("x"), gs.col("y"), gs.col("z")
    zero_y = df.y == 0
    cases = [
        (x + y * 3, df.x + df.y * 3),
        (x - z, df.x - df.z),
        (-x + abs(y), -df.x + df.y.abs()),
        (x / y, (df.x / df.y).mask(zero_y)),                 # division by zero: null
        (x // y, (df.x // df.y).mask(zero_y)),
        (x % y, (df.x % df.y).mask(zero_y)),
        (z * 2.5 - 1, df.z * 2.5 - 1),
        ((x > y).cast("int8"), (df.x > df.y).astype("Int8")),
        ((z <= 0) | (x == 7), (df.z <= 0) | (df.x == 7)),
        (x.fill_null(-1) * 2, df.x.fillna(-1) * 2),
        (z.is_null(), df.z.isna()),
    ]
    for ours, ref in cases:
        _check(_ours(ours, b), ref)


def test_three_valued_logic_matches_pandas() -> None:
    rb, b = _random_batch(7)
    df = to_pandas(pa.Table.from_batches([rb]))
    p, q = gs.col("p"), gs.col("q")
    for ours, ref in [(p & q, df.p & df.q), (p | q, df.p | df.q), (~p, ~df.p),
                      (p ^ q, df.p ^ df.q), ((p & True) | False, (df.p & True) | False)]:
        got = _ours(ours, b)
        want = ref.astype(object).where(~ref.isna(), None)
        assert got.tolist() == want.tolist()


def test_string_equality_uses_dictionary_codes() -> None:
    rb = pa.record_batch({"s": ["a", None, "b", "a", "zz"]})
    b = Batch.from_arrow(rb)
    eq = _ours(gs.col("s") == "a", b).tolist()
    reflected = cast(gs.Expr, "a" != gs.col("s"))  # noqa: SIM300 (the reflected form)
    ne = _ours(reflected, b).tolist()
    missing = _ours(gs.col("s") == "never-seen", b).tolist()
    assert eq == [True, None, False, True, False]
    assert ne == [False, None, True, False, True]
    assert missing == [False, None, False, False, False]


def test_the_expression_modules_import_one_way() -> None:
    """No import cycle among gpustream.expr's modules (``Agg`` is a node of nodes.py, so
    aggregations and expressions do not import each other). The only imports against the
    order are the three builders of nodes.py that import their family when called:
    ``expr.str``, ``expr.dt``, ``expr.is_in``."""
    root = Path(gs.__file__).parent / "expr"
    edges: set[tuple[str, str, bool]] = set()  # (importer, imported, at module level)
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for top in tree.body if isinstance(top, ast.If)
                       and ast.unparse(top.test) == "TYPE_CHECKING" for n in ast.walk(top)}
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            edges.update((path.stem, name.split(".")[2], id(node) in top_level)
                         for name in names if name.startswith("gpustream.expr."))
    lazy = {(a, b) for a, b, top in edges if not top}
    assert lazy == {("nodes", "strings"), ("nodes", "time"), ("nodes", "when")}
    graph: dict[str, set[str]] = {}
    for a, b, top in edges:
        if top:
            graph.setdefault(a, set()).add(b)
    assert "nodes" not in graph  # nodes.py imports no other module of the package
    tuple(TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
