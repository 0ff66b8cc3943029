"""On a real cluster: deploy the runtime and the sequence-classification example from manifests/, wait for
Ready, call :predict and :explain (the predictor answers both), then delete everything it created."""

from __future__ import annotations

import copy
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from e2e_cluster import Cluster
from k8s_support import MANIFESTS, kserve_model, load_manifest, runtime_container

pytestmark = pytest.mark.e2e

TEXTS = ["The service was quick and friendly.", "Cold food and rude staff."]


class InferenceServiceBody(dict):  # type: ignore[type-arg]
    """The InferenceService as KServeClient.create wants it (it reads .api_version) and as the API server
    wants it: the manifest's own camelCase JSON. A kserve model object would not do: the kubernetes client
    (37) serialises kserve's generated models through their to_dict(), in snake_case."""

    @property
    def api_version(self) -> str:
        return str(self["apiVersion"])


@dataclass(frozen=True)
class Deployed:
    """What the fixture created: the InferenceService's name and object."""

    name: str
    isvc: dict[str, Any]


def example_objects(cluster: Cluster, suffix: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The namespaced runtime and the sentiment-cpu ConfigMap + InferenceService, adapted to this cluster."""
    runtime = copy.deepcopy(load_manifest(MANIFESTS / "runtime/servingruntime.yaml").one("ServingRuntime"))
    runtime["metadata"]["name"] = f"transformers-predictor-{suffix}"
    runtime_container(runtime)["image"] = cluster.image
    runtime_container(runtime)["imagePullPolicy"] = "IfNotPresent"
    example = load_manifest(MANIFESTS / "inferenceservices/sequence-classification-cpu.yaml")
    configmap = copy.deepcopy(example.one("ConfigMap"))
    isvc = copy.deepcopy(example.one("InferenceService"))
    name = f"sentiment-{suffix}"
    configmap["metadata"]["name"] = f"{name}-model-config"
    isvc["metadata"]["name"] = name
    pred = isvc["spec"]["predictor"]
    pred["volumes"][0]["configMap"]["name"] = configmap["metadata"]["name"]
    pred.update(minReplicas=1, maxReplicas=1)
    pred.pop("serviceAccountName", None)
    if cluster.service_account:
        pred["serviceAccountName"] = cluster.service_account
    pred["model"]["storageUri"] = cluster.storage_uri
    pred["model"]["runtime"] = runtime["metadata"]["name"]  # this run's runtime, not another one
    return runtime, configmap, isvc


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Iterator[Deployed]:
    """The example deployed and Ready; deleted afterwards whatever happened."""
    from kubernetes import client

    suffix = uuid.uuid4().hex[:6]
    runtime, configmap, isvc = example_objects(cluster, suffix)
    kserve_model(runtime)  # the same strict validation as the offline tests, on what is sent
    kserve_model(isvc)
    custom = client.CustomObjectsApi(cluster.api)
    core = client.CoreV1Api(cluster.api)
    ns, name = cluster.namespace, isvc["metadata"]["name"]
    custom.create_namespaced_custom_object("serving.kserve.io", "v1alpha1", ns, "servingruntimes", runtime)
    try:
        core.create_namespaced_config_map(ns, configmap)  # type: ignore[arg-type]  # a manifest dict
        cluster.kserve.create(InferenceServiceBody(isvc), namespace=ns)
        try:
            cluster.kserve.wait_isvc_ready(name, namespace=ns, timeout_seconds=cluster.timeout_s)
            yield Deployed(name, cluster.kserve.get(name, namespace=ns))
        finally:
            cluster.kserve.delete(name, namespace=ns)
            core.delete_namespaced_config_map(configmap["metadata"]["name"], ns)
    finally:
        custom.delete_namespaced_custom_object(
            "serving.kserve.io", "v1alpha1", ns, "servingruntimes", runtime["metadata"]["name"]
        )


def post(cluster: Cluster, deployed: Deployed, path: str, body: Any) -> tuple[int, Any]:
    """POST JSON to the predictor: via the ingress if KSERVE_INGRESS_HOST_PORT is set, else a port-forward."""
    payload = json.dumps(body).encode()
    if cluster.ingress:
        host = deployed.isvc["status"]["url"].split("://", 1)[1].split("/", 1)[0]
        response = httpx.post(
            f"http://{cluster.ingress}{path}",
            content=payload,
            timeout=120,
            headers={"Host": host, "Content-Type": "application/json"},
        )
        return response.status_code, response.json()
    return post_via_port_forward(cluster, deployed.name, path, payload)


def post_via_port_forward(cluster: Cluster, name: str, path: str, payload: bytes) -> tuple[int, Any]:
    """One HTTP/1.1 request over the API server's port-forward to a ready predictor pod, port 8080."""
    from kubernetes import client
    from kubernetes.stream import portforward

    core = client.CoreV1Api(cluster.api)
    pods = core.list_namespaced_pod(
        cluster.namespace, label_selector=f"serving.kserve.io/inferenceservice={name}"
    )
    ready = [
        p
        for p in pods.items
        if p.status and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    assert ready, f"no ready pod for {name}"
    forward = portforward(
        core.connect_get_namespaced_pod_portforward,
        str(ready[0].metadata and ready[0].metadata.name),
        cluster.namespace,
        ports="8080",
    )
    sock: socket.socket = forward.socket(8080)
    sock.settimeout(120)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    sock.sendall(request)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, json.loads(body)


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body."""
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def test_ready_with_the_runtime_of_this_run(deployed: Deployed) -> None:
    conditions = {c["type"]: c["status"] for c in deployed.isvc["status"]["conditions"]}
    assert conditions.get("Ready") == "True"
    assert deployed.isvc["spec"]["predictor"]["model"]["runtime"].startswith("transformers-predictor-")


def test_predict(cluster: Cluster, deployed: Deployed) -> None:
    status, body = post(cluster, deployed, f"/v1/models/{deployed.name}:predict", {"instances": TEXTS})
    assert status == 200, body
    assert len(body["predictions"]) == len(TEXTS)
    assert all(isinstance(p, (str, dict)) for p in body["predictions"])


def test_explain_reaches_the_same_predictor(cluster: Cluster, deployed: Deployed) -> None:
    assert "explainer" not in deployed.isvc["spec"]
    started = time.monotonic()
    status, body = post(cluster, deployed, f"/v1/models/{deployed.name}:explain", {"instances": TEXTS[:1]})
    assert status == 200, body
    assert body, f"empty explanation after {time.monotonic() - started:.1f}s"
