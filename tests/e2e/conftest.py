"""End-to-end fixtures: a real cluster with KServe, reached through the kubeconfig.

Environment:
  PREDICTOR_E2E_IMAGE            image built from the Dockerfile that the cluster can pull (required)
  PREDICTOR_E2E_STORAGE_URI      model folder for the sequence-classification example
                                 (default: hf://distilbert/distilbert-base-uncased-finetuned-sst-2-english)
  PREDICTOR_E2E_NAMESPACE        namespace to use, created and deleted when missing (default: predictor-e2e)
  PREDICTOR_E2E_SERVICE_ACCOUNT  ServiceAccount with the storage credentials (default: none)
  KSERVE_INGRESS_HOST_PORT       host:port of the cluster's ingress (as in KServe's own e2e tests);
                                 without it, requests go through a port-forward to the predictor pod
  PREDICTOR_E2E_TIMEOUT          seconds to wait for Ready (default: 900)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))  # the shared k8s_support helpers

from e2e_cluster import DEFAULT_STORAGE_URI, Cluster, kubeconfig_problem


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster, once reachable and serving KServe's CRDs; skips with the reason otherwise."""
    if problem := kubeconfig_problem():
        pytest.skip(problem)
    image = os.environ.get("PREDICTOR_E2E_IMAGE")
    if not image:
        pytest.skip(
            "PREDICTOR_E2E_IMAGE is not set: build the Dockerfile, push it where the cluster pulls from, "
            "and name it there"
        )
    import urllib3
    from kserve import KServeClient
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
        api = client.ApiClient()
        client.VersionApi(api).get_code(_request_timeout=15)
    except (ApiException, ConfigException, OSError, urllib3.exceptions.HTTPError) as exc:
        pytest.skip(f"the cluster in the kubeconfig is not reachable: {type(exc).__name__}: {exc}")
    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(
            "inferenceservices.serving.kserve.io", _request_timeout=15
        )
    except ApiException as exc:
        pytest.skip(f"KServe is not installed in this cluster (no InferenceService CRD: {exc.status})")
    namespace = os.environ.get("PREDICTOR_E2E_NAMESPACE", "predictor-e2e")
    core = client.CoreV1Api(api)
    created = False
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        created = True
    try:
        yield Cluster(
            api=api,
            kserve=KServeClient(),
            namespace=namespace,
            image=image,
            storage_uri=os.environ.get("PREDICTOR_E2E_STORAGE_URI", DEFAULT_STORAGE_URI),
            service_account=os.environ.get("PREDICTOR_E2E_SERVICE_ACCOUNT") or None,
            ingress=os.environ.get("KSERVE_INGRESS_HOST_PORT") or None,
            timeout_s=int(os.environ.get("PREDICTOR_E2E_TIMEOUT", "900")),
        )
    finally:
        if created:
            core.delete_namespace(namespace)
