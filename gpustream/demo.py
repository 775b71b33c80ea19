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
) -> tuple[gs.Pipeline, gs.Stream]:
    """Expensive bids outside one channel, priced in another currency.

    Examples
    --------
    >>> p, hot = demo_pipeline(1000, engine="cpu")
    >>> hot.schema.names
    ['auction', 'bidder', 'usd', 'channel', 'ts']
    """
    p = gs.Pipeline("demo-expensive-bids", engine=engine)
    bids = p.source(gs.from_arrow(synthetic_bids(events), batch_rows=batch_rows),
                    event_time="ts", name="bids")
    hot = (
        bids.filter((gs.col("price") > 100_000) & (gs.col("channel") != "apple"))
        .with_columns(usd=gs.col("price").cast("float64") * 0.01 * 1.08)
        .select("auction", "bidder", "usd", "channel", "ts")
    )
    return p, hot


class ChannelSummary:
    """A callback sink body: bids, volume and top bid per channel, merged per batch.

    Examples
    --------
    >>> import pyarrow as pa
    >>> s = ChannelSummary()
    >>> s(pa.record_batch({"channel": ["a", "b", "a"], "usd": [1.0, 2.0, 3.0]}))
    >>> s.table().to_pylist()
    [{'channel': 'a', 'bids': 2, 'volume': 4.0, 'top': 3.0}, {'channel': 'b', 'bids': 1, 'volume': 2.0, 'top': 2.0}]
    """

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def __call__(self, rb: pa.RecordBatch) -> None:
        self.parts.append(pa.Table.from_batches([rb]).group_by("channel").aggregate(
            [([], "count_all"), ("usd", "sum"), ("usd", "max")]))

    def table(self) -> pa.Table:
        """Per-channel totals so far, sorted by channel."""
        if not self.parts:
            return pa.table({"channel": pa.array([], pa.string()), "bids": pa.array([], pa.int64()),
                             "volume": pa.array([], pa.float64()), "top": pa.array([], pa.float64())})
        t = pa.concat_tables(self.parts).group_by("channel").aggregate(
            [("count_all", "sum"), ("usd_sum", "sum"), ("usd_max", "max")])
        t = t.rename_columns({"count_all_sum": "bids", "usd_sum_sum": "volume",
                              "usd_max_max": "top"})
        return t.select(["channel", "bids", "volume", "top"]).sort_by("channel")


def run_demo(events: int, engine: str, console: Console) -> RunStats:
    """Build and run the demo, printing the backend, a per-channel table and the stats."""
    p, hot = demo_pipeline(events, engine)
    summary = ChannelSummary()
    hot.sink(gs.to_callback(summary))
    console.print(f"[bold]backend[/bold]: {p.backend.describe()}", highlight=False)
    stats = p.run()
    table = Table("channel", "bids", "volume (USD)", "top bid (USD)",
                  title="expensive bids outside the apple channel")
    for row in summary.table().to_pylist():
        table.add_row(row["channel"], f"{row['bids']:,}", f"{row['volume']:,.2f}",
                      f"{row['top']:,.2f}")
    console.print(table)
    console.print(stats.summary(), highlight=False)
    return stats
