"""manifests/: every object valid, wired to the server as it runs, secure, and the examples complete."""

from __future__ import annotations

import re
from typing import Any

import pytest
from k8s_support import (
    MANIFESTS,
    MODEL_DIR,
    Source,
    assert_skips_have_reasons,
    config_for,
    effective_args,
    isvc_problems,
    load_server_config,
    manifest_files,
    parse_server_args,
    runtime_container,
    runtime_problems,
    select_runtime,
    validate_object,
)

MODES = ("sequence_classification", "token_classification", "question_answering", "text_generation")
EXAMPLES = MANIFESTS / "inferenceservices"


def all_objects(manifests: dict[str, Source], kind: str) -> list[dict[str, Any]]:
    """Objects of one kind across every manifest file."""
    return [o for src in manifests.values() for o in src.of_kind(kind)]


def configmaps(manifests: dict[str, Source]) -> dict[str, dict[str, Any]]:
    """ConfigMaps by name."""
    return {o["metadata"]["name"]: o for o in all_objects(manifests, "ConfigMap")}


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_object_is_valid(path: Any, manifests: dict[str, Source]) -> None:
    source = manifests[str(path.relative_to(MANIFESTS))]
    assert source.objects, f"{source.label} holds no object"
    for obj in source.objects:
        validate_object(obj)
        assert_skips_have_reasons(obj)
        assert "namespace" not in obj["metadata"], (
            f"{source.label}: apply with -n, do not hard-code a namespace"
        )


def test_both_runtimes_run_the_same_container(manifests: dict[str, Source]) -> None:
    cluster = manifests["runtime/clusterservingruntime.yaml"].one("ClusterServingRuntime")
    namespaced = manifests["runtime/servingruntime.yaml"].one("ServingRuntime")
    assert cluster["spec"] == namespaced["spec"]
    assert cluster["metadata"]["name"] == namespaced["metadata"]["name"]


@pytest.mark.parametrize("kind", ["ClusterServingRuntime", "ServingRuntime"])
def test_runtime_follows_the_server_contract(kind: str, manifests: dict[str, Source]) -> None:
    (runtime,) = all_objects(manifests, kind)
    assert runtime_problems(runtime) == []
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}
    assert formats["transformers"]["autoSelect"] is True
    # KServe's own huggingface runtime auto-selects this format; ours must not compete for it.
    assert formats["huggingface"].get("autoSelect") is not True


def test_examples_cover_every_mode_on_cpu_and_gpu(manifests: dict[str, Source]) -> None:
    expected = {f"{mode.replace('_', '-')}-{device}.yaml" for mode in MODES for device in ("cpu", "gpu")}
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == expected
    for name in expected:
        isvc = manifests[f"inferenceservices/{name}"].one("InferenceService")
        limits = isvc["spec"]["predictor"]["model"]["resources"]["limits"]
        if name.endswith("-gpu.yaml"):
            assert limits.get("nvidia.com/gpu") == "1", name
            assert any(
                t.get("key") == "nvidia.com/gpu" for t in isvc["spec"]["predictor"].get("tolerations", [])
            )
        else:
            assert "nvidia.com/gpu" not in limits, name


def test_examples_use_every_storage_scheme(manifests: dict[str, Source]) -> None:
    uris = [o["spec"]["predictor"]["model"]["storageUri"] for o in all_objects(manifests, "InferenceService")]
    assert {u.split("://")[0] for u in uris} == {"s3", "gs", "pvc", "hf"}
    for uri in uris:
        if uri.startswith("pvc://"):
            assert re.fullmatch(r"pvc://[a-z0-9-]+/.+", uri), uri  # pvc://CLAIM/PATH


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_inferenceservice_is_wired_to_the_runtime_and_server(path: Any, manifests: dict[str, Source]) -> None:
    isvc = manifests[f"inferenceservices/{path.name}"].one("InferenceService")
    cms = configmaps(manifests)
    assert isvc_problems(isvc, cms) == []
    pred = isvc["spec"]["predictor"]
    assert {"scaleMetric", "scaleTarget"} <= pred.keys()
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # two ports: not Knative
    if annotations.get("serving.kserve.io/autoscalerClass", "hpa") == "hpa":
        assert pred["scaleMetric"] in ("cpu", "memory") and 1 <= pred["scaleTarget"] <= 100
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        runtime = select_runtime(isvc, all_objects(manifests, kind))
        assert runtime is not None, f"no {kind} in manifests/ serves {path.name}"
        parsed = parse_server_args(effective_args(runtime, isvc))
        assert parsed.model_name == isvc["metadata"]["name"]
        assert parsed.model_dir == MODEL_DIR
        assert str(parsed.http_port) == str(runtime_container(runtime)["ports"][0]["containerPort"])
    text = config_for(isvc, cms)
    mode = path.name.rsplit("-", 1)[0].replace("-", "_")
    if text is not None:
        config, warnings = load_server_config(text)
        assert warnings == []
        assert config.handler.mode.value == mode
        assert config.handler.device in (("cuda",) if path.name.endswith("-gpu.yaml") else ("cpu", "auto"))
    else:
        # The mode then comes from the model folder's own model-config.yaml: say so next to the URI.
        words = " ".join(path.read_text(encoding="utf-8").replace("#", " ").split())
        assert f"handler.mode: {mode}" in words, path.name


def test_one_example_serves_explain_from_the_predictor(manifests: dict[str, Source]) -> None:
    explaining = []
    for isvc in all_objects(manifests, "InferenceService"):
        text = config_for(isvc, configmaps(manifests))
        if text is not None and load_server_config(text)[0].handler.captum_explanation:
            explaining.append(isvc["metadata"]["name"])
            # No explainer component: KServe's ingress sends :explain to the predictor itself.
            assert "explainer" not in isvc["spec"]
    assert explaining == ["sentiment-cpu"]


def test_readme_names_every_manifest_and_route() -> None:
    readme = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    for path in manifest_files():
        assert str(path.relative_to(MANIFESTS)) in readme, f"README.md does not mention {path.name}"
    for route in (":predict", ":explain", "/predictions/", "/v2/health/ready"):
        assert route in readme


def test_import_mar_output_runs_on_this_runtime(manifests: dict[str, Source]) -> None:
    # `predictor import-mar` writes an InferenceService for a migrated .mar: it must land on this runtime.
    from predictor.mar import inference_service

    isvc = inference_service("bert-mar", "s3://bucket/bert")
    validate_object(isvc)
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        runtime = select_runtime(isvc, all_objects(manifests, kind))
        assert runtime is not None, kind
        parsed = parse_server_args(effective_args(runtime, isvc))
        assert parsed.model_name == "bert-mar" and parsed.model_dir == MODEL_DIR
