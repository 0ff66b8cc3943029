"""kserve's ModelServer, extended: truthful readiness, background loading, TorchServe routes, draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve import errors as kserve_errors
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from starlette.exceptions import HTTPException as StarletteHTTPException

from predictor.config import Limits
from predictor.errors import ClientGoneError, ConfigError, PredictorError
from predictor.serving import error_table
from predictor.serving import kserve_internals
from predictor.serving.auth import Keys, TokenAuthInterceptor, TokenAuthMiddleware
from predictor.serving.kserve_internals import without_request_timing
from predictor.serving.kserve_model import TransformersModel
from predictor.serving.middleware import TORCHSERVE_PREFIXES, RequestContextMiddleware
from predictor.serving.oip import EXTENSIONS
from predictor.serving.oip_grpc import OipGrpcServer
from predictor.serving.oip_rest import register_oip_routes
from predictor.serving.openai_chat import register_openai_routes
from predictor.serving.openapi import openapi_document
from predictor.serving.torchserve import register_torchserve_routes
from predictor.serving.torchserve_ports import TorchServeServers
from predictor.serving.viewer import register_viewer_routes

logger = logging.getLogger(__name__)


class FixedModelRepository(ModelRepositoryExtension):
    """One model per process, loaded at start: the repository API lists it but cannot load or unload it.

    kserve's default lets any client unload the model over REST or gRPC, after which the pod stays
    live but never ready again.
    """

    async def load(self, model_name: str) -> None:
        """Refused (501 / UNIMPLEMENTED)."""
        raise NotImplementedError("this server serves one model loaded at start-up; it cannot load others")

    async def unload(self, model_name: str) -> None:
        """Refused (501 / UNIMPLEMENTED)."""
        raise NotImplementedError("this server serves one model for its lifetime; it cannot unload it")


class PredictorDataPlane(DataPlane):
    """kserve's DataPlane, but the server is ready only when its models are, and never loads inline."""

    def metadata(self) -> dict[str, Any]:
        """Server metadata: the extensions implemented (the repository extension only answers 501 here)."""
        return {**super().metadata(), "extensions": list(EXTENSIONS)}

    async def ready(self) -> bool:
        """/v2/health/ready and gRPC ServerReady: every model loaded, warm and not wedged."""
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await m.healthy() for m in models])

    async def get_model(self, name: str) -> Any:
        """kserve would call model.load() on the event loop here; we answer 503 until the loader is done."""
        model = self.model_registry.get_model(name)
        if model is None:
            raise kserve_errors.ModelNotFound(name)
        if not await self.model_registry.is_model_ready(name):
            raise kserve_errors.ModelNotReady(name)
        return model


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """A body FastAPI could not validate (v2 JSON of the wrong shape) is a 400, as on every other route."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {"msg": str(exc), "loc": ()}
    where = ".".join(str(part) for part in first.get("loc", ()))
    logger.info("invalid request body: %s at %s", first.get("msg"), where)
    message = f"invalid request: {first.get('msg')} at {where}"
    return JSONResponse(error_table.kserve_body(message), status_code=400)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Errors FastAPI raises itself (unreadable multipart or body) in the route family's own shape."""
    status = int(getattr(exc, "status_code", 400))
    detail = str(getattr(exc, "detail", exc))
    logger.info("HTTP %d: %s", status, detail)
    if request.url.path.startswith(TORCHSERVE_PREFIXES):
        kind = "BadRequestException" if status == 400 else "HTTPException"
        return JSONResponse(error_table.torchserve_body(status, kind, detail), status_code=status)
    return JSONResponse(error_table.kserve_body(detail), status_code=status)


async def predictor_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """KServe routes: our errors that kserve has no exception for (413, 503 overload, 504, 507...)."""
    status = error_table.row_of(exc).kserve.status
    if status >= 500 and status != 503 and not isinstance(exc, ClientGoneError):
        logger.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
    else:
        logger.info("%s: %s", type(exc).__name__, exc)
    return error_table.kserve_response(exc)


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and behaves around the model's lifecycle."""

    http_port: int = 8080
    grpc_port: int = 8081
    enable_grpc: bool = True
    grace_period_s: int = 25
    drain_s: float = 3.0
    load_retry_s: float = 60.0
    max_threads: int = 4
    cors_origins: tuple[str, ...] = ()
    event_loop: str = "auto"  # kserve's --event-loop: auto (uvloop when installed), asyncio, uvloop
    latency_logging: bool = False  # kserve's --enable_latency_logging: a timing line per request
    ts_grpc_port: int = 0  # TorchServe's gRPC inference API (0: off)
    ts_management_port: int = 0  # TorchServe's management API, read side (0: off)
    keys: Keys | None = None  # token authorization (None: off)
    max_body_bytes: int = Limits.max_body_bytes  # the model's limit, for gRPC message sizes


def install_event_loop(choice: str) -> str:
    """The event loop kserve's --event-loop asks for; returns the one installed.

    ModelServer.start() runs asyncio.run(), which never sees uvicorn's loop setting, so kserve
    serves on the plain asyncio loop whatever the flag says. Here the policy is set first (uvloop
    is the faster loop: figures in predictor/bench/README.md).
    """
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ModuleNotFoundError as exc:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from exc
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # kserve's setup_event_loop() asks for a current loop
    return "uvloop"


class PredictorServer:
    """One model, served on KServe's REST (v1, v2, TorchServe routes) and gRPC ports."""

    def __init__(self, model: TransformersModel, options: ServeOptions) -> None:
        self.model = model
        self.options = options
        self.exit_code = 0
        # The drain delay comes out of the grace period: SIGTERM to exit stays within grace_period_s.
        # gRPC is started by run() with our servicer (oip_grpc.py), so kserve's own stays off.
        self.server = ModelServer(http_port=options.http_port, grpc_port=options.grpc_port, workers=1,
                                  enable_grpc=False, grace_period=self._shutdown_budget_s(),
                                  max_threads=options.max_threads, enable_docs_url=False,
                                  enable_latency_logging=options.latency_logging)
        self.server.dataplane = PredictorDataPlane(model_registry=self.server.registered_models)
        self.server.model_repository_extension = FixedModelRepository(self.server.registered_models)
        self.server.register_model(model)
        self._loader: threading.Thread | None = None
        self.torchserve = TorchServeServers(options)

    def configure(self, app: FastAPI, generation: bool) -> None:
        """Our middleware, error handler and TorchServe routes, added before kserve adds its routes."""
        if self.options.keys is not None:  # inside the request context: a 401 gets an id and is counted
            app.add_middleware(TokenAuthMiddleware, key=self.options.keys.inference)
        app.add_middleware(RequestContextMiddleware, max_body_bytes=self._max_body_bytes,
                           draining=lambda: self.model.draining)
        app.add_exception_handler(PredictorError, predictor_error_handler)
        app.add_exception_handler(RequestValidationError, validation_error_handler)
        app.add_exception_handler(StarletteHTTPException, http_error_handler)
        document = openapi_document(generation)
        models = self.server.registered_models.get_models()
        register_torchserve_routes(app, models, lambda: document)
        register_oip_routes(app, self.server.dataplane)
        register_viewer_routes(app)
        if self.options.cors_origins:
            # Lets the viewer page (or a dashboard) opened from another origin call this server.
            app.add_middleware(CORSMiddleware, allow_origins=list(self.options.cors_origins),
                               allow_methods=["GET", "POST", "OPTIONS"],
                               allow_headers=["Content-Type", "X-Request-Id", "X-Predictor-Details", "Authorization"],
                               expose_headers=["X-Request-Id"])
        if generation:
            register_openai_routes(app, models)
        previous = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(inner: Any) -> AsyncIterator[Any]:
            async with previous(inner) as state:
                await self._on_startup()
                yield state

        app.router.lifespan_context = lifespan
        if not self.options.latency_logging:
            without_request_timing(app)

    def _shutdown_budget_s(self) -> int:
        """Seconds left for uvicorn's and gRPC's own graceful shutdown once the drain delay is over."""
        return max(1, int(self.options.grace_period_s - self.options.drain_s))

    def _max_body_bytes(self) -> int:
        return self.model.handler.config.limits.max_body_bytes if self.model.ready else Limits.max_body_bytes

    async def _on_startup(self) -> None:
        self._loader = threading.Thread(target=self._load, name="predictor-loader", daemon=True)
        self._loader.start()
        loop = asyncio.get_running_loop()
        loop.create_task(self._drain_on_exit(), name="predictor-drain-watch")
        # uvicorn's handler stops listening at once; ours first turns not-ready and keeps the port open
        # for the drain delay, then hands over to it.
        kserve_internals.take_over_sigterm(self.server,
                                           lambda uvicorn, sig: self._on_sigterm(loop, uvicorn, sig))

    def _on_sigterm(self, loop: asyncio.AbstractEventLoop, uvicorn_server: Any, sig: int) -> None:
        """First SIGTERM: drain for drain_s, then uvicorn's shutdown; a second one: shut down now.

        During the delay readiness fails (so Kubernetes takes the pod out of its endpoints), a request
        whose headers were still arriving is read and answered, new work gets 503 + Retry-After +
        Connection: close, and in-flight and queued work goes on. Only then does uvicorn stop listening
        and close idle connections.
        """
        if self.model.draining or not self.model.ready:
            kserve_internals.shut_down(uvicorn_server, sig)  # second signal, or never served: no drain
            return
        self.model.drain()
        logger.info("SIGTERM: not ready; refusing new work for %.1fs before closing the port (grace period %ss)",
                    self.options.drain_s, self.options.grace_period_s)
        loop.call_soon_threadsafe(loop.call_later, self.options.drain_s, kserve_internals.shut_down,
                                  uvicorn_server, sig)

    def _load(self) -> None:
        """Load in the background so probes answer (not ready) meanwhile; retry, then exit non-zero."""
        deadline = time.monotonic() + self.options.load_retry_s
        delay = 1.0
        while True:
            try:
                self.model.load()
                logger.info("model %s ready", self.model.name)
                return
            except ConfigError as exc:
                logger.error("model %s failed to load: %s", self.model.name, exc)
            except Exception:
                logger.exception("model %s failed to load", self.model.name)
            if time.monotonic() + delay > deadline:
                logger.error("giving up loading model %s after %.0fs; exiting so the pod restarts",
                             self.model.name, self.options.load_retry_s)
                self.exit_code = 1
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _drain_on_exit(self) -> None:
        """When uvicorn starts its graceful shutdown (SIGINT, or after the drain delay), refuse new work."""
        await kserve_internals.wait_for_shutdown(self.server)
        logger.info("shutting down: draining in-flight and queued requests (grace period %ss)",
                    self.options.grace_period_s)
        self.model.drain()
        await self.torchserve.stop(self._shutdown_budget_s())

    def run(self, app: FastAPI, generation: bool) -> int:
        """Serve until SIGTERM/SIGINT; the exit code says whether the model ever loaded."""
        try:
            loop = install_event_loop(self.options.event_loop)
        except ConfigError as exc:
            logger.error("%s", exc)
            return 2
        logger.info("event loop: %s", loop)
        self.configure(app, generation)
        if self.options.enable_grpc:
            import kserve.model_server

            keys = self.options.keys
            grpc_server = OipGrpcServer(self.options.grpc_port, self.server.dataplane,
                                        self.server.model_repository_extension,
                                        kwargs=vars(kserve.model_server.args), grace_period=self._shutdown_budget_s(),
                                        interceptors=[TokenAuthInterceptor(keys.inference)] if keys else [])
            kserve_internals.add_grpc_server(self.server, grpc_server,
                                             grpc_server.start(self.options.max_threads))
        self.torchserve.add_to(self.server)
        self.server.start([])  # the model is registered but loads in the background
        return self.exit_code
