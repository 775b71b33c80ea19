"""Expressions: plan-time typing with clear errors, vectorized SQL-null evaluation."""

from __future__ import annotations

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
    with pytest.raises(TypeError, match="literal"):
        gs.lit([1, 2])  # type: ignore[arg-type]


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
