"""Prometheus metrics at /metrics: requests by route and status, batches."""

from __future__ import annotations

import re

from predictor.serving.cpu import available_cores, plan_workers


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_requests_total_counts_routes_and_statuses(seq):
    before = seq.get("/metrics").text
    assert "# TYPE predictor_requests_total counter" in before
    for _ in range(3):
        assert seq.post("/predictions/seq", content=b"hello").status_code == 200
    assert seq.post("/predictions/seq", content=b"").status_code == 400
    after = seq.get("/metrics").text
    route = "/predictions/{model_name}"

    def counted(status: str) -> float:
        labels = {"route": route, "status": status}
        return _sample(after, "predictor_requests_total", **labels) - _sample(
            before, "predictor_requests_total", **labels)

    assert (counted("200"), counted("400")) == (3, 1)


def test_batch_and_readiness_metrics(seq):
    seq.post("/v1/models/seq:predict", json={"instances": ["a", "b", "c"]})
    text = seq.get("/metrics").text
    assert "predictor_model_ready 1.0" in text
    workers = plan_workers(available_cores()).workers  # the test servers run the default plan
    assert f"predictor_model_workers {workers:.1f}" in text
    busy = re.search(r"^predictor_model_workers_busy (\S+)$", text, re.MULTILINE)
    assert busy and 0 <= float(busy.group(1)) <= workers
    assert float(re.search(r"^predictor_batch_size_count (\S+)$", text, re.MULTILINE).group(1)) >= 1
    backends = re.findall(r'^predictor_model_backend\{backend="([^"]+)"\} 1\.0$', text, re.MULTILINE)
    assert len(backends) == 1 and backends[0] in ("eager", "onnx", "openvino"), backends  # auto's choice
