"""The strict validators themselves: each mistake a manifest could make is caught."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from k8s_support import ObjectErrors, kserve_model, load_documents, validate_object

ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "demo"},
    "spec": {
        "predictor": {
            "minReplicas": 1,
            "model": {
                "modelFormat": {"name": "transformers"},
                "storageUri": "s3://bucket/model",
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
            },
        }
    },
}
CONFIGMAP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "c"},
    "data": {"k": "v"},
}


def mutated(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of obj with the dotted path set to value."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def test_valid_objects_pass() -> None:
    validate_object(ISVC)
    validate_object(CONFIGMAP)
    assert kserve_model(ISVC).spec.predictor.model.model_format.name == "transformers"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.predictor.model.storageURI", "s3://x", "storageURI: unknown field"),
        ("spec.predictor.minReplicas", "1", "minReplicas: expected int"),
        ("spec.predictor.model.resources.limits.cpu", 1, "limits.cpu: expected str"),
        ("spec.predictor.model.readinessProbe.httpGet.paht", "/x", "httpGet.paht: unknown field"),
        ("spec.predictor.model.modelFormat", "transformers", "modelFormat: expected an object"),
        ("metadata.labelz", {}, "metadata.labelz: unknown field"),
        ("spec.predictor.model.args", "--model_name=x", "args: expected a list"),
        ("spec.predictor.model.env", None, "env: null"),
    ],
)
def test_kserve_mistakes_are_caught(path: str, value: Any, message: str) -> None:
    with pytest.raises(ObjectErrors, match=message.replace(".", r"\.").replace("[", r"\[")):
        validate_object(mutated(ISVC, path, value))


def test_unknown_kserve_kind_is_not_waved_through() -> None:
    with pytest.raises(ObjectErrors, match="not a KServe kind"):
        validate_object({**ISVC, "kind": "InferenceGraph"})


@pytest.mark.parametrize(
    ("path", "value"), [("dataa", {"k": "v"}), ("data", {"k": 1}), ("metadata.nmae", "x")]
)
def test_kubernetes_mistakes_are_caught(path: str, value: Any) -> None:
    with pytest.raises(ObjectErrors):
        validate_object(mutated(CONFIGMAP, path, value))


def test_duplicate_yaml_keys_are_caught() -> None:
    with pytest.raises(Exception, match="duplicate key 'name'"):
        load_documents("metadata:\n  name: a\n  name: b\n")
