"""The offline half of tests/e2e: what it sends to a cluster is valid and serialised as the API expects."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_cluster import Cluster
from k8s_support import runtime_container, validate_object
from test_inferenceservice import InferenceServiceBody, dechunk, example_objects


@pytest.fixture
def cluster() -> Cluster:
    """Settings of a run, without a cluster behind them."""
    return Cluster(
        api=None,
        kserve=None,
        namespace="e2e",
        image="registry.example.com/predictor@sha256:" + "0" * 64,
        storage_uri="gs://bucket/sst2",
        service_account=None,
        ingress=None,
        timeout_s=60,
    )


def test_example_objects_are_valid_and_adapted(cluster: Cluster) -> None:
    runtime, configmap, isvc = example_objects(cluster, "abc123")
    for obj in (runtime, configmap, isvc):
        validate_object(obj)
    assert runtime_container(runtime)["image"] == cluster.image
    pred = isvc["spec"]["predictor"]
    assert pred["model"]["runtime"] == runtime["metadata"]["name"] == "transformers-predictor-abc123"
    assert pred["model"]["storageUri"] == "gs://bucket/sst2" and "serviceAccountName" not in pred
    assert pred["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]


def test_kserve_client_sends_camel_case_json(cluster: Cluster) -> None:
    from kserve import KServeClient
    from kubernetes import client

    _, _, isvc = example_objects(cluster, "abc123")
    body = InferenceServiceBody(isvc)
    sent: dict[str, Any] = {}

    def create(group: str, version: str, namespace: str, plural: str, obj: Any) -> dict[str, Any]:
        sent.update(client.ApiClient().sanitize_for_serialization(obj))  # what the REST call would carry
        return {"metadata": {"name": obj["metadata"]["name"]}}

    with mock.patch("kserve.api.kserve_client.config"):
        kserve = KServeClient()
    kserve.api_instance = mock.Mock(create_namespaced_custom_object=create)
    kserve.create(body, namespace="e2e")
    assert sent == isvc


def test_dechunk() -> None:
    assert dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") == b"hello world"
