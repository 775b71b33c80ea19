"""Small, seeded inputs for the example specs: ``python examples/make_data.py``.

Writes ``examples/data/``: page views (JSONL), sensor readings (CSV, with late ones),
purchases (Parquet) and card transactions (JSONL) with a card table (Parquet). The
tests call the same functions to check each example against a pandas reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def pageviews(n: int = 5_000, seed: int = 1) -> pd.DataFrame:
    """Page views over 10 minutes: ISO timestamps, a few seconds out of order."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 600_000, n)) - rng.integers(0, 3_000, n)
    pages = np.array(["/", "/search", "/item", "/cart", "/checkout"])
    return pd.DataFrame({
        "ts": pd.to_datetime(ts, unit="ms").strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3],
        "page": pages[rng.choice(5, n, p=[0.35, 0.25, 0.25, 0.1, 0.05])],
        "user": rng.integers(0, 500, n),
        "latency_ms": np.round(rng.lognormal(4.0, 0.6, n), 1),
    })


def sensors(n: int = 4_000, seed: int = 2) -> pd.DataFrame:
    """Readings of 20 sensors over ~3 minutes, epoch ms; 1 % arrive 30 s late."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, 180_000, n))
    late = rng.random(n) < 0.01
    ts = np.where(late, ts - 30_000, ts)
    return pd.DataFrame({"ts": ts, "sensor": [f"s{i:02d}" for i in rng.integers(0, 20, n)],
                         "temp": np.round(20 + 5 * rng.standard_normal(n), 2)})


def purchases(n: int = 6_000, seed: int = 3) -> pd.DataFrame:
    """Purchases over 5 minutes in 4 categories; a few items trend."""
    rng = np.random.default_rng(seed)
    cats = np.array(["books", "games", "music", "toys"])
    item = rng.zipf(1.6, n) % 40
    return pd.DataFrame({
        "ts": pd.to_datetime(T0 + np.sort(rng.integers(0, 300_000, n)), unit="ms"),
        "category": cats[item % 4],
        "item": item.astype(np.int64),
    })


def transactions(n: int = 3_000, seed: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Card transactions over 20 minutes, a few cards in bursts; and the card table."""
    rng = np.random.default_rng(seed)
    card = rng.integers(0, 200, n)
    burst = rng.random(n) < 0.05
    card = np.where(burst, rng.integers(0, 3, n), card)  # cards 0-2 get bursts
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    tx = pd.DataFrame({"ts": T0 + np.sort(rng.integers(0, 1_200_000, n)), "card": card,
                       "amount": amount})
    cards = pd.DataFrame({"card": np.arange(200), "holder": [f"holder {i}" for i in range(200)],
                          "country": np.array(["DE", "FR", "US", "JP"])[np.arange(200) % 4]})
    return tx, cards


def write_all(folder: Path) -> None:
    """Write every example's input into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pageviews.jsonl", "w") as f:
        for row in pageviews().to_dict("records"):
            f.write(json.dumps(row) + "\n")
    sensors().to_csv(folder / "sensors.csv", index=False)
    pq.write_table(pa.Table.from_pandas(purchases(), preserve_index=False).cast(
        pa.schema([("ts", pa.timestamp("ms")), ("category", pa.string()), ("item", pa.int64())])),
        folder / "purchases.parquet")
    tx, cards = transactions()
    with open(folder / "transactions.jsonl", "w") as f:
        for row in tx.to_dict("records"):
            f.write(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pandas(cards, preserve_index=False), folder / "cards.parquet")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data"
    write_all(out)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} into {out}")
