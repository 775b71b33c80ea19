"""The example specs in examples/: each runs on its small input and matches pandas."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gpustream.spec import pipeline_from_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
make_data = importlib.import_module("make_data")  # examples/make_data.py, as users run it


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples and their inputs, copied to a fresh folder."""
    d = tmp_path_factory.mktemp("examples")
    for spec in EXAMPLES.glob("*.yaml"):
        shutil.copy(spec, d)
    make_data.write_all(d / "data")
    return d


def _run(workdir: Path, name: str) -> None:
    p = pipeline_from_spec(workdir / f"{name}.yaml", engine="cpu")
    stats = p.run()
    assert stats.events_in > 0 and stats.bad_records == 0


def _windows(ts: pd.Series, size_ms: int) -> pd.Series:
    ms = ts.astype("int64") if ts.dtype.kind in "iu" else ts.astype("datetime64[ms]").astype("int64")
    return ms // size_ms * size_ms


def _ms(col: pd.Series) -> pd.Series:
    return col.astype("datetime64[ms]").astype("int64")


def test_analytics_views_and_latency_per_page_and_minute(workdir: Path) -> None:
    _run(workdir, "analytics")
    got = pq.read_table(workdir / "out" / "analytics").to_pandas()
    df = make_data.pageviews()
    df["ms"] = pd.to_datetime(df["ts"]).astype("datetime64[ms]").astype("int64")
    # the watermark trails the largest time seen by 5 s; the data is at most 3 s out of
    # order, so no event is late and every view counts
    df["window_start"] = df["ms"] // 60_000 * 60_000
    ref = df.groupby(["window_start", "page"]).agg(
        views=("page", "size"), users=("user", "nunique"), mean_ms=("latency_ms", "mean"),
        std_ms=("latency_ms", "std"), max_ms=("latency_ms", "max")).reset_index()
    ref["p95ish_ms"] = ref["mean_ms"] + 1.645 * ref["std_ms"]
    got["window_start"] = _ms(got["window_start"])
    got = got.sort_values(["window_start", "page"]).reset_index(drop=True)
    ref = ref.sort_values(["window_start", "page"]).reset_index(drop=True)
    assert got["page"].tolist() == ref["page"].tolist()
    assert got["window_start"].tolist() == ref["window_start"].tolist()
    assert got["views"].tolist() == ref["views"].tolist()
    assert got["users"].tolist() == ref["users"].tolist()
    for c in ("mean_ms", "std_ms", "max_ms", "p95ish_ms"):
        np.testing.assert_allclose(got[c].to_numpy(), ref[c].to_numpy(), rtol=1e-9)


def test_iot_rollup_routes_late_readings(workdir: Path) -> None:
    _run(workdir, "iot")
    got = pq.read_table(workdir / "out" / "iot").to_pandas()
    late = [json.loads(x) for x in (workdir / "out" / "iot-late.jsonl").read_text().splitlines()]
    df = make_data.sensors()
    # reference: a reading is late when its window ended at or before the watermark as of
    # its arrival (largest earlier time - 2 s)
    wm = df["ts"].cummax().shift(1, fill_value=-(10**15)) - 2_000  # none before the first
    start = df["ts"] // 10_000 * 10_000
    is_late = (start + 10_000) <= wm
    assert len(late) == int(is_late.sum()) > 0
    late_ms = pd.to_datetime(pd.Series([r["ts"] for r in late])).astype("datetime64[ms]")
    assert sorted(late_ms.astype("int64")) == sorted(df.loc[is_late, "ts"])  # unchanged rows
    assert sorted(r["temp"] for r in late) == sorted(df.loc[is_late, "temp"])
    ok = df[~is_late].assign(window_start=start[~is_late])
    ref = ok.groupby(["window_start", "sensor"]).agg(
        readings=("temp", "size"), lo=("temp", "min"), hi=("temp", "max"),
        avg=("temp", "mean")).reset_index().sort_values(["window_start", "sensor"])
    got["window_start"] = _ms(got["window_start"])
    got = got.sort_values(["window_start", "sensor"])
    assert got[["window_start", "sensor", "readings", "lo", "hi"]].to_numpy().tolist() == \
        ref[["window_start", "sensor", "readings", "lo", "hi"]].to_numpy().tolist()
    np.testing.assert_allclose(got["avg"].to_numpy(), ref["avg"].to_numpy(), rtol=1e-12)


def test_trending_items_over_sliding_windows(workdir: Path) -> None:
    _run(workdir, "recommendations")
    got = pd.read_csv(workdir / "out" / "trending.csv")
    df = make_data.purchases()
    ms = _ms(df["ts"])
    rows = []
    for k in range(3):  # each purchase is in 3 windows of 60 s every 20 s
        start = ms // 20_000 * 20_000 - k * 20_000
        rows.append(df.assign(window_start=start))
    ref = pd.concat(rows).groupby(["window_start", "category", "item"]).size()
    ref = ref[ref >= 15].reset_index(name="sold")
    got["window_start"] = pd.to_datetime(got["window_start"]).astype("datetime64[ms]").astype("int64")
    key = ["window_start", "category", "item"]
    got = got.sort_values(key).reset_index(drop=True)
    ref = ref.sort_values(key).reset_index(drop=True)
    assert len(ref) > 10
    assert got[[*key, "sold"]].to_numpy().tolist() == ref[[*key, "sold"]].to_numpy().tolist()


def test_fraud_velocity_alerts_enriched_from_the_card_table(workdir: Path) -> None:
    _run(workdir, "fraud")
    got = pd.DataFrame([json.loads(x) for x in
                        (workdir / "out" / "alerts.jsonl").read_text().splitlines()])
    tx, cards = make_data.transactions()
    rows = []
    for k in range(5):  # each transaction is in 5 windows of 5 min every minute
        rows.append(tx.assign(window_start=tx.ts // 60_000 * 60_000 - k * 60_000))
    ref = pd.concat(rows).groupby(["window_start", "card"]).agg(
        txns=("amount", "size"), total=("amount", "sum"), largest=("amount", "max")).reset_index()
    ref = ref[(ref.txns > 6) | (ref.largest > 500)].merge(cards, on="card", how="left")
    got["window_start"] = pd.to_datetime(got["window_start"]).astype("datetime64[ms]").astype("int64")
    key = ["window_start", "card"]
    got = got.sort_values(key).reset_index(drop=True)
    ref = ref.sort_values(key).reset_index(drop=True)
    assert len(ref) > 20 and set(ref.card) >= {0, 1, 2}  # the bursting cards are caught
    assert got[[*key, "txns", "holder", "country"]].to_numpy().tolist() == \
        ref[[*key, "txns", "holder", "country"]].to_numpy().tolist()
    np.testing.assert_allclose(got["total"], ref["total"], rtol=1e-9)
    np.testing.assert_allclose(got["largest"], ref["largest"])


def test_every_example_spec_validates() -> None:
    from gpustream.spec import load_spec

    specs = sorted(EXAMPLES.glob("*.yaml"))
    assert {s.stem for s in specs} >= {"analytics", "iot", "recommendations", "fraud"}
    for s in specs:
        load_spec(s)
