"""OpenAI-compatible completions for text-generation models: POST /openai/v1/completions, GET /openai/v1/models.

kserve ships these routes, but its request/response types import vLLM (a GPU serving engine of
several GB), so without vLLM kserve silently skips them. This module keeps kserve's paths and the
OpenAI wire format (JSON, or server-sent events when `stream` is true) with pydantic models. A
parameter this server cannot honour is refused with OpenAI's error shape, never ignored.
Chat completions (the tokenizer's chat template) and the route registration are in openai_chat.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from predictor.errors import InvalidRequestError, ModelNotFoundError, PredictorError
from predictor.serving.error_table import openai_response
from predictor.serving.kserve_model import TransformersModel
from predictor.tasks import Instance, StreamEnd

PREFIX = "/openai/v1"
COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens for completions
R = TypeVar("R", bound="GenerationRequest")


class OpenAIParameterError(InvalidRequestError):
    """A request parameter that is invalid or not supported; `param` names it, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def unsupported(param: str, why: str = "") -> OpenAIParameterError:
    """The error for a parameter this server does not implement."""
    return OpenAIParameterError(f"{param} is not supported by this server{why}", param, "unsupported_parameter")


class StreamOptions(BaseModel):
    """stream_options: include_usage adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """What completions and chat completions share; unknown parameters are refused (extra="forbid")."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # an end-user id for the caller's abuse monitoring; it never changes the answer

    def check_supported(self) -> None:
        """OpenAIParameterError for a value this server accepts in the schema but cannot honour."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                raise unsupported(name, " (only 0)")
        if self.logit_bias:
            raise unsupported("logit_bias")
        if self.stream and self.n > 1:
            raise unsupported("n", " with stream=true (only n=1 streams)")
        if self.stream_options is not None and not self.stream:
            raise OpenAIParameterError("stream_options is only allowed when stream is true", "stream_options")

    def token_budget(self, default: int) -> int:
        """max tokens to generate."""
        return default

    def parameters(self, max_tokens: int) -> dict[str, Any]:
        """As the core's generation parameters: temperature 0 is greedy; otherwise OpenAI's sampling
        (temperature and top_p default to 1, no top-k)."""
        params: dict[str, Any] = {"max_new_tokens": max_tokens}
        if self.temperature == 0:
            params["do_sample"] = False
        else:
            params.update(do_sample=True, temperature=self.temperature or 1.0, top_p=self.top_p or 1.0, top_k=0)
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

    @property
    def include_usage(self) -> bool:
        """Whether the stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    """OpenAI's completion request, as far as a Transformers model can honour it."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=COMPLETION_MAX_TOKENS, ge=1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    def check_supported(self) -> None:
        """Also: one text prompt, no logprobs, suffix or best_of."""
        super().check_supported()
        if self.logprobs is not None:
            raise unsupported("logprobs")
        if self.suffix:
            raise unsupported("suffix")
        if self.best_of not in (None, self.n):
            raise unsupported("best_of", " (only equal to n)")
        self.single_prompt()

    def token_budget(self, default: int) -> int:
        """max_tokens, OpenAI's 16 when absent or null."""
        return self.max_tokens or COMPLETION_MAX_TOKENS

    def single_prompt(self) -> str:
        """The one text prompt of the request."""
        prompt = self.prompt
        if isinstance(prompt, list):
            if prompt and not isinstance(prompt[0], str):
                raise unsupported("prompt", " as token ids: send the prompt as text")
            if len(prompt) != 1:
                raise OpenAIParameterError(f"prompt: one prompt per request, got {len(prompt)}", "prompt")
            prompt = prompt[0]
        assert isinstance(prompt, str)
        return prompt


def parse_request(model_cls: type[R], body: bytes) -> R:
    """The request body, validated; OpenAIParameterError naming the first bad parameter."""
    try:
        request = model_cls.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise unsupported(str(param)) from exc
        raise OpenAIParameterError(f"invalid request: {first['msg']}" + (f" at {param}" if param else ""),
                                   param) from exc
    request.check_supported()
    return request


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


def finish_reason(core_reason: str, hit_stop: bool) -> str:
    """OpenAI's finish_reason: "stop" at end-of-sequence or a stop sequence, else "length"."""
    return "stop" if hit_stop or core_reason in ("stop", "eos") else "length"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(body: Any) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


@dataclass
class StreamOutcome:
    """How a stream ended, known once its last piece is out."""

    finish: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def continuation(chunks: AsyncIterator[str | StreamEnd], stops: tuple[str, ...], outcome: StreamOutcome,
                       echo: bool = False) -> AsyncIterator[str]:
    """The generated text of a core stream (prompt first, then pieces), cut at the first stop sequence."""
    cutter = StopCutter(stops)
    first = True
    async for piece in chunks:
        if isinstance(piece, StreamEnd):
            outcome.finish = finish_reason(piece.finish_reason, False)
            outcome.prompt_tokens, outcome.completion_tokens = piece.prompt_tokens, piece.generated_tokens
            continue
        if first:  # the core streams the prompt first
            first = False
            if echo:
                yield piece
            continue
        if text := cutter.feed(piece):
            yield text
    if rest := cutter.flush():
        yield rest
    if cutter.stopped:
        outcome.finish = "stop"


class OpenAIRoutes:
    """The OpenAI routes over the served models."""

    def __init__(self, models: Mapping[str, TransformersModel]) -> None:
        self.models = models
        self.created = int(time.time())

    async def list_models(self) -> dict[str, Any]:
        """The served model names, OpenAI style."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                            "owned_by": "predictor"} for name in self.models]}

    def model(self, name: str) -> TransformersModel:
        """The named model, or model_not_found (404)."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"The model {name!r} does not exist (served: {sorted(self.models)})")
        return model

    @staticmethod
    def parameters(model: TransformersModel, request: GenerationRequest, default_tokens: int) -> dict[str, Any]:
        """The core's generation parameters; max_tokens over the server's cap is a 400 naming it."""
        budget = request.token_budget(default_tokens)
        cap = model.handler.config.handler.max_new_tokens_limit
        if budget > cap:
            param = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
            raise OpenAIParameterError(f"{param}: {budget} exceeds this server's limit of {cap}", param)
        return request.parameters(budget)

    @classmethod
    def instance(cls, model: TransformersModel, prompt: str, request: GenerationRequest,
                 default_tokens: int) -> Instance:
        """The core's instance for one text prompt."""
        parameters = cls.parameters(model, request, default_tokens)
        return model.handler.parse({"text": prompt, "parameters": parameters, "details": True})

    async def completions(self, raw: Request) -> Response:
        """A completion, or server-sent events of its pieces when stream is true."""
        try:
            request = parse_request(CompletionRequest, await raw.body())
            model = self.model(request.model)
            queue = model.inference_queue
            prompt = request.single_prompt()
            instances = [self.instance(model, prompt, request, COMPLETION_MAX_TOKENS) for _ in range(request.n)]
            cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
            if request.stream:
                chunks = await queue.open_stream(instances[0])  # overload and timeouts answered before the 200
                return StreamingResponse(self._events(chunks, cid, created, request), media_type="text/event-stream")
            results = await queue.predict(instances)
        except PredictorError as exc:
            return openai_response(exc)
        choices = []
        for index, result in enumerate(results):
            text, hit = cut_at_stop(result["continuation"], request.stops())
            if request.echo:
                text = result["generated_text"][: len(result["generated_text"]) - len(result["continuation"])] + text
            choices.append({"index": index, "text": text, "logprobs": None,
                            "finish_reason": finish_reason(result["finish_reason"], hit)})
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": request.model, "choices": choices,
            "usage": usage(results[0]["prompt_tokens"], sum(r["generated_tokens"] for r in results)),
        })

    @staticmethod
    async def _events(chunks: AsyncIterator[str | StreamEnd], cid: str, created: int,
                      request: CompletionRequest) -> AsyncIterator[bytes]:
        head = {"id": cid, "object": "text_completion", "created": created, "model": request.model}
        extra = {"usage": None} if request.include_usage else {}
        outcome = StreamOutcome()
        async for text in continuation(chunks, request.stops(), outcome, echo=request.echo):
            yield sse({**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}],
                       **extra})
        yield sse({**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": outcome.finish}],
                   **extra})
        if request.include_usage:
            yield sse({**head, "choices": [], "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)})
        yield b"data: [DONE]\n\n"
