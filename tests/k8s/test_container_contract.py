"""The container contract: the real predictor, started exactly as the chart's ServingRuntime starts it.

The command is the image's ENTRYPOINT (the runtime sets none), the arguments are the runtime's and the
InferenceService's with KServe's template variables filled in, the environment is the Dockerfile's ENV
overlaid by the runtime's env (resourceFieldRef resolved as the kubelet does), the model-config.yaml is the
rendered ConfigMap. Only paths and ports move: /mnt/models, the ConfigMap mount and /tmp become temporary
directories, and the declared ports become free local ports. Then every probe path and the inference
routes are called on the declared HTTP port.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from k8s_support import (
    MODEL_DIR,
    REPO,
    Helm,
    Source,
    config_for,
    effective_args,
    flag,
    iter_probes,
    parse_quantity,
    runtime_container,
)

WORDS = ["the", "service", "was", "quick", "and", "friendly", "cold", "food", "rude", "staff", "good", "bad"]
STARTUP_TIMEOUT_S = 120.0
pytestmark = pytest.mark.slow  # starts the real server (about 10 s)


def dockerfile_runtime_stage() -> tuple[list[str], dict[str, str]]:
    """ENTRYPOINT and ENV of the Dockerfile's last stage (the image KServe runs)."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    stage = re.split(r"^FROM .*$", text, flags=re.MULTILINE)[-1]
    found = re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.MULTILINE)
    assert found, "the Dockerfile's last stage has no exec-form ENTRYPOINT"
    entrypoint = json.loads(found.group(1))
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.*)$", stage, re.MULTILINE):
        env.update(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)))
    return entrypoint, {k: v.strip('"') for k, v in env.items()}


def free_port() -> int:
    """A port nothing listens on now (bound to 127.0.0.1:0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_tiny_model(path: Path) -> Path:
    """A 2-layer, 32-wide BERT sequence classifier with its tokenizer and model-config.yaml."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    path.mkdir(parents=True)
    vocab = path / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8"
    )
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    (path / "index_to_name.json").write_text(json.dumps({"0": "negative", "1": "positive"}), encoding="utf-8")
    (path / "model-config.yaml").write_text(
        yaml.safe_dump({"handler": {"mode": "sequence_classification", "max_length": 32}}), encoding="utf-8"
    )
    return path


def direct_labels(model_dir: Path, texts: list[str]) -> list[str]:
    """Labels of the tiny model computed with transformers alone (index_to_name.json names the classes)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = json.loads((model_dir / "index_to_name.json").read_text(encoding="utf-8"))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = []
    for text in texts:  # one at a time: no padding effects
        with torch.inference_mode():
            logits = model(**tokenizer(text, return_tensors="pt")).logits
        labels.append(names[str(int(logits.argmax()))])
    return labels


def container_env(container: Mapping[str, Any], image_env: Mapping[str, str]) -> dict[str, str]:
    """The environment the kubelet gives the container: image ENV, then the container's env."""
    env = {k: v for k, v in image_env.items() if k != "PATH"}  # PATH points into the image's venv
    limits = container.get("resources", {}).get("limits", {})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"].get("resourceFieldRef")
        assert ref is not None, f"env {item['name']}: only resourceFieldRef is resolvable here"
        assert ref.get("containerName", container["name"]) == container["name"]
        resource = ref["resource"].split(".", 1)[1]
        # The kubelet rounds up to whole divisors, at least 1.
        value = math.ceil(parse_quantity(limits[resource]) / parse_quantity(ref.get("divisor", "1")))
        env[item["name"]] = str(max(1, value))
    return env


@pytest.fixture(scope="module")
def deployment(helm: Helm) -> Source:
    """The chart's default render (the manifests' runtime is asserted equal to it in test_chart)."""
    return helm.render(release="contract")


@pytest.fixture(scope="module")
def server(deployment: Source, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The predictor process started from the rendered objects; yields what the test needs to call it."""
    root = tmp_path_factory.mktemp("container")
    runtime = deployment.one("ServingRuntime")
    isvc = deployment.one("InferenceService")
    container = runtime_container(runtime)
    assert "command" not in container, "the runtime must run the image's ENTRYPOINT"
    entrypoint, image_env = dockerfile_runtime_stage()
    assert entrypoint == ["python", "-m", "predictor"]

    # Paths: /mnt/models (storage initializer), the ConfigMap mount, /tmp (emptyDir).
    model_dir = build_tiny_model(root / "mnt-models")
    mounts = {MODEL_DIR: str(model_dir), "/tmp": str(root / "tmp")}
    for mount in isvc["spec"]["predictor"]["model"].get("volumeMounts", []):
        target = root / "mounts" / mount["name"]
        target.mkdir(parents=True)
        mounts[mount["mountPath"]] = str(target)
    (root / "tmp").mkdir()
    config_text = config_for(isvc, {o["metadata"]["name"]: o for o in deployment.of_kind("ConfigMap")})
    assert config_text is not None
    config_arg = flag(effective_args(runtime, isvc), "--model_config")
    assert config_arg is not None
    Path(mounts[config_arg.rpartition("/")[0]], config_arg.rpartition("/")[2]).write_text(config_text)

    # Ports: each declared containerPort becomes a free local port, everywhere it is named.
    ports = {p["containerPort"]: free_port() for p in container["ports"]}

    # One pass, longest path first: a relocated path (itself under /tmp) is never relocated again.
    mount_re = re.compile(
        r"(^|=)(" + "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True)) + r")(?=/|$)"
    )

    def relocate(text: str) -> str:
        text = mount_re.sub(lambda m: m.group(1) + mounts[m.group(2)], text)
        for old_port, new_port in ports.items():
            text = re.sub(rf"^(--\w+_port=){old_port}$", rf"\g<1>{new_port}", text)
        return text

    args = [relocate(a) for a in effective_args(runtime, isvc)]
    env = {k: relocate(v) for k, v in container_env(container, image_env).items()}
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, *entrypoint[1:], *args],
        cwd=root / "tmp",
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    http_port = ports[container["ports"][0]["containerPort"]]
    try:
        yield {
            "process": process,
            "container": container,
            "isvc": isvc,
            "ports": ports,
            "env": env,
            "model_dir": model_dir,
            "base": f"http://127.0.0.1:{http_port}",
            "log": root / "server.log",
            "tmp": root / "tmp",
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for(server: dict[str, Any], path: str, status: int = 200) -> httpx.Response:
    """Poll a path until it answers `status`; fail with the server log when it never does."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            break
        try:
            last = httpx.get(server["base"] + path, timeout=5)
            if last.status_code == status:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.25)
    log = server["log"].read_text(errors="replace")[-4000:]
    raise AssertionError(
        f"GET {path} never answered {status} (last: {last!r}, exit {server['process'].poll()}):\n{log}"
    )


def test_probes_answer_on_the_declared_port(server: dict[str, Any]) -> None:
    probes = dict(iter_probes(server["container"]))
    assert set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = probes[kind]["httpGet"]
        assert server["ports"][get["port"]]  # the probe's port is a declared containerPort
        response = wait_for(server, get["path"])
        assert response.status_code == 200, kind


def test_predict_on_the_declared_port(server: dict[str, Any]) -> None:
    wait_for(server, "/v2/health/ready")
    name = server["isvc"]["metadata"]["name"]
    base = server["base"]
    assert httpx.get(f"{base}/v1/models/{name}", timeout=10).status_code == 200
    texts = ["the service was quick and friendly", "cold food and rude staff"]
    v1 = httpx.post(f"{base}/v1/models/{name}:predict", json={"instances": texts}, timeout=60)
    assert v1.status_code == 200, v1.text
    # The same model from the relocated /mnt/models, called directly: the server answered with it.
    expected = direct_labels(server["model_dir"], texts)
    assert v1.json()["predictions"] == expected
    torchserve = httpx.post(f"{base}/predictions/{name}", content=texts[0].encode(), timeout=60)
    assert torchserve.status_code == 200, torchserve.text
    assert expected[0] in torchserve.text
    assert httpx.get(f"{base}/ping", timeout=10).json() == {"status": "Healthy"}


def test_explain_is_served_by_the_predictor(server: dict[str, Any]) -> None:
    wait_for(server, "/v2/health/ready")
    name = server["isvc"]["metadata"]["name"]
    response = httpx.post(
        f"{server['base']}/v1/models/{name}:explain", json={"instances": ["the food was good"]}, timeout=120
    )
    assert response.status_code == 200, response.text
    assert response.json()


def test_grpc_port_listens(server: dict[str, Any]) -> None:
    wait_for(server, "/v2/health/ready")
    grpc = next(p for p in server["container"]["ports"] if p["name"] == "grpc")
    with socket.create_connection(("127.0.0.1", server["ports"][grpc["containerPort"]]), timeout=5):
        pass


def test_writes_stay_in_the_writable_tmp(server: dict[str, Any]) -> None:
    wait_for(server, "/v2/health/ready")
    for key in ("HOME", "HF_HOME", "PREDICTOR_CACHE_DIR"):
        assert Path(server["env"][key]).is_relative_to(server["tmp"]), key
    assert server["env"]["OMP_NUM_THREADS"] == "2"  # limits.cpu "2", as the kubelet resolves it
