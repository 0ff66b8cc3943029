"""model-config.yaml -> validated dataclasses: TorchServe spelling, defaults, errors naming key and value."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from predictor.config import (
    Backend,
    CompileConfig,
    HandlerConfig,
    Limits,
    ModelConfig,
    SaveMode,
    TaskName,
    load_model_config,
)
from predictor.errors import ConfigError

# The original handler's model-config.yaml plus TorchServe frontend keys and every key of ours.
FULL_YAML = """
minWorkers: 2
maxWorkers: 3
batchSize: 4
maxBatchDelay: 100
responseTimeout: 90
jobQueueSize: 10
maxRetryTimeoutInSec: 30
modelVersion: "2.1"
deviceType: gpu
deviceIds: [0, 1]
parallelType: pp
parallelLevel: 2
torchrun:
  nproc-per-node: 2
useVenv: false
continuousBatching: false
sequenceBatching: false
maxSequenceJobQueueSize: 4
pt2:
  compile:
    enable: true
    backend: inductor
    mode: reduce-overhead
limits:
  max_body_bytes: 1000
  max_instances: 4
  max_text_chars: 50
handler:
  model_name: bert-base-cased
  mode: token_classification
  do_lower_case: false
  num_labels: 9
  save_mode: torchscript
  serialized_file: traced_model.pt
  max_length: 150
  captum_explanation: true
  embedding_name: bert
  BetterTransformer: true
  model_parallel: true
  stream: true
  details: true
  top_k: 3
  max_new_tokens: 10
  max_new_tokens_limit: 20
  doc_stride: 32
  max_answer_length: 15
  aggregation_strategy: FIRST
  n_steps: 7
  internal_batch_size: 2
  max_explain_steps: 9
  dtype: bfloat16
  device: cuda
  trust_remote_code: true
  backend: int8
"""


def config_with(handler: dict[str, Any] | None = None, **top: Any) -> ModelConfig:
    """ModelConfig.from_yaml of a minimal document with overrides."""
    return ModelConfig.from_yaml({"handler": {"mode": "sequence_classification", **(handler or {})}, **top})


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- reading every key ------------------------------------------------------------------------
def test_minimal_config_gets_every_default() -> None:
    config = config_with()
    h = config.handler
    assert h.mode is TaskName.SEQUENCE_CLASSIFICATION
    assert (h.model_name, h.save_mode, h.serialized_file, h.max_length) == (
        None,
        SaveMode.PRETRAINED,
        None,
        128,
    )
    assert (h.do_lower_case, h.num_labels, h.captum_explanation, h.embedding_name) == (
        None,  # absent: the tokenizer as saved
        None,
        False,
        None,
    )
    assert (h.better_transformer, h.model_parallel, h.stream, h.details) == (False, False, False, False)
    assert (h.top_k, h.max_new_tokens, h.max_new_tokens_limit) == (5, 150, 1024)
    assert (h.doc_stride, h.max_answer_length, h.aggregation_strategy) == (128, 30, "simple")
    assert (h.n_steps, h.internal_batch_size, h.max_explain_steps) == (50, 16, 500)
    assert (h.dtype, h.device, h.trust_remote_code, h.backend) == ("auto", "auto", False, Backend.AUTO)
    assert config.compile == CompileConfig(enable=False, backend="inductor", mode=None)
    assert config.limits == Limits(max_body_bytes=4 * 1024 * 1024, max_instances=64, max_text_chars=200_000)
    assert (config.min_workers, config.max_workers, config.batch_size) == (None, None, 8)
    assert (config.max_batch_delay_ms, config.response_timeout_s, config.job_queue_size) == (5.0, 120.0, 256)
    assert (config.model_version, config.max_retry_timeout_s) == (None, 300.0)


def test_every_key_of_a_full_torchserve_config_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model-config.yaml"
    path.write_text(FULL_YAML)
    with caplog.at_level(logging.WARNING, logger="predictor"):
        config = load_model_config(path)
    assert warnings_of(caplog) == []  # TorchServe-only keys (deviceType, torchrun...) are accepted silently
    h = config.handler
    assert h == HandlerConfig(
        mode=TaskName.TOKEN_CLASSIFICATION,
        model_name="bert-base-cased",
        save_mode=SaveMode.TORCHSCRIPT,
        serialized_file="traced_model.pt",
        max_length=150,
        do_lower_case=False,
        num_labels=9,
        captum_explanation=True,
        embedding_name="bert",
        better_transformer=True,
        model_parallel=True,
        stream=True,
        details=True,
        top_k=3,
        max_new_tokens=10,
        max_new_tokens_limit=20,
        doc_stride=32,
        max_answer_length=15,
        aggregation_strategy="first",
        n_steps=7,
        internal_batch_size=2,
        max_explain_steps=9,
        dtype="bfloat16",
        device="cuda",
        trust_remote_code=True,
        backend=Backend.INT8,
    )
    assert config.compile == CompileConfig(enable=True, backend="inductor", mode="reduce-overhead")
    assert config.limits == Limits(max_body_bytes=1000, max_instances=4, max_text_chars=50)
    assert (config.min_workers, config.max_workers, config.batch_size) == (2, 3, 4)
    assert (config.max_batch_delay_ms, config.response_timeout_s, config.job_queue_size) == (100.0, 90.0, 10)
    assert (config.model_version, config.max_retry_timeout_s) == ("2.1", 30.0)


@pytest.mark.parametrize("mode", [t.value for t in TaskName])
def test_each_mode_is_accepted(mode: str) -> None:
    assert config_with({"mode": mode}).handler.mode is TaskName(mode)


def test_config_is_read_only() -> None:
    config = config_with()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.handler.max_length = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "quoted", "field"),
    [
        ("do_lower_case", "false", "do_lower_case"),
        ("captum_explanation", "true", "captum_explanation"),
        ("BetterTransformer", "True", "better_transformer"),
        ("model_parallel", "TRUE", "model_parallel"),
        ("stream", "true", "stream"),
        ("details", "true", "details"),
        ("trust_remote_code", "true", "trust_remote_code"),
    ],
)
def test_quoted_booleans(tmp_path: Path, key: str, quoted: str, field: str) -> None:
    path = tmp_path / "model-config.yaml"
    path.write_text(f'handler:\n  mode: sequence_classification\n  {key}: "{quoted}"\n')
    assert getattr(load_model_config(path).handler, field) is (quoted.lower() == "true")


def test_model_version_unquoted_number_becomes_a_string() -> None:
    assert (
        ModelConfig.from_yaml(
            yaml.safe_load("modelVersion: 2.0\nhandler: {mode: text_generation}")
        ).model_version
        == "2.0"
    )


# ---- pt2 -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pt2", "expected"),
    [
        (None, CompileConfig(enable=False, backend="inductor", mode=None)),
        ("inductor", CompileConfig(enable=True, backend="inductor", mode=None)),
        ({"compile": {"enable": True}}, CompileConfig(enable=True, backend="inductor", mode=None)),
        (
            {"compile": {"enable": "true", "backend": "aot_eager", "mode": "max-autotune"}},
            CompileConfig(enable=True, backend="aot_eager", mode="max-autotune"),
        ),
        ({"compile": {"enable": False, "backend": "inductor"}}, CompileConfig(enable=False)),
    ],
)
def test_pt2_forms(pt2: Any, expected: CompileConfig) -> None:
    assert config_with(pt2=pt2).compile == expected


@pytest.mark.parametrize(
    ("pt2", "names"),
    [
        (5, ["pt2", "5"]),
        (["inductor"], ["pt2", "['inductor']"]),
        ({"compile": "yes"}, ["pt2.compile", "'yes'"]),
        ({"compile": {"enable": "maybe"}}, ["pt2.compile.enable", "'maybe'"]),
        ({"compile": {"enable": True, "backend": 3}}, ["pt2.compile.backend", "3"]),
        ({"compile": {"enable": True, "mode": 4}}, ["pt2.compile.mode", "4"]),
    ],
)
def test_bad_pt2_is_a_config_error(pt2: Any, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(pt2=pt2)
    for name in names:
        assert name in str(err.value)


def test_unknown_pt2_compile_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"pt2\.compile\.mode.*'fastest'"):
        config_with(pt2={"compile": {"enable": True, "mode": "fastest"}})


# ---- invalid values name the key and the value --------------------------------------------------
BAD_HANDLER_VALUES = [
    ("mode", "summarization"), ("mode", 3),
    ("max_length", 0), ("max_length", -5), ("max_length", True), ("max_length", False),
    ("max_length", "128"), ("max_length", 12.5),
    ("save_mode", "onnx"), ("save_mode", ""), ("save_mode", 1),
    ("do_lower_case", "yes"), ("do_lower_case", 1),
    ("num_labels", 0), ("num_labels", True), ("num_labels", "2"),
    ("top_k", 0), ("max_new_tokens", 0), ("max_new_tokens", 1.5), ("max_new_tokens_limit", -1),
    ("doc_stride", 0), ("max_answer_length", 0), ("aggregation_strategy", "mean"),
    ("dtype", "fp16"), ("dtype", "float64"), ("device", "tpu"), ("device", "cuda:1"), ("backend", "tensorrt"),
    ("model_name", 5), ("embedding_name", ["bert"]), ("serialized_file", 1.0),
    ("BetterTransformer", "maybe"), ("captum_explanation", 2), ("model_parallel", "on"),
    ("n_steps", 0), ("internal_batch_size", -1), ("max_explain_steps", True),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), BAD_HANDLER_VALUES)
def test_bad_handler_value_names_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        config_with({key: value})
    assert f"handler.{key}" in str(err.value)
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    ("top", "key", "value"),
    [
        ({"batchSize": 0}, "batchSize", 0),
        ({"minWorkers": 0}, "minWorkers", 0),
        ({"maxWorkers": "2"}, "maxWorkers", "2"),
        ({"jobQueueSize": True}, "jobQueueSize", True),
        ({"maxBatchDelay": -1}, "maxBatchDelay", -1),
        ({"maxBatchDelay": True}, "maxBatchDelay", True),
        ({"maxBatchDelay": float("nan")}, "maxBatchDelay", float("nan")),
        ({"responseTimeout": -3}, "responseTimeout", -3),
        ({"maxRetryTimeoutInSec": float("inf")}, "maxRetryTimeoutInSec", float("inf")),
        ({"limits": {"max_text_chars": 0}}, "limits.max_text_chars", 0),
        ({"limits": {"max_body_bytes": "1MB"}}, "limits.max_body_bytes", "1MB"),
        ({"limits": {"max_instances": True}}, "limits.max_instances", True),
    ],
)
def test_bad_top_level_value_names_key_and_value(top: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        config_with(**top)
    assert key in str(err.value)
    assert repr(value) in str(err.value)


def test_max_new_tokens_above_the_limit_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        config_with({"max_new_tokens": 300, "max_new_tokens_limit": 200})
    assert "handler.max_new_tokens" in str(err.value)
    assert "300" in str(err.value) and "200" in str(err.value)
    at_limit = config_with({"max_new_tokens": 200, "max_new_tokens_limit": 200}).handler
    assert (at_limit.max_new_tokens, at_limit.max_new_tokens_limit) == (200, 200)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        config_with({"max_new_tokens_limit": 100})  # the default max_new_tokens (150) exceeds it


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "top level"),
        ("just text", "top level"),
        ({"minWorkers": 1}, "handler"),
        ({"handler": "sequence_classification"}, "handler"),
        ({"handler": {"max_length": 10}}, "handler.mode"),
        ({"handler": {"mode": "sequence_classification"}, "limits": [1]}, "limits"),
    ],
)
def test_malformed_documents(doc: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_yaml(doc)


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_model_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("handler: {mode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(broken)


# ---- unknown keys warn once, naming the closest known key -------------------------------------
@pytest.mark.parametrize(
    ("doc", "unknown", "closest"),
    [
        ({"handler": {"mode": "sequence_classification", "max_lenght": 64}}, "max_lenght", "max_length"),
        (
            {"handler": {"mode": "sequence_classification", "bettertransformer": True}},
            "bettertransformer",
            "BetterTransformer",
        ),
        ({"handler": {"mode": "sequence_classification"}, "batchsize": 4}, "batchsize", "batchSize"),
        (
            {"handler": {"mode": "sequence_classification"}, "limits": {"max_text_char": 5}},
            "max_text_char",
            "max_text_chars",
        ),
        (
            {"handler": {"mode": "sequence_classification"}, "pt2": {"compile": {"enabled": True}}},
            "enabled",
            "enable",
        ),
    ],
)
def test_unknown_key_logs_one_warning_with_the_closest_key(
    caplog: pytest.LogCaptureFixture, doc: dict[str, Any], unknown: str, closest: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="predictor"):
        config = ModelConfig.from_yaml(doc)
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert repr(unknown) in warnings[0] and repr(closest) in warnings[0]
    assert config.handler.max_length == 128  # the misspelt key is ignored, not applied


def test_unrelated_unknown_key_is_named_without_a_guess(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="predictor"):
        config_with({"zzqqxx": 1})
    [warning] = warnings_of(caplog)
    assert "'zzqqxx'" in warning and "did you mean" not in warning


def test_torchserve_only_keys_are_silent(caplog: pytest.LogCaptureFixture) -> None:
    doc = {
        "deviceType": "gpu",
        "deviceIds": [0],
        "parallelType": "tp",
        "parallelLevel": 2,
        "torchrun": {"nproc-per-node": 2},
        "useVenv": True,
        "continuousBatching": True,
        "sequenceBatching": False,
        "maxSequenceJobQueueSize": 3,
    }
    with caplog.at_level(logging.DEBUG, logger="predictor"):
        config = config_with(**doc)
    assert warnings_of(caplog) == []
    assert config.batch_size == 8
