"""What this server uses inside kserve, and the uvicorn and Starlette under it, beyond their public API.

Everything here depends on how kserve 0.21 builds and runs its server: ModelServer keeps its uvicorn
server at `_rest_server._server` and the coroutines it gathers in `servers`; kserve adds timing_asgi's
TimingMiddleware to its app when it starts; uvicorn installs its signal handlers before the lifespan
starts. tests/unit/test_kserve_internals.py checks each of these and names the one a kserve, uvicorn or
Starlette upgrade changed.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from kserve import ModelServer
from timing_asgi import TimingMiddleware  # what kserve adds to every app (kserve depends on timing-asgi)

# How often the drain watcher looks at uvicorn's exit flag: uvicorn has no hook for "shutdown began".
EXIT_POLL_S = 0.05


def without_request_timing(app: FastAPI) -> None:
    """Leave kserve's per-request timing middleware out of the app's middleware stack.

    It only feeds the kserve.trace log lines of --enable_latency_logging; without them it is pure cost
    (two getrusage calls and a route-name lookup per request). kserve adds it when it starts, after our
    configure(); Starlette builds the stack from user_middleware at the first ASGI call, so the filter
    runs then.
    """
    build = app.build_middleware_stack

    def build_without_timing() -> Any:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
        return build()

    app.build_middleware_stack = build_without_timing  # type: ignore[method-assign]


def uvicorn_server(model_server: ModelServer) -> Any | None:
    """The uvicorn.Server serving kserve's REST port; None before start() or with several workers."""
    return getattr(getattr(model_server, "_rest_server", None), "_server", None)


def add_grpc_server(model_server: ModelServer, grpc_server: Any, serving: Coroutine[Any, Any, None]) -> None:
    """Run our own gRPC server in kserve's place: started with the REST server, stopped by
    ModelServer.stop()."""
    model_server._grpc_server = grpc_server
    model_server.servers.append(serving)


def take_over_sigterm(model_server: ModelServer, on_sigterm: Callable[[Any, int], None]) -> bool:
    """Replace uvicorn's SIGTERM handler with on_sigterm(uvicorn_server, signal); False where it cannot.

    Called from the lifespan start-up: uvicorn installed its handlers (stop listening at once) just
    before. Signal handlers can only be set from the main thread.
    """
    server = uvicorn_server(model_server)
    if server is None or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, lambda sig, frame: on_sigterm(server, sig))
    return True


def shut_down(server: Any, sig: int) -> None:
    """uvicorn's own graceful shutdown, as its signal handler would start it."""
    server.handle_exit(sig, None)


async def wait_for_shutdown(model_server: ModelServer) -> None:
    """Return once uvicorn has begun its graceful shutdown (SIGINT, or shut_down after the drain delay)."""
    server = uvicorn_server(model_server)
    while server is not None and not server.should_exit:
        await asyncio.sleep(EXIT_POLL_S)
