"""The Open Inference Protocol over gRPC: kserve's service, with validated requests and typed errors.

kserve's servicer builds ModelMetadata from the REST metadata (whose tensors carry `parameters`, a
field TensorMetadata lacks: INTERNAL), answers raw_input_contents with typed contents, ignores the
requested version and output names, and its interceptor turns every error it does not know (overload,
timeout, too large, out of memory) into INTERNAL. This servicer and interceptor replace both; the
status of each error comes from error_table.
"""

from __future__ import annotations

import logging
from concurrent import futures
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException
from kserve import errors as kserve_errors
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.utils.utils import to_headers

from predictor import errors
from predictor.serving.error_table import oip_grpc_code
from predictor.serving.oip import ModelTensors, grpc_response, parse_grpc

logger = logging.getLogger(__name__)

class StatusInterceptor(AsyncExceptionToStatusInterceptor):  # type: ignore[misc]
    """Aborts each failed call with the status error_table gives its error, and the error's message."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any,
                               method_name: str) -> None:
        """Client errors are logged at INFO, server errors at ERROR with the traceback."""
        if isinstance(ex, GrpcException):
            await super().handle_exception(ex, request_or_iterator, context, method_name)
            return
        status = oip_grpc_code(ex)
        if status is grpc.StatusCode.INTERNAL:
            logger.error("%s failed: %s", method_name, ex, exc_info=ex)
        else:
            logger.info("%s: %s %s", method_name, status.name, ex)
        await context.abort(status, str(ex) or type(ex).__name__)


class OipServicer(InferenceServicer):  # type: ignore[misc]
    """ModelMetadata, ModelReady and ModelInfer as the protocol defines them; the rest is kserve's."""

    def _model(self, name: str, version: str) -> Any:
        model = self._data_plane.model_registry.get_model(name)
        if model is None:
            raise kserve_errors.ModelNotFound(name)
        if version and version != model.handler.version:
            raise errors.ModelNotFoundError(f"model {name!r} has no version {version!r}; "
                                            f"the served version is {model.handler.version!r}")
        return model

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        """Name, version, extensions."""
        metadata = self._data_plane.metadata()
        return pb.ServerMetadataResponse(name=metadata["name"], version=metadata["version"],
                                         extensions=list(metadata["extensions"]))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """Ready or not; NOT_FOUND for a model or version not served."""
        self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=await self._data_plane.model_ready(request.name))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        """The tensors' name, datatype and shape (TensorMetadata has no parameters)."""
        model = self._model(request.name, request.version)
        if not model.ready:
            raise kserve_errors.ModelNotReady(request.name)
        metadata = await self._data_plane.model_metadata(request.name)

        def tensors(items: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in items]

        return pb.ModelMetadataResponse(name=metadata["name"], versions=[model.handler.version],
                                        platform=metadata["platform"], inputs=tensors(metadata["inputs"]),
                                        outputs=tensors(metadata["outputs"]))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """Validated against the model's tensors; answered raw when asked raw."""
        model = self._model(request.model_name, request.model_version)
        await self._data_plane.get_model(request.model_name)  # UNAVAILABLE while not ready
        parsed = parse_grpc(request, ModelTensors.of(model))
        response, _ = await self._data_plane.infer(model_name=request.model_name,
                                                   request=parsed.infer_request(request.model_name),
                                                   headers=to_headers(context))
        return grpc_response(response, parsed, model.handler.version)


class OipGrpcServer(GRPCServer):  # type: ignore[misc]
    """kserve's gRPC server with OipServicer and StatusInterceptor in place of kserve's.

    kserve's GRPCServer fixes its interceptors inside start(), so start() is written here; `interceptors`
    (token authorization) run first.
    """

    def __init__(self, *args: Any, interceptors: Sequence[aio.ServerInterceptor] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._interceptors = tuple(interceptors)

    async def start(self, max_workers: int) -> None:
        """Serve until stopped."""
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(*self._interceptors, LoggingInterceptor(), StatusInterceptor()),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))],
        )
        servicer = OipServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        logger.info("gRPC (Open Inference Protocol) on port %s", self._port)
        await self._server.start()
        await self._server.wait_for_termination()
