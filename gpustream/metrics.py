"""Run metrics: what the live view shows and the Prometheus endpoint serves.

The runtime updates a :class:`Metrics` after every batch (cheap: counters, one latency
sample). Gauges that live in the operators (open windows, late events) are read when
someone looks: the live view's refresh, or a scrape of ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Metrics", "serve_prometheus"]

_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


@dataclass
class Metrics:
    """Counters and recent batch latencies of one run.

    Examples
    --------
    >>> m = Metrics("demo", "cpu")
    >>> for s in (0.010, 0.020, 0.030, 0.500):
    ...     m.batch(1000, s, watermark=5_000)
    >>> m.events_in, m.latency_ms(0.5), m.watermark_ms
    (4000, 25.0, 5000.0)
    """

    pipeline: str
    backend: str
    events_in: int = 0
    events_out: int = 0
    batches: int = 0
    bad_records: int = 0
    watermark_ms: float | None = None
    started: float = field(default_factory=time.monotonic)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    #: event-time unit of the watermark ("ms" unless the event-time column says otherwise)
    unit: str = "ms"
    #: read on demand: late events and open windows, from the operators
    gauges: Callable[[], dict[str, int]] = field(default=lambda: {})
    #: what the run is doing when it is not yet processing (e.g. compiling kernels)
    phase: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def batch(self, events: int, seconds: float, watermark: int | None) -> None:
        """One input batch went through the pipeline in ``seconds``."""
        with self._lock:
            self.events_in += events
            self.batches += 1
            self.latencies.append(seconds)
            if watermark is not None:
                self.watermark_ms = watermark * _UNIT_MS.get(self.unit, 1.0)

    def latency_ms(self, q: float) -> float:
        """The ``q`` quantile of recent batch latencies, in milliseconds (0 before any)."""
        with self._lock:
            if not self.latencies:
                return 0.0
            return float(np.quantile(np.fromiter(self.latencies, float), q) * 1e3)

    def lag_s(self) -> float | None:
        """How far the watermark is behind wall-clock time (event times in epoch units)."""
        if self.watermark_ms is None:
            return None
        return time.time() - self.watermark_ms / 1e3

    def gpu_memory(self) -> tuple[int, int] | None:
        """(used, total) bytes of cupy's memory pool on the cuda backend."""
        if self.backend != "cuda":
            return None
        import cupy

        pool = cupy.get_default_memory_pool()
        return int(pool.used_bytes()), int(pool.total_bytes())

    def rates(self) -> tuple[float, float]:
        """Events in and rows out per second since the start."""
        dt = max(time.monotonic() - self.started, 1e-9)
        return self.events_in / dt, self.events_out / dt

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
        lag = self.lag_s()
        if self.watermark_ms is None:
            yield "watermark", "(none yet)"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.watermark_ms / 1e3))
            yield "watermark", f"{stamp} UTC (lag {lag:,.1f} s)"
        yield "open windows", f"{g.get('open_windows', 0):,}"
        yield "late events", f"{g.get('late_events', 0):,}"
        yield "dead letters", f"{self.bad_records:,}"
        mem = self.gpu_memory()
        if mem is not None:
            yield "GPU memory", f"{mem[0] / 2**20:,.0f} MiB used of {mem[1] / 2**20:,.0f} MiB pooled"

    def line(self) -> str:
        """One log line."""
        return f"{self.pipeline}: " + "; ".join(f"{k} {v}" for k, v in self.rows())


def serve_prometheus(metrics: Metrics, port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``metrics`` in Prometheus text format at ``http://host:port/metrics``.

    Binds to loopback unless told otherwise. Returns the server (``.shutdown()`` stops it).

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
    >>> server.shutdown(); server.server_close()
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import make_wsgi_app
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterator[Any]:
            labels = ["pipeline"]
            value = [metrics.pipeline]
            g = metrics.gauges()
            for name, doc, v in [
                ("gpustream_events_in", "Events read from the sources.", metrics.events_in),
                ("gpustream_events_out", "Rows written to the sinks.", metrics.events_out),
                ("gpustream_batches", "Input batches processed.", metrics.batches),
                ("gpustream_late_events", "Events too late for all their windows.",
                 g.get("late_events", 0)),
                ("gpustream_bad_records", "Records sent to the dead letters.",
                 metrics.bad_records),
            ]:
                c = CounterMetricFamily(name, doc, labels=labels)
                c.add_metric(value, v)
                yield c
            gauges: list[tuple[str, str, float]] = [
                ("gpustream_open_windows", "Windows holding state.", g.get("open_windows", 0)),
                ("gpustream_batch_latency_p50_seconds", "Median batch latency (recent).",
                 metrics.latency_ms(0.5) / 1e3),
                ("gpustream_batch_latency_p99_seconds", "p99 batch latency (recent).",
                 metrics.latency_ms(0.99) / 1e3),
            ]
            for name, doc, fv in gauges:
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric(value, fv)
                yield gauge
            lag = metrics.lag_s()
            if lag is not None:
                gauge = GaugeMetricFamily("gpustream_watermark_lag_seconds",
                                          "Wall-clock time minus the watermark.", labels=labels)
                gauge.add_metric(value, lag)
                yield gauge
            mem = metrics.gpu_memory()
            if mem is not None:
                gauge = GaugeMetricFamily("gpustream_gpu_memory_used_bytes",
                                          "Bytes in use in cupy's memory pool.", labels=labels)
                gauge.add_metric(value, mem[0])
                yield gauge

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
