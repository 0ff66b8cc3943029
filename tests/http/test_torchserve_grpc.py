"""TorchServe's gRPC inference API, called as TorchServe's own clients call it: answers and errors equal REST's."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from ts_client import generate_client

TEXT = "Ada Lovelace lived in London."
QA_ITEM = {"question": "Where did the team work?", "context": "The team worked in Paris on the handler."}
GREEDY = {"do_sample": False, "max_new_tokens": 12}
STREAM_PROMPTS = ["Once a", "upon the", "upon a", "Once upon a time"]


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """(inference_pb2, inference_pb2_grpc) generated from the shared inference.proto."""
    return generate_client(tmp_path_factory.mktemp("ts-grpc-client"))


@pytest.fixture(scope="module")
def stubs(pb, mode_servers, gen_stream_server):
    """A TorchServe gRPC stub per server name, as ts_scripts/torchserve_grpc_client.py makes them."""
    _, pb_grpc = pb
    channels, out = [], {}
    for server in [*mode_servers.values(), gen_stream_server]:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.ts_grpc_port}")
        channels.append(channel)
        out[server.name] = pb_grpc.InferenceAPIsServiceStub(channel)
    yield out
    for channel in channels:
        channel.close()


@pytest.fixture(scope="module")
def wordy_prompt(gen) -> str:
    """A prompt whose greedy continuation has several words (a text streamer sends it word by word)."""
    for prompt in STREAM_PROMPTS:
        text = gen.post("/predictions/gen", json={"text": prompt, "parameters": GREEDY}).text
        if text[len(prompt):].count(" ") >= 2:
            return prompt
    pytest.fail(f"no prompt of {STREAM_PROMPTS} has a multi-word greedy continuation with this tiny model")


def _request(pb, model: str, data: bytes, key: str = "data", **fields):
    inference_pb2, _ = pb
    return inference_pb2.PredictionsRequest(model_name=model, input={key: data}, **fields)


def _rest(server, path: str, body: bytes, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, content=body, timeout=60, **kwargs)


def _items(wordy_prompt: str) -> dict[str, bytes]:
    return {"seq": TEXT.encode(), "tok": TEXT.encode(), "qa": json.dumps(QA_ITEM).encode(),
            "gen": json.dumps({"text": wordy_prompt, "parameters": GREEDY}).encode()}


def test_ping_equals_rest_ping(pb, stubs, seq_server):
    from google.protobuf import empty_pb2

    reply = stubs["seq"].Ping(empty_pb2.Empty(), timeout=30)
    assert json.loads(reply.health) == httpx.get(seq_server.url + "/ping").json() == {"status": "Healthy"}


@pytest.mark.parametrize("name", ["seq", "tok", "qa", "gen"])
@pytest.mark.parametrize("key", ["data", "body"])
def test_predictions_equal_rest(pb, stubs, mode_servers, fleet, wordy_prompt, name, key):
    server = fleet.servers[name]
    body = _items(wordy_prompt)[name]
    rest = _rest(server, f"/predictions/{name}", body)
    assert rest.status_code == 200, rest.text
    reply = stubs[name].Predictions(_request(pb, name, body, key), timeout=60)
    assert reply.prediction == rest.content
    assert not reply.HasField("status")


def test_predictions_versioned_and_details(pb, stubs, seq_server):
    reply = stubs["seq"].Predictions(_request(pb, "seq", TEXT.encode(), model_version="1.0"), timeout=60)
    assert reply.prediction == _rest(seq_server, "/predictions/seq/1.0", TEXT.encode()).content
    detailed = stubs["seq"].Predictions(_request(pb, "seq", TEXT.encode()), timeout=60,
                                        metadata=[("x-predictor-details", "true")])
    rest = _rest(seq_server, "/predictions/seq", TEXT.encode(), headers={"X-Predictor-Details": "true"})
    assert json.loads(detailed.prediction) == rest.json()
    assert {"label", "score", "top_k"} <= set(rest.json())


def test_predictions_never_streams(pb, stubs, gen_stream_server, wordy_prompt):
    """handler.stream: true streams POST /predictions; the unary RPC answers the whole text, as ?stream=false."""
    body = _items(wordy_prompt)["gen"]
    reply = stubs["gen-stream"].Predictions(_request(pb, "gen-stream", body), timeout=60)
    assert reply.prediction == _rest(gen_stream_server, "/predictions/gen-stream?stream=false", body).content


@pytest.mark.parametrize(("name", "model", "version", "body", "code", "status"), [
    ("seq", "x", "", TEXT.encode(), grpc.StatusCode.NOT_FOUND, 404),
    ("seq", "seq", "9.9", TEXT.encode(), grpc.StatusCode.NOT_FOUND, 404),
    ("qa", "qa", "", b"not a JSON object", grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("qa", "qa", "", json.dumps({"question": "who?"}).encode(), grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("seq", "seq", "", b"", grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("seq", "seq", "", b"\xff\xfe not UTF-8", grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("gen", "gen", "", json.dumps({"text": "hi", "parameters": {"max_new_tokens": -1}}).encode(),
     grpc.StatusCode.INVALID_ARGUMENT, 400),
])
def test_errors_equal_rest(pb, stubs, fleet, still_healthy, name, model, version, body, code, status):
    """Same message as the REST route's TorchServe error body, with TorchServe's gRPC status code."""
    path = f"/predictions/{model}" + (f"/{version}" if version else "")
    rest = _rest(fleet.servers[name], path, body)
    assert rest.status_code == status, rest.text
    for rpc in (stubs[name].Predictions, lambda r, **kw: list(stubs[name].StreamPredictions(r, **kw))):
        with pytest.raises(grpc.RpcError) as caught:
            rpc(_request(pb, model, body, model_version=version), timeout=60)
        assert caught.value.code() == code
        assert caught.value.details() == rest.json()["message"]


def test_input_without_data_or_body_is_invalid(pb, stubs, still_healthy):
    inference_pb2, _ = pb
    with pytest.raises(grpc.RpcError) as caught:
        stubs["seq"].Predictions(inference_pb2.PredictionsRequest(model_name="seq", input={"text": b"hi"}), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`data`" in caught.value.details()


def test_too_large_input(pb, stubs, seq_server, still_healthy):
    body = b"a " * (2 * 1024 * 1024 + 1)  # one byte over limits.max_body_bytes (4 MiB)
    assert _rest(seq_server, "/predictions/seq", body).status_code == 413
    with pytest.raises(grpc.RpcError) as caught:
        stubs["seq"].Predictions(_request(pb, "seq", body), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_predictions_one_response_per_chunk(pb, stubs, gen_server, wordy_prompt):
    body = _items(wordy_prompt)["gen"]
    whole = _rest(gen_server, "/predictions/gen", body).content
    with httpx.stream("POST", gen_server.url + "/predictions/gen?stream=true", content=body, timeout=60) as rest:
        rest_chunks = [c for c in rest.iter_raw() if c]
    replies = list(stubs["gen"].StreamPredictions(_request(pb, "gen", body), timeout=60))
    chunks = [r.prediction for r in replies]
    assert len(chunks) >= 3, chunks
    assert b"".join(chunks) == whole == b"".join(rest_chunks)


@pytest.mark.parametrize("name", ["seq", "tok", "qa"])
def test_stream_predictions_other_modes_answer_once(pb, stubs, fleet, wordy_prompt, name):
    body = _items(wordy_prompt)[name]
    replies = list(stubs[name].StreamPredictions(_request(pb, name, body), timeout=60))
    assert [r.prediction for r in replies] == [_rest(fleet.servers[name], f"/predictions/{name}", body).content]


@pytest.mark.parametrize("name", ["seq", "tok", "qa", "gen"])
def test_stream_predictions2_answers_each_request_and_reports_errors_inline(pb, stubs, fleet, wordy_prompt, name):
    """A bidirectional stream: answers in order with their sequence_id; an error goes in `status`, the stream goes on."""
    body = _items(wordy_prompt)[name]
    expected = _rest(fleet.servers[name], f"/predictions/{name}?stream=false", body).content
    requests = [_request(pb, name, body, sequence_id="s1"), _request(pb, "x", body, sequence_id="s2"),
                _request(pb, name, body, sequence_id="s3")]
    replies = list(stubs[name].StreamPredictions2(iter(requests), timeout=60))
    by_sequence: dict[str, list] = {}
    for reply in replies:
        by_sequence.setdefault(reply.sequence_id, []).append(reply)
    assert list(by_sequence) == ["s1", "s2", "s3"]
    for sequence in ("s1", "s3"):
        assert b"".join(r.prediction for r in by_sequence[sequence]) == expected
        assert not any(r.HasField("status") for r in by_sequence[sequence])
    [error] = by_sequence["s2"]
    assert error.status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert error.status.message == "Model not found: x"
    if name == "gen":
        assert len(by_sequence["s1"]) >= 3  # one response per generated chunk, as StreamPredictions
