"""The job ``make run`` starts: one Nexmark bid stream, two live queries.

- **hot auctions**: per auction, every 2 s over the last 10 s of event time: bids, top
  price and distinct bidders;
- **velocity check** (fraud-style): bidders placing more than ``limit`` bids within any
  10 s (sliding every 1 s), as a card-velocity rule would flag a card.

The live view shows the run's metrics while it goes; at the end the demo prints the
busiest auctions of the last window, the flagged bidders, and the run's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

import gpustream as gs
from gpustream.live import LiveView
from gpustream.metrics import Metrics
from gpustream.runtime import RunStats

__all__ = ["Demo", "demo_pipeline", "run_demo"]


@dataclass
class Demo:
    """The demo's pipeline and its two result streams."""

    pipeline: gs.Pipeline
    hot: gs.AggStream
    flagged: gs.Stream


def demo_pipeline(events: int = 2_000_000, engine: str = "auto", seed: int = 0,
                  limit: int = 100) -> Demo:
    """Hot auctions and a bidder velocity check over one Nexmark bid stream.

    Examples
    --------
    >>> d = demo_pipeline(10_000, engine="cpu")
    >>> d.hot.schema.names
    ['auction', 'window_start', 'window_end', 'bids', 'top_usd', 'bidders']
    >>> d.flagged.schema.names
    ['bidder', 'window_start', 'window_end', 'bids', 'spent_usd']
    """
    p = gs.Pipeline("demo", engine=engine)
    bids = p.source(gs.nexmark(events=events, seed=seed).bids, event_time="date_time",
                    watermark=gs.Watermark.bounded("2s"), name="bids")
    usd = bids.with_columns(usd=gs.col("price").cast("float64") * 0.01)
    hot = (
        usd.key_by("auction")
        .window(gs.Sliding("10s", "2s"), name="hot")
        .agg(bids=gs.count(), top_usd=gs.col("usd").max(),
             bidders=gs.col("bidder").count_distinct())
    )
    flagged = (
        usd.key_by("bidder")
        .window(gs.Sliding("10s", "1s"), name="velocity")
        .agg(bids=gs.count(), spent_usd=gs.col("usd").sum())
        .filter(gs.col("bids") > limit)
    )
    return Demo(p, hot, flagged)


def run_demo(events: int, engine: str, console: Console, rows: int = 10,
             live: bool = True) -> RunStats:
    """Build and run the demo (live view on), then print what it found."""
    d = demo_pipeline(events, engine)
    hot_out: list[pa.RecordBatch] = []
    flag_out: list[pa.RecordBatch] = []
    d.hot.sink(gs.to_callback(hot_out.append))
    d.flagged.sink(gs.to_callback(flag_out.append))
    console.print(f"[bold]backend[/bold]: {d.pipeline.backend.describe()}", highlight=False)
    metrics = Metrics("demo", d.pipeline.backend.name)
    if live:
        with LiveView(metrics, console, interval_s=2.0):
            stats = d.pipeline.run(metrics=metrics, exit_on_sigterm=False)
    else:
        stats = d.pipeline.run(metrics=metrics, exit_on_sigterm=False)
    hot = pa.Table.from_batches(hot_out) if hot_out else d.hot.schema.empty_table()
    if hot.num_rows:
        recent = hot.filter(pc.equal(hot["window_end"], pc.max(hot["window_end"])))
        hot = recent.sort_by([("bids", "descending"), ("auction", "ascending")]).slice(0, rows)
    table = Table("auction", "window from", "bids", "top bid (USD)", "bidders",
                  title=f"hottest auctions of the last 10 s window (top {rows})")
    for row in hot.to_pylist():
        table.add_row(str(row["auction"]), f"{row['window_start']:%H:%M:%S}",
                      f"{row['bids']:,}", f"{row['top_usd']:,.2f}", f"{row['bidders']:,}")
    console.print(table)
    flags = pa.Table.from_batches(flag_out) if flag_out else d.flagged.schema.empty_table()
    n_flags = flags.num_rows
    worst = flags.group_by("bidder").aggregate([("bids", "max"), ("spent_usd", "max"),
                                                ("window_start", "count")])
    worst = worst.sort_by([("bids_max", "descending"), ("bidder", "ascending")])
    table = Table("bidder", "most bids in 10 s", "most spent in 10 s (USD)", "windows flagged",
                  title=f"velocity check: {worst.num_rows:,} bidders over the limit in "
                        f"{n_flags:,} windows (top {rows})")
    for row in worst.slice(0, rows).to_pylist():
        table.add_row(str(row["bidder"]), f"{row['bids_max']:,}", f"{row['spent_usd_max']:,.2f}",
                      f"{row['window_start_count']:,}")
    console.print(table)
    console.print(stats.summary(), highlight=False)
    return stats
