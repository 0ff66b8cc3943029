"""Prometheus metrics, exposed at /metrics by kserve's own handler (default registry)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS = Counter("predictor_requests_total", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram(
    "predictor_request_seconds", "HTTP request latency by route", ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_DEPTH = Gauge("predictor_queue_depth", "Inputs waiting for a forward pass")
WORKERS = Gauge("predictor_model_workers", "Model workers: forward passes that can run side by side")
WORKERS_BUSY = Gauge("predictor_model_workers_busy", "Model workers running a batch or a stream now")
BATCH_SIZE = Histogram("predictor_batch_size", "Inputs per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram(
    "predictor_inference_seconds", "Time of one forward pass (or generate call)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_TOKENS = Histogram(
    "predictor_batch_padded_tokens", "Padded tokens per forward pass (handler.max_batch_tokens bounds them)",
    buckets=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
REAL_TOKENS = Counter("predictor_real_tokens_total", "Tokens of the inputs themselves")
PADDED_TOKENS = Counter("predictor_padded_tokens_total", "Tokens computed, padding included")
BACKEND = Gauge("predictor_model_backend", "1 for the backend running the forward passes (backend auto's choice)",
                ["backend"])
READY = Gauge("predictor_model_ready", "1 when the model is loaded and inference is not wedged")


def observe_batch(size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
    """handler.BatchObserver feeding the batch metrics: one call per forward pass that ran."""
    BATCH_SIZE.observe(size)
    BATCH_TOKENS.observe(padded_tokens)
    INFERENCE_SECONDS.observe(seconds)
    REAL_TOKENS.inc(real_tokens)
    PADDED_TOKENS.inc(padded_tokens)


class RequestTiming:
    """One inference request's clock: the queue adds its waiting time; `finish` records it once."""

    def __init__(self, model_name: str, version_label: str) -> None:
        self.model_name = model_name
        self.version_label = version_label
        self.started = time.perf_counter()
        self.queued_s = 0.0
        self._finished = False

    def dequeued(self, enqueued_at: float) -> None:
        """An input of this request left the queue; its inputs wait side by side, so keep the longest."""
        self.queued_s = max(self.queued_s, time.perf_counter() - enqueued_at)

    def finish(self) -> None:
        """Count the request in TorchServe's series (only the first call counts)."""
        if not self._finished:
            self._finished = True
            TORCHSERVE.observe(self.model_name, self.version_label, time.perf_counter() - self.started,
                               self.queued_s)


class TorchServeSeries(Collector):
    """TorchServe's frontend metrics under its names and labels, so its dashboards and alerts keep working.

    `model_version` is the version the client asked for, or "default" (as TorchServe labels it);
    `hostname` is the pod's. The two latencies are cumulative sums that only grow, as in TorchServe.
    prometheus_client would append `_total` to a counter's name, so they are exposed untyped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], list[float]] = {}
        self.hostname = socket.gethostname()

    def observe(self, model_name: str, version_label: str, latency_s: float, queued_s: float) -> None:
        """One inference request: its whole duration and its time in the queue."""
        with self._lock:
            totals = self._series.setdefault((model_name, version_label), [0.0, 0.0, 0.0])
            totals[0] += 1
            totals[1] += latency_s * 1e6
            totals[2] += queued_s * 1e6

    def collect(self) -> Iterator[Metric]:
        """The three series, one sample per (model_name, model_version)."""
        labels = ["model_name", "model_version", "hostname"]
        requests = CounterMetricFamily("ts_inference_requests", "Total number of inference requests.", labels=labels)
        latency = Metric("ts_inference_latency_microseconds", "Cumulative inference duration in microseconds",
                         "unknown")
        queue = Metric("ts_queue_latency_microseconds", "Cumulative queue duration in microseconds", "unknown")
        with self._lock:
            series = {key: list(values) for key, values in self._series.items()}
        for (model_name, version), (count, latency_us, queue_us) in series.items():
            values = [model_name, version, self.hostname]
            requests.add_metric(values, count)
            latency.add_sample(latency.name, dict(zip(labels, values)), latency_us)
            queue.add_sample(queue.name, dict(zip(labels, values)), queue_us)
        yield from (requests, latency, queue)


TORCHSERVE = TorchServeSeries()
REGISTRY.register(TORCHSERVE)
