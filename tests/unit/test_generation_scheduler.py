"""Greedy generations decoded together: a short one does not wait for a long one, a new one joins a
running batch, and every answer is what model.generate gives the request alone."""

from __future__ import annotations

import asyncio
from typing import Any

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
