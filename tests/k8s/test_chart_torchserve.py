"""The chart exposes TorchServe's gRPC and management ports and wires token authorization to a Secret."""

from __future__ import annotations

from k8s_support import CHART, Helm, runtime_container


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if "=" in a)


def test_default_render_serves_torchserve_ports(helm: Helm) -> None:
    source = helm.render()
    container = runtime_container(source.one("ServingRuntime"))
    flags = _flags(container["args"])
    assert (flags["--ts_grpc_port"], flags["--ts_management_port"]) == ("7070", "8082")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081, "grpc-ts": 7070, "http-ts-mgmt": 8082}
    assert "--token_file" not in " ".join(source.one("InferenceService")["spec"]["predictor"]["model"].get("args", []))


def test_ports_off(helm: Helm) -> None:
    source = helm.render(sets=["server.tsGrpcPort=0", "server.tsManagementPort=0"])
    container = runtime_container(source.one("ServingRuntime"))
    assert (_flags(container["args"])["--ts_grpc_port"], _flags(container["args"])["--ts_management_port"]) == ("0", "0")
    assert {p["name"] for p in container["ports"]} == {"http", "grpc"}


def test_auth_mounts_the_secret_and_passes_token_file(helm: Helm) -> None:
    source = helm.render(sets=["auth.enabled=true", "auth.secretName=bert-token"])
    predictor = source.one("InferenceService")["spec"]["predictor"]
    assert {"name": "token", "secret": {"secretName": "bert-token"}} in predictor["volumes"]
    assert "--token_file=/etc/predictor/token/key_file.json" in predictor["model"]["args"]
    assert {"name": "token", "mountPath": "/etc/predictor/token", "readOnly": True} in predictor["model"]["volumeMounts"]


def test_auth_without_a_secret_fails_at_render_time(helm: Helm) -> None:
    done = helm.run("template", "demo", str(CHART), "--set", "auth.enabled=true", check=False)
    assert done.returncode != 0
    assert "/auth/secretName" in done.stderr
