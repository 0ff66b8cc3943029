"""TorchServe's inference API on the KServe port: /ping, /predictions, /explanations, OPTIONS /."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from predictor.config import TaskName
from predictor.errors import (
    ClientGoneError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelVersionNotFoundError,
    PredictorError,
)
from predictor.serving import error_table, metrics, payloads
from predictor.serving.kserve_model import TransformersModel

logger = logging.getLogger(__name__)

DETAILS_HEADER = "x-predictor-details"


def torchserve_error(exc: PredictorError) -> JSONResponse:
    """TorchServe's error answer for one of our errors, logged here once."""
    log_error(exc)
    return error_table.torchserve_response(exc)


def log_error(exc: PredictorError) -> None:
    """5xx at ERROR (with the traceback unless a 503), the rest at INFO; a client that left is no failure."""
    answer = error_table.row_of(exc).torchserve
    if answer.status >= 500 and not isinstance(exc, ClientGoneError):
        logger.error("%s: %s", answer.type, exc,
                     exc_info=exc if answer.status != HTTPStatus.SERVICE_UNAVAILABLE else None)
    else:
        logger.info("%s: %s", answer.type, exc)


def answer_bytes(result: Any) -> bytes:
    """As TorchServe's frontend writes an answer: str -> its UTF-8 bytes, anything else JSON."""
    if isinstance(result, str):
        return result.encode("utf-8")
    return json.dumps(result, ensure_ascii=False).encode("utf-8")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


class TorchServeRoutes:
    """The route handlers over the served models (kserve's registry, by name)."""

    def __init__(self, models: Mapping[str, TransformersModel], openapi: Callable[[], dict[str, Any]]):
        self.models = models
        self.openapi = openapi

    def model(self, name: str, version: str | None) -> TransformersModel:
        """The named model, ready, in the requested version."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"Model not found: {name}")
        if not model.ready:
            raise ModelNotReadyError(f"Model {name} is not ready yet (loading)")
        if version is not None and version != model.handler.version:
            raise ModelVersionNotFoundError(f"Model version {version} not found for model {name} "
                                            f"(serving {model.handler.version})")
        return model

    async def ping(self) -> JSONResponse:
        """200 Healthy once every model is ready (and not wedged), else 500 Unhealthy."""
        healthy = await self.all_healthy()
        status = HTTPStatus.OK if healthy else HTTPStatus.INTERNAL_SERVER_ERROR
        return JSONResponse({"status": "Healthy" if healthy else "Unhealthy"}, status_code=status)

    async def all_healthy(self) -> bool:
        """Readiness of the whole server: what /ping, /v2/health/ready and gRPC ServerReady report."""
        return bool(self.models) and all([await m.healthy() for m in self.models.values()])

    async def items(self, request: Request, model: TransformersModel) -> list[Any]:
        """Request -> raw items: the body, or each multipart `data` part."""
        limits = model.handler.config.limits
        content_type = request.headers.get("content-type", "")
        parts = None
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            fields = form.getlist("data") or [v for _, v in form.multi_items()]
            parts = [await f.read() if hasattr(f, "read") else f for f in fields]
            if not parts:
                raise InvalidRequestError("multipart request without a `data` field")
        body = b"" if parts is not None else await request.body()
        if parts is None and content_type.startswith("application/x-www-form-urlencoded"):
            parts = payloads.form_fields(body)  # requests.post(url, data={"data": text}); None for curl -d text
        items = payloads.torchserve_items(body, parts, limits)
        if _truthy(request.headers.get(DETAILS_HEADER)):
            items = [payloads.with_details(i) for i in items]
        return items

    async def predictions(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        """POST /predictions/{name}[/{version}]: a string answer is the raw body, anything else JSON."""
        timing = metrics.RequestTiming(model_name, model_version or "default")
        streaming = False
        try:
            model = self.model(model_name, model_version)
            items = await self.items(request, model)
            instances = self.instances(model, items)
            if self.wants_stream(model, request.query_params.get("stream"), len(instances)):
                chunks = await self.open_stream(model, instances[0], timing)
                streaming = True
                return StreamingResponse(chunks, media_type="text/plain; charset=utf-8")
            result = await self.predict(model, instances, timing)
        except PredictorError as exc:
            return torchserve_error(exc)
        finally:
            if not streaming:  # a stream is counted when its last chunk is sent
                timing.finish()
        return self.answer(result)

    async def explanations(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        """POST /explanations/{name}[/{version}]: one explanation object per input."""
        timing = metrics.RequestTiming(model_name, model_version or "default")
        try:
            model = self.model(model_name, model_version)
            result = await self.explain(model, self.instances(model, await self.items(request, model)), timing)
        except PredictorError as exc:
            return torchserve_error(exc)
        finally:
            timing.finish()
        return self.answer(result)

    # ---- protocol-neutral steps, shared with the gRPC API (torchserve_grpc.py) ----------------------
    @staticmethod
    def instances(model: TransformersModel, items: list[Any]) -> list[Any]:
        """Raw items -> the core's validated instances (InvalidRequestError when malformed)."""
        return [model.handler.parse(i) for i in items]

    @staticmethod
    async def predict(model: TransformersModel, instances: list[Any], timing: metrics.RequestTiming) -> Any:
        """One answer for one input, a list in order for several."""
        results = await model.inference_queue.predict(instances, timing)
        return results[0] if len(results) == 1 else results

    @staticmethod
    async def explain(model: TransformersModel, instances: list[Any], timing: metrics.RequestTiming) -> Any:
        """One explanation object for one input, a list in order for several."""
        results = await model.inference_queue.explain(instances, timing)
        return results[0] if len(results) == 1 else results

    @staticmethod
    def wants_stream(model: TransformersModel, asked: str | None, count: int) -> bool:
        """Streaming: text generation, one input, asked (`?stream=true`) or by `handler.stream`."""
        if model.handler.mode is not TaskName.TEXT_GENERATION:
            if _truthy(asked):
                raise InvalidRequestError(f"streaming is only for text_generation; this model is "
                                          f"{model.handler.mode.value}")
            return False
        wanted = _truthy(asked) if asked is not None else model.handler.config.handler.stream
        if wanted and count != 1:
            raise InvalidRequestError(f"streaming answers one input; got {count}")
        return wanted

    @staticmethod
    async def open_stream(model: TransformersModel, instance: Any,
                          timing: metrics.RequestTiming) -> AsyncIterator[bytes]:
        """The generated text as UTF-8 chunks; the first is awaited here, so errors raise before any is sent."""
        try:
            chunks = await model.inference_queue.open_stream(instance, timing)
        except BaseException:
            timing.finish()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if isinstance(chunk, str):  # the closing StreamEnd carries no text
                        yield chunk.encode("utf-8")
            finally:
                timing.finish()

        return body()

    @staticmethod
    def answer(result: Any) -> Response:
        """As TorchServe's frontend writes it: str -> raw UTF-8 body, anything else JSON."""
        if isinstance(result, str):
            return PlainTextResponse(result)
        return Response(answer_bytes(result), media_type="application/json")

    async def api_description(self) -> JSONResponse:
        """The OpenAPI 3.0 document of every route of this server."""
        return JSONResponse(self.openapi())


def register_torchserve_routes(app: FastAPI, models: Mapping[str, TransformersModel],
                               openapi: Callable[[], dict[str, Any]]) -> TorchServeRoutes:
    """Add TorchServe's routes to the app KServe serves (before kserve adds its own)."""
    routes = TorchServeRoutes(models, openapi)
    app.add_api_route("/ping", routes.ping, methods=["GET"], tags=["TorchServe"])
    for prefix, endpoint in (("/predictions", routes.predictions), ("/explanations", routes.explanations)):
        # PUT too: `curl -T file` uploads with PUT, and TorchServe answers it.
        app.add_api_route(prefix + "/{model_name}", endpoint, methods=["POST", "PUT"], tags=["TorchServe"])
        app.add_api_route(prefix + "/{model_name}/{model_version}", endpoint, methods=["POST", "PUT"],
                          tags=["TorchServe"])
    app.add_api_route("/", routes.api_description, methods=["OPTIONS"], tags=["TorchServe"])
    app.add_api_route("/api-description", routes.api_description, methods=["GET"], tags=["TorchServe"])
    return routes
