"""error_table: every core error, answered on every protocol as the adapters answer it.

EXPECTED is written out by hand (it is the wire contract the http/clients/reliability suites pin
route by route): a new error class without a row here and in error_table.ERRORS, or a new protocol
column without expectations, fails these tests.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from kserve.protocol.rest.server import RESTServer
from starlette.testclient import TestClient

from predictor import errors
from predictor.serving import error_table
from predictor.serving.kserve_model import kserve_errors
from predictor.serving.middleware import RequestContextMiddleware
from predictor.serving.openai import OpenAIParameterError, unsupported
from predictor.serving.server import predictor_error_handler

C = grpc.StatusCode
MODEL = "m"
MESSAGE = "what went wrong"
NOT_READY = f"Model with name {MODEL} is not ready. {MESSAGE}"  # kserve's ModelNotReady message
NOT_FOUND = f"Model with name {MODEL} does not exist."  # kserve's ModelNotFound message
INTERNAL = (500, "InternalServerException")
SERVER_ERROR_500 = (500, "server_error", None)
FAILURE = {"kserve": (500, MESSAGE), "oip_grpc": C.INTERNAL, "torchserve": INTERNAL,
           "torchserve_grpc": C.INTERNAL, "openai": SERVER_ERROR_500, "retry_after": None}
TIMEOUT = {"kserve": (504, MESSAGE), "oip_grpc": C.DEADLINE_EXCEEDED, "torchserve": INTERNAL,
           "torchserve_grpc": C.DEADLINE_EXCEEDED, "openai": (504, "server_error", None), "retry_after": None}

# core error -> per column: kserve (status, message inside the kserve.Model), gRPC codes, TorchServe
# (status, type), OpenAI (status, type, code), Retry-After.
EXPECTED: dict[type[errors.PredictorError], dict[str, Any]] = {
    errors.PredictorError: FAILURE,
    errors.ConfigError: FAILURE,
    errors.InvalidRequestError: {
        "kserve": (400, MESSAGE), "oip_grpc": C.INVALID_ARGUMENT, "torchserve": (400, "BadRequestException"),
        "torchserve_grpc": C.INVALID_ARGUMENT, "openai": (400, "invalid_request_error", None),
        "retry_after": None},
    errors.PayloadTooLargeError: {
        "kserve": (413, MESSAGE), "oip_grpc": C.RESOURCE_EXHAUSTED,
        "torchserve": (413, "RequestEntityTooLargeException"), "torchserve_grpc": C.RESOURCE_EXHAUSTED,
        "openai": (413, "invalid_request_error", None), "retry_after": None},
    errors.ExplanationUnavailableError: {
        "kserve": (501, MESSAGE), "oip_grpc": C.UNIMPLEMENTED,
        "torchserve": (501, "NotImplementedException"),
        "torchserve_grpc": C.UNIMPLEMENTED, "openai": (501, "server_error", None), "retry_after": None},
    errors.ModelNotFoundError: {
        "kserve": (404, NOT_FOUND), "oip_grpc": C.NOT_FOUND,
        "torchserve": (404, "ModelNotFoundException"),
        "torchserve_grpc": C.NOT_FOUND, "openai": (404, "invalid_request_error", "model_not_found"),
        "retry_after": None},
    errors.ModelVersionNotFoundError: {
        "kserve": (404, NOT_FOUND), "oip_grpc": C.NOT_FOUND,
        "torchserve": (404, "ModelVersionNotFoundException"),
        "torchserve_grpc": C.NOT_FOUND, "openai": (404, "invalid_request_error", "model_not_found"),
        "retry_after": None},
    errors.ModelNotReadyError: {
        "kserve": (503, NOT_READY), "oip_grpc": C.UNAVAILABLE,
        "torchserve": (503, "ServiceUnavailableException"),
        "torchserve_grpc": C.UNAVAILABLE, "openai": (503, "server_error", None), "retry_after": "1"},
    errors.OverloadedError: {
        "kserve": (503, MESSAGE), "oip_grpc": C.UNAVAILABLE,
        "torchserve": (503, "ServiceUnavailableException"),
        "torchserve_grpc": C.UNAVAILABLE, "openai": (503, "server_error", None), "retry_after": "1"},
    errors.InferenceTimeoutError: TIMEOUT,
    errors.RequestCancelledError: TIMEOUT,
    errors.ClientGoneError: TIMEOUT,
    errors.InferenceError: FAILURE,
    errors.OutOfResourcesError: {
        "kserve": (507, MESSAGE), "oip_grpc": C.RESOURCE_EXHAUSTED,
        "torchserve": (507, "OutOfResourcesException"),
        "torchserve_grpc": C.RESOURCE_EXHAUSTED, "openai": (507, "server_error", None), "retry_after": None},
}
# Errors an adapter defines on top of a core error; they answer as that error, with extra fields.
ADAPTER_ERRORS = {OpenAIParameterError: errors.InvalidRequestError}

PROTOCOLS = [f.name for f in dataclasses.fields(error_table.ErrorRow) if f.name != "retry_after"]


_DISCOVER = """
import importlib, pkgutil, predictor.serving
from predictor import errors
for module in pkgutil.iter_modules(predictor.serving.__path__, "predictor.serving."):
    importlib.import_module(module.name)
todo = [errors.PredictorError]
while todo:
    cls = todo.pop()
    print(cls.__module__, cls.__qualname__)
    todo.extend(cls.__subclasses__())
"""


def all_error_classes() -> set[type[errors.PredictorError]]:
    """PredictorError and every subclass the project defines, once every serving module (adapters define
    some) is imported.

    The import-everything runs in a child process: importing the TorchServe gRPC adapter here would
    register its inference.proto in this process's descriptor pool, and the gRPC tests' own stubs,
    generated from TorchServe's file, could then no longer load.
    """
    listed = subprocess.run([sys.executable, "-c", _DISCOVER], check=True, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    found = set()
    for line in listed.splitlines():
        module, qualname = line.split()
        if module.startswith("predictor."):
            found.add(getattr(importlib.import_module(module), qualname))
    return found


CORE = sorted((c for c in all_error_classes() if c.__module__ == errors.__name__), key=lambda c: c.__name__)


@pytest.fixture(scope="module")
def kserve_app() -> TestClient:
    """Our handler, kserve's handlers and the request middleware, as the server stacks them; each error
    raised bare (/direct) or inside the kserve.Model's translation (/model)."""
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, max_body_bytes=lambda: 1 << 20)
    app.add_exception_handler(errors.PredictorError, predictor_error_handler)
    RESTServer._add_exception_handlers(None, app)  # kserve's own handlers, as its RESTServer adds them
    by_name = {cls.__name__: cls for cls in CORE}

    @app.get("/direct/{name}")
    async def direct(name: str) -> None:
        raise by_name[name](MESSAGE)

    @app.get("/model/{name}")
    async def model(name: str) -> None:
        with kserve_errors(MODEL):
            raise by_name[name](MESSAGE)

    return TestClient(app, raise_server_exceptions=False)


def observe(column: str, cls: type[errors.PredictorError], app: TestClient) -> Any:
    """The answer of one protocol column for one error, as the comparable value EXPECTED holds."""
    exc = cls(MESSAGE)
    if column == "kserve":
        direct, model = app.get(f"/direct/{cls.__name__}"), app.get(f"/model/{cls.__name__}")
        assert direct.status_code == model.status_code
        assert direct.json() == {"error": MESSAGE}  # reached predictor_error_handler
        for response in (direct, model):  # every 503 says when to retry, whoever answered it
            assert response.headers.get("retry-after") == ("1" if response.status_code == 503 else None)
        assert set(model.json()) == {"error"}
        return model.status_code, model.json()["error"]
    if column == "oip_grpc":
        translated = error_table.as_kserve_exception(exc, MODEL)  # what the interceptor sees from the model
        assert translated is None or error_table.oip_grpc_code(translated) == error_table.oip_grpc_code(exc)
        return error_table.oip_grpc_code(exc)
    if column == "torchserve":
        response = error_table.torchserve_response(exc)
        body = json.loads(response.body)
        assert body == {"code": response.status_code, "type": body["type"], "message": MESSAGE}
        assert list(body) == ["code", "type", "message"]
        assert response.headers.get("retry-after") == EXPECTED[cls]["retry_after"]
        return response.status_code, body["type"]
    if column == "torchserve_grpc":
        return error_table.torchserve_grpc_code(exc)
    if column == "openai":
        response = error_table.openai_response(exc)
        error = json.loads(response.body)["error"]
        assert list(error) == ["message", "type", "param", "code"]
        assert (error["message"], error["param"]) == (MESSAGE, None)
        assert "retry-after" not in response.headers  # RequestContextMiddleware adds it to a 503
        return response.status_code, error["type"], error["code"]
    raise AssertionError(f"column {column!r} of ErrorRow has no observation here: add one and its EXPECTED")


def test_every_error_class_has_a_row():
    """A new PredictorError subclass, in the core or an adapter, needs its row (or its adapter entry)."""
    every = all_error_classes()
    assert set(CORE) == set(EXPECTED) == set(error_table.ERRORS), "a core error without a row (or a stale row)"
    assert every - set(CORE) == set(ADAPTER_ERRORS), "an adapter's error class missing from ADAPTER_ERRORS"


@pytest.mark.parametrize("cls", CORE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("column", [*PROTOCOLS, "retry_after"])
def test_each_error_on_each_protocol(cls, column, kserve_app):
    assert cls in error_table.ERRORS, f"{cls.__name__} has no row in error_table.ERRORS"
    if column == "retry_after":
        assert error_table.ERRORS[cls].retry_after == EXPECTED[cls]["retry_after"]
        assert error_table.retry_headers(cls(MESSAGE)) == (
            {"Retry-After": EXPECTED[cls]["retry_after"]} if EXPECTED[cls]["retry_after"] else None)
        return
    assert observe(column, cls, kserve_app) == EXPECTED[cls][column]


def test_a_protocol_is_one_column():
    """Each protocol is one field of ErrorRow, filled in every row, with one responder; nothing else."""
    assert set(PROTOCOLS) == set(error_table.RESPONDERS)
    hints = {f.name: f.type for f in dataclasses.fields(error_table.ErrorRow)}
    for cls, row in error_table.ERRORS.items():
        assert set(EXPECTED[cls]) == {*PROTOCOLS, "retry_after"}, f"{cls.__name__}: expect every column"
        for column in PROTOCOLS:
            value = getattr(row, column)
            assert value is not None, f"{cls.__name__}: no {column} answer ({hints[column]})"
            assert error_table.RESPONDERS[column](cls(MESSAGE)) is not None


def test_a_subclass_answers_as_its_nearest_row():
    class Narrower(errors.OverloadedError):
        pass

    assert error_table.row_of(Narrower()) is error_table.ERRORS[errors.OverloadedError]
    assert error_table.row_of(RuntimeError()) is error_table.ERRORS[errors.PredictorError]
    assert error_table.oip_grpc_code(RuntimeError()) is C.INTERNAL
    assert error_table.oip_grpc_code(NotImplementedError()) is C.UNIMPLEMENTED


@pytest.mark.parametrize("exc", [OpenAIParameterError("n: too many", "n"), unsupported("logit_bias")],
                         ids=["invalid_value", "unsupported_parameter"])
def test_openai_parameter_errors_name_their_parameter_and_code(exc):
    assert all(error_table.row_of(exc) is error_table.ERRORS[base] for base in ADAPTER_ERRORS.values())
    response = error_table.openai_response(exc)
    assert response.status_code == 400
    expected = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": exc.code}
    assert json.loads(response.body) == {"error": expected}


def test_a_model_failure_is_never_told_to_retry():
    """TorchServe answers 503 for a failed inference, which asks clients to retry it; here it is a 500."""
    response = error_table.torchserve_response(errors.InferenceError("index out of range"))
    assert (response.status_code, "retry-after" in response.headers) == (500, False)
