"""ASGI middleware for every route: request ids, the body-size limit, request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from predictor.errors import PayloadTooLargeError
from predictor.serving import error_table, metrics
from predictor.serving.callers import Caller, current_caller

REQUEST_ID_HEADER = b"x-request-id"
TORCHSERVE_PREFIXES = ("/predictions/", "/explanations/")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex looks; from the process's PRNG, not the OS.

    Request ids need to be unique, not unguessable: uuid4 reads os.urandom (a system call) on the
    event loop for every request.
    """
    return f"{random.getrandbits(128):032x}"


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record (the id of the request being served, or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the current request id."""
        record.request_id = request_id_var.get()
        return True


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestContextMiddleware:
    """Honours or creates X-Request-Id, returns it, caps the body size, counts requests, notices leavers.

    Every 503 says when to retry (kserve's own ModelNotReady answers do not), and while the server
    drains every answer closes its connection, so keep-alive clients reconnect to another replica
    instead of sending into a socket that is about to close. Once the body is read, the connection is
    watched: a client that disconnects leaves its Caller, which stops its queued or running work.
    """

    def __init__(self, app: Any, max_body_bytes: Callable[[], int],
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128] or new_request_id()
        token = request_id_var.set(request_id)
        caller = Caller()
        caller_token = current_caller.set(caller)
        watcher: list[asyncio.Task[None]] = []
        limit = self.max_body_bytes()
        started = time.perf_counter()
        status_holder = {"status": 500}
        declared = headers.get(b"content-length", b"")
        try:
            if declared.isdigit() and int(declared) > limit:
                status_holder["status"] = await self._too_large(send, request_id, int(declared), limit,
                                                                scope.get("path", ""))
                return
            if not declared and b"chunked" in headers.get(b"transfer-encoding", b""):
                # No declared size: read up to the limit here, so an endless body is cut off, not drained.
                buffered = await self._buffer(receive, limit)
                if buffered is None:
                    status_holder["status"] = await self._too_large(send, request_id, limit + 1, limit,
                                                                    scope.get("path", ""))
                    return
                receive = self._replay(buffered, receive)
            receive = self._watched(receive, caller, watcher)
            await self.app(scope, self._limited(receive, limit), self._tagged(send, request_id, status_holder,
                                                                             self.draining))
        finally:
            for task in watcher:
                task.cancel()
            current_caller.reset(caller_token)
            route = _route_label(scope)
            metrics.REQUESTS.labels(route=route, status=str(status_holder["status"])).inc()
            metrics.LATENCY.labels(route=route).observe(time.perf_counter() - started)
            request_id_var.reset(token)

    @staticmethod
    async def _buffer(receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None as soon as it exceeds limit."""
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message.get("type") != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replayed() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        return replayed

    @staticmethod
    def _watched(receive: Receive, caller: Caller, watcher: list[asyncio.Task[None]]) -> Receive:
        """receive, and once the body is complete a task that waits for http.disconnect.

        The app's own later receive() calls (a streaming response listening for the disconnect) wait
        for that task rather than competing with it for the message.
        """
        left = asyncio.Event()

        def leave() -> None:
            left.set()
            caller.leave()

        async def watch() -> None:
            with contextlib.suppress(Exception):  # the connection's end, however it comes, is a departure
                while (await receive()).get("type") != "http.disconnect":
                    pass
            leave()

        async def wrapped() -> Any:
            if watcher:
                await left.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.disconnect":
                leave()
            elif not message.get("more_body", False):
                watcher.append(asyncio.get_running_loop().create_task(watch()))
            return message

        return wrapped

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        received = 0

        async def wrapped() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
            return message

        return wrapped

    @staticmethod
    def _tagged(send: Send, request_id: str, status_holder: dict[str, int], draining: Callable[[], bool]) -> Send:
        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                names = {h[0].lower() for h in headers}
                if message["status"] == 503 and b"retry-after" not in names:
                    headers.append((b"retry-after", error_table.RETRY_AFTER_S.encode()))
                if draining() and b"connection" not in names:
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        return wrapped

    @staticmethod
    async def _too_large(send: Send, request_id: str, size: int, limit: int, path: str) -> int:
        """Answers 413 (TorchServe's error shape on TorchServe's routes, KServe's elsewhere); returns it."""
        message = (f"request body of {size} bytes exceeds the limit of {limit} bytes" if size <= 2**62
                   else f"request body exceeds the limit of {limit} bytes")
        row = error_table.ERRORS[PayloadTooLargeError]
        if path.startswith(TORCHSERVE_PREFIXES):
            status = row.torchserve.status
            document = error_table.torchserve_body(int(status), row.torchserve.type, message)
        else:
            status, document = row.kserve.status, error_table.kserve_body(message)
        body = json.dumps(document).encode()
        await send({"type": "http.response.start", "status": int(status), "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER, request_id.encode("latin-1")), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        return int(status)
