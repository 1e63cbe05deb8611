"""Prometheus metrics of one service instance, in a registry of its own (two apps in one process never mix).

Labels are bounded: the route template (``/v1/predict``, not the raw URL; unknown paths are ``unmatched``) and
the status code, so a scanner probing random URLs cannot grow the label set.
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self, queue_depth=lambda: 0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("fetalclip_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("fetalclip_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("fetalclip_batch_size", "Jobs per model batch, by kind", ["kind"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("fetalclip_queue_depth", "Jobs waiting for a batch", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.largest_batch = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)
        self.largest_batch = max(self.largest_batch, size)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["ServiceMetrics"]
