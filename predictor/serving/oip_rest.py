"""The Open Inference Protocol's REST routes for metadata and inference, versioned and not.

Registered before kserve's own v2 routes, so these answer: kserve's answer 501 for every
`/versions/{v}/` route (even the served version), write `"versions": null` and `"parameters": null`,
and parse infer bodies with the faults listed in oip.py. Health, `/v2/models` and the repository
routes stay kserve's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from kserve import errors as kserve_errors
from kserve.protocol.dataplane import DataPlane

from predictor.errors import ModelNotFoundError
from predictor.serving.oip import BINARY_HEADER, ModelTensors, parse_rest, rest_response

V2 = "/v2"


def check_version(model: Any, version: str | None) -> None:
    """A versioned route names the served version, or the model is not found."""
    served = model.handler.version
    if version is not None and version != served:
        raise ModelNotFoundError(f"model {model.name!r} has no version {version!r}; the served version is {served!r}")


class OipRoutes:
    """Model metadata, readiness and inference over one DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def _model(self, name: str, version: str | None) -> Any:
        model = self.dataplane.model_registry.get_model(name)
        if model is None:
            raise kserve_errors.ModelNotFound(name)
        check_version(model, version)
        return model

    async def server_metadata(self) -> dict[str, Any]:
        """Name, version and the extensions this server implements."""
        return self.dataplane.metadata()

    async def model_metadata(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """Name, the served version, platform, and the input and output tensors."""
        model = await self._model(model_name, model_version)
        if not model.ready:
            raise kserve_errors.ModelNotReady(model_name)
        metadata = await self.dataplane.model_metadata(model_name)
        return {**metadata, "versions": [model.handler.version]}

    async def model_ready(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """{"name", "ready": true}, or 503 while the model is not ready."""
        await self._model(model_name, model_version)
        if not await self.dataplane.model_ready(model_name):
            raise kserve_errors.ModelNotReady(model_name)
        return {"name": model_name, "ready": True}

    async def infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        """JSON, or JSON + binary tensor data (`Inference-Header-Content-Length`); any Content-Type."""
        model = await self._model(model_name, model_version)
        await self.dataplane.get_model(model_name)  # 503 while not ready
        parsed = parse_rest(await request.body(), request.headers.get(BINARY_HEADER), ModelTensors.of(model))
        headers = dict(request.headers)
        response, _ = await self.dataplane.infer(model_name, parsed.infer_request(model_name), headers)
        body, response_headers = rest_response(response, parsed, model.handler.version)
        return Response(body, headers=response_headers, media_type=response_headers["content-type"])


def register_oip_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """The v2 metadata, readiness and infer routes (plain and /versions/{model_version}/)."""
    routes = OipRoutes(dataplane)
    app.add_api_route(V2, routes.server_metadata, methods=["GET"], tags=["V2"])
    # The same with a trailing slash, as some clients ask for it; one route in the documents.
    app.add_api_route(V2 + "/", routes.server_metadata, methods=["GET"], tags=["V2"], include_in_schema=False)
    for base in ("/models/{model_name}", "/models/{model_name}/versions/{model_version}"):
        app.add_api_route(V2 + base, routes.model_metadata, methods=["GET"], tags=["V2"])
        app.add_api_route(V2 + base + "/ready", routes.model_ready, methods=["GET"], tags=["V2"])
        app.add_api_route(V2 + base + "/infer", routes.infer, methods=["POST"], tags=["V2"])
