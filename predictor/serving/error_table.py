"""Every core error's answer on every protocol: one row per error class, one column per protocol.

Adapters decide no status themselves: they look an error up here (`row_of`: the most specific class
of its MRO that has a row) and answer with this module's responders. A new core error is a new row of
ERRORS; a new protocol is a new field of ErrorRow (no default, so every row must fill it) and its
responder in RESPONDERS. tests/unit/test_error_table.py walks every error through every column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import grpc
from fastapi.responses import JSONResponse
from kserve import errors as kserve_errors

from predictor.errors import (
    ClientGoneError,
    ConfigError,
    ExplanationUnavailableError,
    InferenceError,
    InferenceTimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelVersionNotFoundError,
    OutOfResourcesError,
    OverloadedError,
    PayloadTooLargeError,
    PredictorError,
    RequestCancelledError,
)

RETRY_AFTER_S = "1"  # seconds, in the Retry-After of every 503

Code = grpc.StatusCode


@dataclass(frozen=True)
class KServeAnswer:
    """KServe v1 and Open Inference Protocol REST: `status` with {"error": message}.

    `via`: inside the kserve.Model, the kserve exception raised instead, which kserve's own handlers
    answer with this status (and, for ModelNotReady / ModelNotFound, kserve's message); None: the
    error itself reaches `kserve_response`.
    """

    status: HTTPStatus
    via: Callable[[PredictorError, str], Exception] | None = None


@dataclass(frozen=True)
class TorchServeAnswer:
    """TorchServe's REST API: `status` with {"code", "type", "message"}."""

    status: HTTPStatus
    type: str


@dataclass(frozen=True)
class OpenAIAnswer:
    """OpenAI's {"error": {"message", "type", "param", "code"}}; a 4xx without `code` here takes the
    exception's own `code` and `param` attributes when it has them (OpenAIParameterError)."""

    status: HTTPStatus
    type: str
    code: str | None = None


@dataclass(frozen=True)
class ErrorRow:
    """One core error on every protocol; `retry_after`: the Retry-After value, None when not retryable."""

    kserve: KServeAnswer
    oip_grpc: grpc.StatusCode  # the Open Inference Protocol's gRPC service
    torchserve: TorchServeAnswer
    torchserve_grpc: grpc.StatusCode  # TorchServe's gRPC inference API
    openai: OpenAIAnswer
    retry_after: str | None


def _invalid_input(exc: PredictorError, model: str) -> Exception:
    return kserve_errors.InvalidInput(str(exc))


def _model_not_found(exc: PredictorError, model: str) -> Exception:
    return kserve_errors.ModelNotFound(model)


def _model_not_ready(exc: PredictorError, model: str) -> Exception:
    return kserve_errors.ModelNotReady(model, str(exc))


def _not_implemented(exc: PredictorError, model: str) -> Exception:
    return NotImplementedError(str(exc))


S = HTTPStatus
INTERNAL = TorchServeAnswer(S.INTERNAL_SERVER_ERROR, "InternalServerException")
NOT_FOUND = ErrorRow(KServeAnswer(S.NOT_FOUND, _model_not_found), Code.NOT_FOUND,
                     TorchServeAnswer(S.NOT_FOUND, "ModelNotFoundException"), Code.NOT_FOUND,
                     OpenAIAnswer(S.NOT_FOUND, "invalid_request_error", "model_not_found"), None)
# Retryable conditions get the gRPC codes clients retry on (UNAVAILABLE, DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED).
# A timeout is a 500 on TorchServe's REST API, as in TorchServe. TorchServe answers bad input and model
# failures with 503, which tells clients to retry what fails again: here they are 400 and 500.
TIMEOUT = ErrorRow(KServeAnswer(S.GATEWAY_TIMEOUT), Code.DEADLINE_EXCEEDED, INTERNAL, Code.DEADLINE_EXCEEDED,
                   OpenAIAnswer(S.GATEWAY_TIMEOUT, "server_error"), None)
FAILURE = ErrorRow(KServeAnswer(S.INTERNAL_SERVER_ERROR), Code.INTERNAL, INTERNAL, Code.INTERNAL,
                   OpenAIAnswer(S.INTERNAL_SERVER_ERROR, "server_error"), None)

ERRORS: dict[type[PredictorError], ErrorRow] = {
    PredictorError: FAILURE,
    ConfigError: FAILURE,
    InvalidRequestError: ErrorRow(
        KServeAnswer(S.BAD_REQUEST, _invalid_input), Code.INVALID_ARGUMENT,
        TorchServeAnswer(S.BAD_REQUEST, "BadRequestException"), Code.INVALID_ARGUMENT,
        OpenAIAnswer(S.BAD_REQUEST, "invalid_request_error"), None),
    PayloadTooLargeError: ErrorRow(
        KServeAnswer(S.REQUEST_ENTITY_TOO_LARGE), Code.RESOURCE_EXHAUSTED,
        TorchServeAnswer(S.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLargeException"),
        Code.RESOURCE_EXHAUSTED,
        OpenAIAnswer(S.REQUEST_ENTITY_TOO_LARGE, "invalid_request_error"), None),
    ExplanationUnavailableError: ErrorRow(
        KServeAnswer(S.NOT_IMPLEMENTED, _not_implemented), Code.UNIMPLEMENTED,
        TorchServeAnswer(S.NOT_IMPLEMENTED, "NotImplementedException"), Code.UNIMPLEMENTED,
        OpenAIAnswer(S.NOT_IMPLEMENTED, "server_error"), None),
    ModelNotFoundError: NOT_FOUND,
    ModelVersionNotFoundError: ErrorRow(
        NOT_FOUND.kserve, NOT_FOUND.oip_grpc, TorchServeAnswer(S.NOT_FOUND, "ModelVersionNotFoundException"),
        NOT_FOUND.torchserve_grpc, NOT_FOUND.openai, None),
    ModelNotReadyError: ErrorRow(
        KServeAnswer(S.SERVICE_UNAVAILABLE, _model_not_ready), Code.UNAVAILABLE,
        TorchServeAnswer(S.SERVICE_UNAVAILABLE, "ServiceUnavailableException"), Code.UNAVAILABLE,
        OpenAIAnswer(S.SERVICE_UNAVAILABLE, "server_error"), RETRY_AFTER_S),
    OverloadedError: ErrorRow(
        KServeAnswer(S.SERVICE_UNAVAILABLE), Code.UNAVAILABLE,
        TorchServeAnswer(S.SERVICE_UNAVAILABLE, "ServiceUnavailableException"), Code.UNAVAILABLE,
        OpenAIAnswer(S.SERVICE_UNAVAILABLE, "server_error"), RETRY_AFTER_S),
    InferenceTimeoutError: TIMEOUT,
    RequestCancelledError: TIMEOUT,
    ClientGoneError: TIMEOUT,
    InferenceError: FAILURE,
    OutOfResourcesError: ErrorRow(
        KServeAnswer(S.INSUFFICIENT_STORAGE), Code.RESOURCE_EXHAUSTED,
        TorchServeAnswer(S.INSUFFICIENT_STORAGE, "OutOfResourcesException"), Code.RESOURCE_EXHAUSTED,
        OpenAIAnswer(S.INSUFFICIENT_STORAGE, "server_error"), None),
}

# What kserve raises itself (or what KServeAnswer.via turned a core error into), on the OIP gRPC service.
KSERVE_GRPC_CODES: dict[type[BaseException], grpc.StatusCode] = {
    kserve_errors.InvalidInput: Code.INVALID_ARGUMENT,
    kserve_errors.ModelNotFound: Code.NOT_FOUND,
    kserve_errors.ModelNotReady: Code.UNAVAILABLE,
    kserve_errors.ServerNotReady: Code.UNAVAILABLE,
    kserve_errors.ServerNotLive: Code.UNAVAILABLE,
    kserve_errors.UnsupportedProtocol: Code.INVALID_ARGUMENT,
    NotImplementedError: Code.UNIMPLEMENTED,
}


def row_of(exc: BaseException) -> ErrorRow:
    """The row of the most specific class of the error that has one; an unexpected error is a failure."""
    for cls in type(exc).__mro__:
        row = ERRORS.get(cls)  # type: ignore[call-overload]
        if row is not None:
            return row
    return FAILURE


def retry_headers(exc: BaseException) -> dict[str, str] | None:
    """{"Retry-After": seconds} for a retryable error, else None."""
    seconds = row_of(exc).retry_after
    return {"Retry-After": seconds} if seconds is not None else None


# ---- KServe v1 / OIP REST ---------------------------------------------------------------------------
def kserve_body(message: str) -> dict[str, Any]:
    """KServe's error document."""
    return {"error": message}


def kserve_response(exc: BaseException) -> JSONResponse:
    """A core error that reached the app's handler (not turned into a kserve exception)."""
    return JSONResponse(kserve_body(str(exc)), status_code=int(row_of(exc).kserve.status),
                        headers=retry_headers(exc))


def as_kserve_exception(exc: PredictorError, model_name: str) -> Exception | None:
    """The kserve exception to raise in place of a core error inside the kserve.Model, or None."""
    via = row_of(exc).kserve.via
    return via(exc, model_name) if via is not None else None


# ---- OIP gRPC --------------------------------------------------------------------------------------------
def oip_grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The OIP gRPC status of a core or kserve error (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls].oip_grpc  # type: ignore[index]
        if cls in KSERVE_GRPC_CODES:
            return KSERVE_GRPC_CODES[cls]
    return Code.INTERNAL


# ---- TorchServe REST and gRPC -------------------------------------------------------------------------
def torchserve_body(status: int, kind: str, message: str) -> dict[str, Any]:
    """TorchServe's error document."""
    return {"code": status, "type": kind, "message": message}


def torchserve_response(exc: BaseException) -> JSONResponse:
    """TorchServe's error answer for a core error."""
    answer = row_of(exc).torchserve
    status = int(answer.status)
    return JSONResponse(torchserve_body(status, answer.type, str(exc)), status_code=status,
                        headers=retry_headers(exc))


def torchserve_grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The status code of TorchServe's gRPC API for a core error."""
    return row_of(exc).torchserve_grpc


# ---- OpenAI ------------------------------------------------------------------------------------------------
def openai_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error document."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_response(exc: BaseException) -> JSONResponse:
    """OpenAI's error answer for a core error (its Retry-After comes from RequestContextMiddleware)."""
    answer = row_of(exc).openai
    code = answer.code
    if code is None and answer.status < 500:
        code = getattr(exc, "code", None)
    return JSONResponse(openai_body(str(exc), answer.type, getattr(exc, "param", None), code),
                        status_code=int(answer.status))


# Each protocol column of ErrorRow and the function that answers with it.
RESPONDERS: dict[str, Callable[[BaseException], Any]] = {
    "kserve": kserve_response,
    "oip_grpc": oip_grpc_code,
    "torchserve": torchserve_response,
    "torchserve_grpc": torchserve_grpc_code,
    "openai": openai_response,
}
