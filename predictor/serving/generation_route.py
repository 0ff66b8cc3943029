"""Greedy generations through the model's GenerationScheduler: one decoding loop on one model worker.

Requests join the running batch between decoding steps and leave at their own end, so a short request
does not wait for a long one, nor a new one for a running batch. Admission, responseTimeout, the stream
deadline and cancellation on the client leaving work as they do for batches (InferenceQueue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from predictor.errors import ClientGoneError, InferenceTimeoutError, PredictorError
from predictor.serving import metrics
from predictor.serving.callers import current_caller
from predictor.tasks import Instance, Prediction, StreamEnd

if TYPE_CHECKING:
    from predictor.serving.batcher import InferenceQueue

logger = logging.getLogger(__name__)


class ScheduledGenerations:
    """The queue's route for generation requests its model's scheduler decodes (handler.schedules)."""

    def __init__(self, queue: InferenceQueue) -> None:
        self.queue = queue
        self.handler = queue.handler
        self._decoder: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Scheduled requests not decoding yet (part of the queue's depth): rows are capped, the rest wait."""
        return self.handler.generation_waiting

    def takes(self, instances: Sequence[Instance]) -> bool:
        """True when every instance is a generation the scheduler decodes."""
        return bool(instances) and all(self.handler.schedules(i) for i in instances)

    def _ensure_decoder(self) -> None:
        """Start the decoding loop unless it runs; it stops once the scheduler is empty."""
        if self._decoder is None or self._decoder.done():
            self._decoder = asyncio.get_running_loop().create_task(self._decode(), name="predictor-decoder")

    async def _decode(self) -> None:
        """Hold one model worker while there is anything to decode; progress is every step."""
        queue, loop = self.queue, asyncio.get_running_loop()
        progress = object()

        def stepped() -> None:
            queue._busy_since[progress] = time.monotonic()

        while self.handler.generation_pending:
            await queue._take_worker()
            try:
                await queue._watched_for_stalls(loop.run_in_executor(queue._model_threads, self.handler.drive_generation,
                                                          stepped), progress)
            finally:
                queue._give_back_worker()

    def _submit(self, instance: Instance, stream: bool, deliver: Any) -> None:
        loop = asyncio.get_running_loop()
        self.handler.submit_generation(instance, lambda item: loop.call_soon_threadsafe(deliver, item),
                                       stream=stream)
        self._ensure_decoder()

    async def predict(self, instances: Sequence[Instance],
                      timing: metrics.RequestTiming | None = None) -> list[Prediction]:
        """Answers in order, under responseTimeout; the client leaving stops the rows at their next step."""
        self.queue._admit(len(instances))
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        futures = [loop.create_future() for _ in instances]
        enqueued_at = time.perf_counter()

        def give_up(exc: PredictorError) -> None:
            cancel.set()
            for future in futures:
                _settle(future, exc)

        _on_caller_leave(lambda: give_up(ClientGoneError("the client left: its work was stopped")))
        try:
            for instance, future in zip(instances, futures, strict=True):
                self._submit(dataclasses.replace(instance, cancel=cancel), False,
                             lambda item, f=future: _settle(f, item))
            if timing is not None:
                timing.dequeued(enqueued_at)  # joined the decoding batch without a queue of its own
            return list(await asyncio.wait_for(asyncio.gather(*futures), self.queue.timeout_s))
        except asyncio.TimeoutError as exc:
            give_up(InferenceTimeoutError("timed out"))
            timeout = self.queue.timeout_s
            raise InferenceTimeoutError(f"no answer within responseTimeout ({timeout:g}s)") from exc
        except asyncio.CancelledError:  # the caller's task was cancelled (a gRPC client cancelled its call)
            give_up(ClientGoneError("the call was cancelled"))
            raise

    async def stream(self, instance: Instance,
                     timing: metrics.RequestTiming | None = None) -> AsyncIterator[str | StreamEnd]:
        """The echo, text pieces and a StreamEnd as they are decoded; InferenceQueue.open_stream admits it.

        The stream ends (as if at its token budget) after limits.max_stream_seconds, and stops at the
        next step when its client leaves or stops reading.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        enqueued_at = time.perf_counter()
        def end_stream() -> None:
            if not cancel.is_set():
                logger.info("stream ended at limits.max_stream_seconds (%gs)", self.queue.stream_timeout_s)
                cancel.set()

        deadline = loop.call_later(self.queue.stream_timeout_s, end_stream)
        _on_caller_leave(cancel.set)
        ended = False
        try:
            self._submit(dataclasses.replace(instance, cancel=cancel), True, chunks.put_nowait)
            first = True
            while not ended:
                item = await chunks.get()
                if first and timing is not None:
                    timing.dequeued(enqueued_at)
                first = False
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = isinstance(item, StreamEnd)
                yield item
        finally:
            deadline.cancel()
            if not ended:
                cancel.set()  # the consumer stopped early: free the row at the next step


def _settle(future: asyncio.Future[Any], item: Any) -> None:
    if future.done():
        return  # given up meanwhile (timeout, client gone)
    if isinstance(item, BaseException):
        future.set_exception(item)
    else:
        future.set_result(item)


def _on_caller_leave(callback: Any) -> None:
    caller = current_caller.get()
    if caller is not None:
        caller.on_leave(callback)
