"""Token authorization, TorchServe's way: `Authorization: Bearer <key>` on every route but probes; off by default.

Keys come from TorchServe's key_file.json (its `inference` key guards inference, its `management` key
the management API) or from a file or environment variable holding one bare token (which guards both).
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from predictor.errors import ConfigError

logger = logging.getLogger(__name__)

TOKEN_ENV = "PREDICTOR_TOKEN"  # a bare token, or the content of a key_file.json
TOKEN_FILE_ENV = "PREDICTOR_TOKEN_FILE"
UNAUTHORIZED_MESSAGE = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"

# Probes and what a browser or Prometheus fetches without credentials: never guarded.
_EXEMPT_HTTP = re.compile(r"^/(ping|metrics|viewer(/.*)?|v2/health/(live|ready)|v1/models/[^/:]+"
                          r"|v2/models/[^/]+(/versions/[^/]+)?/ready)/?$")
_TORCHSERVE_PATHS = ("/predictions/", "/explanations/", "/models", "/api-description")
EXEMPT_GRPC = frozenset({
    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
})


@dataclass(frozen=True)
class Keys:
    """The key of each API family (the same one when the file held a bare token)."""

    inference: str
    management: str

    def __repr__(self) -> str:  # never show a key, even in a traceback or a debug print
        return "Keys(inference=***, management=***)"


def parse_keys(text: str, where: str) -> Keys:
    """TorchServe's key_file.json ({"inference": {"key": ...}, "management": {"key": ...}}) or one bare token."""
    text = text.strip()
    if not text:
        raise ConfigError(f"{where}: empty; expected a token or TorchServe's key_file.json")
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}); expected "
                              "TorchServe's key_file.json or a bare token") from None
        return Keys(_json_key(document, "inference", where), _json_key(document, "management", where))
    if any(c.isspace() for c in text):
        raise ConfigError(f"{where}: a bare token must be one word without spaces or line breaks")
    return Keys(text, text)


def _json_key(document: Any, family: str, where: str) -> str:
    entry = document.get(family) if isinstance(document, dict) else None
    key = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f'{where}: expected "{family}": {{"key": "..."}} as in TorchServe\'s key_file.json')
    return key.strip()


def load_keys(token_file: str | None, environ: dict[str, str]) -> Keys | None:
    """The keys of --token_file, else $PREDICTOR_TOKEN_FILE, else $PREDICTOR_TOKEN; None: authorization off."""
    path = token_file or environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--token_file {path}: cannot read it ({exc.strerror})") from None
        return parse_keys(text, f"--token_file {path}")
    if environ.get(TOKEN_ENV):
        return parse_keys(environ[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


def authorized(header: str | bytes | None, key: str) -> bool:
    """`Bearer <key>`, compared in constant time."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def exempt_path(method: str, path: str, headers: dict[bytes, bytes]) -> bool:
    """Probes, /metrics, the viewer page and CORS preflights (browsers never send credentials in those)."""
    if method == "OPTIONS" and b"access-control-request-method" in headers:
        return True
    return method in ("GET", "HEAD") and _EXEMPT_HTTP.match(path) is not None


def _unauthorized_body(path: str) -> bytes:
    if path.startswith(_TORCHSERVE_PATHS) or path == "/":
        return json.dumps({"code": 401, "type": "InvalidKeyException", "message": UNAUTHORIZED_MESSAGE}).encode()
    return json.dumps({"error": UNAUTHORIZED_MESSAGE}).encode()


class TokenAuthMiddleware:
    """ASGI: 401 (TorchServe's error JSON on its routes, {"error"} on KServe's) without the right key."""

    def __init__(self, app: Any, key: str, exempt: Callable[[str, str, dict[bytes, bytes]], bool] = exempt_path):
        self.app = app
        self.key = key
        self.exempt = exempt

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.exempt(scope.get("method", "GET"), path, headers) or authorized(headers.get(b"authorization"),
                                                                                self.key):
            await self.app(scope, receive, send)
            return
        logger.info("401: missing or wrong token for %s %s", scope.get("method"), path)
        body = _unauthorized_body(path)
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """gRPC: UNAUTHENTICATED without `authorization: Bearer <key>` metadata; probes pass."""

    def __init__(self, key: str, exempt: Iterable[str] = EXEMPT_GRPC) -> None:
        self.key = key
        self.exempt = frozenset(exempt)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        """The method's own handler when authorized, else one of the same kind that refuses."""
        handler = await continuation(details)
        if handler is None or details.method in self.exempt:
            return handler
        metadata = dict(details.invocation_metadata or ())
        if authorized(metadata.get("authorization"), self.key):
            return handler
        logger.info("UNAUTHENTICATED: missing or wrong token for %s", details.method)
        return _refusing(handler)


def _refusing(handler: Any) -> Any:
    async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED_MESSAGE)

    async def refuse_stream(_: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED_MESSAGE)
        yield  # pragma: no cover - abort raises; this makes the function an async generator

    kinds = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, refuse),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, refuse),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, refuse_stream),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, refuse_stream),
    }
    for attribute, (make, behaviour) in kinds.items():
        if getattr(handler, attribute) is not None:
            return make(behaviour, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
