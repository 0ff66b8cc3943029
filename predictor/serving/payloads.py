"""Request bodies of both protocol families -> raw request items, and results -> response bodies."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from predictor.config import Limits
from predictor.errors import InvalidRequestError, PayloadTooLargeError
from predictor.tasks.base import decode_text

V2_OUTPUT = "output"
# Wrapper keys TorchServe's KServe examples put around the real input: {"data": "<text or JSON>"}.
_WRAPPER_KEYS = {"data", "body", "target", "details", "parameters"}


def check_count(items: Sequence[Any], limits: Limits) -> None:
    """At least one item and at most limits.max_instances."""
    if not items:
        raise InvalidRequestError("the request holds no instances")
    if len(items) > limits.max_instances:
        raise PayloadTooLargeError(f"{len(items)} instances in one request; the limit is {limits.max_instances}")


def unwrap_item(item: Any) -> Any:
    """{"data": "<JSON object>", "target": 1} -> {..the object.., "target": 1}; anything else unchanged."""
    if not isinstance(item, Mapping) or not set(item) <= _WRAPPER_KEYS:
        return item
    inner_key = "data" if "data" in item else "body" if "body" in item else None
    if inner_key is None:
        return item
    inner = decode_text(item[inner_key])
    if isinstance(inner, Mapping):
        return {**inner, **{k: v for k, v in item.items() if k != inner_key}}
    return item


def v1_items(body: Any, limits: Limits) -> list[Any]:
    """KServe v1: {"instances": [...]} (TorchServe's KServe wrapper also sends "inputs")."""
    if isinstance(body, (bytes, bytearray, str)):  # kserve leaves non-JSON content types undecoded
        body = decode_text(body)
    if not isinstance(body, Mapping):
        raise InvalidRequestError('expected a JSON object {"instances": [...]}')
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list):
        raise InvalidRequestError('expected "instances" to be a list')
    check_count(instances, limits)
    return [unwrap_item(item) for item in instances]


def v2_items(request: InferRequest, limits: Limits) -> tuple[list[Any], bool]:
    """Open Inference Protocol: one BYTES input tensor of texts (QA: JSON objects); details from parameters."""
    if len(request.inputs) != 1:
        raise InvalidRequestError(f"expected exactly one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidRequestError(f"input {tensor.name!r}: expected datatype BYTES, got {tensor.datatype}")
    try:
        values = np.asarray(tensor.as_numpy(), dtype=object).reshape(-1).tolist()
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"input {tensor.name!r}: shape {tensor.shape} does not match its data") from exc
    check_count(values, limits)
    params = request.parameters or {}
    details = params.get("details", False)
    if hasattr(details, "bool_param"):
        details = details.bool_param  # gRPC InferParameter
    if not isinstance(details, bool):
        raise InvalidRequestError(f"parameter 'details': expected true or false, got {details!r}")
    return [unwrap_item(v) for v in values], details


def with_details(item: Any) -> Any:
    """Ask for the detailed answer of one item (v2 `details` parameter, or a TorchServe header)."""
    value = decode_text(item)
    if isinstance(value, Mapping):
        return {**value, "details": value.get("details", True)}
    return {"text": value, "details": True}


def json_text(result: Any) -> str:
    """A result as text: strings as they are, anything else as JSON."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def v2_response(model_name: str, version: str, request_id: str | None, results: Sequence[Any]) -> InferResponse:
    """One BYTES output tensor: label/answer strings, or JSON text for structured results."""
    output = InferOutput(name=V2_OUTPUT, shape=[len(results)], datatype="BYTES",
                         data=[json_text(r) for r in results])
    return InferResponse(response_id=request_id or "", model_name=model_name, model_version=version,
                         infer_outputs=[output])


def form_fields(body: bytes) -> list[str] | None:
    """The `data`/`body` values of a url-encoded form, or None when the body is not such a form.

    `curl -d 'free text'` sends the same content type with a plain text body: that stays one input.
    """
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None
    if not pairs or any(key not in ("data", "body") for key, _ in pairs):
        return None
    return [value for _, value in pairs]


def torchserve_items(body: bytes, form_parts: Sequence[Any] | None, limits: Limits) -> list[Any]:
    """TorchServe: the raw body is one input; several multipart `data` parts are several inputs."""
    if form_parts is not None:
        items = list(form_parts)
    else:
        if not body:
            raise InvalidRequestError("empty request body: send the input as the body or as a multipart `data` field")
        items = [body]
    check_count(items, limits)
    return items
