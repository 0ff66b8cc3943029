"""The queue decides each forward pass once: batchSize caps the inputs, handler.max_batch_tokens the padded
tokens, a long input runs alone, and the handler runs exactly the passes the queue planned."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from predictor.handler import GeneralizedHandler
from predictor.serving.batcher import InferenceQueue


def test_a_burst_is_planned_once_under_the_cap_and_the_token_budget(
        handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    short = [f"item number {n}" for n in range(12)]
    long = " ".join(["a much longer text than the others"] * 8)
    texts = [*short[:5], long, *short[5:]]
    lengths = [len(handler.state.task.tokenizer(t)["input_ids"]) for t in texts]
    budget = 4 * max(lengths[:5])  # four short inputs per pass, the long one over budget
    assert max(lengths) > budget
    passes: list[tuple[int, int, int]] = []
    ran: list[list[int]] = []
    lock = threading.Lock()

    def observe(size: int, real: int, padded: int, seconds: float) -> None:
        with lock:
            passes.append((size, real, padded))

    original_run = handler.run

    def run(batch: Any) -> Any:  # what the queue hands the handler: one pass each
        with lock:
            ran.append([len(e.rows[0]["input_ids"]) for e in batch])
        return original_run(batch)

    queue = InferenceQueue(handler, batch_size=3, capacity=64, timeout_s=60, workers=1,
                           max_batch_tokens=budget)
    previous, handler.observer = handler.observer, observe
    handler.run = run  # type: ignore[method-assign]
    try:
        async def burst() -> list[Any]:
            answers = await asyncio.gather(*(queue.predict([handler.parse(t)]) for t in texts))
            return [a[0] for a in answers]

        together = asyncio.run(burst())
    finally:
        handler.observer = previous
        del handler.run
        queue.shutdown()
    alone = [handler.predict([handler.parse(t)])[0] for t in texts]
    assert together == alone
    assert sorted(n for p in ran for n in p) == sorted(lengths)  # every input exactly once
    assert [max(lengths)] in ran  # the long input alone
    assert all(len(p) <= 3 for p in ran)  # batchSize
    assert all(len(p) == 1 or len(p) * max(p) <= budget for p in ran)  # the token budget
    assert [size for size, _, _ in passes] == [len(p) for p in ran]  # the metrics see the passes that ran
    assert [padded for _, _, padded in passes] == [len(p) * max(p) for p in ran]
