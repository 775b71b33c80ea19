"""The job ``make run`` starts: a pipeline over generated events.

Until the windowed engine and the Nexmark generator land, it filters and enriches a
seeded stream of synthetic bids and prints the top rows and the run statistics.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import gpustream as gs
from gpustream.runtime import RunStats

__all__ = ["demo_pipeline", "synthetic_bids"]


def synthetic_bids(n: int, seed: int = 7) -> pa.Table:
    """``n`` synthetic bids (auction, bidder, price in cents, channel, ts in ms).

    Examples
    --------
    >>> t = synthetic_bids(5)
    >>> t.num_rows, t.column_names
    (5, ['auction', 'bidder', 'price', 'channel', 'ts'])
    """
    rng = np.random.default_rng(seed)
    channels = np.array(["apple", "google", "facebook", "baidu"])
    return pa.table({
        "auction": rng.integers(1000, 1100, n),
        "bidder": rng.integers(1, 5000, n),
        "price": np.round(np.exp(rng.uniform(0, np.log(10_000), n)) * 100).astype(np.int64),
        "channel": pa.array(channels[rng.integers(0, len(channels), n)]),
        "ts": pa.array(np.sort(rng.integers(0, 60_000, n)) + 1_700_000_000_000,
                       type=pa.timestamp("ms")),
    })


def demo_pipeline(
    events: int = 1_000_000, engine: str = "auto", batch_rows: int = 65_536,
) -> tuple[gs.Pipeline, gs.AggStream]:
    """Per channel, every 5 s over the last 10 s: bids, volume, top bid, distinct bidders.

    Examples
    --------
    >>> p, hot = demo_pipeline(1000, engine="cpu")
    >>> hot.schema.names
    ['channel', 'window_start', 'window_end', 'bids', 'volume', 'top', 'bidders']
    """
    p = gs.Pipeline("demo-channel-activity", engine=engine)
    bids = p.source(gs.from_arrow(synthetic_bids(events), batch_rows=batch_rows),
                    event_time="ts", watermark=gs.Watermark.bounded("2s"), name="bids")
    hot = (
        bids.filter(gs.col("channel") != "apple")
        .with_columns(usd=gs.col("price").cast("float64") * 0.01 * 1.08)
        .key_by("channel")
        .window(gs.Sliding("10s", "5s"), name="activity")
        .agg(bids=gs.count(), volume=gs.col("usd").sum(), top=gs.col("usd").max(),
             bidders=gs.col("bidder").approx_count_distinct())
    )
    return p, hot


def run_demo(events: int, engine: str, console: Console, rows: int = 12) -> RunStats:
    """Build and run the demo, printing the backend, the last windows and the stats."""
    p, hot = demo_pipeline(events, engine)
    out: list[pa.RecordBatch] = []
    hot.sink(gs.to_callback(out.append))
    console.print(f"[bold]backend[/bold]: {p.backend.describe()}", highlight=False)
    stats = p.run()
    result = pa.Table.from_batches(out) if out else hot.schema.empty_table()
    table = Table("channel", "window from", "bids", "volume (USD)", "top bid (USD)", "bidders",
                  title=f"bids per channel, 10 s windows every 5 s (last {rows})")
    for row in result.slice(max(0, result.num_rows - rows)).to_pylist():
        window = f"{row['window_start']:%H:%M:%S}"
        table.add_row(row["channel"], window, f"{row['bids']:,}", f"{row['volume']:,.2f}",
                      f"{row['top']:,.2f}", f"~{row['bidders']:,}")
    console.print(table)
    console.print(stats.summary(), highlight=False)
    return stats
