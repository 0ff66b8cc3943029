"""The errors the core raises on purpose; predictor/serving/error_table.py answers each on every protocol."""

from __future__ import annotations


class PredictorError(Exception):
    """Base of every error the core raises on purpose."""


class ConfigError(PredictorError):
    """Invalid configuration or model directory: raised at start-up only."""


class InvalidRequestError(PredictorError):
    """The request body is malformed or asks for something the model cannot do."""


class PayloadTooLargeError(InvalidRequestError):
    """The request exceeds a configured size limit."""


class ExplanationUnavailableError(PredictorError):
    """Explanations cannot be computed for this model (captum missing, no embedding layer...)."""


class ModelNotFoundError(PredictorError):
    """No model (or model version) of that name is served here."""


class ModelVersionNotFoundError(ModelNotFoundError):
    """The model is served, but not in the requested version."""


class ModelNotReadyError(PredictorError):
    """The model is still loading, failed to load, or is shutting down."""


class OverloadedError(PredictorError):
    """The inference queue is full; the client should retry later."""


class InferenceTimeoutError(PredictorError):
    """The request did not finish within responseTimeout."""


class RequestCancelledError(InferenceTimeoutError):
    """Nobody waits for the answer any more (its timeout passed, or its client left): the work stopped."""


class ClientGoneError(RequestCancelledError):
    """The client left (HTTP disconnect, gRPC cancel) before its answer was ready: the work stopped."""


class InferenceError(PredictorError):
    """The model failed while computing an answer; always raised `from` the original exception."""


class OutOfResourcesError(InferenceError):
    """Out of memory even after splitting the batch."""
