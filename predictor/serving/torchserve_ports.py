"""The servers beside kserve's on their own ports: TorchServe's gRPC inference API and its management API.
All run on kserve's event loop and stop
with the predictor's drain."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kserve import ModelServer

from predictor.serving.auth import TokenAuthInterceptor, TokenAuthMiddleware
from predictor.serving.torchserve import TorchServeRoutes
from predictor.serving.torchserve_management import ManagementServer, management_app

if TYPE_CHECKING:  # server.py imports this module
    from predictor.serving.server import ServeOptions

logger = logging.getLogger(__name__)


def _metrics_only(method: str, path: str, _: dict[bytes, bytes]) -> bool:
    return method in ("GET", "HEAD") and path == "/metrics"


class TorchServeServers:
    """Builds the extra servers from ServeOptions; add_to() hands them to kserve, stop() ends them."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.grpc: Any = None  # a TorchServeGrpcServer once add_to() has built it
        self.management: ManagementServer | None = None

    def add_to(self, model_server: ModelServer) -> None:
        """Queue each server's coroutine with kserve's, so ModelServer.start() runs and awaits them all."""
        options, keys = self.options, self.options.keys
        models = model_server.registered_models.get_models()
        interceptors = [TokenAuthInterceptor(keys.inference)] if keys is not None else []
        servers: list[Coroutine[Any, Any, None]] = []
        if options.ts_grpc_port:
            # Imported only when served: the stubs add TorchServe's message names to protobuf's global pool,
            # where a TorchServe client's own stubs in the same process would clash with them.
            from predictor.serving.torchserve_grpc import TorchServeGrpcServer

            self.grpc = TorchServeGrpcServer(options.ts_grpc_port, TorchServeRoutes(models, openapi=dict),
                                             max_message_bytes=options.max_body_bytes, interceptors=interceptors)
            servers.append(self.grpc.serve())
        if options.ts_management_port:
            app = management_app(models)
            if keys is not None:
                app.add_middleware(TokenAuthMiddleware, key=keys.management, exempt=_metrics_only)
            self.management = ManagementServer(app, options.ts_management_port)
            servers.append(self.management.serve())
        model_server.servers.extend(servers)

    def _grace(self) -> int:
        return max(1, int(self.options.grace_period_s - self.options.drain_s))

    async def stop(self, grace_s: float) -> None:
        """After the drain delay: stop listening; calls in flight get grace_s to finish."""
        if self.management is not None:
            self.management.stop()
        if self.grpc is not None:
            await self.grpc.stop(grace_s)
