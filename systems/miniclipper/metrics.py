"""Prometheus metrics of the frontend process, served at ``GET /metrics``.

Clipper keeps the same quantities in its own registry (``src/libclipper/src/metrics.cpp``;
names like ``app:<name>:prediction_latency``, ``model:<name>:batch_size``,
``internal:prediction_cache_hit_ratio``, exported to Prometheus by its
frontend-exporter). We use prometheus-client directly, with labels instead of names
spliced into the metric name. One :class:`Metrics` per process, on its own registry so
that tests starting several frontends in one interpreter never collide.

The series written on the query path (per request or per batch) are plain counts that
the registry reads at scrape time (:class:`BatchHistogram`, :class:`PlainCounter`): a
prometheus-client ``Counter.inc`` or ``Histogram.observe`` takes a lock and, for a
histogram, walks the buckets in Python, a few microseconds each, several times a query
at batch size one. Only the frontend's one asyncio thread writes them, so no lock is
needed; what a scrape returns is the same text.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

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
        les = [*map(floatToGoString, self.bounds), "+Inf"]
        for label, (counts, total) in self.children.items():
            cumulative, running = [], 0
            for le, c in zip(les, counts, strict=True):
                running += c
                cumulative.append((le, running))
            fam.add_metric([label], cumulative, total)
        yield fam

    def describe(self) -> list:
        return []


class PlainCounter:
    """A labelled counter kept as a dict and exported at scrape time (see
    :class:`BatchHistogram`)."""

    def __init__(self, name: str, doc: str, label: str, registry: CollectorRegistry):
        self.name, self.doc, self.label = name, doc, label
        self.values: dict[str, float] = {}
        registry.register(self)

    def inc(self, label: str, amount: float = 1) -> None:
        self.values[label] = self.values.get(label, 0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for label, value in self.values.items():
            fam.add_metric([label], value)
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
        self.app_queries = PlainCounter("clipper_app_queries_total", "queries answered",
                                        "app", r)
        self.app_defaults = PlainCounter("clipper_app_default_outputs_total",
                                         "queries answered with the default output", "app", r)
        self.app_default_ratio = Gauge("clipper_app_default_ratio",
                                       "share of queries answered with the default",
                                       ["app"], registry=r)
        # reason: "unknown_app" (404, app "(unknown)": the name asked for is not a
        # label, or any client could add series), "json" (a REST body that is not JSON),
        # "wire" (a gRPC message that does not decode), "input" (400), "overload" (429);
        # /predict, /update and the gRPC Predict all count here
        self.rejected = Counter("clipper_rejected_total",
                                "queries and feedback refused (404, 400, 429) by reason",
                                ["app", "reason"], registry=r)
        self.model_predictions = PlainCounter("clipper_model_predictions_total",
                                              "inputs a model's replicas processed", "model", r)
        self.model_batch_size = BatchHistogram("clipper_model_batch_size", "batch sizes sent",
                                               "model", BATCH_BUCKETS, r)
        self.model_batch_latency = BatchHistogram("clipper_model_batch_latency_seconds",
                                                  "round trip of one batch to a container",
                                                  "model", LATENCY_BUCKETS, r)
        self.model_errors = PlainCounter("clipper_model_errors_total",
                                         "batches a model failed (exception, bad output)",
                                         "model", r)
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

    def forget_app(self, app: str) -> None:
        """Drop a deleted application's series: apps come and go in a long run, and each
        left about 20 series behind (674 after 30 create/delete cycles)."""
        self.app_latency.children.pop(app, None)
        self.app_queries.values.pop(app, None)
        self.app_defaults.values.pop(app, None)
        reasons = {s.labels["reason"] for family in self.rejected.collect()
                   for s in family.samples if s.labels.get("app") == app}
        for reason in reasons:
            self.rejected.remove(app, reason)

    def forget_model(self, model: str) -> None:
        """Drop a stopped model version's series (``name:version``), as :meth:`forget_app`
        does for a deleted application."""
        for hist in (self.model_batch_size, self.model_batch_latency):
            hist.children.pop(model, None)
        for counter in (self.model_predictions, self.model_errors):
            counter.values.pop(model, None)
        for series in (self.queue_length, self.dropped, self.replicas, self.restarts):
            try:
                series.remove(model)
            except KeyError:  # never set: nothing to drop
                pass

    def text(self) -> bytes:
        return generate_latest(self.registry)
