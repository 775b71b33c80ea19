"""Date/time parts, truncate and strftime, against DuckDB on the same instants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import gpustream as gs
from gpustream.errors import PlanError
from gpustream.expr import expr_type
from tests.test_expr_strings import _duckdb, run_spec

_MS_1900, _MS_2100 = -2_208_988_800_000, 4_102_444_800_000
#: instants where calendars go wrong: epoch, its last millisecond before, leap days
#: (2000 is a leap year, 1900 and 2100 are not), year ends
_EDGES = [0, -1, 951_782_400_000, 951_868_799_999, -2_203_891_200_000, 4_107_542_399_999,
          946_684_799_999, 946_684_800_000]


def _table(seed: int, n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(seed)
    ms = np.concatenate([_EDGES, rng.integers(_MS_1900, _MS_2100, n - len(_EDGES))])
    nulls = rng.random(n) < 0.1
    return pa.table({
        "ts": pa.array(ms, pa.timestamp("ms"), mask=nulls),
        "us": pa.array(ms * 1000 + rng.integers(0, 1000, n), pa.timestamp("us"), mask=nulls),
        "sec": pa.array(ms // 1000, pa.timestamp("s")),
        "epoch": pa.array(ms, pa.int64(), mask=nulls),  # an int column: epoch milliseconds
    })


_PARTS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute",
          "second": "second", "millisecond": "millisecond", "weekday": "isodow"}


def _cases() -> dict[str, tuple[gs.Expr, str]]:
    out: dict[str, tuple[gs.Expr, str]] = {}
    for column, sql in (("ts", "ts"), ("us", "us"), ("sec", "sec"), ("epoch", "epoch_ms(epoch)")):
        for ours, theirs in _PARTS.items():
            ref = f"{theirs}({sql})" + (" % 1000" if ours == "millisecond" else "")
            out[f"{column}_{ours}"] = (getattr(gs.col(column).dt, ours)(), ref)
    bucket = "time_bucket(INTERVAL {}, {}, TIMESTAMP '1970-01-01')"
    out.update({
        "ts_hour": (gs.col("ts").dt.truncate("1h"), "date_trunc('hour', ts)"),
        "us_15m": (gs.col("us").dt.truncate("15m"), bucket.format("15 minutes", "us")),
        "sec_week": (gs.col("sec").dt.truncate("7d"), bucket.format("7 days", "sec")),
        "epoch_10s": (gs.col("epoch").dt.truncate("10s"),
                      f"epoch_ms({bucket.format('10 seconds', 'epoch_ms(epoch)')})"),
        "ts_fmt": (gs.col("ts").dt.strftime("%Y-%m-%d %H:%M"), "strftime(ts, '%Y-%m-%d %H:%M')"),
        "epoch_fmt": (gs.col("epoch").dt.strftime("%a %j %b"),
                      "strftime(epoch_ms(epoch), '%a %j %b')"),
        "us_fmt": (gs.col("us").dt.strftime("%d/%m/%Y"), "strftime(us, '%d/%m/%Y')"),
    })
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_date_parts_match_duckdb_through_a_pipeline(backend: gs.Backend, seed: int) -> None:
    table = _table(seed, 600 if backend.name == "cudasim" else 3000)
    cases = _cases()
    p = gs.Pipeline(engine=backend.name)
    got = (p.source(gs.from_arrow(table, batch_rows=250))
           .with_columns({k: e for k, (e, _) in cases.items()}).collect())
    want = _duckdb(table, {k: sql for k, (_, sql) in cases.items()})
    for name in cases:
        assert got[name].to_pylist() == want[name].to_pylist(), name
    assert got.schema.field("ts_year").type == pa.int32()
    assert got.schema.field("us_15m").type == pa.timestamp("us")
    assert got.schema.field("epoch_10s").type == pa.int64()
    assert got.schema.field("ts_fmt").type == pa.string()


def test_strftime_formats_distinct_values_into_one_dictionary() -> None:
    hours = np.repeat(np.arange(5) * 3_600_000, 400)  # 2000 rows, 5 distinct instants
    p = gs.Pipeline(engine="cpu")
    out: list[pa.RecordBatch] = []
    (p.source(gs.from_arrow(pa.table({"ts": pa.array(hours, pa.timestamp("ms"))}),
                            batch_rows=300))
     .with_columns(h=gs.col("ts").dt.strftime("%H:%M"))
     .sink(gs.to_callback(out.append)))
    p.run()
    got = pa.Table.from_batches(out)["h"].to_pylist()
    assert got == [f"{h:02d}:00" for h in np.arange(5).repeat(400)]


def test_date_parts_key_a_window() -> None:
    ts = np.arange(0, 3 * 86_400_000, 3_600_000)  # 72 hourly events over three days
    p = gs.Pipeline(engine="cpu")
    got = (p.source(gs.from_arrow(pa.table({"ts": ts}), batch_rows=10), event_time="ts")
           .with_columns(day=gs.col("ts").dt.weekday(), night=gs.col("ts").dt.hour() < 6)
           .key_by("day").window(gs.Tumbling("1d"), name="w")
           .agg(n=gs.count(), nights=gs.col("night").cast("int64").sum()).collect()
           .sort_by("day"))
    assert got["day"].to_pylist() == [4, 5, 6]  # 1970-01-01 was a Thursday
    assert got["n"].to_pylist() == [24, 24, 24] and got["nights"].to_pylist() == [6, 6, 6]


@pytest.mark.parametrize(("expr", "message"), [
    (gs.col("name").dt.year(),
     r"step 1 \(with_columns\): dt.year\(\) needs a timestamp column \(or an integer column of "
     r"epoch milliseconds\), but column 'name' \(string\) is not; cast it"),
    (gs.col("price").dt.hour(), r"dt.hour\(\) needs a timestamp column .* 'price' \(double\)"),
    (gs.col("sec").dt.truncate("1500ms"), r"1500 ms is not a whole number of s"),
])
def test_time_errors_name_the_step_the_column_and_the_fix(expr: gs.Expr, message: str) -> None:
    schema = pa.schema({"name": pa.string(), "price": pa.float64(), "sec": pa.timestamp("s")})
    with pytest.raises(PlanError, match=message):
        expr_type(expr, schema, "step 1 (with_columns)")


def test_time_builders_refuse_wrong_arguments() -> None:
    with pytest.raises(PlanError, match="cannot read '1mo' as a duration"):
        gs.col("ts").dt.truncate("1mo")
    with pytest.raises(PlanError, match="must be positive"):
        gs.col("ts").dt.truncate(0)
    with pytest.raises(PlanError, match="takes a format string"):
        gs.col("ts").dt.strftime("")


def test_spec_text_time_functions_run(tmp_path: Path) -> None:
    table = _table(13, 600)
    got = run_spec(tmp_path, table, """\
        - with_columns:
            y: "year(ts) * 100 + month(ts)"
            d: "day(us)"
            hms: "hour(ts) * 10000 + minute(ts) * 100 + second(ts)"
            ms: "millisecond(us)"
            dow: "day_of_week(epoch)"
            hour: "truncate(ts, '1h')"
            label: "strftime(ts, '%Y-%m-%d')"
        - select: [y, d, hms, ms, dow, hour, label]
        """)
    want = _duckdb(table, {
        "y": "year(ts) * 100 + month(ts)", "d": "day(us)",
        "hms": "hour(ts) * 10000 + minute(ts) * 100 + second(ts)",
        "ms": "millisecond(us) % 1000", "dow": "isodow(epoch_ms(epoch))",
        "hour": "date_trunc('hour', ts)", "label": "strftime(ts, '%Y-%m-%d')"})
    for name in want.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name
