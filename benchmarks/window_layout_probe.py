"""How fast could the fused window loop fold with a dense per-window state layout?

An experiment, not the engine: on the data of ``window_agg.py`` (1 s tumbling window,
count/sum/min/max/mean per key), one thread folds every event and pops the windows the
watermark passed every 65,536 events, two ways:

- ``fused loop``: the engine's fused CPU loop (:mod:`gpustream.kernels.fused_dense`),
  one shard, through :class:`~gpustream.state.store_cpu_panes.CpuPaneStore`; the
  time of its folds and pops only (no output rows);
- ``dense probe``: a sketch of the layout the next step would build: a key -> id hash
  table shared by all windows (it stays in cache), and per open window a dense block of
  64-byte state rows indexed by key id, so a window's keys take ``keys x 64`` bytes in id
  order instead of being spread over a large (key, window) table. It handles only this
  query (one int64 key, no nulls, no lateness, no growth), enough to measure the memory
  behaviour, and checks its counts against the data.

    python benchmarks/window_layout_probe.py --events 10000000 --keys 10000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow.parquet as pq

from gpustream.kernels.fused_window import _finish, _mix_word
from gpustream.kernels.prefetch import _prefetch

DATA = Path(__file__).resolve().parent / "data"
CHUNK = 1 << 16
PF = 16


@numba.njit(nogil=True, cache=False)
def _dense(key, ts, v, wm, size, d_hash, d_key, d_id, p_start, p_live, block, touched,  # type: ignore[no-untyped-def]
           n_touched, out_n):
    mask = np.uint64(d_hash.shape[0] - 1)
    seed = np.uint64(0x2545F4914F6CDD1D)
    n, pages = ts.shape[0], p_start.shape[0]
    flat = block.reshape(block.size)
    n_ids = fired = 0
    cur_st, cur_p = np.int64(-1), -1
    for i in range(n):
        if i + PF < n:  # the key table's line of the event PF ahead
            _prefetch(d_hash, _finish(_mix_word(seed, key[i + PF])) & mask)
        if i + PF // 2 < n and cur_p >= 0:  # its id is in cache by now: prefetch its row
            kb = key[i + PF // 2]
            hb = _finish(_mix_word(seed, kb))
            sb = hb & mask
            while d_hash[sb] != 0:
                if d_hash[sb] == hb and d_key[sb] == kb:
                    _prefetch(flat, (cur_p * block.shape[1] + d_id[sb]) * 8)
                    break
                sb = (sb + np.uint64(1)) & mask
        st = ts[i] - ts[i] % size
        if st + size <= wm[i]:
            continue
        if st != cur_st:
            cur_p = -1
            for p in range(pages):
                if p_live[p] and p_start[p] == st:
                    cur_p = p
            if cur_p < 0:
                for p in range(pages):
                    if not p_live[p]:
                        cur_p = p
                        break
                p_live[cur_p], p_start[cur_p], n_touched[cur_p] = True, st, 0
            cur_st = st
        k = key[i]
        h = _finish(_mix_word(seed, k))
        s = h & mask
        while True:
            if d_hash[s] == 0:
                d_hash[s], d_key[s], d_id[s] = h, k, n_ids
                n_ids += 1
                break
            if d_hash[s] == h and d_key[s] == k:
                break
            s = (s + np.uint64(1)) & mask
        ident = d_id[s]
        row = block[cur_p, ident]
        x = v[i]
        if row[0] == 0:
            touched[cur_p, n_touched[cur_p]] = ident
            n_touched[cur_p] += 1
            row[7], row[3], row[4] = x, np.inf, -np.inf
        row[0] += 1
        row[1] += 1
        row[2] += x
        if x < row[3]:
            row[3] = x
        if x > row[4]:
            row[4] = x
        d = x - row[7]
        row[5] += d
        row[6] += d * d
        if (i + 1) % CHUNK == 0 or i + 1 == n:  # pop the windows the watermark passed
            w = wm[i + 1] if i + 1 < n else np.iinfo(np.int64).max
            for p in range(pages):
                if p_live[p] and p_start[p] + size <= w:
                    for j in range(n_touched[p]):
                        r = block[p, touched[p, j]]
                        out_n[fired % out_n.shape[0]] = r[0]
                        fired += 1
                        r[:] = 0.0
                    p_live[p] = False
                    if p == cur_p:
                        cur_st = -1
    return fired


def dense_probe(key: Any, ts: Any, v: Any, wm: Any, keys: int) -> tuple[float, int, int]:
    """Seconds, rows fired and events counted by the dense sketch."""
    cap = 1 << int(np.ceil(np.log2(4 * keys)))
    pages = 8
    out_n = np.zeros(1 << 22)
    args = (np.zeros(cap, np.uint64), np.zeros(cap, np.uint64), np.zeros(cap, np.int64),
            np.zeros(pages, np.int64), np.zeros(pages, np.bool_), np.zeros((pages, keys, 8)),
            np.zeros((pages, keys), np.int64), np.zeros(pages, np.int64), out_n)
    t0 = time.perf_counter()
    fired = _dense(key, ts, v, wm, 1000, *args)
    return time.perf_counter() - t0, fired, int(out_n[:fired].sum())


def fused_loop(table: Any) -> float:
    """Seconds the engine's fused loop spends folding and popping, on one thread."""
    import gpustream as gs
    import gpustream.state.store_cpu_panes as wf

    spent = [0.0]
    fold = wf.CpuPaneStore._fold

    def timed(self: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fold(self, *args)
        spent[0] += time.perf_counter() - t0
        return out

    wf.CpuPaneStore._fold = timed  # type: ignore[method-assign]
    os.environ["GPUSTREAM_CPU_THREADS"] = "1"
    try:
        p = gs.Pipeline("probe", engine="cpu")
        s = p.source(gs.from_arrow(table, batch_rows=1 << 20), event_time="ts",
                     watermark=gs.Watermark.bounded("1s"))
        s.key_by("key").window(gs.Tumbling("1s"), name="w").agg(
            n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(),
            hi=gs.col("v").max(), avg=gs.col("v").mean()).sink(gs.to_callback(lambda b: None))
        p.run()
    finally:
        wf.CpuPaneStore._fold = fold  # type: ignore[method-assign]
    return spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    path = DATA / f"events_{args.events}_{args.keys}.parquet"
    if not path.exists():
        from window_agg import make_data  # type: ignore[import-not-found]

        make_data(args.events, args.keys, path)
    table = pq.read_table(path)
    key = table["key"].to_numpy().view(np.uint64).copy()
    ts = table["ts"].to_numpy().copy()
    v = table["v"].to_numpy().copy()
    wm = np.empty_like(ts)  # per-event watermark: max of earlier times - 1 s
    wm[0] = np.iinfo(np.int64).min
    wm[1:] = np.maximum.accumulate(ts)[:-1] - 1000
    fused_loop(table)
    dense_probe(key, ts, v, wm, args.keys)  # compile both
    times: dict[str, list[float]] = {"fused loop": [], "dense probe": []}
    for _ in range(args.repeat):  # alternate, so that both see the same machine
        times["fused loop"].append(fused_loop(table))
        dt, fired, counted = dense_probe(key, ts, v, wm, args.keys)
        assert counted == args.events, (counted, args.events)  # the data has no late rows
        times["dense probe"].append(dt)
    print(f"# {args.events:,} events, {args.keys:,} keys, one thread, fold and pop only; "
          f"median of {args.repeat} (dense probe fired {fired:,} rows)")
    base = float(np.median(times["fused loop"]))
    for name, ts_ in times.items():
        med = float(np.median(ts_))
        print(f"{name:12s} {med:7.3f} s  {med / args.events * 1e9:6.1f} ns/event  "
              f"fused/this = {base / med:4.2f}x")


if __name__ == "__main__":
    main()
