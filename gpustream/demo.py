"""The job ``make run`` starts: trending auctions over Nexmark bids.

Per auction, every 2 s over the last 10 s of event time: bids, top price and distinct
bidders; the demo prints the busiest auctions of the last windows and the run's
statistics. (The live view and the fraud check arrive with the CLI issue.)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

import gpustream as gs
from gpustream.runtime import RunStats

__all__ = ["demo_pipeline", "run_demo"]


def demo_pipeline(events: int = 2_000_000, engine: str = "auto",
                  seed: int = 0) -> tuple[gs.Pipeline, gs.AggStream]:
    """Hot auctions: per auction, 10 s windows every 2 s over Nexmark bids.

    Examples
    --------
    >>> p, hot = demo_pipeline(10_000, engine="cpu")
    >>> hot.schema.names
    ['auction', 'window_start', 'window_end', 'bids', 'top_usd', 'bidders']
    """
    p = gs.Pipeline("demo-hot-auctions", engine=engine)
    bids = p.source(gs.nexmark(events=events, seed=seed).bids, event_time="date_time",
                    watermark=gs.Watermark.bounded("2s"), name="bids")
    hot = (
        bids.with_columns(usd=gs.col("price").cast("float64") * 0.01)
        .key_by("auction")
        .window(gs.Sliding("10s", "2s"), name="hot")
        .agg(bids=gs.count(), top_usd=gs.col("usd").max(),
             bidders=gs.col("bidder").count_distinct())
    )
    return p, hot


def run_demo(events: int, engine: str, console: Console, rows: int = 10) -> RunStats:
    """Build and run the demo, printing the backend, the hottest auctions and the stats."""
    p, hot = demo_pipeline(events, engine)
    out: list[pa.RecordBatch] = []
    hot.sink(gs.to_callback(out.append))
    console.print(f"[bold]backend[/bold]: {p.backend.describe()}", highlight=False)
    stats = p.run()
    result = pa.Table.from_batches(out) if out else hot.schema.empty_table()
    if result.num_rows:
        last_end = pc.max(result["window_end"])
        recent = result.filter(pc.equal(result["window_end"], last_end))
        top = recent.sort_by([("bids", "descending"), ("auction", "ascending")]).slice(0, rows)
    else:
        top = result
    table = Table("auction", "window from", "bids", "top bid (USD)", "bidders",
                  title=f"hottest auctions of the last 10 s window (top {rows})")
    for row in top.to_pylist():
        table.add_row(str(row["auction"]), f"{row['window_start']:%H:%M:%S}",
                      f"{row['bids']:,}", f"{row['top_usd']:,.2f}", f"{row['bidders']:,}")
    console.print(table)
    console.print(stats.summary(), highlight=False)
    return stats
