"""OpenAI chat completions, POST /openai/v1/chat/completions: the messages rendered by the tokenizer's
chat template (`apply_chat_template`), then generated as a completion is, streamed or not."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from predictor.errors import PredictorError
from predictor.serving.error_table import openai_response
from predictor.serving.openai import (
    PREFIX,
    GenerationRequest,
    OpenAIParameterError,
    OpenAIRoutes,
    StreamOutcome,
    continuation,
    cut_at_stop,
    finish_reason,
    parse_request,
    sse,
    unsupported,
    usage,
)
from predictor.serving.kserve_model import TransformersModel
from predictor.tasks import StreamEnd


class TextPart(BaseModel):
    """A text content part (images and audio are not for a text model)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; tool calls and tool results are refused (extra="forbid", role)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_input(self) -> dict[str, Any]:
        """{"role", "content"} as chat templates read it (text parts joined)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name:
            message["name"] = self.name
        return message


class ResponseFormat(BaseModel):
    """Only plain text: no JSON mode or schema-constrained decoding here."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ChatRequest(GenerationRequest):
    """OpenAI's chat completion request, as far as a Transformers model can honour it."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None

    def check_supported(self) -> None:
        """Also: no logprobs; max_tokens and max_completion_tokens agree when both are given."""
        super().check_supported()
        if self.logprobs:
            raise unsupported("logprobs")
        if self.top_logprobs is not None:
            raise unsupported("top_logprobs")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise OpenAIParameterError("max_tokens and max_completion_tokens differ; send one of them",
                                       "max_completion_tokens")

    def token_budget(self, default: int) -> int:
        """max_completion_tokens, else max_tokens, else the model's configured max_new_tokens."""
        return self.max_completion_tokens or self.max_tokens or default


class ChatRoutes(OpenAIRoutes):
    """Completions, models, and chat completions."""

    async def chat_completions(self, raw: Request) -> Response:
        """A chat completion, or server-sent chunks of it when stream is true."""
        try:
            request = parse_request(ChatRequest, await raw.body())
            model = self.model(request.model)
            queue = model.inference_queue
            parameters = self.parameters(model, request, model.handler.config.handler.max_new_tokens)
            instance = model.handler.parse_chat([m.as_template_input() for m in request.messages], parameters)
            instances = [instance] * request.n
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            if request.stream:
                chunks = await queue.open_stream(instances[0])  # overload and timeouts answered before the 200
                return StreamingResponse(self._chat_events(chunks, cid, created, request),
                                         media_type="text/event-stream")
            results = await queue.predict(instances)
        except PredictorError as exc:
            return openai_response(exc)
        choices = []
        for index, result in enumerate(results):
            text, hit = cut_at_stop(result["continuation"], request.stops())
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": finish_reason(result["finish_reason"], hit)})
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": request.model, "choices": choices,
            "usage": usage(results[0]["prompt_tokens"], sum(r["generated_tokens"] for r in results)),
        })

    @staticmethod
    async def _chat_events(chunks: AsyncIterator[str | StreamEnd], cid: str, created: int,
                           request: ChatRequest) -> AsyncIterator[bytes]:
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": request.model}
        extra = {"usage": None} if request.include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                        **extra})

        outcome = StreamOutcome()
        yield chunk({"role": "assistant", "content": ""})
        async for text in continuation(chunks, request.stops(), outcome):
            yield chunk({"content": text})
        yield chunk({}, outcome.finish)
        if request.include_usage:
            yield sse({**head, "choices": [], "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)})
        yield b"data: [DONE]\n\n"


def register_openai_routes(app: FastAPI, models: Mapping[str, TransformersModel]) -> None:
    """kserve's OpenAI paths (completions, chat completions, models), for text-generation models."""
    routes = ChatRoutes(models)
    app.add_api_route(PREFIX + "/completions", routes.completions, methods=["POST"], tags=["OpenAI"])
    app.add_api_route(PREFIX + "/chat/completions", routes.chat_completions, methods=["POST"], tags=["OpenAI"])
    app.add_api_route(PREFIX + "/models", routes.list_models, methods=["GET"], tags=["OpenAI"])
