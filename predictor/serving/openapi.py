"""The OpenAPI 3.0.3 document of this server (TorchServe answers `OPTIONS /` with one).

Written out rather than taken from FastAPI: FastAPI emits OpenAPI 3.1 and knows nothing of the
raw-body and multipart forms TorchServe clients send.
"""

from __future__ import annotations

from typing import Any

from predictor import __version__

_JSON = "application/json"
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
_TS_ERROR = {"type": "object", "required": ["code", "type", "message"], "properties": {
    "code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}}}
_ANY = {"description": "Answer", "content": {_JSON: {"schema": {}}, "text/plain": {"schema": {"type": "string"}}}}


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema or {"type": "string"}}


def _responses(ok: dict[str, Any], errors: dict[int, str], schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for code, text in errors.items():
        out[str(code)] = {"description": text, "content": {_JSON: {"schema": schema}}}
    return out


def _json_ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema or {"type": "object"}}}}


_TS_FAILURES = {400: "Bad input", 404: "Model or version not found", 413: "Body or input too large",
                500: "Timeout or internal error", 501: "Explanations unavailable",
                503: "Not ready, overloaded or prediction failed", 507: "Out of resources"}
_KS_FAILURES = {400: "Bad input", 404: "Model not found", 413: "Body or input too large", 500: "Internal error",
                501: "Not implemented", 503: "Not ready or overloaded", 504: "Timed out", 507: "Out of resources"}

_TS_BODY = {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string"}},
    _JSON: {"schema": {"oneOf": [{"type": "string"}, {"type": "object"}]}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "data": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}
_V1_BODY = {"required": True, "content": {_JSON: {"schema": {
    "type": "object", "required": ["instances"],
    "properties": {"instances": {"type": "array", "minItems": 1,
                                 "items": {"oneOf": [{"type": "string"}, {"type": "object"}]}}}}}}}
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {"type": "array", "items": {}}}}
_V2_BODY = {"required": True, "content": {_JSON: {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR}}}}}}


def _torchserve_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": {"options": {"operationId": "apiDescription", "summary": "This OpenAPI document",
                          "responses": {"200": _json_ok("OpenAPI 3.0 document")}}},
        "/api-description": {"get": {"operationId": "getApiDescription", "summary": "This OpenAPI document",
                                     "responses": {"200": _json_ok("OpenAPI 3.0 document")}}},
        "/viewer": {"get": {"operationId": "viewer", "summary": "Explanation viewer page",
                            "responses": {"200": {"description": "HTML page",
                                                  "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/ping": {"get": {"operationId": "ping", "summary": "TorchServe health: Healthy once the model is ready",
                          "responses": {"200": _json_ok("Healthy"), "500": _json_ok("Unhealthy")}}},
    }
    stream = _param("stream", "query", {"type": "boolean"}, required=False)
    details = _param("X-Predictor-Details", "header", {"type": "boolean"}, required=False)
    for kind, summary in (("predictions", "Predict (TorchServe)"), ("explanations", "Explain (TorchServe)")):
        for suffix, extra in (("", []), ("/{model_version}", [_param("model_version")])):
            params = [_param("model_name"), *extra, details] + ([stream] if kind == "predictions" else [])
            op_id = kind + ("Version" if suffix else "")
            operation = {"summary": summary, "parameters": params, "requestBody": _TS_BODY,
                         "responses": _responses(_ANY, _TS_FAILURES, _TS_ERROR)}
            # PUT is what `curl -T file` sends.
            paths[f"/{kind}/{{model_name}}{suffix}"] = {"post": {"operationId": op_id, **operation},
                                                        "put": {"operationId": op_id + "Put", **operation}}
    return paths


def _kserve_paths() -> dict[str, Any]:
    name = [_param("model_name")]
    ready = _responses(_json_ok("Ready"), {503: "Not ready"}, _ERROR)
    return {
        "/": {"get": {"operationId": "live", "summary": "Liveness", "responses": {"200": _json_ok("Alive")}}},
        "/v2/models": {"get": {"operationId": "v2Models", "summary": "Served models",
                               "responses": {"200": _json_ok("Model names")}}},
        "/v2/repository/models/{model_name}/load": {"post": {
            "operationId": "v2RepositoryLoad", "summary": "Refused: one model per process (501)",
            "parameters": name, "responses": _responses(_json_ok("Never"), {501: "Not implemented"}, _ERROR)}},
        "/v2/repository/models/{model_name}/unload": {"post": {
            "operationId": "v2RepositoryUnload", "summary": "Refused: one model per process (501)",
            "parameters": name, "responses": _responses(_json_ok("Never"), {501: "Not implemented"}, _ERROR)}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Metrics",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/models": {"get": {"operationId": "v1Models", "summary": "Served models",
                               "responses": {"200": _json_ok("Model names")}}},
        "/v1/models/{model_name}": {"get": {"operationId": "v1ModelReady", "summary": "Model readiness",
                                            "parameters": name,
                                            "responses": _responses(_json_ok("Ready"),
                                                                    {404: "Not found", 503: "Not ready"}, _ERROR)}},
        "/v1/models/{model_name}:predict": {"post": {
            "operationId": "v1Predict", "summary": "KServe v1 predict", "parameters": name, "requestBody": _V1_BODY,
            "responses": _responses(_json_ok("{predictions: [...]}"), _KS_FAILURES, _ERROR)}},
        "/v1/models/{model_name}:explain": {"post": {
            "operationId": "v1Explain", "summary": "KServe v1 explain", "parameters": name, "requestBody": _V1_BODY,
            "responses": _responses(_json_ok("{explanations: [...]}"), _KS_FAILURES, _ERROR)}},
        "/v2": {"get": {"operationId": "v2Metadata", "summary": "Server metadata",
                        "responses": {"200": _json_ok("Server metadata")}}},
        "/v2/health/live": {"get": {"operationId": "v2Live", "summary": "Liveness",
                                    "responses": {"200": _json_ok("Live")}}},
        "/v2/health/ready": {"get": {"operationId": "v2Ready", "summary": "Readiness (model loaded and warm)",
                                     "responses": ready}},
        "/v2/models/{model_name}": {"get": {"operationId": "v2ModelMetadata", "summary": "Model metadata",
                                            "parameters": name,
                                            "responses": _responses(_json_ok("Inputs and outputs"),
                                                                    {404: "Not found"}, _ERROR)}},
        "/v2/models/{model_name}/ready": {"get": {"operationId": "v2ModelReady", "summary": "Model readiness",
                                                  "parameters": name, "responses": ready}},
        "/v2/models/{model_name}/infer": {"post": {
            "operationId": "v2Infer", "summary": "Open Inference Protocol infer (BYTES tensor of texts)",
            "parameters": name, "requestBody": _V2_BODY,
            "responses": _responses(_json_ok("Inference response"), _KS_FAILURES, _ERROR)}},
        **_versioned_paths(),
    }


def _versioned_paths() -> dict[str, Any]:
    """The /versions/{model_version}/ forms: the served version answers, any other is a 404."""
    params = [_param("model_name"), _param("model_version")]
    base = "/v2/models/{model_name}/versions/{model_version}"
    return {
        base: {"get": {"operationId": "v2ModelVersionMetadata", "summary": "Model metadata (served version)",
                       "parameters": params, "responses": _responses(
                           _json_ok("Inputs and outputs"), {404: "Model or version not found"}, _ERROR)}},
        base + "/ready": {"get": {"operationId": "v2ModelVersionReady", "summary": "Model readiness (served version)",
                                  "parameters": params, "responses": _responses(
                                      _json_ok("Ready"), {404: "Model or version not found", 503: "Not ready"},
                                      _ERROR)}},
        base + "/infer": {"post": {"operationId": "v2VersionInfer", "summary": "Infer (served version)",
                                   "parameters": params, "requestBody": _V2_BODY,
                                   "responses": _responses(_json_ok("Inference response"), _KS_FAILURES, _ERROR)}},
    }


def openapi_document(generation: bool) -> dict[str, Any]:
    """Every route this server answers; the OpenAI routes when the model generates text."""
    paths = _torchserve_paths()
    for path, operations in _kserve_paths().items():
        paths.setdefault(path, {}).update(operations)  # "/" has OPTIONS (TorchServe) and GET (KServe)
    if generation:
        paths["/openai/v1/models"] = {"get": {"operationId": "openaiModels", "summary": "Served models (OpenAI)",
                                              "responses": {"200": _json_ok("Model list")}}}
        paths["/openai/v1/completions"] = {"post": {
            "operationId": "openaiCompletions", "summary": "OpenAI-compatible completions (SSE when stream=true)",
            "requestBody": {"required": True, "content": {_JSON: {"schema": {
                "type": "object", "required": ["model", "prompt"],
                "properties": {"model": {"type": "string"}, "prompt": {"type": "string"},
                               "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}}}}},
            "responses": {"200": {"description": "Completion", "content": {
                _JSON: {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                "400": {"description": "Bad input", "content": {_JSON: {"schema": {"type": "object"}}}}}}}
        paths["/openai/v1/chat/completions"] = {"post": {
            "operationId": "openaiChatCompletions",
            "summary": "OpenAI-compatible chat completions via the tokenizer's chat template (SSE when stream=true)",
            "requestBody": {"required": True, "content": {_JSON: {"schema": {
                "type": "object", "required": ["model", "messages"],
                "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": {
                    "type": "object", "required": ["role"],
                    "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}},
                    "max_completion_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}}}}},
            "responses": {"200": {"description": "Chat completion", "content": {
                _JSON: {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
                "400": {"description": "Bad input or no chat template",
                        "content": {_JSON: {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "predictor: KServe + TorchServe inference API", "version": __version__,
                 "description": "KServe v1/v2 and TorchServe-compatible routes for one Transformers model."},
        "paths": paths,
    }
