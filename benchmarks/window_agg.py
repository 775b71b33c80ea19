"""1 s tumbling (or 4 s sliding every 1 s) windows, count/sum/min/max/mean per key, from
Parquet, end to end; or, with ``--shape in-order``, 10 s windows over in-order events.

gpustream runs the streaming query (per-event watermarks, windows firing as the
watermark passes them); DuckDB and Polars run the same group-by in batch over the same
file, in the same process, taking turns (one run of each, then again), so the ratios are
side by side. Every system's answer is checked against DuckDB's before any time is
reported.

    python benchmarks/window_agg.py --events 10000000 --keys 10000 --engine cpu
    python benchmarks/window_agg.py --events 10000000 --keys 10000 --window sliding

Sliding: every event is in the 4 windows starting at its 1 s window's start and the 3
seconds before; DuckDB and Polars expand each row into those 4 assignments and group.

Shapes (``--shape``): ``out-of-order`` (the default) spreads the events over 100 s of
event time, 10 % of them up to 500 ms out of order, in 1 s windows (100 of them; sliding:
4 s every 1 s); ``in-order`` spreads them over the same 100 s in time order, in 10 s
windows (10 of them; sliding: 40 s every 10 s), so that each window holds every key many
times over:

    python benchmarks/window_agg.py --events 10000000 --keys 100000 --shape in-order

Needs the ``bench`` extra (duckdb, polars).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import gpustream as gs

DATA = Path(__file__).resolve().parent / "data"


def make_data(events: int, keys: int, path: Path, seed: int = 1, in_order: bool = False
              ) -> None:
    """``events`` rows over 100 s of event time, lightly out of order (up to 500 ms), or
    in time order."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 100_000, events)) + 1_700_000_000_000
    if not in_order:
        ts -= rng.integers(0, 500, events) * (rng.random(events) < 0.1)
    table = pa.table({
        "key": rng.integers(0, keys, events).astype(np.int64),
        "ts": ts.astype(np.int64),
        "v": rng.normal(100.0, 25.0, events),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1 << 20)


#: windows per event: 1 (tumbling) or 4 (sliding: 4 times the slide, every slide)
SPAN = {"tumbling": 1, "sliding": 4}
#: the window slide (tumbling: the size) of each shape, in ms
SLIDE_MS = {"out-of-order": 1000, "in-order": 10_000}


def run_gpustream(path: Path, engine: str, batch_rows: int, window: str = "tumbling",
                  slide_ms: int = 1000) -> pa.Table:
    p = gs.Pipeline("bench-window", engine=engine)
    s = p.source(gs.read_parquet(path, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded("1s"))
    assigner = (gs.Tumbling(slide_ms) if window == "tumbling"
                else gs.Sliding(SPAN[window] * slide_ms, slide_ms))
    w = s.key_by("key").window(assigner, name="w").agg(
        n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(), hi=gs.col("v").max(),
        avg=gs.col("v").mean())
    out: list[pa.RecordBatch] = []
    w.sink(gs.to_callback(out.append))
    stats = p.run()
    assert stats.late_events == 0, "the data is generated without late events"
    return pa.Table.from_batches(out)


def run_duckdb(path: Path, window: str = "tumbling", slide_ms: int = 1000) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    w = slide_ms
    return con.sql(f"""
        SELECT key, ts - ((ts % {w}) + {w}) % {w} - j * {w} AS window_start,
               count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi, avg(v) AS avg
        FROM read_parquet('{path}'), range({SPAN[window]}) r(j) GROUP BY ALL""").to_arrow_table()


def run_polars(path: Path, window: str = "tumbling", slide_ms: int = 1000) -> pa.Table:
    import polars as pl

    q = pl.scan_parquet(path)
    if SPAN[window] > 1:
        q = q.with_columns(j=pl.lit(list(range(SPAN[window])))).explode("j")
    else:
        q = q.with_columns(j=pl.lit(0))
    q = (q.with_columns(window_start=pl.col("ts") - pl.col("ts").mod(slide_ms)
                        - pl.col("j") * slide_ms)
         .group_by("key", "window_start")
         .agg(n=pl.len(), total=pl.col("v").sum(), lo=pl.col("v").min(),
              hi=pl.col("v").max(), avg=pl.col("v").mean()))
    return q.collect().to_arrow()


def canonical(t: pa.Table) -> pa.Table:
    cols = ["key", "window_start", "n", "total", "lo", "hi", "avg"]
    t = t.select(cols).cast(pa.schema([("key", pa.int64()), ("window_start", pa.int64()),
                                       ("n", pa.int64()), ("total", pa.float64()),
                                       ("lo", pa.float64()), ("hi", pa.float64()),
                                       ("avg", pa.float64())]))
    return t.sort_by([("window_start", "ascending"), ("key", "ascending")])


def same(a: pa.Table, b: pa.Table) -> None:
    a, b = canonical(a), canonical(b)
    assert a.num_rows == b.num_rows, (a.num_rows, b.num_rows)
    for c in ("key", "window_start", "n"):
        assert a[c].equals(b[c]), c
    for c in ("total", "lo", "hi", "avg"):
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--engine", default="cpu")
    ap.add_argument("--batch-rows", type=int, default=1 << 20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--window", choices=sorted(SPAN), default="tumbling")
    ap.add_argument("--shape", choices=list(SLIDE_MS), default="out-of-order",
                    help="out-of-order: 100 s, 10 %% up to 500 ms late, 1 s windows; "
                         "in-order: 100 s in time order, 10 s windows")
    args = ap.parse_args()
    in_order = args.shape == "in-order"
    path = DATA / f"events_{args.events}_{args.keys}{'_inorder' if in_order else ''}.parquet"
    if not path.exists():
        make_data(args.events, args.keys, path, in_order=in_order)
    w = SLIDE_MS[args.shape]
    runs = {
        f"gpustream ({args.engine})": lambda: run_gpustream(path, args.engine, args.batch_rows,
                                                             args.window, w),
        "duckdb": lambda: run_duckdb(path, args.window, w),
        "polars": lambda: run_polars(path, args.window, w),
    }
    reference = run_duckdb(path, args.window, w)
    times: dict[str, list[float]] = {}
    for name, fn in runs.items():
        same(fn(), reference)  # warm-up (JIT compilation) and a correctness check
        times[name] = []
    for _ in range(args.repeat):  # round robin: a noisy minute slows every system alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    sec = w // 1000
    what = (f"{sec} s tumbling" if args.window == "tumbling"
            else f"{SPAN[args.window] * sec} s sliding every {sec} s")
    print(f"# {args.events:,} events, {args.keys:,} keys, {args.shape}, {what}, 5 aggregates; "
          f"{platform.node()} {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}; median of {args.repeat}")
    ours = statistics.median(times[f"gpustream ({args.engine})"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:22s} {med:8.3f} s  {args.events / med / 1e6:8.1f} M events/s  "
              f"gpustream/this = {med / ours:5.2f}x")


if __name__ == "__main__":
    main()
