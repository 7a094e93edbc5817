"""Prometheus metrics of one app, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
FRACTION_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


class Metrics:
    """Counters and histograms the server updates; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "persona_axis_http_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.completions = Counter(
            "persona_axis_completions",
            "Finished chat completions by cap setting.",
            ["cap"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "persona_axis_completion_tokens",
            "Generated content tokens by cap setting.",
            ["cap"],
            registry=registry,
        )
        self.drift = Counter(
            "persona_axis_drift_replies",
            "Replies flagged as drifted (projection before capping below the build's p1).",
            ["cap"],
            registry=registry,
        )
        self.rejected = Counter(
            "persona_axis_queue_rejections",
            "Requests refused with 429 because the queue was full.",
            registry=registry,
        )
        self.latency = Histogram(
            "persona_axis_request_seconds",
            "Chat completion latency, from arrival to the last byte of the answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "persona_axis_queue_wait_seconds",
            "Time a request waited for its batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "persona_axis_batch_size",
            "Requests per generated batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.touched = Histogram(
            "persona_axis_cap_touched_fraction",
            "Fraction of (token, capped layer) values the cap raised, per capped reply.",
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "persona_axis_queue_depth", "Requests waiting for a batch.", registry=registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
