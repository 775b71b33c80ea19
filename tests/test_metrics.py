"""Run metrics: Prometheus output (names, histogram, per-source lag) and the live view."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

import gpustream as gs
from gpustream.ingest.source import Source, SourceBatch
from gpustream.live import LiveView
from gpustream.metrics import LATENCY_BUCKETS_S, Metrics, serve_prometheus

JULY_2015 = 1_436_918_400  # 2015-07-15 00:00:00 UTC, epoch seconds


class Clock:
    """A settable clock for Metrics' ``clock`` / ``wall_clock``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scrape(m: Metrics) -> dict[str, Any]:
    """{family name: family} from a real scrape of ``serve_prometheus``."""
    server = serve_prometheus(m, 0)
    try:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


class LaggingSource(Source):
    """``batches`` batches of 10 rows from part p0, with p1 left ``p1_behind`` records
    behind; lag() reports what the reading thread recorded, and who asked."""

    name = "lagging"

    def __init__(self, batches: int, p1_behind: int = 5, sleep_s: float = 0.0) -> None:
        self.batches = batches
        self.p1_behind = p1_behind
        self.sleep_s = sleep_s
        self._lag: dict[str, int] | None = None
        self.callers: list[str] = []

    def schema(self) -> pa.Schema:
        return pa.schema([("ts", pa.timestamp("ms")), ("x", pa.int64())])

    def open(self, offset: Any = None) -> Iterator[SourceBatch]:
        for b in range(self.batches):
            if self.sleep_s:
                time.sleep(self.sleep_s)
            self._lag = {"p0": 10 * (self.batches - b - 1), "p1": self.p1_behind}
            ts = pa.array([1_000 * (10 * b + i) for i in range(10)], pa.timestamp("ms"))
            yield SourceBatch(pa.record_batch([ts, pa.array(range(10), pa.int64())],
                                              schema=self.schema()), b)

    def lag(self) -> dict[str, int] | None:
        self.callers.append(threading.current_thread().name)
        return None if self._lag is None else dict(self._lag)


def test_source_lag_is_read_on_the_pipeline_thread_and_served_per_part() -> None:
    src = LaggingSource(batches=300)
    p = gs.Pipeline("lagged", engine="cpu")
    p.source(src, event_time="ts", name="orders").sink(gs.to_callback(lambda rb: None))
    m = Metrics("lagged", "cpu")
    t0 = time.monotonic()
    stats = p.run(metrics=m)
    elapsed = time.monotonic() - t0
    assert stats.events_in == 3000
    assert set(src.callers) == {threading.main_thread().name}  # never the source's thread
    # read when due (every 0.5 s) and at the end, not per batch (300 batches)
    assert 1 <= len(src.callers) <= 2 + elapsed / 0.5 + 1, (len(src.callers), elapsed)
    assert m.source_lag == {"orders": {"p0": 0, "p1": 5}}
    fams = _scrape(m)
    lag = fams["gpustream_source_lag_records"]
    assert lag.type == "gauge" and lag.documentation
    assert _samples(lag) == {
        ("gpustream_source_lag_records",
         (("part", "p0"), ("pipeline", "lagged"), ("source", "orders"))): 0.0,
        ("gpustream_source_lag_records",
         (("part", "p1"), ("pipeline", "lagged"), ("source", "orders"))): 5.0,
    }
    assert "source lag orders 5 records behind (2 parts, most in p1: 5)" in m.line()


def test_source_lag_is_refreshed_while_the_run_goes() -> None:
    src = LaggingSource(batches=24, sleep_s=0.05)  # about 1.2 s of reading
    p = gs.Pipeline("slow", engine="cpu")
    m = Metrics("slow", "cpu")
    seen: list[int] = []
    stream = p.source(src, event_time="ts", name="orders")
    stream.sink(gs.to_callback(
        lambda rb: seen.append(m.source_lag["orders"]["p0"]) if m.source_lag else None))
    p.run(metrics=m)
    mid_run = {v for v in seen if 0 < v < 230}
    assert len(mid_run) >= 2, seen  # read again during the run, not only once
    assert m.source_lag["orders"]["p0"] == 0


def test_a_source_without_lag_has_no_lag_metric() -> None:
    p = gs.Pipeline("nolag", engine="cpu")
    p.source(gs.nexmark(events=2000).bids, event_time="date_time").sink(
        gs.to_callback(lambda rb: None))
    m = Metrics("nolag", "cpu")
    p.run(metrics=m)
    assert m.source_lag == {}
    assert "gpustream_source_lag_records" not in _scrape(m)
    assert "source lag" not in m.line()


def test_metrics_endpoint_serves_the_run_counters() -> None:
    p = gs.Pipeline("hot", engine="cpu")
    bids = p.source(gs.nexmark(events=5000).bids, event_time="date_time",
                    watermark=gs.Watermark.bounded("2s"))
    bids.key_by("auction").window(gs.Tumbling("10s")).agg(n=gs.count()).sink(
        gs.to_callback(lambda rb: None))
    m = Metrics("hot", "cpu")
    server = serve_prometheus(m, 0)
    try:
        p.run(metrics=m)
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert server.server_address[0] == "127.0.0.1"
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    value = {name: f.samples[0].value for name, f in fams.items()}
    assert fams["gpustream_events_in"].samples[0].name == "gpustream_events_in_total"
    assert value["gpustream_events_in"] == 4600
    assert value["gpustream_events_out"] == m.events_out > 0
    assert value["gpustream_batches"] == m.batches >= 1
    # the window's state (its key table and pages, kept once its windows fired)
    assert fams["gpustream_state_bytes"].type == "gauge"
    assert value["gpustream_state_bytes"] == m.gauges()["state_bytes"] > 1000
    hist = _samples(fams["gpustream_batch_latency_seconds"])
    count = hist[("gpustream_batch_latency_seconds_count", (("pipeline", "hot"),))]
    assert count == m.batches
    # nexmark's event times are in November 2023: a replay, so no wall-clock lag
    assert value["gpustream_watermark_timestamp_seconds"] == pytest.approx(
        m.watermark_ms / 1e3)  # type: ignore[operator]
    assert 1_699_999_000 < value["gpustream_watermark_timestamp_seconds"] < 1_700_001_000
    assert "gpustream_watermark_lag_seconds" not in fams


def test_prometheus_names_follow_the_conventions() -> None:
    m = Metrics("names", "cpu", wall_clock=lambda: JULY_2015 + 3.0)
    m.gauges = lambda: {"late_events": 2, "open_windows": 7}
    m.batch(100, 0.002, (JULY_2015 + 1) * 1000)
    m.source_lag = {"bids": {"0": 4}}
    text = "\n".join(f"{f.type} {f.name}" for f in _scrape(m).values())
    fams = _scrape(m)
    for name, f in fams.items():
        assert name.startswith("gpustream_"), name
        assert f.documentation.strip(), f"{name} has no HELP text"
        if f.type == "counter":
            assert {s.name for s in f.samples} == {name + "_total"}
        assert "p50" not in name and "p99" not in name, text
    assert fams["gpustream_late_events"].samples[0].value == 2
    assert fams["gpustream_open_windows"].type == "gauge"
    assert fams["gpustream_batch_latency_seconds"].type == "histogram"
    assert fams["gpustream_watermark_lag_seconds"].samples[0].value == pytest.approx(2.0)
    assert fams["gpustream_watermark_timestamp_seconds"].samples[0].value == JULY_2015 + 1
    assert {"counter gpustream_bad_records", "gauge gpustream_source_lag_records"} <= set(
        text.splitlines())


def test_batch_latency_is_a_cumulative_histogram() -> None:
    m = Metrics("hist", "cpu")
    for s in (0.0004, 0.003, 0.003, 0.0009, 2.0, 45.0):
        m.batch(10, s, None)
    got = _samples(_scrape(m)["gpustream_batch_latency_seconds"])
    labels = (("pipeline", "hist"),)

    def bucket(le: str) -> float:
        return got[("gpustream_batch_latency_seconds_bucket", (("le", le), *labels))]

    assert bucket("0.00025") == 0
    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2
    assert bucket("0.005") == 4
    assert bucket("2.5") == 5
    assert bucket("30.0") == 5
    assert bucket("+Inf") == 6
    assert len([k for k in got if k[0].endswith("_bucket")]) == len(LATENCY_BUCKETS_S) + 1
    assert got[("gpustream_batch_latency_seconds_count", labels)] == 6
    assert got[("gpustream_batch_latency_seconds_sum", labels)] == pytest.approx(47.0073)
    # the live view keeps quantiles of recent batches
    assert m.latency_ms(0.5) == pytest.approx(3.0)


def test_rates_are_over_the_recent_interval() -> None:
    clock = Clock()
    m = Metrics("rates", "cpu", clock=clock)
    for clock.now in [0.5 * i for i in range(1, 121)]:  # 60 s: 20,000/s, then 1,000/s
        m.events_out += 50
        m.batch(10_000 if clock.now <= 40 else 500, 0.001, None)
    rate_in, rate_out = m.rates()
    assert rate_in == pytest.approx(1_000)  # since the start it would be 13,700/s
    assert rate_out == pytest.approx(100)
    clock.now += 30  # nothing for 30 s: the rate falls to zero
    assert m.rates() == (0.0, 0.0)
    assert "events in 820,000 (0/s)" in m.line()


def test_the_live_view_shows_event_time_progress_when_replaying_history() -> None:
    clock = Clock()
    now = JULY_2015 + 3600 * 24 * 365 * 11  # replaying 2015 in 2026
    m = Metrics("replay", "cpu", clock=clock, wall_clock=lambda: now)
    end = JULY_2015 + 100  # 2015-07-15 00:01:40 UTC at the end

    def watermark_ms(t: float) -> int:  # 1,000x real time for 10 s, then 312x for 10 s
        s = end - 312 * (20 - t) if t >= 10 else end - 312 * 10 - 1000 * (10 - t)
        return round(s * 1000)

    for i in range(1, 41):
        clock.now = 0.5 * i
        m.batch(1000, 0.001, watermark_ms(clock.now))
    assert m.event_time_rate() == pytest.approx(312)
    assert "event time 2015-07-15 00:01:40 UTC, 312x real time" in m.line()
    assert "behind wall clock" not in m.line()
    clock.now += 20  # the watermark stopped moving
    assert "2015-07-15 00:01:40 UTC, not advancing" in m.line()


def test_the_live_view_keeps_the_lag_when_the_watermark_is_live() -> None:
    m = Metrics("live", "cpu", wall_clock=lambda: 1_767_225_601.25)
    m.batch(10, 0.001, 1_767_225_600_000)
    assert "event time 2026-01-01 00:00:00 UTC, 1.2 s behind wall clock" in m.line()
    m.unit = "s"  # an event-time column in seconds
    m.batch(10, 0.001, 1_767_225_600)
    assert m.lag_s() == pytest.approx(1.25)


def test_the_live_view_renders_on_a_terminal() -> None:
    m = Metrics("live", "cpu", wall_clock=lambda: 1_767_225_600.5)
    m.gauges = lambda: {"late_events": 3, "open_windows": 12}
    m.batch(5000, 0.004, 1_767_225_600_000)
    m.events_out, m.bad_records = 40, 2
    m.source_lag = {"bids": {"0": 900, "1": 100}}
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    with LiveView(m, console):
        pass
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for want in ("events in", "5,000", "rows out", "batch latency", "p50 4.0 ms",
                 "event time", "2026-01-01 00:00:00 UTC, 0.5 s behind wall clock",
                 "source lag", "bids 1,000 records behind (2 parts, most in 0: 900)",
                 "open windows", "12", "late events", "dead letters"):
        assert want in text, want


def test_the_live_view_shows_the_phase_until_the_first_batch() -> None:
    m = Metrics("warm", "cpu")
    m.phase = "compiling kernels for this query (first run only)"
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    with LiveView(m, console, interval_s=60):
        pass
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "warm: status compiling kernels for this query (first run only); events in 0" in out
    p = gs.Pipeline("warm", engine="cpu")
    p.source(gs.from_arrow({"x": [1, 2]})).sink(gs.to_callback(lambda rb: None))
    p.run(metrics=m)
    assert m.phase is None and "status" not in m.line()


def test_a_batch_retains_no_memory() -> None:
    m = Metrics("cheap", "cpu")
    for i in range(5000):  # fill the rings
        m.batch(1000, 0.001, i)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(50_000):
            m.batch(1000, 0.001, 5000 + i)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert grown < 4096, grown  # nothing kept per batch: 50,000 batches would show
