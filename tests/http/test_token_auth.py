"""Token authorization, TorchServe's way, on every route family of real server processes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from http_servers import ServerProcess, build_model
from kserve import InferenceGRPCClient, InferInput, InferRequest
from ts_client import generate_client

TEXT = "Ada Lovelace lived in London."
INFERENCE_KEY = "inf-Qw3rty_9"
MANAGEMENT_KEY = "mgmt-Zx8cv-7"
BARE_TOKEN = "bare-Tok3n_55"
UNAUTHORIZED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
# TorchServe 0.12's key_file.json (docs/token_authorization_api.md), keys changed.
KEY_FILE = {
    "management": {"key": MANAGEMENT_KEY, "expiration time": "2024-02-16T21:12:24.801167Z"},
    "inference": {"key": INFERENCE_KEY, "expiration time": "2024-02-16T21:12:24.801148Z"},
    "API": {"key": "yv9uQajP"},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def auth_server(http_workdir: Path):
    """A sequence classifier with --token_file key_file.json."""
    key_file = http_workdir / "key_file.json"
    key_file.write_text(json.dumps(KEY_FILE, indent=2))
    model_dir = build_model(http_workdir / "model-auth", "sequence_classification")
    server = ServerProcess.launch("auth", "sequence_classification", model_dir, http_workdir,
                                  "--token_file", str(key_file))
    try:
        yield server.wait_ready()
    finally:
        server.terminate()
        server.wait_stopped()


@pytest.fixture(scope="module")
def bare_server(http_workdir: Path):
    """A text generator guarded by PREDICTOR_TOKEN (one bare token) with a responseTimeout it cannot meet."""
    model_dir = build_model(http_workdir / "model-bare", "text_generation")
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    config["responseTimeout"] = 0.02
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREDICTOR_TOKEN", BARE_TOKEN)
        server = ServerProcess.launch("bare", "text_generation", model_dir, http_workdir)
    try:
        yield server.wait_ready()
    finally:
        server.terminate()
        server.wait_stopped()


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    return generate_client(tmp_path_factory.mktemp("ts-grpc-client-auth"))


def ts_stub(pb, server: ServerProcess):
    _, pb_grpc = pb
    return pb_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.ts_grpc_port}"))


def _metadata(key: str | None) -> list[tuple[str, str]]:
    return [] if key is None else [("authorization", f"Bearer {key}")]


# ---- REST: KServe v1, v2 and TorchServe's routes ---------------------------------------------------------

def _inference_calls(name: str) -> list[tuple[str, str, dict]]:
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
    return [
        ("POST", f"/predictions/{name}", {"content": TEXT}),
        ("POST", f"/predictions/{name}/1.0", {"content": TEXT}),
        ("POST", f"/explanations/{name}", {"content": TEXT}),
        ("POST", f"/v1/models/{name}:predict", {"json": {"instances": [TEXT]}}),
        ("POST", f"/v2/models/{name}/infer", {"json": v2}),
        ("GET", "/v1/models", {}),
        ("GET", f"/v2/models/{name}", {}),
    ]


@pytest.mark.parametrize("call", range(7))
def test_rest_inference_routes_need_the_inference_key(auth_server, call):
    method, path, kwargs = _inference_calls("auth")[call]
    with httpx.Client(base_url=auth_server.url, timeout=120) as client:
        for headers in ({}, bearer("wrong"), bearer(MANAGEMENT_KEY), {"Authorization": INFERENCE_KEY},
                        {"Authorization": f"Basic {INFERENCE_KEY}"}):
            response = client.request(method, path, headers=headers, **kwargs)
            assert response.status_code == 401, (path, headers, response.text)
            if path.startswith(("/predictions", "/explanations")):
                assert response.json() == {"code": 401, "type": "InvalidKeyException", "message": UNAUTHORIZED}
            else:
                assert response.json() == {"error": UNAUTHORIZED}
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.headers["x-request-id"]
        response = client.request(method, path, headers=bearer(INFERENCE_KEY), **kwargs)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("path", ["/ping", "/v2/health/live", "/v2/health/ready", "/v1/models/auth",
                                  "/v2/models/auth/ready", "/metrics", "/viewer"])
def test_probes_metrics_and_viewer_page_are_exempt(auth_server, path):
    response = httpx.get(auth_server.url + path, timeout=30)
    assert response.status_code == 200, (path, response.text)


def test_cors_preflight_is_exempt_but_the_call_is_not(auth_server):
    preflight = httpx.options(auth_server.url + "/predictions/auth", timeout=30, headers={
        "Origin": "null", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code != 401
    assert httpx.options(auth_server.url + "/", timeout=30).status_code == 401  # the API description


# ---- gRPC: TorchServe's API and kserve's v2 ----------------------------------------------------------------

def test_torchserve_grpc_needs_the_inference_key(pb, auth_server):
    from google.protobuf import empty_pb2

    inference_pb2, _ = pb
    stub = ts_stub(pb, auth_server)
    assert json.loads(stub.Ping(empty_pb2.Empty(), timeout=30).health) == {"status": "Healthy"}  # a probe
    request = inference_pb2.PredictionsRequest(model_name="auth", input={"data": TEXT.encode()})
    calls = [stub.Predictions, lambda r, **kw: list(stub.StreamPredictions(r, **kw)),
             lambda r, **kw: list(stub.StreamPredictions2(iter([r]), **kw))]
    for call in calls:
        for key in (None, "wrong", MANAGEMENT_KEY):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, metadata=_metadata(key), timeout=30)
            assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)
    expected = httpx.post(auth_server.url + "/predictions/auth", content=TEXT, headers=bearer(INFERENCE_KEY)).content
    assert stub.Predictions(request, metadata=_metadata(INFERENCE_KEY), timeout=60).prediction == expected
    replies = list(stub.StreamPredictions2(iter([request]), metadata=_metadata(INFERENCE_KEY), timeout=60))
    assert [r.prediction for r in replies] == [expected]


def test_kserve_v2_grpc_needs_the_inference_key_but_not_for_probes(auth_server):
    tensor = InferInput(name="text", shape=[1], datatype="BYTES", data=[TEXT])

    async def calls():
        client = InferenceGRPCClient(auth_server.grpc_target, timeout=60)
        try:
            probes = (await client.is_server_live(), await client.is_server_ready(),
                      await client.is_model_ready("auth"))
            refused = []
            for key in (None, "wrong", MANAGEMENT_KEY):
                try:
                    await client.infer(InferRequest(model_name="auth", infer_inputs=[tensor]), headers=_metadata(key))
                except grpc.aio.AioRpcError as exc:
                    refused.append((exc.code(), exc.details()))
            answer = await client.infer(InferRequest(model_name="auth", infer_inputs=[tensor]),
                                        headers=_metadata(INFERENCE_KEY))
            return probes, refused, answer
        finally:
            await client.close()

    probes, refused, answer = asyncio.run(calls())
    assert probes == (True, True, True)
    assert refused == [(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)] * 3
    expected = httpx.post(auth_server.url + "/predictions/auth", content=TEXT, headers=bearer(INFERENCE_KEY)).text
    assert answer.outputs[0].data == [expected.encode()]


# ---- management API ---------------------------------------------------------------------------------------

def test_management_api_needs_the_management_key(auth_server):
    url = f"http://127.0.0.1:{auth_server.management_port}"
    for path in ("/models", "/models/auth"):
        for headers in ({}, bearer("wrong"), bearer(INFERENCE_KEY)):
            response = httpx.get(url + path, headers=headers, timeout=30)
            assert response.status_code == 401
            assert response.json() == {"code": 401, "type": "InvalidKeyException", "message": UNAUTHORIZED}
        assert httpx.get(url + path, headers=bearer(MANAGEMENT_KEY), timeout=30).status_code == 200
    assert httpx.get(url + "/metrics", timeout=30).status_code == 200  # exempt, as on the HTTP port


def test_keys_never_appear_in_the_log(auth_server):
    httpx.post(auth_server.url + "/predictions/auth", content=TEXT, headers=bearer("a-wrong-key-zz"), timeout=30)
    text = auth_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "401" in text or "missing or wrong token" in text
    for secret in (INFERENCE_KEY, MANAGEMENT_KEY, "a-wrong-key-zz", "yv9uQajP"):
        assert secret not in text


# ---- a bare token, from the environment -------------------------------------------------------------------

def test_bare_token_guards_inference_and_management(pb, bare_server):
    url = f"http://127.0.0.1:{bare_server.management_port}"
    assert httpx.get(url + "/models", timeout=30).status_code == 401
    assert httpx.get(url + "/models", headers=bearer(BARE_TOKEN), timeout=30).status_code == 200
    body = json.dumps({"text": "Once", "parameters": {"max_new_tokens": 1}})
    assert httpx.post(bare_server.url + "/predictions/bare", content=body, timeout=30).status_code == 401
    assert httpx.post(bare_server.url + "/predictions/bare", content=body, headers=bearer(BARE_TOKEN),
                      timeout=60).status_code == 200
    assert BARE_TOKEN not in bare_server.log_path.read_text(encoding="utf-8", errors="replace")


def test_response_timeout_is_deadline_exceeded(pb, bare_server):
    """responseTimeout passed: REST's TorchServe route answers 500 (as TorchServe), gRPC DEADLINE_EXCEEDED."""
    inference_pb2, _ = pb
    body = json.dumps({"text": "Once upon a time", "parameters": {"max_new_tokens": 240, "do_sample": False}})
    rest = httpx.post(bare_server.url + "/predictions/bare", content=body, headers=bearer(BARE_TOKEN), timeout=60)
    assert rest.status_code == 500, rest.text
    assert rest.json()["type"] == "InternalServerException"
    with pytest.raises(grpc.RpcError) as caught:
        ts_stub(pb, bare_server).Predictions(inference_pb2.PredictionsRequest(model_name="bare",
                                                                              input={"data": body.encode()}),
                                             metadata=_metadata(BARE_TOKEN), timeout=60)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED, rest.json()["message"])


# ---- last: draining answers UNAVAILABLE, then the process exits cleanly -----------------------------------

def test_drain_is_unavailable_then_exit_zero(pb, auth_server):
    inference_pb2, _ = pb
    stub = ts_stub(pb, auth_server)
    request = inference_pb2.PredictionsRequest(model_name="auth", input={"data": TEXT.encode()})
    auth_server.terminate()
    time.sleep(0.5)  # inside the 3 s drain delay: not ready, ports still open
    rest = httpx.post(auth_server.url + "/predictions/auth", content=TEXT, headers=bearer(INFERENCE_KEY), timeout=30)
    assert rest.status_code == 503
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predictions(request, metadata=_metadata(INFERENCE_KEY), timeout=30)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, rest.json()["message"])
    assert auth_server.wait_stopped() == 0
    assert "Traceback" not in auth_server.log_path.read_text(encoding="utf-8", errors="replace")


def test_auth_is_off_by_default(pb, seq_server):
    """No --token_file: every route answers without a key, and an Authorization header is ignored."""
    for headers in ({}, bearer("anything")):
        assert httpx.post(seq_server.url + "/predictions/seq", content=TEXT, headers=headers).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{seq_server.management_port}/models", headers=headers).status_code == 200
    inference_pb2, _ = pb
    reply = ts_stub(pb, seq_server).Predictions(inference_pb2.PredictionsRequest(
        model_name="seq", input={"data": TEXT.encode()}), timeout=60)
    assert reply.prediction
    assert os.environ.get("PREDICTOR_TOKEN") is None
