"""Joins beside DuckDB: a lookup join and a window join, same data, same process.

- lookup: 10M events (key uniform over 1M) joined with a 1M-row table on its key;
- window join: two streams of 5M events (100k keys, 100 s of event time), pairs with
  equal keys in the same 1 s tumbling window.

gpustream runs them as streams (events in batches, watermarks, state evicted as windows
fire) from in-memory Arrow tables; DuckDB runs the same join in batch over the same
tables. Each answer (row count and a checksum) is checked against DuckDB's. Both run
side by side in one process (best of ``--repeat``), so a shared machine's load weighs on
both; the header and footer print the load average (``GPUSTREAM_CPU_THREADS`` sets the
threads of gpustream's join kernels, as of its windows).

    python benchmarks/joins.py --events 10000000 --engine cpu
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pyarrow as pa

import gpustream as gs


def lookup_data(events: int, keys: int, seed: int = 1) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    ev = pa.table({"ts": np.arange(events, dtype=np.int64),
                   "key": rng.integers(0, keys, events), "v": rng.normal(size=events)})
    table = pa.table({"key": rng.permutation(keys).astype(np.int64),
                      "w": rng.integers(0, 1000, keys)})
    return ev, table


def window_data(events: int, keys: int, seed: int = 2) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        ts = np.sort(rng.integers(0, 100_000, events))
        out.append(pa.table({"ts": ts, "key": rng.integers(0, keys, events),
                             "v": rng.integers(0, 100, events)}))
    return out[0], out[1]


def run_lookup(ev: pa.Table, table: pa.Table, engine: str) -> tuple[int, int]:
    p = gs.Pipeline("bench-lookup", engine=engine)
    t = p.table(gs.from_arrow(table, batch_rows=1 << 20), key="key")
    s = p.source(gs.from_arrow(ev, batch_rows=1 << 18))
    rows, total = [0], [0]

    def count(rb: pa.RecordBatch) -> None:
        rows[0] += rb.num_rows
        total[0] += int(pa.compute.sum(rb["w"]).as_py() or 0)
    s.join_table(t, on="key").select("key", "w").sink(gs.to_callback(count))
    p.run()
    return rows[0], total[0]


def run_window(a: pa.Table, b: pa.Table, engine: str) -> tuple[int, int]:
    p = gs.Pipeline("bench-window-join", engine=engine)
    wm = gs.Watermark.bounded(0)
    left = p.source(gs.from_arrow(a, batch_rows=1 << 18), event_time="ts", watermark=wm,
                    name="left")
    right = p.source(gs.from_arrow(b, batch_rows=1 << 18), event_time="ts", watermark=wm,
                     name="right")
    rows, total = [0], [0]

    def count(rb: pa.RecordBatch) -> None:
        rows[0] += rb.num_rows
        total[0] += int(pa.compute.sum(rb["v_right"]).as_py() or 0)
    left.window_join(right, on="key", window=gs.Tumbling(1000)).sink(gs.to_callback(count))
    p.run()
    return rows[0], total[0]


def duck_lookup(ev: pa.Table, table: pa.Table) -> tuple[int, int]:
    import duckdb

    con = duckdb.connect()
    con.register("ev", ev)
    con.register("t", table)
    n, s = con.execute("SELECT count(*), sum(t.w) FROM ev JOIN t USING (key)").fetchone()
    return int(n), int(s)


def duck_window(a: pa.Table, b: pa.Table) -> tuple[int, int]:
    import duckdb

    con = duckdb.connect()
    con.register("a", a)
    con.register("b", b)
    n, s = con.execute("SELECT count(*), sum(b.v) FROM a JOIN b ON a.key = b.key AND "
                       "a.ts // 1000 = b.ts // 1000").fetchone()
    return int(n), int(s)


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--engine", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, "
          f"engine {args.engine}, best of {args.repeat}, "
          f"GPUSTREAM_CPU_THREADS={os.environ.get('GPUSTREAM_CPU_THREADS', 'unset')}, "
          f"load average {_load()}")
    ev, table = lookup_data(args.events, args.events // 10)
    a, b = window_data(args.events // 2, 100_000)
    for name, ours, theirs, data, n_in in [
        ("lookup join", run_lookup, duck_lookup, (ev, table), args.events),
        ("window join", run_window, duck_window, (a, b), args.events),
    ]:
        want = theirs(*data)
        g = min(timed(ours, *data, args.engine) for _ in range(args.repeat))
        d = min(timed(theirs, *data) for _ in range(args.repeat))
        assert g[1] == want, (name, g[1], want)
        print(f"{name:<12} gpustream {g[0]:7.3f} s ({n_in / g[0] / 1e6:6.2f} M events/s)   "
              f"duckdb {d[0]:7.3f} s ({n_in / d[0] / 1e6:6.2f} M events/s)   "
              f"gpustream/duckdb = {d[0] / g[0]:.2f}x   ({want[0]:,} rows out)")
    print(f"# load average {_load()}")


def _load() -> str:
    """The 1-, 5- and 15-minute load averages, where the system tells them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


if __name__ == "__main__":
    main()
