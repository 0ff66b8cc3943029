"""kserve's own SDK clients (InferenceRESTClient v1/v2, InferenceGRPCClient) against a real server."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from predictor import errors
from predictor.serving.error_table import KSERVE_GRPC_CODES, oip_grpc_code

TEXTS = ["hello world", "Ada Lovelace lived in London."]


def _request(texts: list[str], raw: bool = False) -> InferRequest:
    tensor = InferInput(name="text", shape=[len(texts)], datatype="BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=raw)
    return InferRequest(model_name="seq", infer_inputs=[tensor], request_id="k-1")


def _labels(response) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in response.outputs[0].as_numpy().tolist()]


def _rest(protocol: str, call):
    async def main():
        client = InferenceRESTClient(RESTConfig(protocol=protocol, timeout=60))
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_rest_v1(seq_server, seq_labels):
    answer = _rest("v1", lambda c: c.infer(seq_server.url, {"instances": TEXTS}, model_name="seq"))
    assert answer["predictions"] == [seq_labels(t) for t in TEXTS]


@pytest.mark.parametrize("raw", [False, True], ids=["json", "binary"])
def test_rest_v2(seq_server, seq_labels, raw):
    response = _rest("v2", lambda c: c.infer(seq_server.url, _request(TEXTS, raw), model_name="seq"))
    assert _labels(response) == [seq_labels(t) for t in TEXTS]
    assert response.id == "k-1"  # kserve's from_rest does not read model_version


def _grpc(target: str, call):
    async def main():
        client = InferenceGRPCClient(target, timeout=60)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(main())


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw_input_contents"])
def test_grpc_answers_the_way_it_was_asked(seq_server, seq_labels, raw):
    response = _grpc(seq_server.grpc_target, lambda c: c.infer(_request(TEXTS, raw)))
    assert _labels(response) == [seq_labels(t) for t in TEXTS]
    assert response.id == "k-1"


def test_grpc_model_metadata_is_a_valid_message(seq_server):
    async def metadata(client):
        stub = client._client_stub
        return await stub.ModelMetadata(pb.ModelMetadataRequest(name="seq", version="1.0"))

    answer = _grpc(seq_server.grpc_target, metadata)
    assert (answer.name, list(answer.versions)) == ("seq", ["1.0"])
    assert [(t.name, t.datatype, list(t.shape)) for t in answer.inputs] == [("text", "BYTES", [-1])]


def test_grpc_bad_input_is_invalid_argument(seq_server):
    bad = InferRequest(model_name="seq", infer_inputs=[InferInput("text", [3], "BYTES", data=["only one"])])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _grpc(seq_server.grpc_target, lambda c: c.infer(bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape [3]" in caught.value.details()
    assert httpx.get(seq_server.url + "/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.parametrize(("error", "status"), [
    (errors.OverloadedError, grpc.StatusCode.UNAVAILABLE),
    (errors.ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (errors.InferenceTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.RequestCancelledError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OutOfResourcesError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InferenceError, grpc.StatusCode.INTERNAL),
    (RuntimeError, grpc.StatusCode.INTERNAL),
])
def test_grpc_status_of_each_core_error(error, status):
    assert oip_grpc_code(error("x")) == status
    assert all(issubclass(cls, BaseException) for cls in KSERVE_GRPC_CODES)
