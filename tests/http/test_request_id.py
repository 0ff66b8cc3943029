"""Every response of every route, errors included, carries X-Request-Id; an incoming one is echoed."""

from __future__ import annotations

import uuid

import httpx
import pytest
from http_checks import v2_bytes_request

# (server, method, path, request keyword arguments, expected status)
ROUTES = [
    ("seq", "GET", "/ping", {}, 200),
    ("seq", "POST", "/predictions/seq", {"content": b"hello"}, 200),
    ("seq", "POST", "/predictions/seq/1.0", {"content": b"hello"}, 200),
    ("seq", "POST", "/predictions/seq/9.9", {"content": b"hello"}, 404),
    ("seq", "POST", "/predictions/x", {"content": b"hello"}, 404),
    ("seq", "POST", "/predictions/seq", {"content": b""}, 400),
    ("seq", "POST", "/predictions/seq", {"content": b"x" * (4 * 1024 * 1024 + 1)}, 413),
    ("seq", "POST", "/explanations/seq", {"json": {"text": "hello", "n_steps": 2}}, 200),
    ("seq", "POST", "/explanations/seq", {"content": b"\xff"}, 400),
    ("seq", "OPTIONS", "/", {}, 200),
    ("seq", "GET", "/api-description", {}, 200),
    ("seq", "GET", "/metrics", {}, 200),
    ("seq", "GET", "/v1/models", {}, 200),
    ("seq", "GET", "/v1/models/seq", {}, 200),
    ("seq", "GET", "/v1/models/x", {}, 404),
    ("seq", "POST", "/v1/models/seq:predict", {"json": {"instances": ["hello"]}}, 200),
    ("seq", "POST", "/v1/models/seq:predict",
     {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ("seq", "POST", "/v1/models/seq:explain", {"json": {"instances": [{"text": "hi", "n_steps": 2}]}}, 200),
    ("seq", "GET", "/v2", {}, 200),
    ("seq", "GET", "/v2/health/live", {}, 200),
    ("seq", "GET", "/v2/health/ready", {}, 200),
    ("seq", "GET", "/v2/models/seq", {}, 200),
    ("seq", "GET", "/v2/models/seq/ready", {}, 200),
    ("seq", "POST", "/v2/models/seq/infer", {"json": v2_bytes_request(["hello"])}, 200),
    ("seq", "POST", "/v2/models/seq/infer", {"json": {"inputs": []}}, 400),
    ("seq", "GET", "/no/such/route", {}, 404),
    ("seq", "DELETE", "/ping", {}, 405),
    ("gen", "POST", "/predictions/gen?stream=true",
     {"json": {"text": "Once", "parameters": {"max_new_tokens": 3, "do_sample": False}}}, 200),
    ("gen", "POST", "/openai/v1/completions",
     {"json": {"model": "gen", "prompt": "Once", "max_tokens": 3}}, 200),
    ("gen", "POST", "/openai/v1/completions",
     {"json": {"model": "gen", "prompt": "Once", "max_tokens": 3, "stream": True}}, 200),
    ("gen", "POST", "/openai/v1/completions", {"json": {"model": "gen"}}, 400),
]


def _ids(route: tuple) -> str:
    return f"{route[1]} {route[2].split('?')[0]} {route[4]}"


@pytest.mark.parametrize("route", ROUTES, ids=[_ids(r) for r in ROUTES])
def test_request_id_on_every_response(fleet, route):
    name, method, path, kwargs, status = route
    server = fleet.ready(name)
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        generated = client.request(method, path, **kwargs)
        assert generated.status_code == status, generated.text[:300]
        assert len(generated.headers.get("x-request-id", "")) >= 8, generated.headers
        ours = uuid.uuid4().hex
        headers = {**kwargs.get("headers", {}), "X-Request-Id": ours}
        echoed = client.request(method, path, **{**kwargs, "headers": headers})
        assert echoed.status_code == status, echoed.text[:300]
        assert echoed.headers.get_list("x-request-id") == [ours]


def test_generated_ids_are_unique(seq):
    ids = {seq.get("/ping").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20
