"""Checkpoint size and time with N open (key, window) states, and recovery time.

A tumbling 1 h window, count + sum per key, over ``--keys`` distinct keys arriving in
batches of 100,000 rows: after the first ``keys / 100,000`` batches every key has an open
state, and a checkpoint is taken (the run's ``every_batches``). The script reports the
checkpoint's size on disk and the time ``take()`` needed (state to host, Arrow IPC,
fsync, rename, sink commit), then restarts on the folder and reports the time to restore
(read, verify the checksum, rebuild the state) and the restarted run's first batch.

    python benchmarks/checkpoints.py --keys 1000000 --engine cpu
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import gpustream as gs
from gpustream.runtime import runner

BATCH = 100_000


def _table(keys: int) -> pa.Table:
    rng = np.random.default_rng(0)
    n = keys + 2 * BATCH  # every key once, then two more batches
    k = np.concatenate([rng.permutation(keys), rng.integers(0, keys, n - keys)])
    return pa.table({"ts": np.arange(n, dtype=np.int64) // 1_000, "k": k,
                     "v": rng.integers(0, 100, n)})


def _pipeline(table: pa.Table, engine: str) -> gs.Pipeline:
    p = gs.Pipeline("ckbench", engine=engine)
    s = p.source(gs.from_arrow(table, batch_rows=BATCH), event_time="ts",
                 watermark=gs.Watermark.bounded(0), name="events")
    (s.key_by("k").window(gs.Tumbling("1h"), name="w").agg(n=gs.count(), total=gs.col("v").sum())
     .sink(gs.to_callback(lambda rb: None)))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--engine", default="cpu")
    args = ap.parse_args()
    table = _pipeline_table = _table(args.keys)
    every = -(-args.keys // BATCH)
    folder = Path(tempfile.mkdtemp(prefix="ckbench-"))
    takes: list[float] = []
    restores: list[float] = []
    real_take, real_restore = runner._Checkpointer.take, runner._Checkpointer.restore

    def take(self: Any) -> None:
        t0 = time.perf_counter()
        real_take(self)
        takes.append(time.perf_counter() - t0)
        if len(takes) == 1:
            raise KeyboardInterrupt  # stop after the first checkpoint (1 per every batches)

    def restore(self: Any) -> None:
        t0 = time.perf_counter()
        real_restore(self)
        restores.append(time.perf_counter() - t0)

    runner._Checkpointer.take = take  # type: ignore[method-assign]
    runner._Checkpointer.restore = restore  # type: ignore[method-assign]
    ck = gs.Checkpointing(folder, every_batches=every)
    _pipeline(table, args.engine).run(checkpoint=ck)
    ckpt = sorted(folder.glob("ckpt-*"))[0]
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    runner._Checkpointer.take = real_take  # type: ignore[method-assign]
    t0 = time.perf_counter()
    stats = _pipeline(_pipeline_table, args.engine).run(checkpoint=ck)
    rest = time.perf_counter() - t0
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {platform.processor() or ''} "
          f"engine={args.engine} gpustream {gs.__version__}")
    print(f"open (key, window) states at the checkpoint: {args.keys:,}")
    print(f"checkpoint size: {size / 1e6:,.1f} MB ({size / args.keys:,.1f} bytes per state)")
    print(f"checkpoint take: {takes[0] * 1e3:,.0f} ms")
    print(f"restore (load + verify + rebuild): {restores[-1] * 1e3:,.0f} ms; restarted run "
          f"to the end ({stats.events_in:,} events, its own final checkpoint): {rest:,.2f} s")


if __name__ == "__main__":
    main()
