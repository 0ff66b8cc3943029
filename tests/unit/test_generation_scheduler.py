"""Greedy generations decoded together: a short one does not wait for a long one, a new one joins a
running batch, and every answer is what model.generate gives the request alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from predictor.handler import GeneralizedHandler
from predictor.serving.batcher import InferenceQueue
from predictor.tasks import StreamEnd

SHORT, LONG = 2, 40  # the tiny GPT-2 has a 64-token context (max_length 64)
PROMPTS = ["Once upon a time", "The weather today is", "A", "the cat sat on the mat and then the dog"]


def greedy(handler: GeneralizedHandler, prompt: str, n: int, **params: Any) -> Any:
    return handler.parse({"text": prompt, "details": True,
                          "parameters": {"do_sample": False, "max_new_tokens": n, **params}})


def direct(handler: GeneralizedHandler, prompt: str, n: int) -> str:
    """The prompt and its continuation as model.generate makes them for the prompt alone."""
    task = handler.state.task
    ids = task.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = task.model.module.generate(**ids, max_new_tokens=n, do_sample=False,
                                         pad_token_id=task.tokenizer.pad_token_id)
    return str(task.tokenizer.decode(out[0], skip_special_tokens=True))


def test_mixed_budgets_and_stops_in_one_call_answer_as_generate_does_alone(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    budgets = [SHORT, LONG, 7, LONG - 1]
    answers = handler.predict([greedy(handler, p, n) for p, n in zip(PROMPTS, budgets, strict=True)])
    for prompt, n, answer in zip(PROMPTS, budgets, answers, strict=True):
        assert answer["generated_text"] == direct(handler, prompt, n)
    [stopped] = handler.predict([greedy(handler, PROMPTS[1], LONG, stop=[answers[1]["continuation"][3:6]])])
    assert stopped["finish_reason"] == "stop" and stopped["generated_tokens"] < LONG, stopped


def test_a_short_generation_finishes_before_the_long_ones_it_runs_with(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=60, workers=1)

    async def together() -> tuple[list[bool], list[Any]]:
        budgets = [LONG, SHORT, LONG, SHORT]
        tasks = [asyncio.ensure_future(queue.predict([greedy(handler, p, n)]))
                 for p, n in zip(PROMPTS, budgets, strict=True)]
        await asyncio.wait([tasks[1], tasks[3]], return_when=asyncio.ALL_COMPLETED)
        long_done = [tasks[0].done(), tasks[2].done()]
        return long_done, [a[0] for a in await asyncio.gather(*tasks)]

    try:
        long_done, answers = asyncio.run(together())
    finally:
        queue.shutdown()
    assert long_done == [False, False]
    assert [a["generated_tokens"] for a in answers] == [LONG, SHORT, LONG, SHORT]
    for prompt, n, answer in zip(PROMPTS, [LONG, SHORT, LONG, SHORT], answers, strict=True):
        assert answer["generated_text"] == direct(handler, prompt, n)


def test_a_stream_joins_a_running_one_and_ends_first(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=60, workers=1)
    ends: list[str] = []  # which stream ended, in order

    async def read(chunks: Any, name: str, joined: asyncio.Event | None = None) -> list[Any]:
        got = []
        async for chunk in chunks:
            got.append(chunk)
            if joined is not None and len(got) == 2:  # the echo and a first piece: decoding has begun
                joined.set()
        ends.append(name)
        return got

    async def streams() -> tuple[list[Any], list[Any]]:
        started = asyncio.Event()
        long = asyncio.ensure_future(read(await queue.open_stream(greedy(handler, PROMPTS[0], LONG)), "long",
                                          started))
        await started.wait()
        short = await read(await queue.open_stream(greedy(handler, PROMPTS[3], SHORT)), "short")
        return await long, short

    try:
        long_chunks, short_chunks = asyncio.run(streams())
    finally:
        queue.shutdown()
    assert ends == ["short", "long"]
    for chunks, prompt, n in ((long_chunks, PROMPTS[0], LONG), (short_chunks, PROMPTS[3], SHORT)):
        assert isinstance(chunks[-1], StreamEnd) and chunks[-1].generated_tokens == n
        assert "".join(c for c in chunks[:-1]) == direct(handler, prompt, n)


# ---- the engine alone, on tiny random models of two families --------------------------------------
EOS = 3


def tiny_lm(family: str) -> Any:
    """A 2-layer causal LM of the family (random weights, 40-token vocabulary)."""
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                         eos_token_id=EOS, bos_token_id=EOS, initializer_range=0.5)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                      max_position_embeddings=128, eos_token_id=EOS, bos_token_id=1,
                                      initializer_range=0.5)
    return transformers.LlamaForCausalLM(config).eval()


class Collect:
    """A GenerationListener that keeps what it is told."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finish: str | None = None

    def started(self, enc: Any) -> None: ...

    def token(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def finished(self, new_ids: list[int], finish: str) -> None:
        self.finish = finish

    def failed(self, exc: BaseException) -> None:
        raise exc


def engine(model: Any) -> Any:
    from predictor.tasks.generation_scheduler import GenerationScheduler

    def finished(row: Any) -> str | None:
        if row.new_ids[-1] == EOS:
            return "eos"
        return "length" if len(row.new_ids) >= row.params.max_new_tokens else None

    return GenerationScheduler(model, lambda instances: [], finished)


def submit(scheduler: Any, prompt: list[int], n: int) -> Collect:
    from predictor.tasks.base import Encoded, GenerationParams, Instance

    listener = Collect()
    rows = [{"input_ids": prompt, "attention_mask": [1] * len(prompt)}]
    enc = Encoded(Instance(text="", prompt_ids=tuple(prompt)), rows)
    scheduler.submit(enc.instance, GenerationParams(max_new_tokens=n, do_sample=False), listener, enc)
    return listener


def alone(model: Any, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return [int(t) for t in out[0, len(prompt):]]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rows_joining_and_leaving_at_every_point_decode_as_generate_does_alone(family: str) -> None:
    model = tiny_lm(family)
    scheduler = engine(model)
    # (step at which it arrives, prompt, max_new_tokens): arrivals together, a prompt longer than the running
    # batch, rows leaving first, last and in the middle, a row joining after others have left.
    plan = [(0, [5, 6, 7], 12), (0, [8, 9], 3), (0, [10, 11, 12, 13], 7), (2, [14] * 20, 9),
            (4, [15, 16], 1), (6, [17, 18, 19, 20, 21], 15), (6, [22], 5), (13, [23, 24, 25], 6)]
    listeners: list[tuple[list[int], int, Collect]] = []
    for step in range(40):
        listeners += [(p, n, submit(scheduler, p, n)) for at, p, n in plan if at == step]
        scheduler.step()
    assert not scheduler.has_work
    for prompt, n, got in listeners:
        assert got.finish is not None and got.tokens == alone(model, prompt, n), (prompt, n)


def test_arrivals_of_one_step_are_prefilled_in_one_forward_pass() -> None:
    model = tiny_lm("gpt2")
    scheduler = engine(model)
    calls: list[tuple[int, ...]] = []
    def count(module: Any, args: Any, kwargs: Any, out: Any) -> None:
        calls.append(tuple(kwargs["input_ids"].shape))

    model.register_forward_hook(count, with_kwargs=True)
    for prompt in ([5, 6, 7], [8, 9], [10, 11, 12, 13]):
        submit(scheduler, prompt, 10)
    scheduler.step()
    assert calls == [(3, 4), (3, 1)]  # one prefill of the three (left padded to 4), one decoding step


def test_a_decoding_step_writes_into_the_cache_it_has_instead_of_copying_it() -> None:
    model = tiny_lm("llama")
    scheduler = engine(model)
    for prompt in ([5, 6, 7], [8, 9]):
        submit(scheduler, prompt, 60)
    scheduler.step()
    shared = 0
    for _ in range(50):
        before = scheduler._cache.layers[0].keys  # kept alive: a copy could not reuse its memory
        scheduler.step()
        shared += scheduler._cache.layers[0].keys.data_ptr() == before.data_ptr()
    assert shared >= 45  # only a few steps grow the storage


def test_the_cache_storage_stays_near_what_the_batch_uses_and_shrinks_when_rows_leave() -> None:
    from predictor.tasks.generation_scheduler import GenerationScheduler

    scheduler = GenerationScheduler(tiny_lm("gpt2"), lambda instances: [],
                                    lambda row: "length" if len(row.new_ids) >= row.params.max_new_tokens else None)
    for k in range(16):  # two long rows; fourteen that leave after 10 tokens
        submit(scheduler, [5 + k % 7] * (3 + k % 5), 100 if k < 2 else 10)
    seen = []  # (rows used, rows held, columns used, columns held) after every step
    while scheduler.has_work:
        scheduler.step()
        if scheduler._cache is not None:
            layer = scheduler._cache.layers[0]
            seen.append((layer.rows, layer._k.shape[0], layer.end - layer.start, layer._k.shape[2]))
    assert seen[-1][0] == 2, seen[-1]
    for rows, held_rows, columns, held_columns in seen:
        assert held_rows <= 1.5 * rows + 8 and held_columns <= 1.5 * columns + 64, seen


def test_only_a_task_that_schedules_generations_takes_one(handlers: dict[str, GeneralizedHandler]) -> None:
    from predictor.errors import InvalidRequestError

    generator, classifier = handlers["text_generation"], handlers["sequence_classification"]
    assert generator.schedules(greedy(generator, PROMPTS[0], SHORT))
    instance = classifier.parse("a sentence")
    assert not classifier.schedules(instance)
    with pytest.raises(InvalidRequestError, match="does not schedule generations"):
        classifier.submit_generation(instance, lambda item: None, stream=False)
    assert classifier.generation_waiting == 0 and not classifier.generation_pending
    classifier.drive_generation()  # nothing to decode: returns at once
