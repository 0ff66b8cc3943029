"""Model workers: forward passes side by side on one copy of the weights, a burst shared among them,
the same answers as one worker, and an uncontended batch's thread count chosen by measurement (every
core on the all-cores thread, the one that also runs explanations)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from predictor.errors import InferenceTimeoutError
from predictor.handler import GeneralizedHandler
from predictor.serving.batcher import InferenceQueue

TEXTS = [f"{word} review number {n}, " * (1 + n % 5) for n, word in enumerate(["great", "awful", "fine"] * 8)]


@contextmanager
def observed(handler: GeneralizedHandler) -> Iterator[list[tuple[str, int, float, float]]]:
    """(thread, batch size, start, end) of every forward pass the handler runs meanwhile."""
    passes: list[tuple[str, int, float, float]] = []
    lock = threading.Lock()

    def observe(size: int, real: int, padded: int, seconds: float) -> None:
        end = time.perf_counter()
        with lock:
            passes.append((threading.current_thread().name, size, end - seconds, end))

    previous, handler.observer = handler.observer, observe
    try:
        yield passes
    finally:
        handler.observer = previous


def request(handler: GeneralizedHandler, text: str) -> Any:
    if handler.mode.value == "text_generation":  # greedy, so that answers can be compared
        return handler.parse({"text": text, "parameters": {"do_sample": False, "max_new_tokens": 8}})
    return handler.parse(text)


async def burst(queue: InferenceQueue, handler: GeneralizedHandler, texts: list[str]) -> list[Any]:
    answers = await asyncio.gather(*(queue.predict([request(handler, t)]) for t in texts))
    return [a[0] for a in answers]


def test_a_burst_is_shared_among_the_workers_and_runs_side_by_side(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=60, workers=2)
    try:
        with observed(handler) as passes:
            asyncio.run(burst(queue, handler, TEXTS))
    finally:
        queue.shutdown()
    threads = {name for name, *_ in passes}
    assert len(threads) == 2, passes
    assert max(size for _, size, _, _ in passes) <= 4
    assert sum(size for _, size, _, _ in passes) == len(TEXTS)
    # Some pass of one worker overlaps some pass of the other: they ran at the same time.
    by_thread = {t: [(s, e) for name, _, s, e in passes if name == t] for t in threads}
    first, second = by_thread.values()
    assert any(s1 < e2 and s2 < e1 for s1, e1 in first for s2, e2 in second), passes


@pytest.mark.parametrize("mode", ["sequence_classification", "token_classification", "text_generation"])
def test_two_workers_answer_as_one_does(mode: str, handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers[mode]
    texts = [t.replace("review", "story") for t in TEXTS[:12]]
    results = {}
    for workers in (1, 2):
        queue = InferenceQueue(handler, batch_size=3, capacity=64, timeout_s=60, workers=workers)
        try:
            results[workers] = asyncio.run(burst(queue, handler, texts))
        finally:
            queue.shutdown()
    alone = [handler.predict([request(handler, t)])[0] for t in texts]
    assert _close(results[1], alone) and _close(results[2], alone), (results, alone)


def _close(got: list[Any], want: list[Any]) -> bool:
    """Equal up to float noise of different padding (scores), same labels and text."""
    def strip(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(got) == strip(want)


def test_uncontended_batches_try_every_core_on_the_all_cores_thread(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    calls: list[tuple[str, int]] = []

    def set_threads(threads: int) -> None:
        calls.append((threading.current_thread().name, threads))
        torch.set_num_threads(threads)

    before = torch.get_num_threads()
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=60, workers=2, threads=1,
                           all_threads=2, set_threads=set_threads)
    try:
        async def one_at_a_time() -> None:
            for text in TEXTS[:6]:
                await queue.predict([handler.parse(text)])

        with observed(handler) as passes:
            asyncio.run(one_at_a_time())
    finally:
        queue.shutdown()
        torch.set_num_threads(before)
    # Thread counts are set once per thread, never switched: workers on their share, the all-cores
    # thread on every core.
    assert all(threads == (2 if name.startswith("predictor-all-cores") else 1)
               for name, threads in calls), calls
    assert len(calls) == len({name for name, _ in calls}), calls
    # Six uncontended batches of a trial alternate one thread and every core: three ran on the
    # all-cores thread.
    ran_on = [name.rsplit("_", 1)[0] for name, *_ in passes]
    assert ran_on.count("predictor-all-cores") == 3 and ran_on.count("predictor-model") == 3, ran_on


def test_uncontended_batches_stay_on_a_worker_while_an_explanation_holds_the_all_cores_thread(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=60, workers=2, threads=1,
                           all_threads=2, set_threads=torch.set_num_threads)
    before = torch.get_num_threads()
    release = threading.Event()
    explaining = threading.Event()

    def slow_explain(instance: Any) -> str:
        explaining.set()
        release.wait(30)
        return "explained"

    try:
        async def predictions_during_an_explanation() -> list[Any]:
            explanation = asyncio.ensure_future(queue.explain([handler.parse("a long explanation")]))
            await asyncio.to_thread(explaining.wait, 30)
            answers = [await queue.predict([handler.parse(text)]) for text in TEXTS[:4]]
            release.set()
            return [answers, await explanation]

        with observed(handler) as passes:
            original, handler.explain = handler.explain, slow_explain  # type: ignore[method-assign]
            try:
                answers, explanation = asyncio.run(predictions_during_an_explanation())
            finally:
                handler.explain = original  # type: ignore[method-assign]
    finally:
        release.set()
        queue.shutdown()
        torch.set_num_threads(before)
    assert explanation == ["explained"] and len(answers) == 4
    # Not uncontended: every prediction ran on a worker; none waited behind the explanation on the
    # all-cores thread.
    assert [name.rsplit("_", 1)[0] for name, *_ in passes] == ["predictor-model"] * 4, passes


def test_at_least_one_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InferenceQueue(object(), batch_size=1, capacity=1, timeout_s=1, workers=0)  # type: ignore[arg-type]


def test_an_explanation_that_outlives_its_loop_finishes_quietly(handlers: dict[str, GeneralizedHandler],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    handler = handlers["sequence_classification"]
    queue = InferenceQueue(handler, batch_size=4, capacity=64, timeout_s=0.2, workers=1)
    release = threading.Event()
    finished = threading.Event()

    def slow_explain(instance: Any) -> str:
        release.wait(30)
        finished.set()
        return "explained"

    original, handler.explain = handler.explain, slow_explain  # type: ignore[method-assign]
    try:
        with pytest.raises(InferenceTimeoutError):
            asyncio.run(queue.explain([handler.parse("abandoned")]))
        release.set()  # finishes on the all-cores thread after its event loop has closed
        assert finished.wait(30)
        time.sleep(0.1)  # the done callback runs right after
    finally:
        release.set()
        handler.explain = original  # type: ignore[method-assign]
        queue.shutdown()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.records
