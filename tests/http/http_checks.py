"""Assertions on the error bodies of both route families, shared by the HTTP tests."""

from __future__ import annotations

import httpx


def assert_torchserve_error(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    """TorchServe's error body: {"code": status, "type": "...Exception", "message": "..."}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"code", "type", "message"}, body
    assert body["code"] == status, body
    assert body["type"].endswith("Exception"), body
    if kind is not None:
        assert body["type"] == kind, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    return body


def assert_kserve_error(response: httpx.Response, status: int) -> str:
    """KServe's error body: {"error": "<message>"}; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    return body["error"]


def v2_bytes_request(texts: list[str], **extra: object) -> dict:
    """An Open Inference Protocol request with one BYTES tensor of texts."""
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}
