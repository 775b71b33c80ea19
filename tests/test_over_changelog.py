"""OVER windows over a changelog (``over(..., order_by=)``, Nexmark q6): the table the
output changelog describes is, after the input ends, DuckDB's OVER of the table the
input changelog describes; it does not depend on batching (hypothesis), survives a
crash and restore, and runs under the CUDA simulator.

The input: a running aggregation (each user's total spend and last click, updated with
``-U``/``+U`` as clicks come), grouped by the user's group; the OVER window ranks users
of a group by their last click.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpustream as gs
from tests.test_checkpoints import _Crash

FRAMES: dict[str, tuple[dict[str, Any], str]] = {
    "rows": ({"rows": 2}, "ROWS BETWEEN 2 PRECEDING AND CURRENT ROW"),
    "range": ({"range": 5_000}, "RANGE BETWEEN 5000 PRECEDING AND CURRENT ROW"),
    "unbounded": ({"rows": "unbounded"}, "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
}


def _clicks(seed: int = 1, n: int = 800) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.choice(100_000, n, replace=False))  # distinct: no ties in ORDER BY
    user = rng.integers(0, 40, n)
    return pa.table({"user": user, "grp": user % 4, "amount": rng.integers(1, 100, n),
                     "ts": ts})


def _job(source: Any, frame: str, engine: str = "cpu"
         ) -> tuple[gs.Pipeline, list[pa.RecordBatch]]:
    p = gs.Pipeline("over-changelog", engine=engine)
    s = p.source(source, event_time="ts", name="clicks")
    spend = s.key_by("user", "grp").agg(total=gs.col("amount").sum(),
                                        last=gs.col("ts").max())
    kw = FRAMES[frame][0]
    aggs: dict[str, gs.Agg] = {"n": gs.count(), "s": gs.col("total").sum(),
                               "m": gs.col("total").mean()}
    if frame != "unbounded":
        aggs["hi"] = gs.col("total").max()
    out: list[pa.RecordBatch] = []
    (spend.key_by("grp").over(**kw, order_by="last", name="ranked").agg(**aggs)
     .sink(gs.to_callback(out.append)))
    return p, out


def _reference(frame: str, table: pa.Table) -> list[tuple[Any, ...]]:
    sql = FRAMES[frame][1]
    hi = ", MAX(total) OVER w AS hi" if frame != "unbounded" else ""
    con = duckdb.connect()
    con.register("clicks", table)
    rows = con.sql(f"""
        WITH t AS (SELECT user, grp, SUM(amount) AS total, MAX(ts) AS last FROM clicks
                   GROUP BY user, grp)
        SELECT user, grp, total, last, COUNT(*) OVER w AS n, SUM(total) OVER w AS s,
               AVG(total) OVER w AS m{hi}
        FROM t WINDOW w AS (PARTITION BY grp ORDER BY last {sql})""").fetchall()
    return sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows)


def _table(batches: list[pa.RecordBatch]) -> list[tuple[Any, ...]]:
    log = pa.Table.from_batches(batches)
    assert set(log["op"].to_pylist()) <= {"+I", "-D"}
    got = gs.materialize(log)
    return sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r.values())
                  for r in got.to_pylist())


@pytest.mark.parametrize("frame", list(FRAMES))
def test_the_table_s_over_window_as_duckdb_computes_it(frame: str) -> None:
    table = _clicks()
    p, out = _job(gs.from_arrow(table, batch_rows=37), frame)
    p.run()
    assert _table(out) == _reference(frame, table)


@settings(max_examples=6, deadline=None)
@given(batch_rows=st.integers(1, 400))
def test_results_do_not_depend_on_batching(batch_rows: int) -> None:
    table = _clicks(seed=3, n=300)
    p, out = _job(gs.from_arrow(table, batch_rows=batch_rows), "rows")
    p.run()
    assert _table(out) == _reference("rows", table)


def test_a_crash_resumes_with_the_same_table(tmp_path: Path) -> None:
    table = _clicks(seed=5)
    ck = gs.Checkpointing(tmp_path / "ck", every_batches=3)
    first, out1 = _job(_Crash(gs.from_arrow(table, batch_rows=50), 9), "rows")
    with pytest.raises(OSError, match="lost power"):
        first.run(checkpoint=ck)
    second, out2 = _job(gs.from_arrow(table, batch_rows=50), "rows")
    assert second.run(checkpoint=ck).restored_checkpoint is not None
    assert _table(out1 + out2) == _reference("rows", table)


@pytest.mark.cudasim
def test_under_the_simulator() -> None:
    table = _clicks(seed=7, n=200)
    p, out = _job(gs.from_arrow(table, batch_rows=100), "rows", engine="cudasim")
    p.run()
    assert _table(out) == _reference("rows", table)


def test_what_an_over_window_over_a_changelog_needs() -> None:
    p = gs.Pipeline(engine="cpu")
    s = p.source(gs.from_arrow(_clicks()), event_time="ts", name="clicks")
    spend = s.key_by("user").agg(total=gs.col("amount").sum())
    with pytest.raises(gs.PlanError, match="order_by="):
        spend.over(rows=2).agg(n=gs.count())
    with pytest.raises(gs.PlanError, match="unbounded frame of a changelog"):
        spend.over(rows="unbounded", order_by="total").agg(m=gs.col("total").max())
    with pytest.raises(gs.PlanError, match="order_by= is for OVER over a changelog"):
        s.over(rows=2, order_by="amount").agg(n=gs.count())
