"""Prometheus metrics of the frontend process, served at ``GET /metrics``.

Clipper keeps the same quantities in its own registry (``src/libclipper/src/metrics.cpp``;
names like ``app:<name>:prediction_latency``, ``model:<name>:batch_size``,
``internal:prediction_cache_hit_ratio``, exported to Prometheus by its
frontend-exporter). We use prometheus-client directly, with labels instead of names
spliced into the metric name. One :class:`Metrics` per process, on its own registry so
that tests starting several frontends in one interpreter never collide.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2,
                   0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BatchHistogram:
    """A labelled histogram kept as plain lists and exported by a collector at scrape
    time. ``observe(label, value, count)`` records ``count`` queries that shared one
    latency (a 64-query request) in one step; prometheus-client's Histogram would take
    ``count`` locked calls. Only the frontend's one asyncio thread writes it."""

    def __init__(self, name: str, doc: str, label: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry):
        self.name, self.doc, self.label, self.bounds = name, doc, label, list(buckets)
        self.children: dict[str, list] = {}  # label -> [counts per bucket + inf, sum]
        registry.register(self)

    def observe(self, label: str, value: float, count: int = 1) -> None:
        child = self.children.get(label)
        if child is None:
            child = self.children[label] = [[0] * (len(self.bounds) + 1), 0.0]
        child[0][bisect.bisect_left(self.bounds, value)] += count
        child[1] += value * count

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, (counts, total) in self.children.items():
            cumulative, running = [], 0
            for le, c in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                running += c
                cumulative.append((le, running))
            fam.add_metric([label], cumulative, total)
        yield fam

    def describe(self) -> list:
        return []


class Metrics:
    """Every series the issue asks for: latency per app, throughput, batch size per model,
    cache hit ratio, default-output ratio, queue length, rejections, restarts, and the
    batch controllers' state."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.app_latency = BatchHistogram("clipper_app_latency_seconds",
                                          "query latency from arrival to answer", "app",
                                          LATENCY_BUCKETS, r)
        self.app_queries = Counter("clipper_app_queries_total", "queries answered",
                                   ["app"], registry=r)
        self.app_defaults = Counter("clipper_app_default_outputs_total",
                                    "queries answered with the default output", ["app"],
                                    registry=r)
        self.app_default_ratio = Gauge("clipper_app_default_ratio",
                                       "share of queries answered with the default",
                                       ["app"], registry=r)
        self.rejected = Counter("clipper_rejected_total",
                                "queries rejected: 429 overload, 4xx bad input", ["app", "reason"],
                                registry=r)
        self.model_predictions = Counter("clipper_model_predictions_total",
                                         "inputs a model's replicas processed", ["model"],
                                         registry=r)
        self.model_batch_size = Histogram("clipper_model_batch_size", "batch sizes sent",
                                          ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.model_batch_latency = Histogram("clipper_model_batch_latency_seconds",
                                             "round trip of one batch to a container",
                                             ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_errors = Counter("clipper_model_errors_total",
                                    "batches a model failed (exception, bad output)",
                                    ["model"], registry=r)
        self.queue_length = Gauge("clipper_queue_length", "tasks waiting", ["model"],
                                  registry=r)
        self.dropped = Counter("clipper_queue_dropped_total",
                               "tasks dropped at their deadline before reaching a container",
                               ["model"], registry=r)
        self.controller = Gauge("clipper_batch_controller", "batch-size controller state",
                                ["model", "replica", "field"], registry=r)
        self.replicas = Gauge("clipper_replicas", "live replicas", ["model"], registry=r)
        self.restarts = Counter("clipper_replica_restarts_total",
                                "replicas restarted after dying", ["model"], registry=r)
        self.cache_lookups = Counter("clipper_cache_lookups_total", "cache lookups",
                                     registry=r)
        self.cache_hits = Counter("clipper_cache_hits_total", "cache hits", registry=r)
        self.cache_hit_ratio = Gauge("clipper_cache_hit_ratio", "hits / lookups", registry=r)
        self.cache_bytes = Gauge("clipper_cache_bytes", "bytes of cached outputs", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
