"""GPU figures in one call: the two ceilings, then each operator with data already on the
device and end to end from host Arrow batches.

Runs on a machine with an NVIDIA GPU (cupy and numba-cuda installed); each case is
checked against the CPU backend's answer on the same data before its time is reported.

    python benchmarks/gpu/bench_device.py --events 20000000 --repeat 3

- ceilings: a large device-to-device copy (bytes read + written) and a pinned
  host-to-device copy, each timed with CUDA events;
- ``device``: the source's batches are staged to the device first; the timed part pushes
  them through the operators (watermarks, the operator, the output rows' copy back to
  the host for the sink) and ends with a device synchronize;
- ``host``: ``Pipeline.run()`` from an in-memory Arrow table (pinned staging on the
  source thread, overlapping compute), as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gpustream as gs
from gpustream.batch import Batch
from gpustream.ingest.staging import Stager
from gpustream.plan.physical import build_physical
from gpustream.runtime.runner import RunStats, _Runner

Build = Callable[[gs.Pipeline, list[gs.Stream]], Any]


# -- ceilings ---------------------------------------------------------------------------
def ceilings(nbytes: int = 1 << 31, repeat: int = 10) -> dict[str, float]:
    import cupy as cp

    src = cp.random.random(nbytes // 8)
    dst = cp.empty_like(src)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    dst[...] = src
    d2d = []
    for _ in range(repeat):
        start.record()
        dst[...] = src
        stop.record()
        stop.synchronize()
        d2d.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    pinned_mem = cp.cuda.alloc_pinned_memory(nbytes // 4)
    host = np.frombuffer(pinned_mem, np.uint8, nbytes // 4)
    host[:] = 7
    dev = cp.empty(nbytes // 4, np.uint8)
    h2d = []
    for _ in range(repeat):
        start.record()
        dev.set(host)
        stop.record()
        stop.synchronize()
        h2d.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    assert int(dev[-1]) == 7
    return {"d2d_GBps": 2 * nbytes / statistics.median(d2d) / 1e9,
            "h2d_pinned_GBps": (nbytes // 4) / statistics.median(h2d) / 1e9}


# -- data -------------------------------------------------------------------------------
def events(n: int, keys: int, seed: int = 1) -> pa.Table:
    """``n`` rows over 100 s of event time, lightly out of order, as benchmarks/window_agg."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 100_000, n)) + 1_700_000_000_000
    ts -= rng.integers(0, 500, n) * (rng.random(n) < 0.1)
    return pa.table({"key": rng.integers(0, keys, n).astype(np.int64),
                     "ts": ts.astype(np.int64), "v": rng.normal(100.0, 25.0, n)})


# -- queries ----------------------------------------------------------------------------
def _aggs(ks: Any) -> Any:
    return ks.agg(n=gs.count(), total=gs.col("v").sum(), lo=gs.col("v").min(),
                  hi=gs.col("v").max(), avg=gs.col("v").mean())


def tumbling(p: gs.Pipeline, tables: list[pa.Table], rows: int) -> Any:
    s = p.source(gs.from_arrow(tables[0], batch_rows=rows), event_time="ts",
                 watermark=gs.Watermark.bounded("1s"))
    return _aggs(s.key_by("key").window(gs.Tumbling("1s"), name="w"))


def sliding(p: gs.Pipeline, tables: list[pa.Table], rows: int) -> Any:
    s = p.source(gs.from_arrow(tables[0], batch_rows=rows), event_time="ts",
                 watermark=gs.Watermark.bounded("1s"))
    return _aggs(s.key_by("key").window(gs.Sliding("4s", "1s"), name="w"))


def session(p: gs.Pipeline, tables: list[pa.Table], rows: int) -> Any:
    s = p.source(gs.from_arrow(tables[0], batch_rows=rows), event_time="ts",
                 watermark=gs.Watermark.bounded("1s"))
    return _aggs(s.key_by("key").window(gs.Session("2s"), name="w"))


def lookup(p: gs.Pipeline, tables: list[pa.Table], rows: int) -> Any:
    t = p.table(gs.from_arrow(tables[1], batch_rows=1 << 20), key="key")
    s = p.source(gs.from_arrow(tables[0], batch_rows=rows))
    return s.join_table(t, on="key").select("key", "w", "v")


def window_join(p: gs.Pipeline, tables: list[pa.Table], rows: int) -> Any:
    wm = gs.Watermark.bounded(0)
    a = p.source(gs.from_arrow(tables[0], batch_rows=rows), event_time="ts", watermark=wm,
                 name="left")
    b = p.source(gs.from_arrow(tables[1], batch_rows=rows), event_time="ts", watermark=wm,
                 name="right")
    return a.window_join(b, on="key", window=gs.Tumbling(1000))


# -- runs -------------------------------------------------------------------------------
class Collect:
    """A sink that counts rows and sums one numeric column (the answer's checksum)."""

    def __init__(self) -> None:
        self.rows = 0
        self.sums: dict[str, float] = {}

    def __call__(self, rb: pa.RecordBatch) -> None:
        self.rows += rb.num_rows
        for name, col in zip(rb.schema.names, rb.columns, strict=True):
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                v = pa.compute.sum(col).as_py() or 0
                self.sums[name] = self.sums.get(name, 0) + float(v)


def pipeline(query: Any, engine: str, tables: list[pa.Table], rows: int,
             ) -> tuple[gs.Pipeline, Collect]:
    p = gs.Pipeline("bench-gpu", engine=engine)
    out = Collect()
    query(p, tables, rows).sink(gs.to_callback(out))
    return p, out


def run_host(query: Any, engine: str, tables: list[pa.Table], rows: int) -> tuple[float, Collect]:
    p, out = pipeline(query, engine, tables, rows)
    t0 = time.perf_counter()
    p.run()
    return time.perf_counter() - t0, out


def _sync(engine: str) -> Callable[[], None]:
    if engine != "cuda":
        return lambda: None
    import cupy as cp

    return cp.cuda.Device().synchronize


def run_device(query: Any, tables: list[pa.Table], rows: int, engine: str = "cuda",
               latencies: list[float] | None = None) -> tuple[float, Collect]:
    """Stage every source batch first; time only the operators (and the output copy).

    With ``latencies``, each batch's time (its operators, watermark and output, up to a
    device synchronize) is appended there: the synchronize after each batch makes that
    run's total slower, so it is a separate run."""
    p, out = pipeline(query, engine, tables, rows)
    sync = _sync(engine)
    plan = build_physical(p._sinks, p.backend)
    # a table's rows (lookup join) are loaded when its operator is built: untimed
    runner = _Runner(plan, RunStats("bench-gpu", "cuda"))
    landed: list[list[Batch]] = []
    for pn in plan.sources:
        stager = Stager(plan.backend)
        dicts: dict[str, Any] = {}
        bs = []
        for sb in pn.node.source.open(None):
            bs.append(stager.land(stager.stage(Batch.from_arrow(sb.data, dicts))))
        landed.append(bs)
    sync()
    t0 = time.perf_counter()
    for i in range(max(len(bs) for bs in landed)):  # sources interleaved batch by batch
        t_batch = time.perf_counter()
        for pn, bs in zip(plan.sources, landed, strict=True):
            if i < len(bs):
                runner.push(pn, bs[i])
                wm = getattr(pn.op, "current", None)
                if wm is not None:
                    runner.advance(pn, wm)
        if latencies is not None:
            sync()
            latencies.append(time.perf_counter() - t_batch)
    for pn in plan.sources:
        runner.end(pn)
    sync()
    return time.perf_counter() - t0, out


def check(a: Collect, b: Collect, what: str) -> None:
    assert a.rows == b.rows, f"{what}: {a.rows} rows vs the cpu backend's {b.rows}"
    for k, v in b.sums.items():
        got = a.sums.get(k)
        assert got is not None and abs(got - v) <= 1e-6 * max(1.0, abs(v)), \
            f"{what}: sum({k}) {got} vs the cpu backend's {v}"


def main() -> int:
    """Run the cases; 1 when one of them failed (its error is printed and kept in the JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=1 << 22)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--no-cpu-check", action="store_true")
    ap.add_argument("--engine", default="cuda", help="cuda (cudasim to try the script)")
    ap.add_argument("--no-ceilings", action="store_true")
    args = ap.parse_args()
    n = args.events
    results: list[dict[str, Any]] = []
    if not args.no_ceilings:
        c = ceilings()
        print(f"ceilings: device-to-device {c['d2d_GBps']:.0f} GB/s (read+write), "
              f"pinned host-to-device {c['h2d_pinned_GBps']:.1f} GB/s", flush=True)
        results.append({"case": "ceilings", **c})
    rng = np.random.default_rng(3)
    ev10k = events(n, 10_000)
    cases: dict[str, tuple[Any, list[pa.Table]]] = {
        "tumbling-10k": (tumbling, [ev10k]),
        "tumbling-10M": (tumbling, [events(n, 10_000_000, seed=2)]),
        "sliding-10k": (sliding, [ev10k]),
        "session-10k": (session, [ev10k]),
        "lookup-1M": (lookup, [
            pa.table({"ts": np.arange(n, dtype=np.int64),
                      "key": rng.integers(0, 1_000_000, n), "v": rng.normal(size=n)}),
            pa.table({"key": rng.permutation(1_000_000).astype(np.int64),
                      "w": rng.integers(0, 1000, 1_000_000)})]),
        "window-join-100k": (window_join, [
            pa.table({"ts": np.sort(rng.integers(0, 100_000, n // 2)),
                      "key": rng.integers(0, 100_000, n // 2),
                      "v": rng.integers(0, 100, n // 2)}) for _ in range(2)]),
    }
    only = [c for c in args.only.split(",") if c]
    for name, (query, tables) in cases.items():
        if only and name not in only:
            continue
        try:
            events_in = tables[0].num_rows * (2 if query is window_join else 1)
            ref = None if args.no_cpu_check else run_host(query, "cpu", tables, 1 << 20)
            dev = [run_device(query, tables, args.batch_rows, args.engine) for _ in range(args.repeat + 1)]
            host = [run_host(query, args.engine, tables, args.batch_rows)
                    for _ in range(args.repeat + 1)]
            if ref is not None:
                check(dev[0][1], ref[1], f"{name} (device)")
                check(host[0][1], ref[1], f"{name} (host)")
            lat: list[float] = []
            run_device(query, tables, args.batch_rows, args.engine, lat)
            lat_ms = np.array(lat) * 1e3
            t_dev = statistics.median(t for t, _ in dev[1:])
            t_host = statistics.median(t for t, _ in host[1:])
            row = {"case": name, "events": events_in, "device_s": t_dev, "host_s": t_host,
                   "device_Mev_s": events_in / t_dev / 1e6,
                   "host_Mev_s": events_in / t_host / 1e6,
                   "cpu_s": ref[0] if ref else None, "rows_out": dev[0][1].rows,
                   "batches": len(lat), "batch_p50_ms": float(np.percentile(lat_ms, 50)),
                   "batch_p99_ms": float(np.percentile(lat_ms, 99))}
            results.append(row)
            print(f"{name:18s} on device {row['device_Mev_s']:8.1f} M ev/s ({t_dev:.3f} s) | "
                  f"from host {row['host_Mev_s']:8.1f} M ev/s ({t_host:.3f} s) | "
                  f"cpu backend {ref[0] if ref else float('nan'):.3f} s (1 run, incl. JIT) | "
                  f"batch p50 {row['batch_p50_ms']:.2f} ms, p99 {row['batch_p99_ms']:.2f} ms "
                  f"({len(lat)} batches, synchronized each)", flush=True)
        except Exception:  # one case failing must not hide the others' figures
            traceback.print_exc()
            results.append({"case": name, "error": traceback.format_exc(limit=3)})
            print(f"{name}: FAILED", flush=True)
        _save(args, results)  # after each case: a run cut short keeps what it measured
    _save(args, results)
    return 1 if any("error" in r for r in results) else 0


def _save(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """``$OUT/bench_device.json``, where ``OUT`` is set."""
    meta = {"node": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "events": args.events, "batch_rows": args.batch_rows, "repeat": args.repeat}
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_device.json").write_text(json.dumps({"meta": meta, "results": results},
                                                             indent=1))


if __name__ == "__main__":
    sys.exit(main())
