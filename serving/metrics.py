"""Prometheus metrics of one server (its own registry, so two apps in one process never mix counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "adamix_requests",
            "HTTP requests by route, model and status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "adamix_request_seconds",
            "HTTP request time, from the request's arrival to its last byte.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("adamix_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.batch_size = Histogram(
            "adamix_batch_size",
            "Classification inputs per dynamic batch, or generation rows per decode step.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "adamix_inference_seconds", "Time in onnxruntime per classification batch (its length-sorted calls together).", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("adamix_queue_depth", "Requests waiting for the model.", ["model"], registry=r)
        self.generated_tokens = Counter("adamix_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.ready = Gauge("adamix_ready", "1 when every model is loaded and warmed up.", registry=r)
