"""The errors the core raises on purpose; each carries the HTTP status it maps to."""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar


class PredictorError(Exception):
    """Base of every error the core raises on purpose."""

    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR


class ConfigError(PredictorError):
    """Invalid configuration or model directory: raised at start-up only."""


class InvalidRequestError(PredictorError):
    """The request body is malformed or asks for something the model cannot do."""

    status = HTTPStatus.BAD_REQUEST


class PayloadTooLargeError(InvalidRequestError):
    """The request exceeds a configured size limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ExplanationUnavailableError(PredictorError):
    """Explanations cannot be computed for this model (captum missing, no embedding layer...)."""

    status = HTTPStatus.NOT_IMPLEMENTED


class ModelNotFoundError(PredictorError):
    """No model (or model version) of that name is served here."""

    status = HTTPStatus.NOT_FOUND


class ModelNotReadyError(PredictorError):
    """The model is still loading, failed to load, or is shutting down."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class OverloadedError(PredictorError):
    """The inference queue is full; the client should retry later."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class InferenceTimeoutError(PredictorError):
    """The request did not finish within responseTimeout."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class RequestCancelledError(InferenceTimeoutError):
    """Nobody waits for the answer any more (its timeout passed, or its client left): the work stopped."""


class ClientGoneError(RequestCancelledError):
    """The client left (HTTP disconnect, gRPC cancel) before its answer was ready: the work stopped."""


class InferenceError(PredictorError):
    """The model failed while computing an answer; always raised `from` the original exception."""


class OutOfResourcesError(InferenceError):
    """Out of memory even after splitting the batch."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
