"""Bad requests get a 4xx that says what is wrong, in the shape of their route family; never a 5xx.

After every test here, every shared server still answers /ping with 200 (the `still_healthy` fixture).
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from http_checks import assert_kserve_error, assert_torchserve_error, v2_bytes_request

pytestmark = pytest.mark.usefixtures("still_healthy")

NOT_UTF8 = b"caf\xe9 \xff\xfe"  # Latin-1 bytes and bytes that never occur in UTF-8
JSON_HEADERS = {"Content-Type": "application/json"}
MIB = 1024 * 1024
DEFAULT_MAX_BODY = 4 * MIB  # predictor.config.Limits.max_body_bytes; the test models keep the default


def test_default_body_limit_is_what_the_tests_assume():
    from predictor.config import Limits

    assert Limits().max_body_bytes == DEFAULT_MAX_BODY
    assert Limits().max_instances == 64


# ---- TorchServe routes: {"code", "type", "message"} ------------------------------------------------


def _no_content_type(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    request = client.build_request("POST", path, content=body)
    return client.send(request)


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_torchserve_empty_body(seq, body):
    response = _no_content_type(seq, "/predictions/seq", body)
    assert "empty" in assert_torchserve_error(response, 400, "BadRequestException")["message"]


def test_torchserve_not_utf8(seq):
    response = _no_content_type(seq, "/predictions/seq", NOT_UTF8)
    assert "UTF-8" in assert_torchserve_error(response, 400, "BadRequestException")["message"]


def test_torchserve_multipart_part_not_utf8(seq):
    response = seq.post("/predictions/seq", files={"data": ("x.bin", NOT_UTF8)})
    assert_torchserve_error(response, 400, "BadRequestException")


@pytest.mark.parametrize("body", [b'{"question": "who?", "context": ', b"{not json", b"[1, 2"])
def test_torchserve_malformed_json_for_qa(qa, body):
    response = qa.post("/predictions/qa", content=body, headers=JSON_HEADERS)
    assert_torchserve_error(response, 400, "BadRequestException")


MISSING_QA_FIELDS = [{"question": "who?"}, {"context": "the team"}, {"question": 1, "context": "x"},
                     {"question": "", "context": "the team"}, {}]


@pytest.mark.parametrize("item", MISSING_QA_FIELDS)
def test_torchserve_missing_qa_fields(qa, item):
    response = qa.post("/predictions/qa", json=item)
    body = assert_torchserve_error(response, 400, "BadRequestException")
    assert "question" in body["message"] or "context" in body["message"]


@pytest.mark.parametrize("parameters", [{"max_new_tokens": 0}, {"max_new_tokens": 10**9}, {"temperature": -1},
                                        {"do_sample": "yes"}, {"beams": 4}, {"top_p": 2}])
def test_torchserve_bad_generation_parameters(gen, parameters):
    response = gen.post("/predictions/gen", json={"text": "Once upon", "parameters": parameters})
    assert_torchserve_error(response, 400, "BadRequestException")


def test_torchserve_too_many_multipart_inputs(seq):
    files = [("data", (f"{n}.txt", b"hello")) for n in range(65)]
    assert_torchserve_error(seq.post("/predictions/seq", files=files), 413, "RequestEntityTooLargeException")


# ---- KServe routes: {"error": "..."} ---------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"instances": [', b"not json at all", b"", b'"just a string"',
                                  b'{"instances": "hello"}', b'{"instances": []}', b'{"nothing": 1}',
                                  b'{"instances": [null]}', b'{"instances": [42]}',
                                  b'{"instances": [{"x": 1}]}'])
def test_v1_bad_bodies(seq, body):
    assert_kserve_error(seq.post("/v1/models/seq:predict", content=body, headers=JSON_HEADERS), 400)


def test_v1_not_utf8(seq):
    body = b'{"instances": ["' + NOT_UTF8 + b'"]}'
    assert_kserve_error(seq.post("/v1/models/seq:predict", content=body, headers=JSON_HEADERS), 400)


@pytest.mark.parametrize("instance", [{"question": "who?"}, {"data": '{"context": "x"}'}, "plain text",
                                      {"data": '{"question": "who?", "context": '}])
def test_v1_missing_qa_fields(qa, instance):
    message = assert_kserve_error(qa.post("/v1/models/qa:predict", json={"instances": [instance]}), 400)
    assert "question" in message or "context" in message


def test_v1_too_many_instances(seq):
    assert_kserve_error(seq.post("/v1/models/seq:predict", json={"instances": ["hi"] * 65}), 413)


@pytest.mark.parametrize("request_body", [
    {"inputs": []},
    {"inputs": [{"name": "text", "datatype": "INT32", "shape": [1], "data": [1]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]},
    v2_bytes_request(["a"]) | {"parameters": {"details": "yes"}},
    v2_bytes_request(["a", "b"]) | {"inputs": v2_bytes_request(["a"])["inputs"] * 2},
])
def test_v2_bad_tensors(seq, request_body):
    assert_kserve_error(seq.post("/v2/models/seq/infer", json=request_body), 400)


@pytest.mark.parametrize("body", [b'{"inputs": [', b"", b'{"no_inputs": true}'])
def test_v2_malformed_json_is_400(seq, body):
    assert_kserve_error(seq.post("/v2/models/seq/infer", content=body, headers=JSON_HEADERS), 400)


def test_v2_qa_item_not_an_object(qa):
    message = assert_kserve_error(qa.post("/v2/models/qa/infer", json=v2_bytes_request(["who?"])), 400)
    assert "question" in message


# ---- sizes: 413, never 5xx ---------------------------------------------------------------------------


def test_one_mebibyte_of_instances_is_answered(seq, direct):
    """1 MiB spread over 64 instances (each under max_text_chars): answered, each text truncated."""
    texts = [f"review {n}: " + "good food and friendly staff " * 580 for n in range(64)]
    body = json.dumps({"instances": texts}).encode()
    assert MIB <= len(body) < DEFAULT_MAX_BODY
    response = seq.post("/v1/models/seq:predict", content=body, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text[:500]
    # the model sees the first max_length tokens only, so a prefix of each text gives its label
    assert response.json()["predictions"] == [direct["seq"].sequence_label(t[:2000]) for t in texts]


@pytest.mark.parametrize("route", ["/predictions/seq", "/v1/models/seq:predict"])
def test_one_mebibyte_single_text_is_answered_or_413(seq, route):
    text = "word " * (MIB // 5)
    body = text.encode() if route.startswith("/predictions") else json.dumps({"instances": [text]}).encode()
    response = seq.post(route, content=body, headers=JSON_HEADERS if route.startswith("/v1") else {})
    assert response.status_code in (200, 413), response.text[:500]
    if response.status_code == 413:  # over max_text_chars: the message says which limit
        assert "limit" in response.text


@pytest.mark.parametrize("route", ["/predictions/seq", "/v1/models/seq:predict", "/v2/models/seq/infer"])
def test_body_over_the_limit_is_413(seq, route):
    response = seq.post(route, content=b"x" * (DEFAULT_MAX_BODY + 1), headers=JSON_HEADERS)
    assert response.status_code == 413, response.text[:500]
    assert str(DEFAULT_MAX_BODY) in response.text


@pytest.mark.parametrize("route", ["/predictions/seq", "/v1/models/seq:predict"])
def test_chunked_body_over_the_limit_is_413(seq, route):
    """No Content-Length to check up front: the limit applies while the body is read."""

    def chunks():
        for _ in range(5):
            yield b"x" * MIB

    response = seq.post(route, content=chunks(), headers=JSON_HEADERS)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text[:500]


def test_chunked_body_over_the_limit_has_torchserve_shape(seq):
    def chunks():
        for _ in range(5):
            yield b"x" * MIB

    response = seq.post("/predictions/seq", content=chunks())
    assert_torchserve_error(response, 413, "RequestEntityTooLargeException")


def test_declared_body_over_the_limit_has_torchserve_shape(seq):
    response = seq.post("/predictions/seq", content=b"x" * (DEFAULT_MAX_BODY + 1))
    assert_torchserve_error(response, 413, "RequestEntityTooLargeException")


# ---- logs: a client error is not a server error ----------------------------------------------------


def _log_lines(server, request_id: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:  # the server writes its access line right after the response
        lines = [line for line in server.log_path.read_text().splitlines() if request_id in line]
        if any("uvicorn.access" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_torchserve_client_errors_are_logged_at_info(seq_server, seq):
    request_id = uuid.uuid4().hex
    seq.post("/predictions/seq", content=b"", headers={"X-Request-Id": request_id})
    lines = _log_lines(seq_server, request_id)
    assert any(" INFO " in line and "BadRequestException" in line for line in lines), lines
    assert not [line for line in lines if " ERROR " in line]


def test_kserve_client_errors_are_not_logged_as_errors(seq_server, seq):
    request_id = uuid.uuid4().hex
    seq.post("/v1/models/seq:predict", content=b"{", headers={**JSON_HEADERS, "X-Request-Id": request_id})
    lines = _log_lines(seq_server, request_id)
    assert lines
    assert not [line for line in lines if " ERROR " in line], lines
