"""Prometheus metrics, exposed at /metrics by kserve's own handler (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
REAL_TOKENS = Counter("predictor_real_tokens_total", "Tokens of the inputs themselves")
PADDED_TOKENS = Counter("predictor_padded_tokens_total", "Tokens computed, padding included")
READY = Gauge("predictor_model_ready", "1 when the model is loaded and inference is not wedged")


def observe_batch(size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
    """handler.BatchObserver feeding the batch metrics."""
    BATCH_SIZE.observe(size)
    INFERENCE_SECONDS.observe(seconds)
    REAL_TOKENS.inc(real_tokens)
    PADDED_TOKENS.inc(padded_tokens)
