"""Run metrics: what the live view shows and the Prometheus endpoint serves.

The runtime updates a :class:`Metrics` after every batch, cheaply: a few counters, one
latency histogram bucket, a slot of a ring of recent latencies and, at most every
``SAMPLE_EVERY_S``, a slot of a ring of (time, events in, rows out, watermark) samples,
from which the live view takes its rates over the last ``RECENT_S`` seconds. Nothing is
allocated per batch. Gauges that live in the operators (open windows, late events) are
read when someone looks: the live view's refresh, or a scrape of ``/metrics``; each
source's lag (records behind its input, per part) is set by the runtime from
:meth:`gpustream.ingest.source.Source.lag`. A partitioned run (:mod:`gpustream.cluster`)
also sets each partition's counters after every round (:meth:`Metrics.set_partitions`).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LATENCY_BUCKETS_S", "PARTITION_KEYS", "RECENT_S", "SAMPLE_EVERY_S", "Metrics",
           "serve_prometheus"]

_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}

#: upper bounds (seconds) of the batch latency histogram's buckets (+Inf is implied)
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: rates (events per second, event seconds per wall second) are over this many seconds
RECENT_S = 10.0
#: at most one (time, counts, watermark) sample this often
SAMPLE_EVERY_S = 0.25
#: a watermark this close to wall-clock time is "live": the view shows its lag
NEAR_NOW_S = 86_400.0
_SAMPLES = 64  # ring of samples: >= RECENT_S / SAMPLE_EVERY_S + slack
_LATENCIES = 1024  # ring of recent batch latencies, for the live view's p50/p99
#: what :meth:`Metrics.set_partitions` keeps of each partition (a missing one reads 0;
#: ``watermark`` None)
PARTITION_KEYS = ("events_in", "events_out", "bad_records", "late_events", "state_bytes",
                  "round_seconds", "watermark")


@dataclass
class Metrics:
    """Counters, a batch latency histogram and recent samples of one run.

    ``clock`` (monotonic seconds) and ``wall_clock`` (epoch seconds) are there for
    tests; the defaults are :func:`time.monotonic` and :func:`time.time`.

    Examples
    --------
    >>> m = Metrics("demo", "cpu")
    >>> for s in (0.010, 0.020, 0.030, 0.500):
    ...     m.batch(1000, s, watermark=5_000)
    >>> m.events_in, m.latency_ms(0.5), m.watermark_ms
    (4000, 25.0, 5000.0)
    >>> m.latency_buckets()[-1], m.latency_sum_s()
    (('+Inf', 4), 0.56)
    """

    pipeline: str
    backend: str
    events_in: int = 0
    events_out: int = 0
    batches: int = 0
    bad_records: int = 0
    watermark_ms: float | None = None
    #: event-time unit of the watermark ("ms" unless the event-time column says otherwise)
    unit: str = "ms"
    #: read on demand: late events and open windows, from the operators
    gauges: Callable[[], dict[str, int]] = field(default=lambda: {})
    #: what the run is doing when it is not yet processing (e.g. compiling kernels)
    phase: str | None = None
    #: records behind per source and part ({source: {part: records}}), for the sources
    #: that can tell; the runtime replaces the whole dict every so often
    source_lag: dict[str, dict[str, int]] = field(default_factory=dict)
    #: a partitioned run's partitions (index = partition number), as last set by
    #: :meth:`set_partitions`; empty for a run in one process
    _partitions: tuple[dict[str, float | None], ...] = field(default=(), repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    wall_clock: Callable[[], float] = field(default=time.time, repr=False)
    started: float = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latencies: np.ndarray = field(default_factory=lambda: np.zeros(_LATENCIES), repr=False)
    _n_latencies: int = field(default=0, repr=False)
    _buckets: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1), repr=False)
    _latency_sum: float = field(default=0.0, repr=False)
    #: rows of (monotonic time, events in, rows out, watermark ms or NaN)
    _samples: np.ndarray = field(
        default_factory=lambda: np.full((_SAMPLES, 4), np.nan), repr=False)
    _n_samples: int = field(default=0, repr=False)
    _last_sample: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._sample(self.started)

    def _sample(self, now: float) -> None:
        """Record (now, counts, watermark) in the ring; the caller holds the lock."""
        row = self._samples[self._n_samples % _SAMPLES]
        row[0] = now
        row[1] = self.events_in
        row[2] = self.events_out
        row[3] = np.nan if self.watermark_ms is None else self.watermark_ms
        self._n_samples += 1
        self._last_sample = now

    def batch(self, events: int, seconds: float, watermark: int | None) -> None:
        """One input batch of ``events`` went through the pipeline in ``seconds``;
        ``watermark`` is the source's watermark after it, in the event-time unit."""
        now = self.clock()
        with self._lock:
            self.events_in += events
            self.batches += 1
            self._latencies[self._n_latencies % _LATENCIES] = seconds
            self._n_latencies += 1
            self._buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self._latency_sum += seconds
            if watermark is not None:
                self.watermark_ms = watermark * _UNIT_MS.get(self.unit, 1.0)
            if now - self._last_sample >= SAMPLE_EVERY_S:
                self._sample(now)

    def set_partitions(self, parts: Sequence[Mapping[str, float | None]]) -> None:
        """A partitioned run's partitions, after a round: one mapping each (index =
        partition number) of ``events_in``, ``events_out``, ``bad_records``,
        ``late_events``, ``state_bytes`` (totals since the partition opened),
        ``round_seconds`` (its last round) and ``watermark`` (event-time units, or None).

        The totals of the run stay those :meth:`batch` and the coordinator keep; these
        are served next to them, labelled ``partition="i"``, and shown by the live view.
        Safe to call while another thread reads them (:meth:`partitions`).

        Examples
        --------
        >>> m = Metrics("doc", "cpu")
        >>> m.set_partitions([{"events_in": 600, "events_out": 5, "watermark": 9_000},
        ...                   {"events_in": 400, "events_out": 3, "watermark": None}])
        >>> [(p["events_in"], p["state_bytes"], p["watermark"]) for p in m.partitions()]
        [(600, 0, 9000), (400, 0, None)]
        """
        kept = tuple({k: part.get(k, None if k == "watermark" else 0) for k in PARTITION_KEYS}
                     for part in parts)
        with self._lock:
            self._partitions = kept

    def partitions(self) -> list[dict[str, float | None]]:
        """A copy of the partitions as last set (empty: not a partitioned run)."""
        with self._lock:
            kept = self._partitions
        return [dict(p) for p in kept]

    def partition_rows(self) -> list[tuple[str, str, str, str, str]]:
        """The live view's partition table: (partition, events in, rows out, watermark,
        state) as text, one row per partition. The watermark shows as its lag behind
        wall-clock time when it is live, else as how far it is behind the partition
        furthest ahead (the skew that holds back the run's watermark).

        Examples
        --------
        >>> m = Metrics("doc", "cpu", wall_clock=lambda: 1_767_225_610.0)
        >>> m.set_partitions([
        ...     {"events_in": 1200, "events_out": 7, "state_bytes": 3 * 2**20,
        ...      "watermark": 1_767_225_600_000},
        ...     {"events_in": 800, "events_out": 4, "state_bytes": 512, "watermark": None}])
        >>> for row in m.partition_rows():
        ...     print(row)
        ('0', '1,200', '7', '10.0 s behind', '3.0 MiB')
        ('1', '800', '4', '-', '0.5 KiB')
        >>> m.wall_clock = lambda: 1_900_000_000.0  # replaying history: skew between them
        >>> m.set_partitions([{"watermark": 60_000}, {"watermark": 45_000}])
        >>> [row[3] for row in m.partition_rows()]
        ['1970-01-01 00:01:00 UTC', '15.0 s behind partition 0']
        """
        parts = self.partitions()
        scale = _UNIT_MS.get(self.unit, 1.0) / 1e3
        marks = [None if p["watermark"] is None else float(p["watermark"]) * scale
                 for p in parts]
        known = [(wm, i) for i, wm in enumerate(marks) if wm is not None]
        ahead = max(known) if known else None
        now = self.wall_clock()
        rows = []
        for i, (p, wm) in enumerate(zip(parts, marks, strict=True)):
            if wm is None:
                shown = "-"
            elif abs(now - wm) <= NEAR_NOW_S:
                shown = f"{now - wm:,.1f} s behind"
            elif ahead is not None and ahead[0] > wm:
                shown = f"{ahead[0] - wm:,.1f} s behind partition {ahead[1]}"
            else:
                shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wm))
            rows.append((str(i), f"{int(p['events_in'] or 0):,}",
                         f"{int(p['events_out'] or 0):,}", shown,
                         _size(int(p["state_bytes"] or 0))))
        return rows

    def latency_ms(self, q: float) -> float:
        """The ``q`` quantile of recent batch latencies, in milliseconds (0 before any)."""
        with self._lock:
            recent = self._latencies[:min(self._n_latencies, _LATENCIES)].copy()
        return float(np.quantile(recent, q) * 1e3) if len(recent) else 0.0

    def latency_buckets(self) -> list[tuple[str, int]]:
        """Cumulative batch latency histogram: (upper bound in seconds, batches at or
        under it), the last bound ``+Inf``, as Prometheus wants them.

        Examples
        --------
        >>> m = Metrics("doc", "cpu")
        >>> m.batch(10, 0.004, None); m.batch(10, 2.0, None)
        >>> [(b, c) for b, c in m.latency_buckets() if b in ("0.005", "2.5", "+Inf")]
        [('0.005', 1), ('2.5', 2), ('+Inf', 2)]
        """
        from prometheus_client.utils import floatToGoString

        with self._lock:
            counts = list(self._buckets)
        bounds = [*LATENCY_BUCKETS_S, float("inf")]
        return [(floatToGoString(b), int(c)) for b, c in zip(bounds, np.cumsum(counts),
                                                              strict=True)]

    def latency_sum_s(self) -> float:
        """Total seconds of all batches (the histogram's sum).

        Examples
        --------
        >>> m = Metrics("doc", "cpu")
        >>> m.batch(10, 0.25, None); m.batch(10, 0.5, None)
        >>> m.latency_sum_s()
        0.75
        """
        with self._lock:
            return self._latency_sum

    def _recent(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(now, the sample to measure from, samples since it): the newest sample at
        least ``RECENT_S`` old, or the oldest one when the run is younger than that."""
        now = self.clock()
        with self._lock:
            s = self._samples[:min(self._n_samples, _SAMPLES)].copy()
        s = s[np.argsort(s[:, 0])]
        old = np.flatnonzero(s[:, 0] <= now - RECENT_S)
        i = int(old[-1]) if len(old) else 0
        return now, s[i], s[i:]

    def rates(self) -> tuple[float, float]:
        """Events in and rows out per second over the last ``RECENT_S`` seconds.

        Examples
        --------
        >>> t = [0.0]
        >>> m = Metrics("doc", "cpu", clock=lambda: t[0])
        >>> for t[0] in range(1, 31):  # 1,000 events a second for 20 s, then 100
        ...     m.batch(1000 if t[0] <= 20 else 100, 0.001, None)
        >>> m.rates()[0]  # the last 10 s, not since the start
        100.0
        """
        now, base, _ = self._recent()
        dt = now - base[0]
        if dt <= 0:
            return 0.0, 0.0
        return float((self.events_in - base[1]) / dt), float((self.events_out - base[2]) / dt)

    def event_time_rate(self) -> float | None:
        """Event-time seconds the watermark advanced per wall-clock second, over the last
        ``RECENT_S`` seconds (None until it has been measured over at least a second).

        Examples
        --------
        >>> t = [0.0]
        >>> m = Metrics("doc", "cpu", clock=lambda: t[0])
        >>> for t[0] in range(1, 6):  # each wall second, a minute of event time
        ...     m.batch(100, 0.001, watermark=60_000 * t[0])
        >>> m.event_time_rate()
        60.0
        """
        now, _, since = self._recent()
        wm = self.watermark_ms
        seen = since[~np.isnan(since[:, 3])]
        if wm is None or not len(seen) or now - seen[0, 0] < 1.0:
            return None
        return float((wm - seen[0, 3]) / 1e3 / (now - seen[0, 0]))

    def lag_s(self) -> float | None:
        """How far the watermark is behind wall-clock time (event times in epoch units)."""
        if self.watermark_ms is None:
            return None
        return self.wall_clock() - self.watermark_ms / 1e3

    def gpu_memory(self) -> tuple[int, int] | None:
        """(used, total) bytes of the device pool (cupy's or RMM's, which numba's
        allocations share: :mod:`gpustream.devicepool`) on the cuda backend; None elsewhere
        or where the pool cannot tell."""
        if self.backend != "cuda":
            return None
        from gpustream.devicepool import pool_usage

        return pool_usage()

    def event_time(self) -> str:
        """The live view's event-time row: the watermark as a UTC time and, while replaying
        history, how fast it advances; the lag behind wall-clock time when it is live.

        Examples
        --------
        >>> m = Metrics("doc", "cpu", wall_clock=lambda: 1_767_225_602.5)
        >>> m.batch(10, 0.001, watermark=1_767_225_600_000)
        >>> m.event_time()
        '2026-01-01 00:00:00 UTC, 2.5 s behind wall clock'
        """
        if self.watermark_ms is None:
            return "(no watermark yet)"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.watermark_ms / 1e3))
        lag = self.lag_s()
        if lag is not None and abs(lag) <= NEAR_NOW_S:
            return f"{stamp}, {lag:,.1f} s behind wall clock"
        rate = self.event_time_rate()
        if rate is None:
            return stamp
        if rate <= 0:
            return f"{stamp}, not advancing"
        return f"{stamp}, {rate:,.0f}x real time" if rate >= 10 else (
            f"{stamp}, {rate:.2g}x real time")

    def lag_text(self) -> str | None:
        """The live view's source-lag row (None when no source can tell its lag).

        Examples
        --------
        >>> m = Metrics("doc", "cpu")
        >>> m.source_lag = {"bids": {"0": 900, "1": 40, "2": 0}, "people": {"pending": 3}}
        >>> m.lag_text()
        'bids 940 records behind (3 parts, most in 0: 900); people 3 records behind'
        """
        lags = self.source_lag
        if not lags:
            return None
        out = []
        for name, parts in lags.items():
            text = f"{name} {sum(parts.values()):,} records behind"
            if len(parts) > 1:
                most = max(parts, key=lambda k: parts[k])
                text += f" ({len(parts)} parts, most in {most}: {parts[most]:,})"
            out.append(text)
        return "; ".join(out)

    def rows(self) -> Iterator[tuple[str, str]]:
        """(label, value) pairs for the live view and log lines."""
        rate_in, rate_out = self.rates()
        g = self.gauges()
        if self.phase is not None:
            yield "status", self.phase
        yield "events in", f"{self.events_in:,} ({rate_in:,.0f}/s)"
        yield "rows out", f"{self.events_out:,} ({rate_out:,.0f}/s)"
        yield "batches", f"{self.batches:,}"
        yield "batch latency", f"p50 {self.latency_ms(0.5):.1f} ms, p99 {self.latency_ms(0.99):.1f} ms"
        yield "event time", self.event_time()
        lag = self.lag_text()
        if lag is not None:
            yield "source lag", lag
        yield "open windows", f"{g.get('open_windows', 0):,}" + (
            f" ({_size(g['state_bytes'])} of state)" if "state_bytes" in g else "")
        yield "late events", f"{g.get('late_events', 0):,}" + (
            f" ({g['dropped_memberships']:,} (event, window) pairs dropped)"
            if g.get("dropped_memberships", 0) > g.get("late_events", 0) else "")
        yield "dead letters", f"{self.bad_records:,}"
        mem = self.gpu_memory()
        if mem is not None:
            yield "GPU memory", f"{mem[0] / 2**20:,.0f} MiB used of {mem[1] / 2**20:,.0f} MiB pooled"

    def line(self) -> str:
        """One log line."""
        return f"{self.pipeline}: " + "; ".join(f"{k} {v}" for k, v in self.rows())


def _size(n: int) -> str:
    """Bytes for people.

    Examples
    --------
    >>> _size(512), _size(3 * 2**20 + 1)
    ('0.5 KiB', '3.0 MiB')
    """
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _families(metrics: Metrics) -> Iterator[Any]:
    """The Prometheus metric families of ``metrics``, read now."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = ["pipeline"]
    value = [metrics.pipeline]
    g = metrics.gauges()
    for name, doc, v in [
        ("gpustream_events_in", "Events read from the sources.", metrics.events_in),
        ("gpustream_events_out", "Rows written to the sinks.", metrics.events_out),
        ("gpustream_batches", "Input batches processed.", metrics.batches),
        ("gpustream_late_events", "Events too late for all their windows (dropped).",
         g.get("late_events", 0)),
        ("gpustream_dropped_memberships", "(event, window) pairs not counted because the "
         "window had fired (an event late for some of its sliding windows, or for all).",
         g.get("dropped_memberships", 0)),
        ("gpustream_bad_records", "Records that could not be read, sent to the dead letters.",
         metrics.bad_records),
    ]:
        c = CounterMetricFamily(name, doc, labels=labels)
        c.add_metric(value, v)
        yield c
    h = HistogramMetricFamily(
        "gpustream_batch_latency_seconds",
        "Seconds from taking an input batch to its results in the sinks.", labels=labels,
        unit="seconds")
    h.add_metric(value, metrics.latency_buckets(), metrics.latency_sum_s())
    yield h
    gauges: list[tuple[str, str, str, float]] = [
        ("gpustream_open_windows", "Windows holding state.", "", g.get("open_windows", 0)),
        ("gpustream_state_bytes", "Bytes of operator state held (windows, joins, tables; "
         "device memory on a GPU).", "bytes", g.get("state_bytes", 0)),
    ]
    wm = metrics.watermark_ms
    if wm is not None:
        gauges.append(("gpustream_watermark_timestamp_seconds",
                       "The watermark: event time (seconds since the epoch) up to which "
                       "the input is complete.", "seconds", wm / 1e3))
        lag = metrics.lag_s()
        if lag is not None and abs(lag) <= NEAR_NOW_S:  # replaying history: meaningless
            gauges.append(("gpustream_watermark_lag_seconds",
                           "Wall-clock time minus the watermark (only while the watermark "
                           "is within a day of now).", "seconds", lag))
    mem = metrics.gpu_memory()
    if mem is not None:
        gauges.append(("gpustream_gpu_memory_used_bytes",
                       "Bytes in use in the device memory pool (cupy's or RMM's).",
                       "bytes", mem[0]))
        gauges.append(("gpustream_gpu_memory_pooled_bytes",
                       "Bytes held by the device memory pool (cupy's or RMM's).", "bytes",
                       mem[1]))
    for name, doc, unit, fv in gauges:
        gauge = GaugeMetricFamily(name, doc, labels=labels, unit=unit)
        gauge.add_metric(value, fv)
        yield gauge
    lags = metrics.source_lag
    if lags:
        gauge = GaugeMetricFamily(
            "gpustream_source_lag_records",
            "Records a source is behind its input, per part (Kafka: consumer lag per "
            "partition; Redis: the group's pending entries).",
            labels=["pipeline", "source", "part"], unit="records")
        for source, parts in lags.items():
            for part, n in parts.items():
                gauge.add_metric([metrics.pipeline, source, part], n)
        yield gauge
    yield from _partition_families(metrics)


#: a partitioned run's series, per partition: (name, help, kind, unit, key of the report)
_PARTITION_SERIES = (
    ("gpustream_partition_events_in", "Events read by one partition of a partitioned run "
     "(since it opened; the run's total is gpustream_events_in).", "counter", "", "events_in"),
    ("gpustream_partition_events_out", "Rows one partition wrote to the sinks (since it "
     "opened).", "counter", "", "events_out"),
    ("gpustream_partition_bad_records", "Records one partition sent to the dead letters "
     "(since it opened).", "counter", "", "bad_records"),
    ("gpustream_partition_late_events", "Events too late for all their windows in one "
     "partition (since it opened).", "counter", "", "late_events"),
    ("gpustream_partition_state_bytes", "Bytes of operator state one partition holds.",
     "gauge", "bytes", "state_bytes"),
    ("gpustream_partition_round_seconds", "Seconds one partition's last round took.",
     "gauge", "seconds", "round_seconds"),
)


def _partition_families(metrics: Metrics) -> Iterator[Any]:
    """The per-partition families (``partition="i"``) of a partitioned run; none for a
    run in one process."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    parts = metrics.partitions()
    if not parts:
        return
    labels = ["pipeline", "partition"]
    for name, doc, kind, unit, key in _PARTITION_SERIES:
        family: Any = (CounterMetricFamily(name, doc, labels=labels) if kind == "counter"
                       else GaugeMetricFamily(name, doc, labels=labels, unit=unit))
        for i, part in enumerate(parts):
            family.add_metric([metrics.pipeline, str(i)], float(part[key] or 0))
        yield family
    scale = _UNIT_MS.get(metrics.unit, 1.0) / 1e3
    wm = GaugeMetricFamily(
        "gpustream_partition_watermark_timestamp_seconds",
        "One partition's watermark (event time, seconds since the epoch); the run's is the "
        "smallest of them. Absent for a partition that has none yet.",
        labels=labels, unit="seconds")
    for i, part in enumerate(parts):
        if part["watermark"] is not None:
            wm.add_metric([metrics.pipeline, str(i)], float(part["watermark"]) * scale)
    yield wm


def serve_prometheus(metrics: Metrics, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``metrics`` in Prometheus text format at ``http://host:port/metrics``.

    Binds to loopback unless told otherwise. Returns the server (``.shutdown()`` stops it).
    Counters end in ``_total``, batch latency is a histogram
    (``gpustream_batch_latency_seconds``), per-source lag is
    ``gpustream_source_lag_records{pipeline, source, part}``. A partitioned run adds
    ``gpustream_partition_*{pipeline, partition}`` series (events in and out, bad
    records, late events, state bytes, last round's seconds, watermark), one per
    partition, next to the run's totals.

    Examples
    --------
    >>> import urllib.request
    >>> m = Metrics("doc", "cpu")
    >>> m.batch(10, 0.01, None)
    >>> server = serve_prometheus(m, 0)
    >>> url = f"http://127.0.0.1:{server.server_port}/metrics"
    >>> text = urllib.request.urlopen(url).read().decode()
    >>> [ln for ln in text.splitlines() if ln.startswith("gpustream_events_in_total")]
    ['gpustream_events_in_total{pipeline="doc"} 10.0']
    >>> m.set_partitions([{"events_in": 6, "watermark": 2_000}, {"events_in": 4}])
    >>> text = urllib.request.urlopen(url).read().decode()
    >>> for ln in text.splitlines():
    ...     if ln.startswith(("gpustream_partition_events_in_total",
    ...                       "gpustream_partition_watermark_timestamp_seconds{")):
    ...         print(ln)
    gpustream_partition_events_in_total{partition="0",pipeline="doc"} 6.0
    gpustream_partition_events_in_total{partition="1",pipeline="doc"} 4.0
    gpustream_partition_watermark_timestamp_seconds{partition="0",pipeline="doc"} 2.0
    >>> server.shutdown(); server.server_close()
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import make_wsgi_app
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterator[Any]:
            return _families(metrics)

    registry = CollectorRegistry()
    registry.register(_Collector())
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class _Server(WSGIServer):
        daemon_threads = True

    server = make_server(host, port, make_wsgi_app(registry), _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True,
                     name="gpustream-metrics").start()
    return server
