"""Open Inference Protocol (v2) requests and responses, validated against the tensors the model serves.

The REST routes (oip_rest.py) and the gRPC servicer (oip_grpc.py) parse through here and run the model
through kserve's DataPlane. kserve's own v2 parsing is bypassed because it answers 500 for bad input
(`InferRequest.from_bytes` and `deserialize_bytes_tensor` read past the end of the body, trust a
non-numeric `Inference-Header-Content-Length`, reshape without checking the element count) and accepts
any tensor name; its responses carry `null` for absent fields, which the protocol's schema forbids.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, serialize_byte_tensor, \
    to_http_parameters
from pydantic import BaseModel, StrictBool, StrictInt, ValidationError

from predictor.errors import InvalidRequestError

BINARY_HEADER = "inference-header-content-length"
# What `/v2` and gRPC ServerMetadata advertise: the binary tensor data extension (Triton's name).
EXTENSIONS = ("binary_tensor_data",)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class ModelTensors:
    """The input and output tensor names the model serves (from its v2 metadata)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, model: Any) -> ModelTensors:
        """From a kserve model's get_input_types / get_output_types."""
        return cls(tuple(t["name"] for t in model.get_input_types()),
                   tuple(t["name"] for t in model.get_output_types()))


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; `binary` None means the request's default."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class TensorRequest:
    """A validated v2 inference request: the texts of the model's one BYTES input."""

    id: str | None
    input_name: str
    texts: list[str]
    parameters: dict[str, Any]
    outputs: tuple[RequestedOutput, ...]
    binary_outputs: bool  # REST `binary_data_output`; gRPC: the inputs came as raw_input_contents

    def infer_request(self, model_name: str) -> InferRequest:
        """As kserve's InferRequest, which TransformersModel.preprocess reads."""
        tensor = InferInput(name=self.input_name, shape=[len(self.texts)], datatype="BYTES", data=self.texts)
        params = {k: v for k, v in self.parameters.items() if k == "details"}
        return InferRequest(model_name=model_name, infer_inputs=[tensor], request_id=self.id, parameters=params)

    def selected(self, response: InferResponse) -> list[tuple[Any, bool]]:
        """(output, binary) for each output to send: those requested, else all."""
        by_name = {o.name: o for o in response.outputs}
        if not self.outputs:
            return [(o, self.binary_outputs) for o in response.outputs]
        return [(by_name[r.name], self.binary_outputs if r.binary is None else r.binary) for r in self.outputs]


# ---- shared checks -------------------------------------------------------------------------------
def bytes_elements(raw: bytes, name: str) -> list[str]:
    """A BYTES tensor's binary form (4-byte little-endian length, then the bytes, per element) as texts."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidRequestError(f"input {name!r}: {len(raw) - offset} trailing bytes cannot hold an "
                                      "element's 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidRequestError(f"input {name!r}: element {len(texts)} claims {length} bytes but only "
                                      f"{len(raw) - offset} remain")
        texts.append(_utf8(raw[offset:offset + length], name, len(texts)))
        offset += length
    return texts


def _utf8(value: bytes, name: str, index: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"input {name!r}: element {index} is not UTF-8 text ({exc.reason} at byte "
                                  f"{exc.start})") from exc


def check_input(name: str, datatype: str, shape: Sequence[int], seen: set[str], model: ModelTensors) -> None:
    """The name is one of the model's inputs (once), the datatype BYTES, the shape non-negative."""
    if name not in model.inputs:
        raise InvalidRequestError(f"unknown input tensor {name!r}; the model's inputs are {list(model.inputs)}")
    if name in seen:
        raise InvalidRequestError(f"input tensor {name!r} is given twice")
    seen.add(name)
    if datatype != "BYTES":
        raise InvalidRequestError(f"input {name!r}: expected datatype BYTES, got {datatype!r}")
    if any(d < 0 for d in shape):
        raise InvalidRequestError(f"input {name!r}: shape {list(shape)} has a negative dimension")


def check_count(name: str, shape: Sequence[int], texts: Sequence[str]) -> list[str]:
    """The element count matches the shape."""
    expected = math.prod(shape)
    if expected != len(texts):
        raise InvalidRequestError(f"input {name!r}: shape {list(shape)} holds {expected} elements, "
                                  f"but {len(texts)} were sent")
    return list(texts)


def check_inputs_complete(seen: set[str], model: ModelTensors) -> None:
    """Every input of the model was given."""
    if missing := [n for n in model.inputs if n not in seen]:
        raise InvalidRequestError(f"missing input tensor(s) {missing}; the model's inputs are {list(model.inputs)}")


def requested_output(name: str, parameters: Mapping[str, Any], model: ModelTensors) -> RequestedOutput:
    """A requested output: one of the model's, with at most the binary_data parameter."""
    if name not in model.outputs:
        raise InvalidRequestError(f"unknown output tensor {name!r}; the model's outputs are {list(model.outputs)}")
    if unknown := set(parameters) - {"binary_data"}:
        raise InvalidRequestError(f"output {name!r}: unsupported parameter(s) {sorted(unknown)}; "
                                  "supported: ['binary_data']")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise InvalidRequestError(f"output {name!r}: parameter 'binary_data' must be true or false")
    return RequestedOutput(name, binary)


def _flatten(data: Iterable[Any]) -> Iterable[Any]:
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


# ---- REST: JSON, or JSON + binary tensor data --------------------------------------------------------
class _Input(BaseModel):
    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class _Output(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class _Request(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_Input]
    outputs: list[_Output] | None = None


class _Parameters(BaseModel):
    binary_data_output: StrictBool = False


def _split_binary(body: bytes, header: str | None) -> tuple[bytes, bytes]:
    if header is None:
        return body, b""
    if not header.strip().isdigit():
        raise InvalidRequestError(f"header Inference-Header-Content-Length: expected a byte count, got {header!r}")
    length = int(header)
    if length > len(body):
        raise InvalidRequestError(f"header Inference-Header-Content-Length: {length} bytes of JSON, but the body "
                                  f"has only {len(body)}")
    return body[:length], body[length:]


def _json_request(text: bytes) -> _Request:
    try:
        return _Request.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequestError(f"invalid inference request: {first['msg']} at {where}") from exc


def _rest_texts(tensor: _Input, binary: bytes, offset: int) -> tuple[list[str], int]:
    """The tensor's texts and the offset of the next tensor's binary data."""
    if tensor.data is not None:
        values = list(_flatten(tensor.data))
        if not all(isinstance(v, str) for v in values):
            raise InvalidRequestError(f"input {tensor.name!r}: BYTES data must be strings in JSON")
        return values, offset
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        raise InvalidRequestError(f"input {tensor.name!r}: neither 'data' nor parameter 'binary_data_size'")
    if type(size) is not int or size < 0:
        raise InvalidRequestError(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
    if offset + size > len(binary):
        raise InvalidRequestError(f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body "
                                  f"({len(binary) - offset} bytes left)")
    return bytes_elements(binary[offset:offset + size], tensor.name), offset + size


def parse_rest(body: bytes, binary_header: str | None, model: ModelTensors) -> TensorRequest:
    """A REST infer body (with or without a Content-Type) -> a validated request."""
    text, binary = _split_binary(body, binary_header)
    request = _json_request(text)
    seen: set[str] = set()
    offset = 0
    texts: list[str] = []
    for tensor in request.inputs:
        check_input(tensor.name, tensor.datatype, tensor.shape, seen, model)
        values, offset = _rest_texts(tensor, binary, offset)
        texts = check_count(tensor.name, tensor.shape, values)
    check_inputs_complete(seen, model)
    if offset != len(binary):
        raise InvalidRequestError(f"{len(binary) - offset} bytes of binary data after the JSON belong to no input")
    params = request.parameters or {}
    try:
        binary_outputs = _Parameters.model_validate(params).binary_data_output
    except ValidationError as exc:
        raise InvalidRequestError("parameter 'binary_data_output' must be true or false") from exc
    outputs = tuple(requested_output(o.name, o.parameters or {}, model) for o in request.outputs or ())
    return TensorRequest(request.id, model.inputs[0], texts, params, outputs, binary_outputs)


def _texts_of(output: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(output.data, dtype=object).ravel()]


def _raw(texts: list[str]) -> bytes:
    if not texts:
        return b""
    return bytes(serialize_byte_tensor(np.array([t.encode() for t in texts], dtype=object)).item())


def rest_response(response: InferResponse, request: TensorRequest, version: str) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or JSON + binary data for outputs asked for in binary."""
    outputs, raw = [], []
    for output, binary in request.selected(response):
        texts = _texts_of(output)
        tensor: dict[str, Any] = {"name": output.name, "datatype": "BYTES", "shape": [len(texts)]}
        if binary:
            raw.append(_raw(texts))
            tensor["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            tensor["data"] = texts
        outputs.append(tensor)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    head = json.dumps(document, ensure_ascii=False).encode()
    if not raw:
        return head, {"content-type": "application/json"}
    return head + b"".join(raw), {"content-type": "application/octet-stream",
                                  "inference-header-content-length": str(len(head))}


# ---- gRPC ---------------------------------------------------------------------------------------------
def _grpc_parameters(parameters: Any) -> dict[str, Any]:
    return to_http_parameters(parameters) if parameters else {}


def parse_grpc(request: pb.ModelInferRequest, model: ModelTensors) -> TensorRequest:
    """A ModelInferRequest (contents or raw_input_contents) -> a validated request."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    seen: set[str] = set()
    texts: list[str] = []
    for n, tensor in enumerate(request.inputs):
        check_input(tensor.name, tensor.datatype, list(tensor.shape), seen, model)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequestError(f"input {tensor.name!r}: contents and raw_input_contents both given")
            values = bytes_elements(raw[n], tensor.name)
        else:
            values = [_utf8(v, tensor.name, i) for i, v in enumerate(tensor.contents.bytes_contents)]
        texts = check_count(tensor.name, list(tensor.shape), values)
    check_inputs_complete(seen, model)
    outputs = tuple(requested_output(o.name, {k: v for k, v in _grpc_parameters(o.parameters).items()
                                              if k != "binary_data"}, model)
                    for o in request.outputs)
    request_id = request.id or None
    return TensorRequest(request_id, model.inputs[0], texts, _grpc_parameters(request.parameters), outputs,
                         binary_outputs=bool(raw))


def grpc_response(response: InferResponse, request: TensorRequest, version: str) -> pb.ModelInferResponse:
    """Raw output contents when the request came raw (as Triton answers), typed contents otherwise."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=version, id=request.id or "")
    binary = request.binary_outputs
    for output, _ in request.selected(response):
        texts = _texts_of(output)
        tensor = message.outputs.add(name=output.name, datatype="BYTES", shape=[len(texts)])
        if binary:
            message.raw_output_contents.append(_raw(texts))
        else:
            tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return message
