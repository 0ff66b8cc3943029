"""helm/transformers-predictor rendered by a real helm: lint-clean, valid objects, wired to the server."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from k8s_support import (
    CHART,
    MODEL_DIR,
    Helm,
    Source,
    assert_skips_have_reasons,
    chart_values_files,
    config_for,
    effective_args,
    isvc_problems,
    load_server_config,
    parse_server_args,
    runtime_container,
    runtime_problems,
    select_runtime,
    validate_object,
)

VALUES = ["values.yaml", *(p.name for p in chart_values_files())]


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a values file into the defaults: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_maps else value
    return out


def chart_values(name: str) -> dict[str, Any]:
    """The values a render used: the defaults, merged with an example file."""
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    if name != "values.yaml":
        values = merged(values, yaml.safe_load((CHART / name).read_text(encoding="utf-8")))
    return values


def test_example_values_files_exist() -> None:
    assert {"values-cpu.yaml", "values-gpu.yaml"} <= set(VALUES)


@pytest.mark.parametrize("values", VALUES)
def test_lint_is_clean(values: str, helm: Helm) -> None:
    done = helm.run("lint", "--strict", str(CHART), "-f", str(CHART / values))
    problems = [ln for ln in done.stdout.splitlines() if ln.startswith(("[WARNING]", "[ERROR]"))]
    assert problems == [], done.stdout


@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_is_valid(values: str, renders: dict[str, Source]) -> None:
    source = renders[values]
    kinds = sorted(o["kind"] for o in source.objects)
    assert {"InferenceService", "ServingRuntime"} <= set(kinds), kinds
    for obj in source.objects:
        validate_object(obj)
        assert_skips_have_reasons(obj)
        if obj["kind"] != "ClusterServingRuntime":
            assert obj["metadata"]["namespace"] == "models"


@pytest.mark.parametrize("values", VALUES)
def test_rendered_runtime_and_inferenceservice_are_wired(values: str, renders: dict[str, Source]) -> None:
    source, settings = renders[values], chart_values(values)
    knative = settings["deploymentMode"] == "Knative"
    runtime = source.one("ServingRuntime")
    isvc = source.one("InferenceService")
    cms = {o["metadata"]["name"]: o for o in source.of_kind("ConfigMap")}
    assert runtime_problems(runtime, knative=knative) == []
    assert isvc_problems(isvc, cms) == []
    assert select_runtime(isvc, [runtime]) is runtime
    # Helm-created runtimes never auto-select: two releases in a namespace must not compete.
    assert not any(f.get("autoSelect") for f in runtime["spec"]["supportedModelFormats"])
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == settings["deploymentMode"]
    pred = isvc["spec"]["predictor"]
    scaling = settings["autoscaling"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (scaling["minReplicas"], scaling["maxReplicas"])
    assert (pred["scaleMetric"], pred["scaleTarget"]) == (scaling["scaleMetric"], scaling["scaleTarget"])
    parsed = parse_server_args(effective_args(runtime, isvc))
    assert parsed.model_name == isvc["metadata"]["name"] and parsed.model_dir == MODEL_DIR
    assert (
        parsed.http_port
        == settings["server"]["httpPort"]
        == runtime_container(runtime)["ports"][0]["containerPort"]
    )
    assert parsed.grpc_port == settings["server"]["grpcPort"]
    assert parsed.model_config == f"{settings['modelConfig']['mountPath']}/model-config.yaml"


@pytest.mark.parametrize("values", VALUES)
def test_model_config_is_what_the_predictor_reads(values: str, renders: dict[str, Source]) -> None:
    source, settings = renders[values], chart_values(values)
    isvc = source.one("InferenceService")
    text = config_for(isvc, {o["metadata"]["name"]: o for o in source.of_kind("ConfigMap")})
    assert text is not None
    config, warnings = load_server_config(text)
    assert warnings == []
    assert config.handler.mode.value == settings["mode"]
    raw = yaml.safe_load(text)
    assert raw["handler"] == {"mode": settings["mode"], **settings["handler"]}
    for key, value in settings.get("batching", {}).items():
        assert raw[key] == value


def test_gpu_values_put_the_gpu_in_limits_only(renders: dict[str, Source]) -> None:
    gpu = renders["values-gpu.yaml"]
    resources = gpu.one("InferenceService")["spec"]["predictor"]["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in resources.get("requests", {})
    # The shared runtime stays GPU-free: the InferenceService asks for the GPU.
    assert "nvidia.com/gpu" not in runtime_container(gpu.one("ServingRuntime"))["resources"]["limits"]
    pred = gpu.one("InferenceService")["spec"]["predictor"]
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu" and pred["nodeSelector"]
    default = renders["values.yaml"].one("InferenceService")["spec"]["predictor"]["model"]["resources"]
    assert "nvidia.com/gpu" not in default["limits"]


def test_digest_pins_the_image_and_drops_its_checkov_skip(helm: Helm) -> None:
    digest = "sha256:" + "a" * 64
    source = helm.render(sets=[f"image.digest={digest}"])
    runtime = source.one("ServingRuntime")
    assert runtime_container(runtime)["image"] == f"registry.example.com/predictor@{digest}"
    for obj in source.objects:
        assert not any(v.startswith("CKV_K8S_43=") for v in obj["metadata"].get("annotations", {}).values())


def test_openmp_wait_reaches_the_predictor(helm: Helm) -> None:
    def wait_env(source: Source) -> str:
        env = {e["name"]: e.get("value") for e in runtime_container(source.one("ServingRuntime"))["env"]}
        return str(env["PREDICTOR_OPENMP_WAIT"])

    assert wait_env(helm.render()) == "short-spin"
    assert wait_env(helm.render(sets=["server.openmpWait=passive"])) == "passive"


def test_model_workers_reach_the_predictor(helm: Helm) -> None:
    def env_of(source: Source) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in runtime_container(source.one("ServingRuntime"))["env"]}

    assert "PREDICTOR_MODEL_WORKERS" not in env_of(helm.render())  # the predictor decides
    assert env_of(helm.render(sets=["server.modelWorkers=3"]))["PREDICTOR_MODEL_WORKERS"] == "3"


def test_cluster_scoped_runtime(helm: Helm) -> None:
    source = helm.render(sets=["runtime.clusterScoped=true"])
    runtime = source.one("ClusterServingRuntime")
    assert "namespace" not in runtime["metadata"]
    validate_object(runtime)
    assert select_runtime(source.one("InferenceService"), [runtime]) is runtime


def test_existing_runtime_is_referenced_not_created(helm: Helm) -> None:
    source = helm.render(sets=["runtime.create=false", "runtime.name=transformers-predictor"])
    assert source.of_kind("ServingRuntime") == [] and source.of_kind("ClusterServingRuntime") == []
    assert source.one("InferenceService")["spec"]["predictor"]["model"]["runtime"] == "transformers-predictor"


def test_network_policy_admits_only_the_serving_ports(renders: dict[str, Source]) -> None:
    assert renders["values.yaml"].of_kind("NetworkPolicy") == []
    source = renders["values-cpu.yaml"]
    policy = source.one("NetworkPolicy")
    isvc = source.one("InferenceService")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {p["containerPort"] for p in runtime_container(source.one("ServingRuntime"))["ports"]}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["handler.max_lenght=64"], "additional properties 'max_lenght' not allowed"),
        (["mode=summarization"], "/mode"),
        (["handler.dtype=float64"], "/handler/dtype"),
        (["inferenceService.storageUri=models/bert"], "/inferenceService/storageUri"),
        (["server.extraArgs={--workers=2}"], "/server/extraArgs/0"),
        (["replicas=2"], "additional properties 'replicas' not allowed"),
        (["autoscaling.scaleMetric=concurrency"], "the HPA scales on cpu or memory"),
        (["autoscaling.scaleTarget=150"], "1-100"),
        (["autoscaling.minReplicas=5"], "exceeds autoscaling.maxReplicas"),
        (["deploymentMode=Knative", "autoscaling.autoscalerClass="], "(KPA) scales on concurrency or rps"),
        (["inferenceService.name=1bert"], "/inferenceService/name"),
        (["fullnameOverride=Bert"], "must start with a letter"),
        (["modelConfig.mountPath=/etc/predictor/"], "/modelConfig/mountPath"),
        (["gpu.count=-1"], "/gpu/count"),
        (["server.openmpWait=active"], "/server/openmpWait"),
        (["server.modelWorkers=0"], "/server/modelWorkers"),
    ],
)
def test_bad_values_fail_at_render_time(sets: list[str], message: str, helm: Helm) -> None:
    args = ["template", "demo", str(CHART)]
    for s in sets:
        args += ["--set", s]
    done = helm.run(*args, check=False)
    assert done.returncode != 0, f"helm accepted {sets}"
    assert message in done.stderr, done.stderr


def test_notes_give_working_commands(helm: Helm) -> None:
    done = helm.run("install", "sentiment", str(CHART), "--dry-run=client", "--namespace", "models")
    notes = done.stdout.split("NOTES:", 1)[1]
    for expected in (
        "kubectl wait --for=condition=Ready inferenceservice/sentiment-transformers-predictor",
        "/v1/models/sentiment-transformers-predictor:predict",
        "/v1/models/sentiment-transformers-predictor:explain",
        "/predictions/sentiment-transformers-predictor",
        "service/sentiment-transformers-predictor-predictor 8080:80",
    ):
        assert expected in notes


def test_manifests_runtime_is_the_charts(renders: dict[str, Source], manifests: dict[str, Source]) -> None:
    # The container contract test starts the chart's runtime; the manifests' runtime must be the same.
    chart = runtime_container(renders["values.yaml"].one("ServingRuntime"))
    plain = runtime_container(manifests["runtime/servingruntime.yaml"].one("ServingRuntime"))
    for key in (
        "args",
        "env",
        "ports",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "securityContext",
        "volumeMounts",
        "resources",
    ):
        assert plain.get(key) == chart.get(key), key
    assert plain.get("command") is None and chart.get("command") is None
    assert plain["image"].split(":")[0] == chart["image"].split(":")[0]
