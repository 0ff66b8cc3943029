"""limits: (body bytes, instances, text length) and the generation token cap: 413/400, refused early.

The `seq_limits_server` runs with max_body_bytes 2048, max_instances 4 and max_text_chars 300, so each
limit is exceeded by a request of a few kilobytes.
"""

from __future__ import annotations

import json

import httpx
import pytest
from reliability_raw import declared_length_only, status_line_of, upload
from reliability_requests import (
    JSON,
    ROUTES,
    assert_refused,
    assert_response_refused,
    generation_body,
    route_path,
)
from reliability_servers import GEN_TOKEN_CAP, SMALL_LIMITS, ServerProcess

MAX_BODY = SMALL_LIMITS["max_body_bytes"]
MAX_INSTANCES = SMALL_LIMITS["max_instances"]
MAX_CHARS = SMALL_LIMITS["max_text_chars"]
ENDLESS = 32 << 20  # an "endless" upload: far more than the kernel buffers of a loopback connection hold


def texts_body(route: str, texts: list[str]) -> bytes:
    """A request body carrying `texts` (TorchServe: one text as the raw body)."""
    if route == "torchserve":
        [text] = texts
        return text.encode()
    if route == "v1":
        return json.dumps({"instances": texts}).encode()
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                   "data": texts}]}).encode()


# ---- body bytes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_body_just_over_the_limit_is_413(seq_limits_server: ServerProcess, route):
    body = texts_body(route, ["a" * 200]).ljust(MAX_BODY + 1)  # trailing spaces: still valid JSON / text
    assert len(body) == MAX_BODY + 1
    path = route_path(route, seq_limits_server.name)
    with httpx.Client(base_url=seq_limits_server.url, timeout=30) as client:
        assert_response_refused(route, client.post(path, content=body, headers=JSON), 413)
        at_limit = client.post(path, content=body[:MAX_BODY], headers=JSON)
    if route == "torchserve":  # the whole body is the text, and 2048 characters is over max_text_chars
        assert "characters" in assert_response_refused(route, at_limit, 413)["message"]
    else:
        assert at_limit.status_code == 200, at_limit.text


@pytest.mark.parametrize("route", ROUTES)
def test_declared_huge_body_is_413_before_any_byte_of_it(seq_limits_server: ServerProcess, route):
    path = route_path(route, seq_limits_server.name)
    exchange = declared_length_only(seq_limits_server.http_port, path, 10**10)
    assert exchange.status is not None, status_line_of(exchange)
    assert_refused(route, exchange.status, 413, exchange.headers, exchange.body)
    assert exchange.seconds_to_response is not None and exchange.seconds_to_response < 5
    assert exchange.headers.get("connection") == "close"


@pytest.mark.parametrize("route", ["torchserve", "v1", "v2"])
def test_endless_chunked_body_is_413_while_still_sending(seq_limits_server: ServerProcess, route):
    """No Content-Length: the limit applies while the body streams in; the answer comes before the end."""
    path = route_path(route, seq_limits_server.name)
    exchange = upload(seq_limits_server.http_port, path, JSON, chunked=True, max_bytes=ENDLESS,
                      keep_sending_after_response=False)
    assert exchange.status is not None, status_line_of(exchange)
    assert_refused(route, exchange.status, 413, exchange.headers, exchange.body)
    assert exchange.sent_before_response < ENDLESS, "answered only once the client stopped sending"


def test_endless_chunked_multipart_is_413(seq_limits_server: ServerProcess):
    head = b'--b0undary\r\nContent-Disposition: form-data; name="data"; filename="a.txt"\r\n\r\n'
    exchange = upload(seq_limits_server.http_port, f"/predictions/{seq_limits_server.name}",
                      {"Content-Type": "multipart/form-data; boundary=b0undary"}, chunked=True,
                      max_bytes=ENDLESS, keep_sending_after_response=False, preamble=head)
    assert exchange.status is not None, status_line_of(exchange)
    assert_refused("torchserve", exchange.status, 413, exchange.headers, exchange.body)


@pytest.mark.parametrize("route", ROUTES)
def test_endless_chunked_body_connection_is_closed_after_the_413(seq_limits_server: ServerProcess, route):
    path = route_path(route, seq_limits_server.name)
    exchange = upload(seq_limits_server.http_port, path, JSON, chunked=True, max_bytes=ENDLESS,
                      keep_sending_after_response=True)
    assert exchange.status is not None and exchange.status >= 400, status_line_of(exchange)
    assert exchange.ending == "closed", f"read all {exchange.sent_total} bytes: {status_line_of(exchange)}"


# ---- instances and text length ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["v1", "v2"])
def test_more_instances_than_the_limit_is_413(seq_limits_server: ServerProcess, route):
    path = route_path(route, seq_limits_server.name)
    with httpx.Client(base_url=seq_limits_server.url, timeout=30) as client:
        response = client.post(path, content=texts_body(route, ["hi"] * (MAX_INSTANCES + 1)), headers=JSON)
        assert "limit is 4" in assert_response_refused(route, response, 413)["error"]
        at_limit = client.post(path, content=texts_body(route, ["hi"] * MAX_INSTANCES), headers=JSON)
    assert at_limit.status_code == 200, at_limit.text


@pytest.mark.parametrize("form", ["multipart", "urlencoded"])
def test_more_torchserve_inputs_than_the_limit_is_413(seq_limits_server: ServerProcess, form):
    path = f"/predictions/{seq_limits_server.name}"
    with httpx.Client(base_url=seq_limits_server.url, timeout=30) as client:
        if form == "multipart":
            files = [("data", (f"{n}.txt", b"hi")) for n in range(MAX_INSTANCES + 1)]
            response = client.post(path, files=files)
        else:
            response = client.post(path, content="&".join(["data=hi"] * (MAX_INSTANCES + 1)).encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_response_refused("torchserve", response, 413)


@pytest.mark.parametrize("route", ROUTES)
def test_text_over_max_text_chars_is_413(seq_limits_server: ServerProcess, route):
    path = route_path(route, seq_limits_server.name)
    with httpx.Client(base_url=seq_limits_server.url, timeout=30) as client:
        over = client.post(path, content=texts_body(route, ["é" * (MAX_CHARS + 1)]), headers=JSON)
        document = assert_response_refused(route, over, 413)
        assert str(MAX_CHARS) in json.dumps(document)
        at_limit = client.post(path, content=texts_body(route, ["é" * MAX_CHARS]), headers=JSON)
    assert at_limit.status_code == 200, at_limit.text


# ---- the generation token cap -----------------------------------------------------------------------------


def _prompt_with(parameters: str) -> str:
    return f'{{"text": "Once upon a time", "parameters": {parameters}}}'


@pytest.mark.parametrize("route", ROUTES)
def test_max_new_tokens_over_the_cap_is_400(gen_queue_server: ServerProcess, route):
    with httpx.Client(base_url=gen_queue_server.url, timeout=60) as client:
        item = _prompt_with(f'{{"max_new_tokens": {GEN_TOKEN_CAP + 1}}}')
        response = client.post(route_path(route, gen_queue_server.name), headers=JSON,
                               content=generation_body(route, item))
    document = assert_response_refused(route, response, 400)
    assert str(GEN_TOKEN_CAP) in json.dumps(document)


def test_max_new_tokens_at_the_cap_is_generated(gen_queue_server: ServerProcess):
    with httpx.Client(base_url=gen_queue_server.url, timeout=120) as client:
        item = _prompt_with(f'{{"max_new_tokens": {GEN_TOKEN_CAP}, "do_sample": false}}')
        response = client.post(f"/predictions/{gen_queue_server.name}", headers=JSON,
                               content=generation_body("torchserve", item))
    assert response.status_code == 200, response.text
    assert response.text.startswith("Once upon a time")
