"""model-config.yaml -> frozen, validated dataclasses (TorchServe spelling in YAML, snake_case in Python)."""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from predictor.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TaskName(str, Enum):
    """The four handler modes of TorchServe's generalized Transformers handler."""

    SEQUENCE_CLASSIFICATION = "sequence_classification"
    TOKEN_CLASSIFICATION = "token_classification"
    QUESTION_ANSWERING = "question_answering"
    TEXT_GENERATION = "text_generation"


class SaveMode(str, Enum):
    """How the weights were saved: a save_pretrained folder or a TorchScript file."""

    PRETRAINED = "pretrained"
    TORCHSCRIPT = "torchscript"


class Backend(str, Enum):
    """Which runtime runs the forward pass of encoder models; `auto`: the fastest that agrees with eager."""

    AUTO = "auto"
    EAGER = "eager"
    ONNX = "onnx"
    OPENVINO = "openvino"
    INT8 = "int8"


_DTYPES = ("auto", "float32", "float16", "bfloat16")
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DEVICES = ("auto", "cpu", "cuda")


def _closest(key: str, known: set[str]) -> str:
    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _warn_unknown(section: str, raw: Mapping[str, Any], known: set[str]) -> None:
    for key in sorted(set(raw) - known, key=str):
        logger.warning("%s: ignoring unknown key %r%s", section, key, _closest(str(key), known))


class _Reader:
    """Reads typed values out of one YAML mapping, naming `section.key` in every error."""

    def __init__(self, section: str, raw: Mapping[str, Any]) -> None:
        self.section = section
        self.raw = raw

    def _fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.section}.{key}: expected {expected}, got {value!r}")

    def get(self, key: str, default: T, check: Callable[[Any], bool], expected: str) -> T:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not check(value):
            raise self._fail(key, value, expected)
        return value  # type: ignore[no-any-return]

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"  # TorchServe configs often quote booleans
        if type(value) is not bool:
            raise self._fail(key, value, "true or false")
        return value

    def positive_int(self, key: str, default: int) -> int:
        return self.get(key, default, lambda v: type(v) is int and v > 0, "a positive integer")

    def optional_positive_int(self, key: str) -> int | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if type(value) is not int or value <= 0:
            raise self._fail(key, value, "a positive integer")
        return value

    def non_negative_number(self, key: str, default: float) -> float:
        value = self.get(
            key,
            default,
            lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0,
            "a non-negative number",
        )
        return float(value)

    def positive_number(self, key: str, default: float) -> float:
        value = self.non_negative_number(key, default)
        if value == 0:
            raise self._fail(key, self.raw.get(key), "a positive number")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self._fail(key, value, "a string")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str) or value.lower() not in allowed:
            raise self._fail(key, value, "one of " + ", ".join(allowed))
        return value.lower()


@dataclass(frozen=True)
class CompileConfig:
    """`pt2.compile`: apply torch.compile to the model."""

    enable: bool = False
    backend: str = "inductor"
    mode: str | None = None

    @classmethod
    def from_yaml(cls, raw: Any) -> CompileConfig:
        """Read `pt2:` in either TorchServe form: `pt2: {compile: {...}}` or the older `pt2: backend`."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            return cls(enable=True, backend=raw)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"pt2: expected a mapping or a backend name, got {raw!r}")
        _warn_unknown("pt2", raw, {"compile", "backend", "mode"})
        # TorchServe also accepts the flat form `pt2: {backend: inductor, mode: ...}`.
        compile_raw = raw.get("compile") or ({"enable": True, **raw} if "backend" in raw else {})
        if not isinstance(compile_raw, Mapping):
            raise ConfigError(f"pt2.compile: expected a mapping, got {compile_raw!r}")
        _warn_unknown("pt2.compile", compile_raw, {"enable", "backend", "mode"})
        read = _Reader("pt2.compile", compile_raw)
        mode = read.optional_str("mode")
        if mode is not None and mode not in _COMPILE_MODES:
            raise ConfigError(f"pt2.compile.mode: expected one of {', '.join(_COMPILE_MODES)}, got {mode!r}")
        return cls(
            enable=read.boolean("enable", False),
            backend=read.optional_str("backend") or "inductor",
            mode=mode,
        )


# Where MiniLM's forward passes on one thread stop gaining tokens/s (predictor/bench/README.md, "Figures
# behind the queue and the worker plan"): larger passes only add latency.
DEFAULT_MAX_BATCH_TOKENS = 1024

_HANDLER_KEYS = {
    # TorchServe's generalized handler
    "model_name", "mode", "do_lower_case", "num_labels", "save_mode", "max_length",
    "captum_explanation", "embedding_name", "BetterTransformer", "model_parallel",
    # ours
    "serialized_file", "stream", "details", "top_k", "max_new_tokens", "max_new_tokens_limit",
    "doc_stride", "max_answer_length", "aggregation_strategy", "n_steps", "internal_batch_size",
    "max_explain_steps", "dtype", "device", "trust_remote_code", "backend", "max_batch_tokens",
}  # fmt: skip


@dataclass(frozen=True)
class HandlerConfig:
    """The `handler:` section: what the model is and how each request is computed."""

    mode: TaskName
    model_name: str | None = None
    save_mode: SaveMode = SaveMode.PRETRAINED
    serialized_file: str | None = None
    max_length: int = 128
    do_lower_case: bool | None = None  # None: the tokenizer as saved (a cased checkpoint stays cased)
    num_labels: int | None = None
    captum_explanation: bool = False
    embedding_name: str | None = None
    better_transformer: bool = False
    model_parallel: bool = False
    stream: bool = False
    details: bool = False
    top_k: int = 5
    max_new_tokens: int = 150
    max_new_tokens_limit: int = 1024
    doc_stride: int = 128
    max_answer_length: int = 30
    aggregation_strategy: str = "simple"
    n_steps: int = 50
    internal_batch_size: int = 16
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS  # padded tokens per pass; batchSize caps the inputs
    max_explain_steps: int = 500
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    backend: Backend = Backend.AUTO

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any]) -> HandlerConfig:
        """Validate the `handler:` mapping; unknown keys are logged, bad values raise ConfigError."""
        _warn_unknown("handler", raw, _HANDLER_KEYS)
        read = _Reader("handler", raw)
        modes = tuple(t.value for t in TaskName)
        if raw.get("mode") is None:
            raise ConfigError("handler.mode: required, one of " + ", ".join(modes))
        max_length = read.positive_int("max_length", 128)
        max_new_tokens_limit = read.positive_int("max_new_tokens_limit", 1024)
        max_new_tokens = read.positive_int("max_new_tokens", 150)
        if max_new_tokens > max_new_tokens_limit:
            raise ConfigError(
                f"handler.max_new_tokens: {max_new_tokens} exceeds handler.max_new_tokens_limit "
                f"({max_new_tokens_limit})"
            )
        return cls(
            mode=TaskName(read.choice("mode", "", modes)),
            model_name=read.optional_str("model_name"),
            save_mode=SaveMode(read.choice("save_mode", "pretrained", tuple(s.value for s in SaveMode))),
            serialized_file=read.optional_str("serialized_file"),
            max_length=max_length,
            do_lower_case=read.boolean("do_lower_case", True) if "do_lower_case" in raw else None,
            num_labels=read.optional_positive_int("num_labels"),
            captum_explanation=read.boolean("captum_explanation", False),
            embedding_name=read.optional_str("embedding_name"),
            better_transformer=read.boolean("BetterTransformer", False),
            model_parallel=read.boolean("model_parallel", False),
            stream=read.boolean("stream", False),
            details=read.boolean("details", False),
            top_k=read.positive_int("top_k", 5),
            max_new_tokens=max_new_tokens,
            max_new_tokens_limit=max_new_tokens_limit,
            doc_stride=read.positive_int("doc_stride", 128),
            max_answer_length=read.positive_int("max_answer_length", 30),
            aggregation_strategy=read.choice(
                "aggregation_strategy", "simple", ("none", "simple", "first", "average", "max")
            ),
            n_steps=read.positive_int("n_steps", 50),
            internal_batch_size=read.positive_int("internal_batch_size", 16),
            max_batch_tokens=read.positive_int("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS),
            max_explain_steps=read.positive_int("max_explain_steps", 500),
            dtype=read.choice("dtype", "auto", _DTYPES),
            device=read.choice("device", "auto", _DEVICES),
            trust_remote_code=read.boolean("trust_remote_code", False),
            backend=Backend(read.choice("backend", "auto", tuple(b.value for b in Backend))),
        )


_LIMIT_KEYS = {"max_body_bytes", "max_instances", "max_text_chars", "max_stream_seconds", "max_qa_windows"}


@dataclass(frozen=True)
class Limits:
    """`limits:` what one request may ask for; larger requests get 413."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_instances: int = 64
    max_text_chars: int = 200_000
    max_stream_seconds: float = 600.0  # a stream ends here (responseTimeout bounds only its start)
    max_qa_windows: int = 64  # context windows one question-answering input may need

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any]) -> Limits:
        """Validate the `limits:` mapping."""
        _warn_unknown("limits", raw, _LIMIT_KEYS)
        read = _Reader("limits", raw)
        return cls(
            max_body_bytes=read.positive_int("max_body_bytes", cls.max_body_bytes),
            max_instances=read.positive_int("max_instances", cls.max_instances),
            max_text_chars=read.positive_int("max_text_chars", cls.max_text_chars),
            max_stream_seconds=read.positive_number("max_stream_seconds", cls.max_stream_seconds),
            max_qa_windows=read.positive_int("max_qa_windows", cls.max_qa_windows),
        )


_TOP_KEYS = {
    "handler", "pt2", "limits", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
    "responseTimeout", "jobQueueSize", "modelVersion", "maxRetryTimeoutInSec", "startupTimeout",
}  # fmt: skip
# TorchServe keys that make sense only for its own frontend; accepted silently.
_TORCHSERVE_ONLY = {"deviceType", "deviceIds", "parallelType", "parallelLevel", "torchrun", "useVenv",
                    "continuousBatching", "sequenceBatching", "maxSequenceJobQueueSize"}  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """The whole model-config.yaml."""

    handler: HandlerConfig
    compile: CompileConfig = field(default_factory=CompileConfig)
    limits: Limits = field(default_factory=Limits)
    min_workers: int | None = None  # forward passes side by side (TorchServe: worker processes); None: auto
    max_workers: int | None = None  # accepted; the worker pool is fixed at min_workers
    batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    response_timeout_s: float = 120.0
    job_queue_size: int = 256
    model_version: str | None = None
    max_retry_timeout_s: float = 300.0

    @classmethod
    def from_yaml(cls, raw: Any) -> ModelConfig:
        """Validate a parsed model-config.yaml document."""
        if not isinstance(raw, Mapping):
            raise ConfigError("model-config.yaml: expected a mapping at the top level, "
                              f"got {type(raw).__name__}")
        _warn_unknown("model-config.yaml", raw, _TOP_KEYS | _TORCHSERVE_ONLY)
        handler_raw = raw.get("handler")
        if not isinstance(handler_raw, Mapping):
            raise ConfigError("handler: expected a mapping with at least `mode`, "
                              f"got {type(handler_raw).__name__}")
        limits_raw = raw.get("limits") or {}
        if not isinstance(limits_raw, Mapping):
            raise ConfigError(f"limits: expected a mapping, got {type(limits_raw).__name__}")
        read = _Reader("model-config.yaml", raw)
        version = raw.get("modelVersion")
        if isinstance(version, float):
            logger.warning("modelVersion %r is a YAML number (1.10 reads as 1.1); quote it: modelVersion: \"%s\"",
                           version, version)
        return cls(
            handler=HandlerConfig.from_yaml(handler_raw),
            compile=CompileConfig.from_yaml(raw.get("pt2")),
            limits=Limits.from_yaml(limits_raw),
            min_workers=read.optional_positive_int("minWorkers"),
            max_workers=read.optional_positive_int("maxWorkers"),
            batch_size=read.positive_int("batchSize", 8),
            max_batch_delay_ms=read.non_negative_number("maxBatchDelay", 5.0),
            response_timeout_s=read.positive_number("responseTimeout", 120.0),
            job_queue_size=read.positive_int("jobQueueSize", 256),
            model_version=None if version is None else str(version),
            max_retry_timeout_s=read.non_negative_number("maxRetryTimeoutInSec", 300.0),
        )


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate a model-config.yaml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"model config: no file at {path}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # where and what, never the file's text (yaml quotes the line)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"model config {path}: not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or type(exc).__name__}") from None
    config = ModelConfig.from_yaml(raw)
    logger.info("model config %s: mode=%s save_mode=%s", path, config.handler.mode.value,
                config.handler.save_mode.value)
    return config
