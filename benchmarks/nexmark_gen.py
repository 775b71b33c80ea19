"""How fast the Nexmark generator produces events, per stream and for all three.

    python benchmarks/nexmark_gen.py --events 20000000
"""

from __future__ import annotations

import argparse
import platform
import time

from gpustream.ingest.nexmark import nexmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--batch-events", type=int, default=1 << 20)
    args = ap.parse_args()
    warm = nexmark(events=100_000)
    for s in (warm.persons, warm.auctions, warm.bids):
        list(s.open())  # compile the kernels first
    nx = nexmark(events=args.events, batch_events=args.batch_events)
    total = 0.0
    print(f"# {args.events:,} generator events; {platform.machine()}, {time.strftime('%Y-%m-%d')}")
    for s in (nx.persons, nx.auctions, nx.bids):
        t0 = time.perf_counter()
        rows = sum(b.data.num_rows for b in s.open())
        dt = time.perf_counter() - t0
        total += dt
        print(f"{s.kind:9s} {rows:>11,} rows {dt:7.3f} s  {rows / dt / 1e6:7.1f} M rows/s")
    print(f"all three {args.events:>11,} events {total:6.3f} s  "
          f"{args.events / total / 1e6:7.1f} M events/s")


if __name__ == "__main__":
    main()
