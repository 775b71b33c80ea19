"""Nexmark q0-q22: gpustream beside DuckDB, same generated data, same process.

For each query: an untimed warm-up run of the gpustream pipeline on 20,000 events (it
compiles the query's kernels), then ``--repeat`` rounds, each running the gpustream
pipeline and DuckDB's SQL of the same query one after the other, over the same
in-memory Arrow tables of the project's generator; the best round of each counts. The
answers are checked against each other (:func:`gpustream.bench.runner.differences`)
and a query whose answers differ is marked. Prints the README's markdown table.

    python benchmarks/nexmark/run.py --events 2000000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import platform
import time

from gpustream.bench.nexmark import QUERIES, query_names
from gpustream.bench.runner import (
    WARMUP_EVENTS,
    QueryResult,
    differences,
    generate,
    run_query,
)


def _best(runs: list[QueryResult]) -> QueryResult:
    return min(runs, key=lambda r: r.seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--query", default="all")
    ap.add_argument("--engine", default="cpu", help="gpustream's engine: cpu, cuda or auto")
    args = ap.parse_args()
    names = query_names(args.query)
    started = time.perf_counter()
    data = generate(args.events, args.seed)
    made = time.perf_counter() - started
    small = generate(min(args.events, WARMUP_EVENTS), args.seed)
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; numba "
          f"{md.version('numba')}, duckdb {md.version('duckdb')}, pyarrow "
          f"{md.version('pyarrow')}; {args.events:,} events (seed {args.seed}, generated "
          f"in {made:.1f} s), best of {args.repeat}")
    print()
    print(f"| query | gpustream {args.engine} s | events/s | DuckDB s | events/s "
          "| gpustream / DuckDB | rows | stand-in |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        q = QUERIES[name]
        ours: list[QueryResult] = []
        theirs: list[QueryResult] = []
        try:
            run_query(q, small, args.engine)
            for _ in range(args.repeat):
                ours.append(run_query(q, data, args.engine))
                theirs.append(run_query(q, data, "duckdb"))
        except Exception as exc:  # one query's failure is a row of the table, not the end
            print(f"| {name} | failed: {type(exc).__name__}: {exc} |||||||", flush=True)
            continue
        a, b = _best(ours), _best(theirs)
        diff = differences(a.table, b.table, q)
        ok = "" if not diff else (" (differs: peers' order, see README)" if q.ties
                                  else f" **differs: {diff[0]}**")
        print(f"| {name} | {a.seconds:.3f} | {a.events_per_s / 1e6:.2f} M | {b.seconds:.3f} | "
              f"{b.events_per_s / 1e6:.2f} M | {b.seconds / a.seconds:.2f}x | "
              f"{a.table.num_rows:,}{ok} | {'yes' if q.stand_in else ''} |", flush=True)
    print()
    print(f"(load average at the end {os.getloadavg()[0]:.1f}; the whole run "
          f"{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
