"""GeneralizedHandler: the core's front door (load, parse, predict, explain, stream)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from predictor import artifacts, loading
from predictor.batching import BatchItem, plan_batches
from predictor.config import ModelConfig, TaskName
from predictor.devices import DevicePlan, detect_device
from predictor.errors import (
    ConfigError,
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    OutOfResourcesError,
    PredictorError,
)
from predictor.tasks import Encoded, Explanation, Instance, Prediction, StreamEnd, Task, build_task
from predictor.tasks.generation_scheduler import GenerationScheduler, SchedulesGenerations

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "1.0"


class BatchObserver(Protocol):
    """Receives one call per forward pass (for metrics)."""

    def __call__(self, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or CPU allocation failure, however torch reports it."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class LoadedState:
    """Everything load() produced; replaced whole, never mutated."""

    config: ModelConfig
    task: Task
    labels: list[str] | None
    version: str
    device: DevicePlan
    source: artifacts.ModelSource


class GeneralizedHandler:
    """One model per process, configured by model-config.yaml: TorchServe's generalized handler, fixed."""

    def __init__(self, model_dir: Path, *, config_path: Path | None = None, version: str | None = None,
                 cache_dir: Path | None = None,
                 archive_limits: artifacts.ArchiveLimits | None = None,
                 resolved: artifacts.ResolvedModel | None = None) -> None:
        """`resolved`: the model directory as the caller already resolved it (the CLI does, to fail before
        the port opens), so load() neither unpacks nor reads the config again; else load() resolves it."""
        self.model_dir = Path(model_dir)
        self.resolved = resolved
        self.archive_limits = archive_limits
        self.config_path = config_path
        self.requested_version = version
        self.cache_dir = cache_dir or artifacts.default_cache_dir(os.environ)
        self._state: LoadedState | None = None
        self.observer: BatchObserver | None = None
        # Test hook, off in production: called with the batch size before every forward pass.
        self.fault_hook: Callable[[int], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Load config, tokenizer and model, then warm up; raises ConfigError on any problem."""
        started = time.perf_counter()
        artifacts.offline_environment(os.environ)
        resolved = self.resolved or artifacts.resolve_model(self.model_dir, self.config_path, self.cache_dir,
                                                            self.archive_limits)
        source, config = resolved.source, resolved.config
        handler = config.handler
        plan = detect_device(handler.device, handler.dtype, handler.model_parallel)
        tokenizer = artifacts.load_tokenizer(source.path, config)
        runner = loading.load_model(source, config, plan, self.cache_dir)
        labels = None
        if handler.mode in (TaskName.SEQUENCE_CLASSIFICATION, TaskName.TOKEN_CLASSIFICATION):
            labels = artifacts.load_labels(source.path, getattr(runner.config, "id2label", None))
            num_outputs = getattr(runner.config, "num_labels", None) if runner.config is not None else None
            artifacts.check_label_count(labels, num_outputs or handler.num_labels, "index_to_name.json")
            if handler.num_labels and num_outputs and handler.num_labels != num_outputs:
                raise ConfigError(f"handler.num_labels: {handler.num_labels}, but the model has {num_outputs} outputs")
        version = self.requested_version or config.model_version or source.version or DEFAULT_VERSION
        task = build_task(runner, tokenizer, config, labels)
        state = LoadedState(config=config, task=task, labels=labels, version=str(version), device=plan, source=source)
        self._warm_up(state)
        self._state = state
        logger.info("model loaded: mode=%s version=%s device=%s in %.1fs", handler.mode.value, version,
                    plan.device, time.perf_counter() - started)

    def warm_up(self) -> None:
        """One sample inference on the calling thread (a thread with its own torch thread count builds
        its own compiled engine and OpenMP team here rather than on its first request)."""
        self._warm_up(self.state)

    def _warm_up(self, state: LoadedState) -> None:
        task = state.task
        try:
            instance = task.parse(task.sample_input())
            [encoded] = task.encode([instance])
            if state.config.handler.mode is not TaskName.TEXT_GENERATION:
                outputs = task.logits([encoded])  # type: ignore[attr-defined]
                self._check_outputs(state, outputs)
            task.run([encoded])
        except PredictorError:
            raise
        except Exception as exc:
            raise ConfigError(f"warm-up inference failed: {exc}") from exc

    @staticmethod
    def _check_outputs(state: LoadedState, outputs: Any) -> None:
        """TorchScript models carry no config: check the label map against real outputs."""
        if state.labels is not None and isinstance(outputs, torch.Tensor):
            artifacts.check_label_count(state.labels, int(outputs.shape[-1]), "index_to_name.json")

    @property
    def ready(self) -> bool:
        """True once load() has finished and the warm-up passed."""
        return self._state is not None

    @property
    def state(self) -> LoadedState:
        """The loaded state; ModelNotReadyError before load() finished."""
        if self._state is None:
            raise ModelNotReadyError("the model is not loaded yet")
        return self._state

    @property
    def config(self) -> ModelConfig:
        """The validated model config."""
        return self.state.config

    @property
    def mode(self) -> TaskName:
        """The handler mode."""
        return self.state.config.handler.mode

    @property
    def backend(self) -> str:
        """What runs the forward passes: eager, torchscript, onnx, openvino, int8 (+compile)."""
        task: Any = self.state.task  # the Task protocol does not name the runner
        return str(getattr(task.model, "backend", "eager"))

    @property
    def version(self) -> str:
        """The served model version."""
        return self.state.version

    # ---- requests --------------------------------------------------------------------------
    def parse(self, raw: Any) -> Instance:
        """One request item -> Instance; InvalidRequestError (400/413) for bad input."""
        return self._parsed(self.state.task.parse, raw)

    def parse_chat(self, messages: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any]) -> Instance:
        """A chat conversation -> Instance (text generation models with a chat template); InvalidRequestError else."""
        task = self.state.task
        if not hasattr(task, "parse_chat"):
            raise InvalidRequestError(f"chat messages are only for text_generation; this model is {self.mode.value}")
        return self._parsed(task.parse_chat, messages, parameters)

    def _parsed(self, parse: Callable[..., Instance], *args: Any) -> Instance:
        try:
            return parse(*args)
        except PredictorError:
            raise
        except Exception as exc:  # parsing touches only the request: what it cannot read is bad input
            raise InvalidRequestError(f"cannot read the input: {type(exc).__name__}: {exc}") from exc

    def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Exactly one prediction per instance, in order, for callers without the serving queue.

        Plans forward passes as the queue does (plan_batches under batchSize and the token budget),
        then runs each with run().
        """
        config = self.state.config  # ModelNotReadyError before load(), even for no instances
        if not instances:
            return []
        encoded = self.encode(instances)
        plan = plan_batches([self.batch_item(e) for e in encoded], max_batch=max(1, config.batch_size),
                            max_tokens=self.max_batch_tokens)
        results: list[Prediction] = [None] * len(encoded)
        for group in plan.groups:
            outputs = self.run([encoded[i] for i in group])
            for i, out in zip(group, outputs, strict=True):
                results[i] = out
        return results

    def encode(self, instances: Sequence[Instance]) -> list[Encoded]:
        """Tokenise instances, unpadded, one Encoded each; InvalidRequestError (400/413) for bad input."""
        return self._call(self.state.task.encode, instances)  # type: ignore[no-any-return]

    @property
    def max_batch_tokens(self) -> int:
        """handler.max_batch_tokens: padded tokens one forward pass may hold (a longer input runs alone)."""
        return self.state.config.handler.max_batch_tokens

    @staticmethod
    def batch_item(encoded: Encoded) -> BatchItem:
        """What one encoded input costs a forward pass: its rows (QA windows; a generation prompt is one row),
        each padded to the longest row of the pass."""
        return BatchItem(encoded.length, len(encoded.rows))

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """One forward pass over exactly this batch (halved and retried on out-of-memory); one result each."""
        if not batch:
            return []
        return self._run_splitting(list(batch))

    def _run_splitting(self, batch: list[Encoded]) -> list[Prediction]:
        try:
            return self._run_once(batch)
        except OutOfResourcesError:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            logger.warning("out of memory on a batch of %d; retrying as %d + %d", len(batch), half, len(batch) - half)
            return self._run_splitting(batch[:half]) + self._run_splitting(batch[half:])

    def _run_once(self, batch: list[Encoded]) -> list[Prediction]:
        started = time.perf_counter()
        if self.fault_hook is not None:
            self._call(self.fault_hook, len(batch))
        outputs = self._call(self.state.task.run, batch)
        if self.observer is not None:
            longest = max(e.length for e in batch)
            rows = sum(len(e.rows) for e in batch)
            real = sum(e.length * len(e.rows) for e in batch)
            self.observer(len(batch), real, longest * rows, time.perf_counter() - started)
        return outputs

    def explain(self, instance: Instance) -> Explanation:
        """Captum attributions for one instance, in TorchServe's shape."""
        return self._call(self.state.task.explain, instance)

    def stream(self, instance: Instance) -> Iterator[str | StreamEnd]:
        """Text-generation chunks as they are produced (their concatenation is the full answer), then a StreamEnd."""
        task = self.state.task
        if not hasattr(task, "stream"):
            raise InvalidRequestError(f"streaming is only for text_generation; this model is {self.mode.value}")
        iterator = task.stream(instance)
        while True:
            try:
                chunk = self._call(next, iterator)
            except StopIteration:
                return
            yield chunk

    # ---- scheduled generation (greedy requests decoded together, joining between steps) ------
    def schedules(self, instance: Instance) -> bool:
        """True when this generation request goes through the task's scheduler (submit + drive)."""
        task = self.state.task
        return isinstance(task, SchedulesGenerations) and task.schedules(instance)

    def submit_generation(self, instance: Instance, emit: Callable[[Any], None], *, stream: bool) -> None:
        """Queue a scheduled generation: `emit` gets, on the decoding thread, its answer (streamed: the
        chunks and a StreamEnd) or a PredictorError. Nothing is decoded until drive_generation runs."""
        def wrapped(item: Any) -> None:
            emit(_wrapped(item) if isinstance(item, Exception) else item)

        task = self.state.task
        if not isinstance(task, SchedulesGenerations):
            raise InvalidRequestError(f"mode {self.mode.value} does not schedule generations")
        task.submit(instance, wrapped, stream=stream)

    def drive_generation(self, on_step: Callable[[], None] | None = None) -> None:
        """Decode scheduled generations on this thread until none is left (at once if another thread is)."""
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.drive(on_step)

    def _scheduler(self) -> GenerationScheduler | None:
        task = self._state.task if self._state is not None else None
        return task.scheduler if isinstance(task, SchedulesGenerations) else None

    @property
    def generation_waiting(self) -> int:
        """Scheduled generations submitted and not decoding yet."""
        scheduler = self._scheduler()
        return 0 if scheduler is None else scheduler.waiting

    @property
    def generation_pending(self) -> bool:
        """True while scheduled generations are queued or being decoded."""
        scheduler = self._scheduler()
        return scheduler is not None and scheduler.has_work

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run core work, wrapping foreign exceptions once, at this boundary."""
        try:
            return fn(*args)
        except (PredictorError, StopIteration):
            raise
        except Exception as exc:
            raise _wrapped(exc) from exc


def _wrapped(exc: Exception) -> PredictorError:
    """A foreign exception as the core error it means (out of memory, or an inference failure)."""
    if isinstance(exc, PredictorError):
        return exc
    if is_out_of_memory(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return OutOfResourcesError(f"out of memory: {exc}")
    logger.error("inference failed", exc_info=exc)
    error = InferenceError(f"inference failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
