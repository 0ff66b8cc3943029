"""`OPTIONS /` and `GET /api-description`: a valid OpenAPI 3.0 document of every route the server has."""

from __future__ import annotations

import httpx
import pytest
from openapi_spec_validator import validate

METHODS = {"get", "post", "put", "delete", "options", "patch", "head"}


def _operations(document: dict) -> set[tuple[str, str]]:
    paths = document["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


@pytest.fixture(scope="module", params=["seq", "gen"])
def served(request, fleet):
    """(server, its OpenAPI document) for a classifier and for a generator."""
    server = fleet.ready(request.param)
    response = httpx.request("OPTIONS", server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return server, response.json()


def test_document_is_valid_openapi_3_0(served):
    _, document = served
    assert document["openapi"].startswith("3.0.")
    validate(document)  # raises on an invalid document


def test_api_description_is_the_same_document(served):
    server, document = served
    assert httpx.get(server.url + "/api-description").json() == document


def test_documents_the_torchserve_and_kserve_routes(served):
    server, document = served
    expected = {
        ("options", "/"), ("get", "/api-description"), ("get", "/ping"),
        ("post", "/predictions/{model_name}"), ("post", "/predictions/{model_name}/{model_version}"),
        ("post", "/explanations/{model_name}"), ("post", "/explanations/{model_name}/{model_version}"),
        ("get", "/metrics"), ("get", "/v1/models"), ("get", "/v1/models/{model_name}"),
        ("post", "/v1/models/{model_name}:predict"), ("post", "/v1/models/{model_name}:explain"),
        ("get", "/v2"), ("get", "/v2/health/live"), ("get", "/v2/health/ready"),
        ("get", "/v2/models/{model_name}"), ("get", "/v2/models/{model_name}/ready"),
        ("post", "/v2/models/{model_name}/infer"),
    }
    if server.mode == "text_generation":
        expected.add(("post", "/openai/v1/completions"))
    assert expected <= _operations(document)
    assert (("post", "/openai/v1/completions") in _operations(document)) == (server.mode == "text_generation")


def test_every_documented_route_exists(served):
    """Each documented operation is routed (anything but 404/405 for a request with the path filled in)."""
    server, document = served
    for method, path in sorted(_operations(document)):
        url = path.replace("{model_name}", server.name).replace("{model_version}", "1.0")
        response = httpx.request(method.upper(), server.url + url, content=b"", timeout=60)
        assert response.status_code not in (404, 405), (method, path, response.status_code,
                                                        response.text[:200])


def test_every_real_route_is_documented(served):
    """Compared with the routes the app really has (FastAPI's own schema of the running app)."""
    server, document = served
    real = _operations(httpx.get(server.url + "/openapi.json").json())
    missing = real - _operations(document)
    assert not missing, sorted(missing)
