"""The one inference queue of the model: adaptive batching, bounded, with timeouts; never on the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from predictor.errors import InferenceTimeoutError, ModelNotReadyError, OverloadedError, PredictorError
from predictor.handler import GeneralizedHandler
from predictor.serving import metrics
from predictor.tasks import Instance, Prediction, StreamEnd

logger = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


@dataclass
class _Job:
    instance: Instance
    future: asyncio.Future[Prediction]


class InferenceQueue:
    """Gathers concurrent requests into forward passes of up to batch_size inputs.

    A batch is dispatched as soon as the model is free: a lone request waits for nothing, and
    requests that arrive while a batch runs form the next one. One model thread runs forward
    passes (so the event loop keeps answering probes); explanations get their own thread so
    predictions keep flowing while one runs.
    """

    def __init__(self, handler: GeneralizedHandler, *, batch_size: int, capacity: int, timeout_s: float) -> None:
        self.handler = handler
        self.batch_size = batch_size
        self.capacity = capacity
        self.timeout_s = timeout_s
        self._jobs: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor-model")
        self._explain_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor-explain")
        self._busy_since: float | None = None
        self._closing = False

    # ---- state -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Inputs waiting for a forward pass."""
        return len(self._jobs)

    @property
    def wedged(self) -> bool:
        """True when the running forward pass has exceeded responseTimeout: inference is stuck."""
        busy = self._busy_since
        return busy is not None and time.monotonic() - busy > self.timeout_s

    def close(self) -> None:
        """Refuse new work; what is queued is still answered."""
        self._closing = True

    def _admit(self, count: int) -> None:
        if self._closing:
            raise ModelNotReadyError("the server is shutting down")
        if len(self._jobs) + count > self.capacity:
            raise OverloadedError(f"the inference queue is full ({len(self._jobs)} of {self.capacity} waiting)")

    # ---- predictions ---------------------------------------------------------------------------
    async def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Predictions for `instances`, in order, through the shared batches."""
        self._admit(len(instances))
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.done():
            self._wakeup = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch(), name="predictor-dispatcher")
        cancel = threading.Event()
        jobs = [_Job(_with_cancel(instance, cancel), loop.create_future()) for instance in instances]
        self._jobs.extend(jobs)
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        assert self._wakeup is not None
        self._wakeup.set()
        futures = [job.future for job in jobs]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s))
        except asyncio.TimeoutError as exc:
            cancel.set()  # running: generation stops at its next token
            for future in futures:
                future.cancel()  # still queued: skipped by the dispatcher, never computed
            raise InferenceTimeoutError(f"no answer within responseTimeout ({self.timeout_s:g}s)") from exc

    def _next_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        while self._jobs and len(batch) < self.batch_size:
            job = self._jobs.popleft()
            if not job.future.done():
                batch.append(job)
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        return batch

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._next_batch():
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Job]) -> None:
        try:
            results = await self._on_model_thread(self.handler.predict, [job.instance for job in batch])
        except PredictorError as exc:
            if len(batch) > 1:
                # One input must not sink the others: answer each alone.
                for job in batch:
                    await self._run_batch([job])
                return
            _settle(batch[0].future, exc=exc)
            return
        for job, result in zip(batch, results, strict=True):
            _settle(job.future, result=result)

    async def _on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        self._busy_since = time.monotonic()
        try:
            return await loop.run_in_executor(self._model_thread, fn, *args)
        finally:
            self._busy_since = None

    # ---- explanations and streams --------------------------------------------------------------
    async def explain(self, instances: Sequence[Instance]) -> list[Any]:
        """Explanations, one at a time on the explanation thread, under the same timeout."""
        self._admit(len(instances))
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        cancellable = [_with_cancel(i, cancel) for i in instances]

        def explain_all() -> list[Any]:
            return [self.handler.explain(i) for i in cancellable]

        try:
            return await asyncio.wait_for(loop.run_in_executor(self._explain_thread, explain_all), self.timeout_s)
        except asyncio.TimeoutError as exc:
            cancel.set()  # stops the running explanation at its next forward pass
            raise InferenceTimeoutError(f"no explanation within responseTimeout ({self.timeout_s:g}s)") from exc

    async def stream(self, instance: Instance) -> AsyncIterator[str | StreamEnd]:
        """Generated text chunks as the model thread produces them, then the StreamEnd."""
        self._admit(1)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        instance = _with_cancel(instance, cancel)

        def produce() -> None:
            try:
                for chunk in self.handler.stream(instance):
                    loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(chunks.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, _END)

        producer = asyncio.ensure_future(self._on_model_thread(produce))
        try:
            while (item := await chunks.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not producer.done():
                cancel.set()  # the client left (or the stream failed): stop generating at the next token
            await asyncio.shield(producer)

    def shutdown(self) -> None:
        """Stop the worker threads once the queue is empty."""
        self._model_thread.shutdown(wait=False, cancel_futures=False)
        self._explain_thread.shutdown(wait=False, cancel_futures=False)


def _with_cancel(instance: Instance, cancel: threading.Event) -> Instance:
    return dataclasses.replace(instance, cancel=cancel)


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return  # the request timed out meanwhile
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
