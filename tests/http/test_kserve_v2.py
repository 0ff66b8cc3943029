"""Open Inference Protocol (v2) over REST and gRPC, with kserve's own gRPC client."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest
from http_checks import assert_kserve_error, v2_bytes_request
from kserve import InferenceGRPCClient, InferInput, InferRequest

TEXTS = ["hello world", "Ada Lovelace lived in London.", "The service was slow and rude."]
QA_ITEM = {"question": "Who wrote the handler?", "context": "The handler was written by the team in Paris."}
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.mark.parametrize("name", ["seq", "tok", "qa", "gen"])
def test_health_and_metadata(fleet, name):
    server = fleet.ready(name)
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    ready = httpx.get(server.url + "/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert httpx.get(f"{server.url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    metadata = httpx.get(f"{server.url}/v2/models/{name}")
    assert metadata.status_code == 200
    body = metadata.json()
    assert body["name"] == name
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]] == [("text", "BYTES", [-1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]] == [("output", "BYTES", [-1])]


def test_infer_bytes_tensor(seq, direct):
    response = seq.post("/v2/models/seq/infer", content=json.dumps(v2_bytes_request(TEXTS, id="req-7")),
                        headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("seq", "1.0", "req-7")
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output", "BYTES", [len(TEXTS)])
    assert output["data"] == [direct["seq"].sequence_label(t) for t in TEXTS]


def test_infer_structured_results_are_json_text(tok, direct):
    response = tok.post("/v2/models/tok/infer", json=v2_bytes_request(TEXTS))
    assert response.status_code == 200, response.text
    data = response.json()["outputs"][0]["data"]
    assert [json.loads(d) for d in data] == [direct["tok"].token_labels(t) for t in TEXTS]


def test_infer_details_parameter(seq, direct):
    body = v2_bytes_request(TEXTS[:1], parameters={"details": True})
    response = seq.post("/v2/models/seq/infer", json=body)
    assert response.status_code == 200, response.text
    detail = json.loads(response.json()["outputs"][0]["data"][0])
    assert detail["label"] == direct["seq"].sequence_label(TEXTS[0])
    assert 0.0 < detail["score"] <= 1.0


def test_infer_question_answering(qa, core):
    handler = core["qa"]
    [expected] = handler.predict([handler.parse(QA_ITEM)])
    response = qa.post("/v2/models/qa/infer", json=v2_bytes_request([json.dumps(QA_ITEM)]))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [expected]


def test_infer_unknown_model_is_404(seq):
    assert_kserve_error(seq.post("/v2/models/x/infer", json=v2_bytes_request(["hi"])), 404)


# ---- gRPC ---------------------------------------------------------------------------------------------


def _grpc(target: str, coro_fn):
    """Run one coroutine with a fresh kserve gRPC client, closed afterwards."""

    async def main():
        client = InferenceGRPCClient(target, timeout=60)
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return asyncio.run(main())


def _bytes_request(model: str, texts: list[str], request_id: str = "") -> InferRequest:
    tensor = InferInput(name="text", shape=[len(texts)], datatype="BYTES", data=texts)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=request_id)


def test_grpc_server_ready_and_model_infer(seq_server, direct):
    async def calls(client):
        ready = await client.is_server_ready()
        live = await client.is_server_live()
        model_ready = await client.is_model_ready("seq")
        response = await client.infer(_bytes_request("seq", TEXTS, "grpc-1"))
        return ready, live, model_ready, response

    ready, live, model_ready, response = _grpc(seq_server.grpc_target, calls)
    assert (ready, live, model_ready) == (True, True, True)
    assert response.id == "grpc-1"
    assert response.model_name == "seq"
    [output] = response.outputs
    assert output.datatype == "BYTES"
    assert [v.decode() if isinstance(v, bytes) else v for v in output.data] == [
        direct["seq"].sequence_label(t) for t in TEXTS]


def test_grpc_question_answering(qa_server, core):
    handler = core["qa"]
    [expected] = handler.predict([handler.parse(QA_ITEM)])
    response = _grpc(qa_server.grpc_target, lambda c: c.infer(_bytes_request("qa", [json.dumps(QA_ITEM)])))
    assert [v.decode() if isinstance(v, bytes) else v for v in response.outputs[0].data] == [expected]


@pytest.mark.parametrize(("model", "item", "code"), [
    ("x", "hello", grpc.StatusCode.NOT_FOUND),
    ("qa", "not a JSON object", grpc.StatusCode.INVALID_ARGUMENT),
    ("qa", json.dumps({"question": "who?"}), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_errors_have_status_codes(qa_server, model, item, code):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _grpc(qa_server.grpc_target, lambda c: c.infer(_bytes_request(model, [item])))
    assert caught.value.code() == code
    assert caught.value.details()
    assert httpx.get(qa_server.url + "/ping").status_code == 200
