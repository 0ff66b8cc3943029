"""text_generation: the prompt and its continuation, batched (left padding) or streamed."""

from __future__ import annotations

import dataclasses
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from predictor.config import TaskName
from predictor.errors import InvalidRequestError
from predictor.tasks.base import (
    Encoded,
    Explanation,
    GenerationParams,
    Instance,
    Prediction,
    StreamEnd,
    TaskBase,
    check_text,
    details_flag,
    finite_number,
    n_steps_field,
    text_field,
)
from predictor.tasks.generation_scheduler import (
    GenerationScheduler,
    NotBatchableError,
    all_done,
    greedy_is_argmax,
    mergeable_cache,
)
from predictor.tasks.targets import parse_text_target

# Receives what a scheduled generation produces, on the decoding thread: the answer (or, streamed,
# the echo, text pieces and a StreamEnd), or the exception that ended it.
Emit = Callable[[Any], None]


class StopInContinuation:
    """Stops a row once its generated text (never the prompt) contains a stop string.

    transformers' own `stop_strings` also match across the end of the prompt, stopping a
    generation after one token when the prompt ends with the start of a stop string.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class TokenStreamer(TextIteratorStreamer):  # type: ignore[misc]
    """A TextIteratorStreamer that hands out each token's text as soon as it is whole characters.

    transformers' own streamer holds text back until a space (or a newline) arrives, so a continuation
    without one (code, many scripts, small models) only arrived at the very end. Incremental decoding
    with a prefix window (as text-generation-inference does) keeps each step O(1) and holds back only an
    incomplete UTF-8 sequence (U+FFFD) or a run of byte-fallback tokens (`<0xE2>`): SentencePiece's
    decoder reads a run as one byte string, so a later invalid byte turns the earlier ones into U+FFFD
    too. The pieces concatenate to the continuation as the whole sequence decodes it.
    """

    def __init__(self, tokenizer: Any, prompt_tail: Sequence[int] = (), byte_ids: frozenset[int] = frozenset()) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.byte_ids = byte_ids
        # The prompt's last tokens start the prefix window: a SentencePiece token decoded alone loses
        # its leading space ("▁word" -> "word"), decoded after its predecessor it keeps it.
        self.token_cache = list(prompt_tail)
        self.window = (0, len(self.token_cache))  # (prefix start, read offset) into token_cache

    def _pending(self) -> tuple[str, str]:
        start, read = self.window
        return (self.tokenizer.decode(self.token_cache[start:read], **self.decode_kwargs),
                self.tokenizer.decode(self.token_cache[start:], **self.decode_kwargs))

    def put(self, value: torch.Tensor) -> None:
        """Called by generate() with the prompt, then with each new token."""
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        if self.token_cache[-1] in self.byte_ids:
            return
        seen, text = self._pending()
        if len(text) > len(seen) and not text.endswith("\ufffd"):
            self.on_finalized_text(text[len(seen):])
            self.window = (self.window[1], len(self.token_cache))

    def end(self) -> None:
        """Called by generate() at the end: whatever is left, then the stop signal."""
        seen, text = self._pending()
        self.token_cache, self.window, self.next_tokens_are_prompt = [], (0, 0), True
        self.on_finalized_text(text[len(seen):] if len(text) > len(seen) else "", stream_end=True)


class StopWhenCancelled:
    """Stops each row whose request was given up (timed out, client gone) at its next token."""

    def __init__(self, instances: Sequence[Instance]) -> None:
        self.instances = list(instances)
        self._none: torch.Tensor | None = None  # the answer while nothing is cancelled, made once

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        flags = [i.cancelled for i in self.instances]
        if any(flags):
            return torch.tensor(flags, device=input_ids.device)
        if self._none is None:
            self._none = torch.zeros(len(flags), dtype=torch.bool, device=input_ids.device)
        return self._none


class _EmittingStreamer(TokenStreamer):
    """A TokenStreamer that hands each piece to a callback instead of its queue."""

    def __init__(self, emit: Emit, *args: Any) -> None:
        super().__init__(*args)
        self.emit = emit
        self.next_tokens_are_prompt = False  # fed generated tokens only

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """A piece of whole characters (never empty), passed on."""
        if text:
            self.emit(text)


class _Answer:
    """Listens to one scheduled generation and emits its answer (or, streamed, its chunks) when due."""

    def __init__(self, task: TextGenerationTask, params: GenerationParams, emit: Emit, stream: bool) -> None:
        self.task, self.params, self.emit, self.stream = task, params, emit, stream
        self.enc: Encoded | None = None
        self.streamer: _EmittingStreamer | None = None

    def started(self, enc: Encoded) -> None:
        """The prompt is encoded: a stream sends its echo first."""
        self.enc = enc
        if self.stream:
            ids = enc.rows[0]["input_ids"]
            self.streamer = _EmittingStreamer(self.emit, self.task.tokenizer.shared, ids[-_PROMPT_TAIL:],
                                              self.task.byte_ids)
            self.emit(self.task._echo(enc))

    def token(self, token_id: int) -> None:
        """A new token: a stream sends its text once it is whole characters."""
        if self.streamer is not None:
            self.streamer.put(torch.tensor([token_id]))

    def finished(self, new_ids: list[int], finish: str) -> None:
        """The answer, or the rest of the stream and its StreamEnd."""
        assert self.enc is not None  # started() comes first
        if self.streamer is None:
            self.emit(self.task._answer(self.enc, new_ids, self.params))
            return
        self.streamer.end()
        kept, finish = self.task._finish(new_ids, self.params)
        self.emit(StreamEnd(finish_reason=finish, generated_tokens=len(kept),
                            prompt_tokens=len(self.enc.rows[0]["input_ids"])))

    def failed(self, exc: BaseException) -> None:
        """The exception, in place of what was due."""
        self.emit(exc)


# Prompt tokens that open a stream's decoding window (enough context for any decoder's spacing).
_PROMPT_TAIL = 4

_SAMPLING = threading.Lock()


@contextmanager
def sampling_rng(params: GenerationParams) -> Iterator[None]:
    """torch's global RNG for one sampling generation, seeded when the request asks.

    Sampling draws from torch's one process-wide generator (generate() takes no generator of its
    own), so generations that sample take turns: a seeded request stays reproducible while other
    model workers generate. Greedy generations draw nothing and run side by side.
    """
    if not params.do_sample:
        yield
        return
    with _SAMPLING:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        yield


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_fallback_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of SentencePiece byte-fallback tokens (`<0x00>`..`<0xFF>`); empty for other vocabularies."""
    return frozenset(i for token, i in tokenizer.get_vocab().items() if _BYTE_TOKEN.fullmatch(token))


def end_of_sequence_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a generation: the generation config's (one id or a list) and the tokenizer's."""
    configured = getattr(getattr(model.module, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if isinstance(i, int))


_PARAMS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed", "stop"}
_MAX_STOPS = 8


class TextGenerationTask(TaskBase):
    """TorchServe answer: prompt + generated text.

    Sampled with TorchServe's handler defaults (top_p 0.95, top_k 60).
    """

    name = TaskName.TEXT_GENERATION
    padding_side = "left"  # every row continues from its last token

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eos_ids = end_of_sequence_ids(self.model, self.tokenizer)
        self.byte_ids = byte_fallback_ids(self.tokenizer)
        module = self.model.module
        self.scheduler: GenerationScheduler | None = None
        if isinstance(module, torch.nn.Module) and hasattr(module, "generate") and greedy_is_argmax(module) \
                and mergeable_cache(module):
            self.scheduler = GenerationScheduler(module, self.encode, self._row_finished)

    def schedules(self, instance: Instance) -> bool:
        """True when the scheduler decodes this request (greedy, on a model whose cache it can merge)."""
        params = instance.generation or self.default_params()
        return self.scheduler is not None and not params.do_sample

    def submit(self, instance: Instance, emit: Emit, *, stream: bool, enc: Encoded | None = None) -> None:
        """Queue a greedy request in the scheduler; `emit` gets its answer or its chunks (see Emit)."""
        assert self.scheduler is not None
        params = instance.generation or self.default_params()
        self.scheduler.submit(instance, params, _Answer(self, params, emit, stream), enc)

    def _row_finished(self, row: Any) -> str | None:
        """Why a scheduled row stops after its latest token (the reason _finish reports), or None."""
        new_ids, params = row.new_ids, row.params
        if new_ids[-1] in self.eos_ids:
            return "eos"
        if params.stop and any(s in self.tokenizer.shared.decode(new_ids, skip_special_tokens=True)
                               for s in params.stop):
            return "stop"
        return "length" if len(new_ids) >= params.max_new_tokens else None

    def default_params(self) -> GenerationParams:
        """The sampling defaults of TorchServe's handler, with the configured token budget."""
        return GenerationParams(max_new_tokens=self.handler.max_new_tokens)

    def parse(self, raw: Any) -> Instance:
        """A prompt string, or {"text"|"prompt": ..., "parameters": {...}, "details": bool}."""
        value = self.parse_object(raw)
        limit = self.config.limits.max_text_chars
        if isinstance(value, str):
            value = {"text": value}
        params = value.get("parameters", {})
        if not isinstance(params, Mapping):
            raise InvalidRequestError(f"field 'parameters': expected an object, got {type(params).__name__}")
        instance = Instance(
            text=check_text(text_field(value), limit, "prompt"),
            details=details_flag(value, self.handler.details),
            generation=self.parse_params(params),
            target=parse_text_target(value.get("target")),
            n_steps=n_steps_field(value, self.handler.max_explain_steps),
        )
        self.check_context(instance)
        return instance

    @property
    def context_size(self) -> int | None:
        """How many positions the model can attend to (None when its config does not say)."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(getattr(config, key, None), int):
                return int(getattr(config, key))
        return None

    def check_context(self, instance: Instance) -> None:
        """Prompt (after truncation to max_length) plus max_new_tokens must fit the model's context."""
        context = self.context_size
        if context is None or instance.generation is None:
            return
        ids = instance.prompt_ids or self.tokenizer(instance.text)["input_ids"]
        prompt = min(len(ids), self.handler.max_length)
        if prompt + instance.generation.max_new_tokens > context:
            raise InvalidRequestError(f"prompt ({prompt} tokens) + max_new_tokens "
                                      f"({instance.generation.max_new_tokens}) exceed the model's context of "
                                      f"{context} tokens")

    def parse_params(self, raw: Mapping[str, Any]) -> GenerationParams:
        """Validate per-request generation parameters against the server caps."""
        if unknown := set(raw) - _PARAMS:
            raise InvalidRequestError(f"unknown generation parameter(s) {sorted(unknown)}; allowed: {sorted(_PARAMS)}")
        params = self.default_params()
        cap = self.handler.max_new_tokens_limit
        updates: dict[str, Any] = {}
        if "max_new_tokens" in raw:
            value = raw["max_new_tokens"]
            updates["max_new_tokens"] = self._int_param("max_new_tokens", value, 1, cap)
        if "do_sample" in raw:
            if not isinstance(raw["do_sample"], bool):
                raise InvalidRequestError(f"parameter 'do_sample': expected true or false, got {raw['do_sample']!r}")
            updates["do_sample"] = raw["do_sample"]
        if "temperature" in raw:
            updates["temperature"] = finite_number("temperature", raw["temperature"], 1e-3, 100.0)
        if "top_p" in raw:
            updates["top_p"] = finite_number("top_p", raw["top_p"], 1e-6, 1.0)
        if "top_k" in raw:
            updates["top_k"] = self._int_param("top_k", raw["top_k"], 0, 10_000)
        if "seed" in raw:
            updates["seed"] = self._int_param("seed", raw["seed"], 0, 2**63 - 1)
        if "stop" in raw:
            updates["stop"] = self._parse_stop(raw["stop"])
        return replace(params, **updates)

    @staticmethod
    def _int_param(name: str, value: Any, low: int, high: int) -> int:
        if type(value) is not int or not low <= value <= high:
            raise InvalidRequestError(f"parameter {name!r}: expected an integer in [{low}, {high}], got {value!r}")
        return value

    @staticmethod
    def _parse_stop(value: Any) -> tuple[str, ...]:
        stops = [value] if isinstance(value, str) else value
        if (not isinstance(stops, list) or len(stops) > _MAX_STOPS
                or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stops)):
            raise InvalidRequestError(f"parameter 'stop': expected up to {_MAX_STOPS} non-empty strings "
                                      f"(at most 64 characters), got {value!r}")
        return tuple(stops)

    def encode(self, batch: Sequence[Instance]) -> list[Encoded]:
        """Tokenise prompts, keeping the last max_length tokens of an over-long prompt."""
        texts = [i.text for i in batch if i.prompt_ids is None]
        full = iter(self.tokenizer(texts)["input_ids"] if texts else [])
        enc = iter(self.tokenizer(texts, truncation=True, max_length=self.handler.max_length)["input_ids"]
                   if texts else [])
        out = []
        for instance in batch:
            if instance.prompt_ids is None:
                whole, ids = len(next(full)), next(enc)
            else:
                whole, ids = len(instance.prompt_ids), list(instance.prompt_ids[-self.handler.max_length:])
            out.append(Encoded(instance=instance, rows=[{"input_ids": ids, "attention_mask": [1] * len(ids)}],
                               truncated=whole > len(ids)))
        return out

    def parse_chat(self, messages: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any]) -> Instance:
        """A conversation -> the prompt the tokenizer's chat template makes of it, ready for the assistant's turn.

        The template's own control tokens are special; the same strings typed inside a message are text
        (`sanitize_control_tokens`), so a user cannot open a system turn.
        """
        from jinja2 import TemplateError  # what transformers renders chat templates with

        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError("this model's tokenizer has no chat template, so it cannot take chat messages; "
                                      "send a text prompt instead")
        try:
            ids = self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True,
                                                     sanitize_control_tokens=True, return_dict=False)
        except (TemplateError, ValueError, TypeError, KeyError) as exc:  # e.g. the template's "roles must alternate"
            raise InvalidRequestError(f"messages: the model's chat template refused them: {exc}") from exc
        if not ids:
            raise InvalidRequestError("messages: the chat template made an empty prompt of them")
        instance = Instance(text=self.tokenizer.decode(ids), prompt_ids=tuple(ids), details=True,
                            generation=self.parse_params(parameters))
        self.check_context(instance)
        return instance

    def _generate_kwargs(self, params: GenerationParams, prompt_len: int,
                         instances: Sequence[Instance]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": params.do_sample,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        criteria: list[Any] = []
        if params.stop:
            criteria.append(StopInContinuation(self.tokenizer, params.stop, prompt_len))
        if any(i.cancel is not None for i in instances):
            criteria.append(StopWhenCancelled(instances))
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        return kwargs

    def _inputs(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        device = self.model.device
        return {k: v.to(device) for k, v in self.pad([e.rows[0] for e in batch]).items() if k != "token_type_ids"}

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """Generate for a batch; items with different parameters (or a seed) are generated apart."""
        groups: dict[Any, list[int]] = {}
        for n, enc in enumerate(batch):
            params = enc.instance.generation or self.default_params()
            key = (params, n) if params.seed is not None else params  # a seeded request is reproducible alone
            groups.setdefault(key, []).append(n)
        results: list[Prediction] = [None] * len(batch)
        for indices in groups.values():
            items = [batch[n] for n in indices]
            answers = self._scheduled(items) if self.schedules(items[0].instance) else None
            for n, result in zip(indices, answers or self._generate(items), strict=True):
                results[n] = result
        return results

    def _scheduled(self, batch: Sequence[Encoded]) -> list[Prediction] | None:
        """Answers through the scheduler, once its decoding thread has finished them; None when the
        model's cache cannot be batched (the scheduler is then switched off and generate() answers)."""
        assert self.scheduler is not None
        answers: list[Any] = [None] * len(batch)
        done = [threading.Event() for _ in batch]

        def receiver(n: int) -> Emit:
            return lambda answer: (answers.__setitem__(n, answer), done[n].set())

        for n, enc in enumerate(batch):
            self.submit(enc.instance, receiver(n), stream=False, enc=enc)
        self.scheduler.wait(all_done(done))
        if any(isinstance(a, NotBatchableError) for a in answers):
            self.scheduler = None
            return None
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    def _generate(self, batch: Sequence[Encoded]) -> list[Prediction]:
        params = batch[0].instance.generation or self.default_params()
        inputs = self._inputs(batch)
        prompt_len = inputs["input_ids"].shape[1]
        with sampling_rng(params), torch.inference_mode():
            out = self.model.module.generate(**inputs, **self._generate_kwargs(
                params, prompt_len, [e.instance for e in batch]))
        return [self._answer(enc, out[n, prompt_len:].tolist(), params) for n, enc in enumerate(batch)]

    def _finish(self, new_ids: list[int], params: GenerationParams) -> tuple[list[int], str]:
        """The generated ids up to the first end-of-sequence id, and why generation ended (eos, stop or length)."""
        finish = "length"
        end = next((n for n, token in enumerate(new_ids) if token in self.eos_ids), None)
        if end is not None:
            new_ids = new_ids[: end + 1]
            finish = "eos"
        if params.stop and any(s in self.tokenizer.decode(new_ids, skip_special_tokens=True) for s in params.stop):
            finish = "stop"
        return new_ids, finish

    def _echo(self, enc: Encoded) -> str:
        """The prompt as the answer starts with it: the user's own text when the model saw only its tail."""
        if enc.truncated:
            return enc.instance.text
        return self.tokenizer.decode(enc.rows[0]["input_ids"], skip_special_tokens=True)

    def _continuation(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        """The generated text as the whole sequence decodes it (pieces decoded apart lose or double spaces)."""
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        whole = self.tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
        if whole.startswith(prompt):
            return whole[len(prompt):]
        return self.tokenizer.decode(new_ids, skip_special_tokens=True)  # a decoder that rewrites the prompt

    def _answer(self, enc: Encoded, new_ids: list[int], params: GenerationParams) -> Prediction:
        new_ids, finish = self._finish(new_ids, params)
        continuation = self._continuation(enc.rows[0]["input_ids"], new_ids)
        text = self._echo(enc) + continuation  # equals the concatenation of the streamed chunks
        if not enc.instance.details:
            return text
        return {"generated_text": text, "continuation": continuation, "prompt_tokens": len(enc.rows[0]["input_ids"]),
                "generated_tokens": len(new_ids), "finish_reason": finish, "truncated": enc.truncated}

    def stream(self, instance: Instance) -> Iterator[str | StreamEnd]:
        """The answer as it is generated: the prompt first, then text pieces, then a StreamEnd.

        The text pieces concatenate to the non-streamed answer.
        """
        if self.schedules(instance):
            yield from self._stream_scheduled(instance)
            return
        enc = self.encode([instance])[0]
        params = instance.generation or self.default_params()
        # Decoding only: the shared tokenizer, so this short-lived thread needs no copy of its own.
        streamer = TokenStreamer(self.tokenizer.shared, enc.rows[0]["input_ids"][-_PROMPT_TAIL:], self.byte_ids)
        inputs = self._inputs([enc])
        prompt_len = inputs["input_ids"].shape[1]
        failure: list[BaseException] = []
        output: list[torch.Tensor] = []
        threads = torch.get_num_threads()  # this worker's share of the cores, set per thread

        def generate() -> None:
            torch.set_num_threads(threads)
            try:
                with sampling_rng(params), torch.inference_mode():
                    output.append(self.model.module.generate(
                        **inputs, **self._generate_kwargs(params, prompt_len, [instance]), streamer=streamer))
            except BaseException as exc:  # re-raised in the consumer below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, name="predictor-generate", daemon=True)
        worker.start()
        yield self._echo(enc)
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if failure:
            raise failure[0]
        new_ids, finish = self._finish(output[0][0, prompt_len:].tolist(), params)
        yield StreamEnd(finish_reason=finish, generated_tokens=len(new_ids), prompt_tokens=prompt_len)

    def _stream_scheduled(self, instance: Instance) -> Iterator[str | StreamEnd]:
        assert self.scheduler is not None
        if instance.cancel is None:  # so that closing this generator stops the row
            instance = dataclasses.replace(instance, cancel=threading.Event())
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.submit(instance, chunks.put, stream=True)
        ended = False
        try:
            while not ended:
                self.scheduler.wait(lambda: not chunks.empty())
                item = chunks.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = isinstance(item, StreamEnd)
                yield item
        finally:
            if not ended and instance.cancel is not None:
                instance.cancel.set()  # the consumer stopped early: free the row

    def explain(self, instance: Instance) -> Explanation:
        """Attributions of the prompt tokens to the generated continuation."""
        from predictor.explain import explain_text_generation

        return explain_text_generation(self, instance)

    def sample_input(self) -> Any:
        """Warm-up input."""
        return {"text": "Hello", "parameters": {"max_new_tokens": 2, "do_sample": False}}
