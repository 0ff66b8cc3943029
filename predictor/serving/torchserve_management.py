"""TorchServe's management API, read side, on its own port: list and describe the one served model.

Registering, unregistering, scaling and setting a default version answer TorchServe's error JSON:
this server serves one model per process and scales with Kubernetes. /metrics is served here too,
so a Prometheus scrape configured for a TorchServe port keeps working.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from predictor.errors import ModelNotFoundError, PredictorError
from predictor.serving.kserve_model import TransformersModel
from predictor.serving.torchserve import ModelVersionNotFoundError, torchserve_error

logger = logging.getLogger(__name__)

ONE_MODEL = ("this server serves one model per process, loaded at start-up, and scales with Kubernetes: "
             "deploy another InferenceService for another model or version, and set minReplicas/maxReplicas "
             "(or --model_workers) instead of workers")


def _resident_bytes() -> int:
    """The process's resident memory (Linux /proc), 0 where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ManagementRoutes:
    """GET /models, GET /models/{name}[/{version}|/all]; refusals for the write side."""

    def __init__(self, models: Mapping[str, TransformersModel]) -> None:
        self.models = models
        self.started_at = datetime.datetime.now(datetime.timezone.utc)

    def _model(self, name: str) -> TransformersModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"Model not found: {name}")
        return model

    @staticmethod
    def model_url(model: TransformersModel) -> str:
        """The archive's file name, as TorchServe shows it; the model directory's name without one."""
        state = getattr(model.handler, "state", None)
        source = getattr(state, "source", None)
        if source is not None and source.archive is not None:
            return source.archive.name
        return model.handler.model_dir.name

    async def describe(self, model: TransformersModel) -> dict[str, Any]:
        """TorchServe's describe-model object for one model."""
        loaded = model.ready
        config = model.handler.config if loaded else None
        healthy = await model.healthy()
        queue = model.queue
        depth = queue.depth if queue is not None else 0
        capacity = queue.capacity if queue is not None else (config.job_queue_size if config else 0)
        started = self.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        gpu = loaded and model.handler.state.device.device.startswith("cuda")
        workers = [{"id": str(9000 + n), "startTime": started, "status": "READY" if healthy else "UNLOADING",
                    "memoryUsage": _resident_bytes(), "pid": os.getpid(), "gpu": gpu, "gpuUsage": "N/A"}
                   for n in range(model.workers.workers)]
        return {
            "modelName": model.name,
            "modelVersion": model.handler.version if loaded else (model.handler.requested_version or "1.0"),
            "modelUrl": self.model_url(model),
            "engine": "Torch",
            "runtime": "python",
            "minWorkers": model.workers.workers,
            "maxWorkers": model.workers.workers,
            "batchSize": config.batch_size if config else 0,
            "maxBatchDelay": int(config.max_batch_delay_ms) if config else 0,
            "responseTimeout": int(config.response_timeout_s) if config else 0,
            "loadedAtStartup": True,
            "workers": workers,
            "jobQueueStatus": {"remainingCapacity": max(0, capacity - depth), "pendingRequests": depth},
        }

    async def list_models(self) -> JSONResponse:
        """GET /models: {"models": [{"modelName", "modelUrl"}]} (one page: there is one model)."""
        return JSONResponse({"models": [{"modelName": m.name, "modelUrl": self.model_url(m)}
                                        for m in self.models.values()]})

    async def describe_model(self, model_name: str, model_version: str | None = None) -> Response:
        """GET /models/{name}[/{version}|/all]: a list of one describe object."""
        try:
            model = self._model(model_name)
            if model_version not in (None, "all") and model.ready and model_version != model.handler.version:
                raise ModelVersionNotFoundError(f"Model version {model_version} not found for model {model_name} "
                                                f"(serving {model.handler.version})")
        except PredictorError as exc:
            return torchserve_error(exc)
        return JSONResponse([await self.describe(model)])

    async def refuse(self) -> JSONResponse:
        """Register, unregister, scale, set-default, token refresh: TorchServe's error JSON, 405."""
        logger.info("management write refused: %s", ONE_MODEL)
        return JSONResponse({"code": int(HTTPStatus.METHOD_NOT_ALLOWED), "type": "MethodNotAllowedException",
                             "message": ONE_MODEL}, status_code=HTTPStatus.METHOD_NOT_ALLOWED)

    @staticmethod
    async def metrics() -> Response:
        """The same Prometheus registry as /metrics on the HTTP port."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def management_app(models: Mapping[str, TransformersModel]) -> FastAPI:
    """The management API's app (no docs routes)."""
    app = FastAPI(title="TorchServe management API (read side)", docs_url=None, redoc_url=None, openapi_url=None)
    routes = ManagementRoutes(models)
    app.add_api_route("/models", routes.list_models, methods=["GET"])
    app.add_api_route("/models/{model_name}", routes.describe_model, methods=["GET"])
    app.add_api_route("/models/{model_name}/{model_version}", routes.describe_model, methods=["GET"])
    app.add_api_route("/models", routes.refuse, methods=["POST"])
    for path in ("/models/{model_name}", "/models/{model_name}/{model_version}"):
        app.add_api_route(path, routes.refuse, methods=["PUT", "DELETE"])
    app.add_api_route("/models/{model_name}/{model_version}/set-default", routes.refuse, methods=["PUT"])
    app.add_api_route("/token", routes.refuse, methods=["GET", "POST"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"])
    return app


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the predictor's own handler stops it (see server.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No signal handlers: kserve's uvicorn and the predictor's drain own SIGTERM and SIGINT."""
        yield


class ManagementServer:
    """The management API's uvicorn server on its own port, on the serving event loop."""

    def __init__(self, app: Any, port: int, timeout_keep_alive: int = 5) -> None:
        self.port = port
        self._server = _QuietServer(uvicorn.Config(app, host="0.0.0.0", port=port, log_config=None,
                                                   access_log=False, lifespan="off",
                                                   timeout_keep_alive=timeout_keep_alive))

    async def serve(self) -> None:
        """Listen until stop(); an ERROR and no management API when the port cannot be bound."""
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn's answer to a port in use; the model still serves on every other port
            logger.error("TorchServe management API off: cannot listen on port %d; free it or choose another "
                         "with --ts_management_port (0 turns it off)", self.port)

    def stop(self) -> None:
        """Stop listening; requests in flight finish first."""
        self._server.should_exit = True
