"""OpenAI-compatible completions for text-generation models: POST /openai/v1/completions.

kserve ships this route, but its request/response types import vLLM (a GPU serving engine of
several GB), so without vLLM kserve silently skips it. This module keeps kserve's path and the
OpenAI wire format (JSON, or server-sent events when `stream` is true) with pydantic models.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from predictor.errors import InvalidRequestError, ModelNotFoundError, PredictorError
from predictor.serving.kserve_model import TransformersModel
from predictor.tasks import StreamEnd

PREFIX = "/openai/v1"


class CompletionRequest(BaseModel):
    """The subset of OpenAI's completion request a single-sequence Transformers model can honour."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    echo: bool = False

    def parameters(self) -> dict[str, Any]:
        """As the core's generation parameters (temperature 0 means greedy)."""
        params: dict[str, Any] = {}
        if self.max_tokens is not None:
            params["max_new_tokens"] = self.max_tokens
        if self.temperature is not None:
            if self.temperature == 0:
                params["do_sample"] = False
            else:
                params["temperature"] = self.temperature
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.stop:
            params["stop"] = self.stop
        if self.seed is not None:
            params["seed"] = self.seed
        return params

    def stops(self) -> tuple[str, ...]:
        """The stop sequences, as a tuple."""
        if not self.stop:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def single_prompt(self) -> str:
        """One prompt per request (n=1)."""
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise InvalidRequestError("prompt: one prompt per request")
            return self.prompt[0]
        return self.prompt


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop sequence (OpenAI never returns it), and whether one was found."""
    found = [text.find(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


class StopCutter:
    """Cuts a stream at the first stop sequence, holding back text that may be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be sent now."""
        if self.stopped:
            return ""
        self.buffer += piece
        cut, hit = cut_at_stop(self.buffer, self.stops)
        if hit:
            self.stopped, self.buffer = True, ""
            return cut
        ready = len(self.buffer) - self.hold
        if ready <= 0:
            return ""
        out, self.buffer = self.buffer[:ready], self.buffer[ready:]
        return out

    def flush(self) -> str:
        """What was held back, at the end of the stream."""
        rest, self.buffer = ("" if self.stopped else self.buffer), ""
        return rest


def _error(exc: PredictorError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(exc), "type": type(exc).__name__, "code": int(exc.status)}},
                        status_code=int(exc.status))


def _chunk(cid: str, created: int, model: str, text: str, finish: str | None) -> bytes:
    body = {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class CompletionRoutes:
    """POST /openai/v1/completions and GET /openai/v1/models over the served models."""

    def __init__(self, models: Mapping[str, TransformersModel]) -> None:
        self.models = models

    async def list_models(self) -> dict[str, Any]:
        """The served model names, OpenAI style."""
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "predictor"}
                                           for name in self.models]}

    async def completions(self, raw: Request) -> Response:
        """A completion, or server-sent events of its pieces when stream is true."""
        try:
            try:
                request = CompletionRequest.model_validate_json(await raw.body())
            except ValidationError as exc:
                raise InvalidRequestError(f"invalid completion request: {exc.errors()[0]['msg']} "
                                          f"at {'.'.join(map(str, exc.errors()[0]['loc']))}") from exc
            model = self.models.get(request.model)
            if model is None:
                raise ModelNotFoundError(f"model {request.model!r} is not served here")
            queue = model.live_queue
            instance = model.handler.parse({"text": request.single_prompt(), "parameters": request.parameters(),
                                            "details": True})
            cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
            if request.stream:
                chunks = await queue.open_stream(instance)  # overload and timeouts answered before the 200
                return StreamingResponse(self._events(chunks, cid, created, request),
                                         media_type="text/event-stream")
            [result] = await queue.predict([instance])
        except PredictorError as exc:
            return _error(exc)
        continuation, hit = cut_at_stop(result["continuation"], request.stops())
        prompt = result["generated_text"][: len(result["generated_text"]) - len(result["continuation"])]
        text = prompt + continuation if request.echo else continuation
        finish = "stop" if hit or result["finish_reason"] in ("stop", "eos") else "length"
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": request.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["generated_tokens"],
                      "total_tokens": result["prompt_tokens"] + result["generated_tokens"]},
        })

    @staticmethod
    async def _events(chunks: AsyncIterator[str | StreamEnd], cid: str, created: int,
                      request: CompletionRequest) -> AsyncIterator[bytes]:
        cutter = StopCutter(request.stops())
        finish = "length"
        first = True
        async for piece in chunks:
            if isinstance(piece, StreamEnd):
                finish = "stop" if piece.finish_reason in ("stop", "eos") else "length"
                continue
            if first:  # the core streams the prompt first
                first = False
                if request.echo:
                    yield _chunk(cid, created, request.model, piece, None)
                continue
            if text := cutter.feed(piece):
                yield _chunk(cid, created, request.model, text, None)
        if rest := cutter.flush():
            yield _chunk(cid, created, request.model, rest, None)
        yield _chunk(cid, created, request.model, "", "stop" if cutter.stopped else finish)
        yield b"data: [DONE]\n\n"


def register_openai_routes(app: FastAPI, models: Mapping[str, TransformersModel]) -> None:
    """kserve's OpenAI completions path, for text-generation models."""
    routes = CompletionRoutes(models)
    app.add_api_route(PREFIX + "/completions", routes.completions, methods=["POST"], tags=["OpenAI"])
    app.add_api_route(PREFIX + "/models", routes.list_models, methods=["GET"], tags=["OpenAI"])
