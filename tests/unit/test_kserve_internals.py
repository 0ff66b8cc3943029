"""Canary: what predictor/serving/kserve_internals.py relies on in kserve, uvicorn and Starlette still holds.

Each failure names the attribute that changed; after a kserve upgrade, fix kserve_internals.py (the only
module that touches these) and this test together.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import signal
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from kserve import ModelServer
from kserve.protocol.rest.server import RESTServer
from timing_asgi import TimingMiddleware

from predictor.serving import kserve_internals

WHY = "predictor/serving/kserve_internals.py relies on it"


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"kserve upgrade check: {what} ({WHY})", pytrace=False)


@pytest.fixture()
def model_server() -> ModelServer:
    """Built as PredictorServer builds it (nothing is started)."""
    return ModelServer(http_port=0, grpc_port=0, workers=1, enable_grpc=False, grace_period=1, max_threads=1,
                       enable_docs_url=False, enable_latency_logging=False)


def rest_server(model_server: ModelServer) -> RESTServer:
    """kserve's REST server as ModelServer.start() builds it for one worker."""
    return RESTServer("kserve.model_server:app", model_server.dataplane,
                      model_server.model_repository_extension, 0, workers=1, grace_period=1)


def test_the_module_level_app_parser_and_args_exist() -> None:
    import kserve.model_server as module

    require(isinstance(getattr(module, "app", None), FastAPI),
            "kserve.model_server.app is no longer a FastAPI app")
    require(isinstance(getattr(module, "parser", None), argparse.ArgumentParser),
            "kserve.model_server.parser is no longer an ArgumentParser (the CLI's serve flags extend it)")
    require(isinstance(getattr(module, "args", None), argparse.Namespace),
            "kserve.model_server.args is no longer a Namespace (our gRPC server gets vars(args))")


def test_model_server_takes_our_arguments_and_keeps_its_servers_in_a_list(model_server: ModelServer) -> None:
    parameters = inspect.signature(ModelServer.__init__).parameters
    for name in ("http_port", "grpc_port", "workers", "enable_grpc", "grace_period", "max_threads",
                 "enable_docs_url", "enable_latency_logging"):
        require(name in parameters, f"ModelServer.__init__ has no parameter {name!r}")
    for name in ("dataplane", "model_repository_extension", "registered_models"):
        require(hasattr(model_server, name), f"ModelServer has no attribute {name!r}")
    require(hasattr(model_server, "_rest_server"), "ModelServer._rest_server is gone")
    require(hasattr(model_server, "_grpc_server"), "ModelServer._grpc_server is gone")
    require(isinstance(getattr(model_server, "servers", None), list),
            "ModelServer.servers is no longer a list")
    require(kserve_internals.uvicorn_server(model_server) is None,
            "ModelServer._rest_server is set before start()")
    require("self._rest_server = RESTServer(" in inspect.getsource(ModelServer.start),
            "ModelServer.start() no longer keeps its RESTServer in self._rest_server")


def test_model_server_runs_the_servers_we_add_and_stops_our_grpc_server(model_server: ModelServer) -> None:
    events: list[str] = []

    class GrpcProbe:
        async def stop(self, sig: int) -> None:
            events.append(f"grpc stopped by {sig}")

    async def serving() -> None:
        events.append("served")

    async def scenario() -> None:
        kserve_internals.add_grpc_server(model_server, GrpcProbe(), serving())
        await model_server._serve()  # what start() runs once its own servers are added
        model_server.stop(signal.SIGTERM)
        for _ in range(10):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    require("served" in events, "ModelServer._serve() no longer gathers ModelServer.servers")
    require(f"grpc stopped by {signal.SIGTERM}" in events,
            "ModelServer.stop() no longer awaits ModelServer._grpc_server.stop(sig)")


def test_the_rest_server_is_a_uvicorn_server_we_can_watch_and_stop(model_server: ModelServer) -> None:
    rest = rest_server(model_server)
    model_server._rest_server = rest  # as start() sets it
    server = kserve_internals.uvicorn_server(model_server)
    require(isinstance(server, uvicorn.Server), "RESTServer._server is no longer a uvicorn.Server")
    require(list(inspect.signature(server.handle_exit).parameters) == ["sig", "frame"],
            "uvicorn.Server.handle_exit(sig, frame) changed its signature")
    require(server.should_exit is False, "uvicorn.Server.should_exit is not False before shutdown")

    async def watch() -> None:
        watcher = asyncio.create_task(kserve_internals.wait_for_shutdown(model_server))
        await asyncio.sleep(2 * kserve_internals.EXIT_POLL_S)
        require(not watcher.done(), "wait_for_shutdown returned before uvicorn began shutting down")
        kserve_internals.shut_down(server, signal.SIGTERM)
        await asyncio.wait_for(watcher, timeout=10 * kserve_internals.EXIT_POLL_S)

    asyncio.run(watch())
    require(server.should_exit is True, "uvicorn.Server.handle_exit no longer sets should_exit")


def test_uvicorn_installs_its_signal_handlers_before_the_lifespan_starts() -> None:
    # take_over_sigterm runs in the lifespan start-up and must come after uvicorn's own handlers.
    require(hasattr(uvicorn.Server, "capture_signals"), "uvicorn.Server.capture_signals is gone")
    source = inspect.getsource(uvicorn.Server.serve)
    require(source.find("capture_signals") != -1 and source.find("capture_signals") < source.find("_serve("),
            "uvicorn.Server.serve() no longer installs its signal handlers around _serve()")


def test_kserve_still_adds_timing_middleware_and_the_filter_leaves_it_out(model_server: ModelServer) -> None:
    app = FastAPI()
    rest_server(model_server)._add_middlewares(app)  # what kserve does to its app when it starts
    require(any(m.cls is TimingMiddleware for m in app.user_middleware),
            "RESTServer._add_middlewares no longer adds timing_asgi.TimingMiddleware")
    kserve_internals.without_request_timing(app)
    stack: Any = app.build_middleware_stack()
    layers = []
    while stack is not None:
        layers.append(type(stack))
        stack = getattr(stack, "app", None)
    require(TimingMiddleware not in layers,
            "FastAPI.build_middleware_stack no longer reads user_middleware: the timing filter does nothing")
    require(len(layers) > 1, "the middleware stack could not be walked through .app")
