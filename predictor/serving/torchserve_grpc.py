"""TorchServe's gRPC inference API (inference.proto, InferenceAPIsService) on its own port.

Same answers and errors as the REST routes of torchserve.py, whose steps it calls: the `input` map's
`data` (or `body`) bytes are the request body, the answer's bytes are the REST body, and errors carry
the REST message with TorchServe's gRPC status code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.rpc import status_pb2

from predictor.config import TaskName
from predictor.errors import InvalidRequestError, PayloadTooLargeError, PredictorError
from predictor.serving import error_table, metrics, payloads
from predictor.serving.kserve_model import TransformersModel
from predictor.serving.torchserve import DETAILS_HEADER, TorchServeRoutes, answer_bytes, log_error
from predictor.serving.ts_proto import inference_pb2, inference_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
INPUT_KEYS = ("data", "body")  # the keys TorchServe's handlers read the request from


class TorchServeInferenceServicer(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """Ping, Predictions, StreamPredictions, StreamPredictions2 over the served models."""

    def __init__(self, routes: TorchServeRoutes) -> None:
        self.routes = routes

    async def Ping(self, request: Any, context: grpc.aio.ServicerContext) -> inference_pb2.TorchServeHealthResponse:
        """The /ping body as `health`: Healthy once every model is ready."""
        healthy = await self.routes.all_healthy()
        return inference_pb2.TorchServeHealthResponse(
            health=json.dumps({"status": "Healthy" if healthy else "Unhealthy"}))

    async def Predictions(self, request: inference_pb2.PredictionsRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.PredictionResponse:
        """One answer, never streamed (as POST /predictions?stream=false)."""
        timing = metrics.RequestTiming(request.model_name, request.model_version or "default")
        try:
            model, instances = self._parse(request, context)
            result = await self.routes.predict(model, instances, timing)
        except PredictorError as exc:
            await _abort(context, exc)
        finally:
            timing.finish()
        return inference_pb2.PredictionResponse(prediction=answer_bytes(result))

    async def StreamPredictions(self, request: inference_pb2.PredictionsRequest,
                                context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Text generation: one response per generated chunk; other modes: one response, the whole answer."""
        try:
            async for prediction in self._answers(request, context):
                yield inference_pb2.PredictionResponse(prediction=prediction)
        except PredictorError as exc:
            await _abort(context, exc)

    async def StreamPredictions2(self, request_iterator: AsyncIterator[inference_pb2.PredictionsRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Each request of the stream answered in turn; an error goes in `status` and the stream goes on."""
        async for request in request_iterator:
            sequence = {"sequence_id": request.sequence_id} if request.HasField("sequence_id") else {}
            try:
                async for prediction in self._answers(request, context):
                    yield inference_pb2.PredictionResponse(prediction=prediction, **sequence)
            except PredictorError as exc:
                log_error(exc)
                code = error_table.torchserve_grpc_code(exc)
                status = status_pb2.Status(code=code.value[0], message=str(exc))
                yield inference_pb2.PredictionResponse(status=status, **sequence)

    async def _answers(self, request: inference_pb2.PredictionsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The answer's bytes: chunk by chunk for text generation, else whole."""
        timing = metrics.RequestTiming(request.model_name, request.model_version or "default")
        try:
            model, instances = self._parse(request, context)
            if model.handler.mode is TaskName.TEXT_GENERATION and self.routes.wants_stream(model, "true",
                                                                                           len(instances)):
                chunks = await self.routes.open_stream(model, instances[0], timing)
                async for chunk in chunks:
                    yield chunk
                return
            result = await self.routes.predict(model, instances, timing)
        finally:
            timing.finish()
        yield answer_bytes(result)

    def _parse(self, request: inference_pb2.PredictionsRequest,
               context: grpc.aio.ServicerContext) -> tuple[TransformersModel, list[Any]]:
        """The model asked for and the request's instances, validated as the REST route does."""
        model = self.routes.model(request.model_name, request.model_version or None)
        limits = model.handler.config.limits
        body = next((request.input[k] for k in INPUT_KEYS if k in request.input), None)
        if body is None:
            raise InvalidRequestError(f"the request's `input` map needs a `data` (or `body`) entry; "
                                      f"got {sorted(request.input) or 'no entries'}")
        if len(body) > limits.max_body_bytes:
            raise PayloadTooLargeError(f"input of {len(body)} bytes exceeds the limit of "
                                       f"{limits.max_body_bytes} bytes")
        items = payloads.torchserve_items(body, None, limits)
        if _details_asked(context.invocation_metadata() or ()):
            items = [payloads.with_details(i) for i in items]
        return model, self.routes.instances(model, items)


def _details_asked(metadata: Sequence[Any]) -> bool:
    return any(m.key == DETAILS_HEADER and str(m.value).strip().lower() in ("1", "true", "yes") for m in metadata)


async def _abort(context: grpc.aio.ServicerContext, exc: PredictorError) -> None:
    log_error(exc)
    await context.abort(error_table.torchserve_grpc_code(exc), str(exc))


class TorchServeGrpcServer:
    """The gRPC server of TorchServe's inference API, run on the serving event loop next to kserve's."""

    def __init__(self, port: int, routes: TorchServeRoutes, *, max_message_bytes: int,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.port = port
        self.routes = routes
        self.max_message_bytes = max_message_bytes
        self.interceptors = tuple(interceptors)
        self._server: grpc.aio.Server | None = None

    async def serve(self) -> None:
        """Listen until stop() has finished; an ERROR and no gRPC API when the port cannot be bound."""
        # A little over the body limit: a larger input gets the same 413-like error as on REST.
        limit = self.max_message_bytes + 64 * 1024
        # No SO_REUSEPORT (gRPC's default): a second server on the same port must fail, not share the calls.
        self._server = grpc.aio.server(interceptors=self.interceptors, options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0)])
        inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(TorchServeInferenceServicer(self.routes),
                                                                      self._server)
        try:
            self._server.add_insecure_port(f"[::]:{self.port}")
        except RuntimeError as exc:  # an optional API: the model still serves on every other port
            logger.error("TorchServe gRPC API off: cannot listen on port %d (%s); free it or choose another "
                         "with --ts_grpc_port (0 turns it off)", self.port, exc)
            self._server = None
            return
        await self._server.start()
        logger.info("TorchServe gRPC inference API on port %d", self.port)
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; calls in flight get up to grace_s to finish."""
        if self._server is not None:
            await self._server.stop(grace_s)
