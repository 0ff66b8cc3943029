"""The one inference queue of the model: adaptive batching, bounded, with timeouts; never on the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from predictor.batching import BatchItem, next_pass
from predictor.errors import (
    ClientGoneError,
    InferenceError,
    InferenceTimeoutError,
    ModelNotReadyError,
    OverloadedError,
    PredictorError,
)
from predictor.handler import GeneralizedHandler
from predictor.serving import metrics
from predictor.serving.callers import current_caller
from predictor.serving.cpu import UncontendedThreadPolicy
from predictor.serving.generation_route import ScheduledGenerations
from predictor.serving.middleware import request_id_var
from predictor.tasks import Encoded, Instance, Prediction, StreamEnd

logger = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()
# Queued inputs the dispatcher considers for the next pass, oldest first: planning stays cheap under a
# deep queue, and a long-waiting input is never passed over for ever.
_LOOKAHEAD = 64


@dataclass
class _Job:
    encoded: Encoded
    item: BatchItem
    future: asyncio.Future[Prediction]
    request_id: str = "-"
    timing: metrics.RequestTiming | None = None
    enqueued_at: float = dataclasses.field(default_factory=time.perf_counter)


class InferenceQueue:
    """Gathers concurrent requests into forward passes; decides each pass once (see _next_batch).

    A batch is dispatched as soon as a model worker is free: a request that finds the server idle
    waits for nothing, and requests that arrive while the workers are busy form the next batches.
    `workers` threads run forward passes side by side on the one copy of the model (so the event loop
    keeps answering probes), each on `threads` torch threads.

    Work on every core (`all_threads`) runs on one more thread, the all-cores thread: explanations,
    and an uncontended batch (nothing else queued or computing) while that measures faster
    (UncontendedThreadPolicy). One such thread, never a worker switching its count, because libgomp
    makes idle OpenMP threads sleep between parallel regions once a process has more of them than
    cores (predictor/bench/README.md, "Figures behind the queue and the worker plan"). `set_threads` sets
    the torch threads of the calling thread; without it, thread counts are left as they are and
    nothing runs on the all-cores thread but explanations.
    """

    def __init__(self, handler: GeneralizedHandler, *, batch_size: int, capacity: int, timeout_s: float,
                 workers: int = 1, threads: int = 1, all_threads: int = 1,
                 set_threads: Callable[[int], None] | None = None, stream_timeout_s: float = 600.0,
                 max_batch_tokens: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected at least 1, got {workers}")
        self.handler = handler
        self.batch_size = batch_size
        # None: the handler's handler.max_batch_tokens, read once the model is loaded
        self._max_batch_tokens = max_batch_tokens
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.workers = workers
        self.threads = threads
        self.uncontended_threads = UncontendedThreadPolicy(
            threads, all_threads if set_threads is not None else threads)
        self._jobs: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._free: asyncio.Semaphore | None = None  # model workers not running anything (FIFO for waiters)
        self._idle = workers  # the semaphore's count, which asyncio does not expose
        self._running: set[asyncio.Task[None]] = set()
        self._model_threads = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="predictor-model",
            initializer=None if set_threads is None else functools.partial(set_threads, threads))
        self._all_cores_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="predictor-all-cores",
            initializer=None if set_threads is None else functools.partial(set_threads, all_threads))
        # Submitted to the all-cores thread and not finished (read and written on the loop).
        self._all_cores_jobs = 0
        self._waiting_streams = 0  # admitted streams without a model worker yet
        self._explaining = 0  # admitted explanation inputs not finished
        # Work running on a thread -> when it last made progress (started, or streamed a chunk).
        self._busy_since: dict[object, float] = {}
        self._closing = False
        metrics.WORKERS.set(workers)
        self.generations = ScheduledGenerations(self)  # greedy generation: the scheduler's own route

    def warm_up(self) -> None:
        """Warm the all-cores thread up (blocking) when it runs on another thread count than the workers."""
        if self.uncontended_threads.every != self.threads:
            self._all_cores_thread.submit(self.handler.warm_up).result()

    # ---- state -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Admitted work not answered yet but waiting: inputs, streams without a worker, explanations."""
        return len(self._jobs) + self._waiting_streams + self._explaining + self.generations.waiting

    @property
    def wedged(self) -> bool:
        """True when running work made no progress for responseTimeout: a forward pass is stuck.

        A stream makes progress with every chunk, so a long stream never counts (it has its own
        deadline, limits.max_stream_seconds).
        """
        now = time.monotonic()
        return any(now - since > self.timeout_s for since in list(self._busy_since.values()))

    def close(self) -> None:
        """Refuse new work; what is queued is still answered."""
        self._closing = True

    def _admit(self, count: int) -> None:
        if self._closing:
            raise ModelNotReadyError("the server is shutting down")
        if self.depth + count > self.capacity:
            raise OverloadedError(f"the inference queue is full ({self.depth} of {self.capacity} waiting)")

    @property
    def max_batch_tokens(self) -> int:
        """Padded tokens one forward pass may hold (a longer single input runs alone)."""
        if self._max_batch_tokens is None:
            self._max_batch_tokens = self.handler.max_batch_tokens
        return self._max_batch_tokens

    # ---- predictions ---------------------------------------------------------------------------
    async def predict(self, instances: Sequence[Instance],
                      timing: metrics.RequestTiming | None = None) -> list[Prediction]:
        """Predictions for `instances`, in order, through the shared batches; `timing` gets the queue wait."""
        if self.generations.takes(instances):
            return await self.generations.predict(instances, timing)
        self._admit(len(instances))
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.done():
            self._wakeup = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch(), name="predictor-dispatcher")
        cancel = threading.Event()
        request_id = request_id_var.get()
        # Tokenised here, once, so that the dispatcher knows each input's size; bad input fails this
        # request only.
        encoded = self.handler.encode([_with_cancel(instance, cancel) for instance in instances])
        jobs = [_Job(e, self.handler.batch_item(e), loop.create_future(), request_id, timing)
                for e in encoded]
        self._jobs.extend(jobs)
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        assert self._wakeup is not None
        self._wakeup.set()
        futures = [job.future for job in jobs]

        def give_up(exc: PredictorError) -> None:
            cancel.set()  # running: generation stops at its next token, QA between window passes
            for future in futures:
                _settle(future, exc=exc)  # still queued: skipped by the dispatcher, never computed

        _on_caller_leave(lambda: give_up(ClientGoneError("the client left: its work was stopped")))
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s))
        except asyncio.TimeoutError as exc:
            give_up(InferenceTimeoutError("timed out"))
            raise InferenceTimeoutError(f"no answer within responseTimeout ({self.timeout_s:g}s)") from exc
        except asyncio.CancelledError:  # the caller's task was cancelled (a gRPC client cancelled its call)
            give_up(ClientGoneError("the call was cancelled"))
            raise

    async def _take_worker(self) -> None:
        if self._free is None:  # created on the serving loop, at first use
            self._free = asyncio.Semaphore(self.workers)
        await self._free.acquire()
        self._idle -= 1
        metrics.WORKERS_BUSY.set(self.workers - self._idle)

    def _give_back_worker(self) -> None:
        assert self._free is not None
        self._idle += 1
        metrics.WORKERS_BUSY.set(self.workers - self._idle)
        self._free.release()

    def _next_batch(self, idle_workers: int) -> list[_Job]:
        """The next forward pass: the oldest live job and the queued ones that pad well with it.

        At most batch_size inputs (TorchServe's batchSize), at most max_batch_tokens padded tokens
        (unless the oldest input alone is longer), and no more than this worker's share of the queue:
        with the queue shared among the idle workers, passes stay small (on CPU the fastest batches
        are small ones) and every worker gets some of a burst at once.
        """
        while self._jobs and self._jobs[0].future.done():
            self._jobs.popleft()  # answered meanwhile (timeout, client gone): never computed
        live = [job for job in itertools.islice(self._jobs, _LOOKAHEAD) if not job.future.done()]
        share = min(self.batch_size, -(-len(self._jobs) // max(1, idle_workers)))
        chosen = next_pass([job.item for job in live], max(1, share), self.max_batch_tokens)
        batch = [live[i] for i in chosen]
        taken = {id(job) for job in batch}
        self._jobs = deque(job for job in self._jobs if id(job) not in taken and not job.future.done())
        for job in batch:
            if job.timing is not None:
                job.timing.dequeued(job.enqueued_at)
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        return batch

    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._jobs:
                await self._take_worker()
                batch = self._next_batch(1 + self._idle)  # this worker and the others still free
                if not batch:
                    self._give_back_worker()
                    break
                uncontended = (self._idle == self.workers - 1 and not self._jobs
                               and not self._all_cores_jobs)
                threads = self.uncontended_threads.choose() if uncontended else self.threads
                task = asyncio.get_running_loop().create_task(
                    self._run_and_release(batch, threads, uncontended))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run_and_release(self, batch: list[_Job], threads: int, uncontended: bool) -> None:
        started = time.perf_counter()
        try:
            await self._run_batch(batch, threads)
            if uncontended:
                self.uncontended_threads.record(threads, (time.perf_counter() - started) / len(batch))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failure outside the handler's own errors: nobody waits for the timeout
            ids = ", ".join(sorted({job.request_id for job in batch}))
            logger.error("a batch of %d failed unexpectedly (%s: %s); answering 500 to request ids %s",
                         len(batch), type(exc).__name__, exc, ids, exc_info=exc)
            failure = InferenceError(f"inference failed unexpectedly ({type(exc).__name__})")
            for job in batch:
                _settle(job.future, exc=failure)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._give_back_worker()

    async def _run_batch(self, batch: list[_Job], threads: int) -> None:
        encoded = [job.encoded for job in batch]
        try:
            if threads == self.threads:
                results = await self._on_model_thread(self.handler.run, encoded)
            else:
                results = await self._on_all_cores_thread(self.handler.run, encoded)
        except PredictorError as exc:
            if len(batch) > 1:
                # One input must not sink the others: answer each alone.
                for job in batch:
                    await self._run_batch([job], threads)
                return
            _settle(batch[0].future, exc=exc)
            return
        for job, result in zip(batch, results, strict=True):
            _settle(job.future, result=result)

    async def _on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await self._watched_for_stalls(loop.run_in_executor(self._model_threads, fn, *args))

    async def _on_all_cores_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """fn on the all-cores thread, counted in _all_cores_jobs until it has finished there, even when
        the caller stops waiting (a timeout): a running explanation still keeps every core busy."""
        loop = asyncio.get_running_loop()
        submitted = self._all_cores_thread.submit(fn, *args)
        self._all_cores_jobs += 1  # after submit, which raises once the queue has shut down
        submitted.add_done_callback(functools.partial(self._all_cores_job_done, loop))
        return await self._watched_for_stalls(asyncio.wrap_future(submitted))

    def _all_cores_job_done(self, loop: asyncio.AbstractEventLoop, _: object) -> None:
        def count() -> None:
            self._all_cores_jobs -= 1

        try:
            loop.call_soon_threadsafe(count)
        except RuntimeError:  # the loop has closed (an abandoned explanation finished after shutdown)
            pass

    async def _watched_for_stalls(self, work: Awaitable[T], token: object | None = None) -> T:
        """Await work on a thread, counted as running for `wedged` meanwhile (progress under `token`)."""
        token = object() if token is None else token
        self._busy_since[token] = time.monotonic()
        try:
            return await work
        finally:
            del self._busy_since[token]

    # ---- explanations and streams --------------------------------------------------------------
    async def explain(self, instances: Sequence[Instance],
                      timing: metrics.RequestTiming | None = None) -> list[Any]:
        """Explanations, one at a time on the all-cores thread, under the same bound and timeout."""
        self._admit(len(instances))
        enqueued_at = time.perf_counter()
        self._explaining += len(instances)
        cancel = threading.Event()
        cancellable = [_with_cancel(i, cancel) for i in instances]

        def explain_all() -> list[Any]:
            if timing is not None:
                timing.dequeued(enqueued_at)
            return [self.handler.explain(i) for i in cancellable]

        work = asyncio.ensure_future(self._on_all_cores_thread(explain_all))
        work.add_done_callback(_retrieve)  # its failure after a timeout is nobody's answer
        _on_caller_leave(lambda: (cancel.set(), work.cancel()))
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.timeout_s)
        except asyncio.TimeoutError as exc:
            cancel.set()  # stops the running explanation at its next forward pass
            work.cancel()  # and one still queued for the all-cores thread never starts
            raise InferenceTimeoutError(f"no explanation within responseTimeout ({self.timeout_s:g}s)") from exc
        except asyncio.CancelledError:
            gone = cancel.is_set()  # set by the caller leaving, not by a cancelled task (gRPC cancel)
            cancel.set()
            work.cancel()
            if gone:
                raise ClientGoneError("the client left: its explanation was stopped") from None
            raise
        finally:
            self._explaining -= len(instances)

    async def open_stream(self, instance: Instance,
                          timing: metrics.RequestTiming | None = None) -> AsyncIterator[str | StreamEnd]:
        """Admit a stream and wait (up to responseTimeout) for its first chunk; then iterate them all.

        Overload, timeout and bad input are raised here, before the caller sends a status line.
        """
        self._admit(1)
        if self.generations.takes([instance]):
            chunks = self.generations.stream(instance, timing)
        else:
            chunks = self._stream(instance, timing)
        self._waiting_streams += 1  # the first chunk comes once the stream holds a model worker
        try:
            first = await asyncio.wait_for(chunks.__anext__(), self.timeout_s)
        except StopAsyncIteration:
            first = ""
        except asyncio.TimeoutError as exc:
            raise InferenceTimeoutError(f"no model worker within responseTimeout ({self.timeout_s:g}s)") from exc
        finally:
            self._waiting_streams -= 1

        async def all_chunks() -> AsyncIterator[str | StreamEnd]:
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()

        return all_chunks()

    async def _stream(self, instance: Instance,
                      timing: metrics.RequestTiming | None = None) -> AsyncIterator[str | StreamEnd]:
        """Generated text chunks as the model thread produces them, then the StreamEnd.

        The stream ends (as if at its token budget) after limits.max_stream_seconds, and stops at the
        next token when its client leaves.
        """
        loop = asyncio.get_running_loop()
        enqueued_at = time.perf_counter()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        instance = _with_cancel(instance, cancel)
        progress = object()  # this stream's entry in _busy_since: refreshed by every chunk

        def produce() -> None:
            try:
                for chunk in self.handler.stream(instance):
                    self._busy_since[progress] = time.monotonic()
                    loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(chunks.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, _END)

        def end_stream() -> None:
            if not cancel.is_set():
                logger.info("stream ended at limits.max_stream_seconds (%gs)", self.stream_timeout_s)
                cancel.set()

        holding = False

        async def on_a_worker() -> None:
            nonlocal holding
            await self._take_worker()  # a stream holds a model worker as a batch does
            holding = True
            if timing is not None:
                timing.dequeued(enqueued_at)
            deadline = loop.call_later(self.stream_timeout_s, end_stream)
            try:
                await self._watched_for_stalls(loop.run_in_executor(self._model_threads, produce), progress)
            finally:
                deadline.cancel()
                self._give_back_worker()

        producer = asyncio.ensure_future(on_a_worker())
        _on_caller_leave(cancel.set)
        try:
            while (item := await chunks.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not producer.done():
                cancel.set()  # the client left (or the stream failed): stop generating at the next token
                if not holding:
                    producer.cancel()  # still waiting for a worker: it never starts
            try:
                await asyncio.shield(producer)
            except asyncio.CancelledError:
                if not producer.cancelled():
                    raise

    def shutdown(self) -> None:
        """Stop the worker threads once the queue is empty."""
        self._model_threads.shutdown(wait=False, cancel_futures=False)
        self._all_cores_thread.shutdown(wait=False, cancel_futures=False)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _on_caller_leave(callback: Callable[[], None]) -> None:
    caller = current_caller.get()
    if caller is not None:
        caller.on_leave(callback)


def _with_cancel(instance: Instance, cancel: threading.Event) -> Instance:
    return dataclasses.replace(instance, cancel=cancel)


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return  # the request timed out meanwhile
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
