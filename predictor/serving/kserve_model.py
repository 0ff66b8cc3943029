"""TransformersModel: the kserve.Model that serves the generalized handler (v1, v2 REST and gRPC)."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kserve
from kserve import errors as kserve_errors_module
from kserve.protocol.infer_type import InferRequest, InferResponse

from predictor.config import TaskName
from predictor.errors import ModelNotReadyError, PredictorError
from predictor.handler import GeneralizedHandler
from predictor.serving import error_table, metrics, payloads
from predictor.serving.batcher import InferenceQueue
from predictor.serving.cpu import WorkerPlan, available_cores, plan_workers, set_torch_threads
from predictor.tasks import Instance

logger = logging.getLogger(__name__)


@contextmanager
def kserve_errors(model_name: str) -> Iterator[None]:
    """Core errors -> the kserve exceptions error_table names for them, which kserve's REST handlers and
    the gRPC interceptor answer; the others pass on as they are (server.predictor_error_handler)."""
    try:
        yield
    except PredictorError as exc:
        translated = error_table.as_kserve_exception(exc, model_name)
        if translated is None:
            raise
        raise translated from exc


def freeze_loaded_objects() -> int:
    """Move every object alive after loading out of the garbage collector's reach; returns how many.

    The model, transformers, torch and kserve leave hundreds of thousands of tracked objects that
    live as long as the process. A full collection walks all of them with every thread that needs
    the GIL (event loop and model workers) stopped meanwhile, which shows up in tail latency.
    What requests allocate later is still collected as before.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("garbage collector: %d objects frozen after load", frozen)
    return frozen


@dataclass(frozen=True)
class ParsedRequest:
    """What preprocess hands to predict/explain: validated instances and the v2 request, if any."""

    instances: list[Instance]
    v2: InferRequest | None = None


class TransformersModel(kserve.Model):
    """load / preprocess / predict / explain, each delegating to the core; no task logic here."""

    def __init__(self, name: str, handler: GeneralizedHandler, workers: WorkerPlan | None = None) -> None:
        super().__init__(name)
        self.handler = handler
        self.workers = workers or plan_workers(available_cores())
        self.queue: InferenceQueue | None = None
        self._load_lock = threading.Lock()
        self.draining = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def load(self) -> bool:
        """Load and warm up the model; ready only after that. Never runs twice at once."""
        if not self._load_lock.acquire(blocking=False):
            raise kserve_errors_module.ModelNotReady(self.name, "the model is still loading")
        try:
            if not self.ready:
                self.handler.load()
                config = self.handler.config
                plan = self.workers
                self.queue = InferenceQueue(self.handler, batch_size=config.batch_size,
                                            capacity=config.job_queue_size, timeout_s=config.response_timeout_s,
                                            workers=plan.workers, threads=plan.threads,
                                            all_threads=plan.all_cores_threads, set_threads=set_torch_threads,
                                            stream_timeout_s=config.limits.max_stream_seconds)
                self.queue.warm_up()
                metrics.BACKEND.labels(self.handler.backend).set(1)
                self.handler.observer = metrics.observe_batch
                freeze_loaded_objects()
                self.ready = True
                metrics.READY.set(1)
        finally:
            self._load_lock.release()
        return self.ready

    def start(self) -> None:
        """kserve's default start() marks the model ready; readiness here comes from load() only."""

    async def healthy(self) -> bool:
        """Ready, not draining, and inference is not wedged."""
        ok = self.ready and not self.draining and self.queue is not None and not self.queue.wedged
        metrics.READY.set(1 if ok else 0)
        return ok

    def drain(self) -> None:
        """SIGTERM: turn not-ready and refuse new work; queued work is still answered."""
        self.draining = True
        if self.queue is not None:
            self.queue.close()

    def stop(self) -> None:
        """Release the worker threads."""
        self.ready = False
        if self.queue is not None:
            self.queue.shutdown()

    @property
    def inference_queue(self) -> InferenceQueue:
        """The loaded model's inference queue; ModelNotReadyError before load() and after stop()."""
        if self.queue is None or not self.ready:
            raise ModelNotReadyError(f"model {self.name} is not ready")
        return self.queue

    # ---- kserve inference ----------------------------------------------------------------------
    def validate(self, payload: Any) -> Any:
        """Requests are validated in preprocess by the core."""
        return payload

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ParsedRequest:
        """v1 {"instances"} or a v2 BYTES tensor -> core Instances."""
        with kserve_errors(self.name):
            limits = self.handler.config.limits
            if isinstance(payload, InferRequest):
                items, details = payloads.v2_items(payload, limits)
                if details:
                    items = [payloads.with_details(i) for i in items]
                return ParsedRequest([self.handler.parse(i) for i in items], v2=payload)
            items = payloads.v1_items(payload, limits)
            return ParsedRequest([self.handler.parse(i) for i in items])

    async def predict(self, payload: ParsedRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        """One prediction per instance, in order, through the shared batches."""
        timing = metrics.RequestTiming(self.name, "default")  # TorchServe's label when no version is asked
        try:
            with kserve_errors(self.name):
                results = await self.inference_queue.predict(payload.instances, timing)
        finally:
            timing.finish()
        if payload.v2 is not None:
            return payloads.v2_response(self.name, self.handler.version, payload.v2.id, results)
        return {"predictions": results}

    async def explain(self, payload: ParsedRequest, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One explanation per instance, in TorchServe's shape."""
        timing = metrics.RequestTiming(self.name, "default")
        try:
            with kserve_errors(self.name):
                return {"explanations": await self.inference_queue.explain(payload.instances, timing)}
        finally:
            timing.finish()

    # ---- v2 metadata -----------------------------------------------------------------------------
    def get_input_types(self) -> list[dict[str, Any]]:
        """One BYTES tensor of texts (QA: JSON objects {"question", "context"})."""
        if not self.ready:
            return []
        content = "JSON {question, context}" if self.handler.mode is TaskName.QUESTION_ANSWERING else "UTF-8 text"
        return [{"name": "text", "datatype": "BYTES", "shape": [-1], "parameters": {"content": content}}]

    def get_output_types(self) -> list[dict[str, Any]]:
        """One BYTES tensor: a label/answer/text per input (JSON text when details are asked for)."""
        if not self.ready:
            return []
        described = {
            TaskName.SEQUENCE_CLASSIFICATION: "label",
            TaskName.TOKEN_CLASSIFICATION: "JSON [[token, label], ...]",
            TaskName.QUESTION_ANSWERING: "answer text",
            TaskName.TEXT_GENERATION: "generated text",
        }[self.handler.mode]
        return [{"name": payloads.V2_OUTPUT, "datatype": "BYTES", "shape": [-1],
                 "parameters": {"content": described}}]
