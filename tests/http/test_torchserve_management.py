"""TorchServe's management API (read side) and its metric names, against TorchServe's documented examples."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

TEXT = "Ada Lovelace lived in London."

# The describe-model examples of TorchServe's docs/management_api.md (GET /models/noop, and the one
# with ?customized=true, which shows the newer fields), as documented.
DOCUMENTED_DESCRIBE = [
    {"modelName": "noop", "modelVersion": "1.0", "modelUrl": "noop.mar", "engine": "Torch", "runtime": "python",
     "minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100,
     "workers": [{"id": "9000", "startTime": "2018-10-02T13:44:53.034Z", "status": "READY", "gpu": False,
                  "memoryUsage": 89247744}],
     "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0}},
    {"modelName": "noop-customized", "modelVersion": "1.0", "modelUrl": "noop-customized.mar", "runtime": "python",
     "minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100, "loadedAtStartup": False,
     "workers": [{"id": "9010", "startTime": "2022-02-08T11:03:20.974Z", "status": "READY", "memoryUsage": 0,
                  "pid": 98972, "gpu": False, "gpuUsage": "N/A"}],
     "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
     "customizedMetadata": "{\n  \"data1\": \"1\",\n  \"data2\": \"2\"\n}"},
]
DOCUMENTED_LIST = {"nextPageToken": "4", "models": [{"modelName": "noop", "modelUrl": "noop-v1.0"},
                                                     {"modelName": "noop_v0.1", "modelUrl": "noop-v0.1"}]}


@pytest.fixture(scope="module")
def management(seq_server):
    with httpx.Client(base_url=f"http://127.0.0.1:{seq_server.management_port}", timeout=30) as client:
        yield client


def _same_shape(ours: dict, documented: dict, where: str) -> None:
    """Every documented field is there with the same JSON type; nested objects alike."""
    for key, value in documented.items():
        assert key in ours, f"{where}: {key!r} missing"
        assert type(ours[key]) is type(value), f"{where}.{key}: {type(ours[key]).__name__} vs {type(value).__name__}"
        if isinstance(value, dict):
            _same_shape(ours[key], value, f"{where}.{key}")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            assert ours[key], f"{where}.{key}: empty"
            for n, item in enumerate(ours[key]):
                _same_shape(item, value[0], f"{where}.{key}[{n}]")


def test_list_models(management, seq_server):
    response = management.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body == {"models": [{"modelName": "seq", "modelUrl": seq_server.model_dir.name}]}
    for ours, documented in zip(body["models"], DOCUMENTED_LIST["models"]):
        assert set(ours) == set(documented)


@pytest.mark.parametrize("path", ["/models/seq", "/models/seq/1.0", "/models/seq/all"])
def test_describe_model_field_by_field(management, seq_server, path):
    response = management.get(path)
    assert response.status_code == 200, response.text
    [ours] = response.json()
    for documented in DOCUMENTED_DESCRIBE:
        _same_shape(ours, {k: v for k, v in documented.items() if k != "customizedMetadata"}, path)
    config = yaml.safe_load((seq_server.model_dir / "model-config.yaml").read_text())
    assert (ours["modelName"], ours["modelVersion"], ours["modelUrl"]) == ("seq", "1.0", seq_server.model_dir.name)
    assert (ours["batchSize"], ours["maxBatchDelay"], ours["responseTimeout"]) == (
        config["batchSize"], config["maxBatchDelay"], config["responseTimeout"])
    assert ours["loadedAtStartup"] is True
    assert ours["minWorkers"] == ours["maxWorkers"] == len(ours["workers"]) >= 1
    assert {w["status"] for w in ours["workers"]} == {"READY"}
    assert ours["jobQueueStatus"] == {"remainingCapacity": 256, "pendingRequests": 0}  # jobQueueSize default, idle
    assert ours["workers"][0]["memoryUsage"] > 10_000_000  # the resident size of a process that loaded torch


@pytest.mark.parametrize(("path", "status", "kind"), [
    ("/models/x", 404, "ModelNotFoundException"),
    ("/models/seq/9.9", 404, "ModelVersionNotFoundException"),
])
def test_describe_errors(management, path, status, kind):
    response = management.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"code", "type", "message"}
    assert (response.json()["code"], response.json()["type"]) == (status, kind)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/models?url=noop.mar"), ("PUT", "/models/seq?min_worker=3"), ("PUT", "/models/seq/1.0?min_worker=3"),
    ("DELETE", "/models/seq"), ("DELETE", "/models/seq/1.0"), ("PUT", "/models/seq/1.0/set-default"),
    ("GET", "/token?type=inference"),
])
def test_write_side_is_refused_with_torchserve_error_json(management, seq_server, method, path):
    response = management.request(method, path)
    assert response.status_code == 405
    body = response.json()
    assert (body["code"], body["type"]) == (405, "MethodNotAllowedException")
    assert "one model per process" in body["message"] and "Kubernetes" in body["message"]
    assert httpx.get(seq_server.url + "/ping").json() == {"status": "Healthy"}  # still serving


# ---- TorchServe's metric names -----------------------------------------------------------------------------

def _ts_series(text: str) -> dict[tuple[str, str], float]:
    """(sample name, model_version) -> value, for the model `seq`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ts_") and sample.labels.get("model_name") == "seq":
                assert set(sample.labels) == {"model_name", "model_version", "hostname"}
                out[(sample.name, sample.labels["model_version"])] = sample.value
    return out


def test_metrics_scrape_counts_torchserve_series(seq_server, management):
    before = _ts_series(httpx.get(seq_server.url + "/metrics").text)
    for _ in range(3):
        assert httpx.post(seq_server.url + "/predictions/seq", content=TEXT).status_code == 200
    for _ in range(2):
        assert httpx.post(seq_server.url + "/predictions/seq/1.0", content=TEXT).status_code == 200
    assert httpx.post(seq_server.url + "/v1/models/seq:predict", json={"instances": [TEXT, TEXT]}).status_code == 200
    text = httpx.get(seq_server.url + "/metrics").text
    after = _ts_series(text)
    assert "# TYPE ts_inference_requests_total counter" in text
    count = "ts_inference_requests_total"
    assert after[(count, "default")] - before.get((count, "default"), 0) == 4  # 3 TorchServe + 1 KServe request
    assert after[(count, "1.0")] - before.get((count, "1.0"), 0) == 2
    for name in ("ts_inference_latency_microseconds", "ts_queue_latency_microseconds"):
        assert after[(name, "default")] >= before.get((name, "default"), 0)
    grown = after[("ts_inference_latency_microseconds", "1.0")] - before.get(("ts_inference_latency_microseconds", "1.0"), 0)
    assert 2 * 100 < grown < 2 * 60e6  # two requests of more than 0.1 ms and less than a minute, in microseconds
    assert _ts_series(management.get("/metrics").text) == after  # the management port serves the same registry
