"""Partitioned runs on Dask: throughput of 1 and 2 workers side by side, and the
repartition cost per event.

One Parquet folder of ``--files`` files (``--events`` in all, ``--keys`` string keys,
each file the next 100 s of event time, with a little disorder: no event is late in
one process either) feeds tumbling windows
(10 s windows: count/sum/min/max) per key into a folder of Parquet parts. Measured in one run, taking
turns (single process, then the cluster with 1 partition, then 2; ``--repeat`` times):

- ``single``: ``Pipeline.run()`` in this process;
- ``dask 1`` / ``dask 2``: ``Pipeline.run(cluster=client, parallelism=N)`` on a
  ``LocalCluster`` of 2 worker processes (one thread each);
- the repartition cost: ``exchange.split_rows`` (hash of the key's values, rows taken
  per partition) on the run's own batches, timed alone, per event.

Every run's output is checked equal to the single process's before a figure is printed.

    python benchmarks/cluster.py --events 4000000 --keys 10000 --files 8
    python benchmarks/cluster.py --engine cuda --workers 8   # a GPU node, dask-cuda
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import gpustream as gs
from gpustream.cluster.exchange import split_rows


def make(folder: Path, events: int, keys: int, files: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    per = events // files
    span = 100_000  # 100 s of event time per file
    for f in range(files):
        ts = np.sort(rng.integers(0, span, per)) + f * span  # one file after another
        ts = ts + rng.integers(0, 300, per)
        users = pa.array([f"user-{k}" for k in range(keys)]).take(
            pa.array(rng.integers(0, keys, per)))
        pq.write_table(pa.table({"ts": pa.array(ts, pa.timestamp("ms")), "user": users,
                                 "v": rng.random(per)}), folder / f"part-{f:03d}.parquet")


def build(folder: Path, out: Path, batch_rows: int, engine: str = "cpu") -> gs.Pipeline:
    p = gs.Pipeline("bench-cluster", engine=engine)
    s = p.source(gs.read_parquet(folder, batch_rows=batch_rows), event_time="ts",
                 watermark=gs.Watermark.bounded("1s"), name="ev")
    (s.key_by("user").window(gs.Tumbling("10s"))
     .agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(), hi=gs.col("v").max())
     .sink(gs.to_parquet(out)))
    return p


def result(out: Path) -> Any:
    return pq.read_table(out).to_pandas().sort_values(["user", "window_start"]).reset_index(
        drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=262_144)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes (GPU machine: --engine cuda starts one per GPU)")
    ap.add_argument("--engine", default="cpu", help="cpu or cuda (dask-cuda workers)")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    work = Path(tempfile.mkdtemp(prefix="gs-bench-cluster-"))
    data = work / "in"
    data.mkdir()
    make(data, args.events, args.keys, args.files)
    if args.engine == "cuda":
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(n_workers=args.workers, threads_per_worker=1,
                                   dashboard_address=":0")
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               processes=True, dashboard_address=":0")
    client = Client(cluster)
    names = ["single", *(f"dask {n}" for n in sorted({1, 2, args.workers}))]
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        reference = None
        for rep in range(args.repeat + 1):  # the first round compiles (not counted)
            for name in times:
                out = work / f"out-{name.replace(' ', '')}-{rep}"
                p = build(data, out, args.batch_rows, args.engine)
                t0 = time.perf_counter()
                if name == "single":
                    p.run()
                else:
                    p.run(cluster=client, parallelism=int(name.split()[1]))
                dt = time.perf_counter() - t0
                got = result(out)
                if reference is None:
                    reference = got
                assert got[["user", "window_start", "n"]].equals(
                    reference[["user", "window_start", "n"]]), name
                np.testing.assert_allclose(got.total, reference.total, rtol=1e-9)
                shutil.rmtree(out)
                if rep:
                    times[name].append(dt)
        batches = [rb for f in sorted(data.iterdir())
                   for rb in pq.ParquetFile(f).iter_batches(args.batch_rows)]
        t0 = time.perf_counter()
        for rb in batches:
            split_rows(rb, ["user"], 2)
        split_s = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}, {args.events:,} events, "
          f"{args.keys:,} keys, {args.files} files, batch_rows={args.batch_rows:,}")
    best = {k: min(v) for k, v in times.items()}
    for name, ts in times.items():
        print(f"{name:>7}: {args.events / best[name] / 1e6:6.2f} M events/s "
              f"(best of {len(ts)}: {', '.join(f'{t:.2f}' for t in ts)} s)")
    for name in names[2:]:
        print(f"{name} / dask 1: {best['dask 1'] / best[name]:.2f}x; "
              f"{name} / single: {best['single'] / best[name]:.2f}x")
    rounds = -(-args.events // args.files // args.batch_rows) * -(-args.files // 2)
    print(f"rounds of dask 2: about {rounds}; its time beyond single's per round: "
          f"{(best['dask 2'] - best['single']) / rounds * 1e3:.1f} ms (an upper bound on "
          "the round's fixed cost)")
    print(f"repartition (hash + take, 2 partitions): {split_s / args.events * 1e9:.1f} ns "
          "per event")
    print("median s:", {k: round(statistics.median(v), 3) for k, v in times.items()})


if __name__ == "__main__":
    main()
