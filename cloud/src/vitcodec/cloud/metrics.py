"""Prometheus metrics of one server. Each server owns its registry, so several can live in one process
(tests, benchmarks) without clashing, and ``/metrics`` shows exactly that server's figures."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_BYTES_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576)


class Metrics:
    """Counters and histograms named ``vitcodec_*``; see docs/api.md for the list."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vitcodec_requests", "Requests handled, by transport, endpoint and status code.",
                                ("protocol", "endpoint", "code"), registry=r)
        self.errors = Counter("vitcodec_request_errors", "Requests that failed, by transport, endpoint and code.",
                              ("protocol", "endpoint", "code"), registry=r)
        self.latency = Histogram("vitcodec_request_duration_seconds", "Server-side request latency.",
                                 ("protocol", "endpoint"), buckets=_LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter("vitcodec_request_bytes", "Request body bytes received.", ("protocol",),
                                registry=r)
        self.inflight = Gauge("vitcodec_inflight_requests", "Requests being handled now.", ("protocol",),
                              registry=r)
        self.stream_bytes = Histogram("vitcodec_stream_bytes", "Size of the bitstreams decoded, header included.",
                                      ("model",), buckets=_BYTES_BUCKETS, registry=r)
        self.streams = Counter("vitcodec_streams", "Bitstreams processed, by model, kind and outcome.",
                               ("model", "kind", "outcome"), registry=r)
        self.decode_time = Histogram("vitcodec_decode_duration_seconds", "Entropy decoding time per stream.",
                                     ("model",), buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("vitcodec_queue_duration_seconds",
                                    "Time a decoded stream waits in its model's batch queue.",
                                    ("model", "kind"), buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vitcodec_batch_size", "Streams per batched forward.", ("model", "kind"),
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.compute_time = Histogram("vitcodec_batch_compute_seconds", "Time of one batched forward.",
                                      ("model", "kind"), buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("vitcodec_queue_depth", "Streams waiting in a model's batch queue.",
                                 ("model", "kind"), registry=r)
        self.model_ready = Gauge("vitcodec_model_ready", "1 when the model version is loaded and serving.",
                                 ("model", "version"), registry=r)
        self.auth_failures = Counter("vitcodec_auth_failures", "Requests refused for their bearer token, by reason "
                                     "(missing, malformed, unknown device, revoked device, invalid token); never "
                                     "by device.", ("reason",), registry=r)
        # the archive (--archive): absent from the figures' meaning when it is off (they stay at 0)
        self.archive_writes = Counter("vitcodec_archive_writes", "Classified streams committed to the archive "
                                      "(a stream seen again counts again).", registry=r)
        self.archive_failures = Counter("vitcodec_archive_failures", "Archive failures, by operation (write, "
                                        "queue_full: entries lost; open, retention: attempts).", ("operation",),
                                        registry=r)
        self.archive_up = Gauge("vitcodec_archive_up", "1 while the archive writes, 0 while it is degraded.",
                                registry=r)
        self.archive_bytes = Gauge("vitcodec_archive_bytes", "Bytes of the archive's database in use (pages), "
                                   "measured at each retention pass.", registry=r)
        self.archive_retention = Counter("vitcodec_archive_retention_deleted", "Entries removed by retention, by "
                                         "reason (age, size).", ("reason",), registry=r)

        # (protocol, endpoint, code) -> its request counter and latency histogram: `labels()` takes a lock and
        # builds a key on every call, and this runs once per request
        self._request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, protocol: str, endpoint: str, code: str, seconds: float, failed: bool) -> None:
        key = (protocol, endpoint, code)
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(protocol, endpoint, code), self.latency.labels(protocol, endpoint))
            self._request_series[key] = series
        series[0].inc()
        if failed:
            self.errors.labels(protocol, endpoint, code).inc()
        series[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
