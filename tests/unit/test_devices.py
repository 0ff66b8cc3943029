"""Device, dtype and device-map selection: pure decisions tested without a GPU, plus one real CUDA run."""

from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from predictor import devices
from predictor.devices import DevicePlan, attention_implementation, detect_device, plan_device
from predictor.errors import ConfigError
from predictor.handler import GeneralizedHandler


# ---- plan_device ------------------------------------------------------------------------------
@pytest.mark.parametrize("requested", ["auto", "cpu"])
@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_cpu_only_machine_runs_float32_on_cpu(requested: str, dtype: str) -> None:
    assert plan_device(requested, dtype, False, 0, False) == DevicePlan("cpu", torch.float32, None)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_falls_back_to_float32_on_cpu(dtype: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="predictor.devices"):
        plan = plan_device("auto", dtype, False, 0, False)
    assert plan == DevicePlan("cpu", torch.float32, None)
    assert any(dtype in r.getMessage() for r in caplog.records)


def test_explicit_cpu_wins_over_a_visible_gpu() -> None:
    assert plan_device("cpu", "float16", False, 2, True) == DevicePlan("cpu", torch.float32, None)
    assert plan_device("cpu", "auto", True, 4, True).device_map is None


@pytest.mark.parametrize("requested", ["auto", "cuda"])
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("auto", torch.float32),
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_one_gpu(requested: str, dtype: str, expected: torch.dtype) -> None:
    plan = plan_device(requested, dtype, False, 1, True)
    assert plan == DevicePlan("cuda:0", expected, None)
    assert plan.is_cuda


def test_bfloat16_unsupported_falls_back_to_float16() -> None:
    assert plan_device("cuda", "bfloat16", False, 1, bf16_supported=False).dtype == torch.float16
    assert plan_device("cuda", "float16", False, 1, bf16_supported=False).dtype == torch.float16


def test_cuda_requested_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"handler\.device.*cuda"):
        plan_device("cuda", "auto", False, 0, False)


def test_model_parallel_uses_a_device_map_only_with_several_gpus() -> None:
    several = plan_device("auto", "float16", True, 4, True)
    assert several == DevicePlan("cuda:0", torch.float16, "auto")
    assert plan_device("cuda", "auto", True, 2, True).device_map == "auto"
    assert plan_device("auto", "auto", True, 1, True) == DevicePlan("cuda:0", torch.float32, None)
    assert plan_device("auto", "auto", True, 0, False) == DevicePlan("cpu", torch.float32, None)
    assert plan_device("auto", "auto", False, 4, True).device_map is None


def test_detect_device_on_a_machine_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    assert detect_device("auto", "bfloat16", True) == DevicePlan("cpu", torch.float32, None)
    with pytest.raises(ConfigError):
        detect_device("cuda", "auto", False)


def test_detect_device_reads_the_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(devices.torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert detect_device("auto", "bfloat16", True) == DevicePlan("cuda:0", torch.float16, "auto")


# ---- attention_implementation ----------------------------------------------------------------
@pytest.fixture
def flash_attn_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))


@pytest.fixture
def flash_attn_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "flash_attn", None
    )  # makes `import flash_attn` raise ModuleNotFoundError


def test_no_better_transformer_keeps_the_default_attention(flash_attn_installed: None) -> None:
    for plan in (DevicePlan("cpu", torch.float32), DevicePlan("cuda:0", torch.float16)):
        assert attention_implementation(False, plan) is None


def test_better_transformer_on_cpu_is_sdpa(flash_attn_installed: None) -> None:
    assert attention_implementation(True, DevicePlan("cpu", torch.float32)) == "sdpa"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_better_transformer_on_a_half_precision_gpu_is_flash_attention(
    flash_attn_installed: None, dtype: torch.dtype
) -> None:
    assert attention_implementation(True, DevicePlan("cuda:0", dtype)) == "flash_attention_2"


def test_flash_attention_needs_half_precision(flash_attn_installed: None) -> None:
    assert attention_implementation(True, DevicePlan("cuda:0", torch.float32)) == "sdpa"


def test_flash_attention_needs_the_package(flash_attn_missing: None) -> None:
    assert attention_implementation(True, DevicePlan("cuda:0", torch.float16)) == "sdpa"


# ---- a real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")
def test_handler_runs_on_cuda_and_agrees_with_cpu(
    model_dirs: dict[str, Path], handlers: dict[str, GeneralizedHandler], tmp_path: Path
) -> None:
    model_dir = tmp_path / "seq-cuda"
    shutil.copytree(model_dirs["sequence_classification"], model_dir)
    doc = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    doc["handler"].update(device="cuda", dtype="float32", details=True)
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(doc))
    handler = GeneralizedHandler(model_dir, cache_dir=tmp_path / "cache")
    handler.load()
    assert handler.state.device.device == "cuda:0"
    module = handler.state.task.model.module
    assert next(module.parameters()).device.type == "cuda"
    texts = ["A short one.", "A rather longer sentence that pads the other one in the batch."]
    on_gpu = handler.predict([handler.parse(t) for t in texts])
    cpu = handlers["sequence_classification"]
    on_cpu = cpu.predict([cpu.parse({"text": t, "details": True}) for t in texts])
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g["label"] == c["label"]
        assert g["score"] == pytest.approx(c["score"], abs=1e-3)
