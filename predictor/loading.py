"""Model folder -> a runnable model: pretrained or TorchScript, then the configured backend.

Local files only, never the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from predictor.artifacts import ModelSource, listing
from predictor.config import Backend, ModelConfig, SaveMode, TaskName
from predictor.devices import DevicePlan, attention_implementation
from predictor.errors import ConfigError

logger = logging.getLogger(__name__)

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")


class ModelRunner:
    """Calls an eager, compiled or TorchScript model the same way and returns its outputs as a tuple."""

    def __init__(self, module: Any, *, torchscript: bool, device: str, config: Any | None) -> None:
        self.module = module
        self.torchscript = torchscript
        self.device = torch.device(device)
        self.config = config  # transformers PretrainedConfig, or None for a bare TorchScript file
        self.backend = "torchscript" if torchscript else "eager"  # what runs the forward pass (metrics, logs)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run one forward pass; inputs are moved to the model's device."""
        moved = {k: v.to(self.device) for k, v in inputs.items()}
        if self.torchscript:
            # Traced like TorchServe's examples: positional (input_ids, attention_mask).
            out = self.module(moved["input_ids"], moved["attention_mask"])
        else:
            out = self.module(**moved)
        if hasattr(out, "to_tuple"):
            return tuple(out.to_tuple())
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


_AUTO_CLASSES = {
    TaskName.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
    TaskName.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    TaskName.QUESTION_ANSWERING: "AutoModelForQuestionAnswering",
    TaskName.TEXT_GENERATION: "AutoModelForCausalLM",
}


def _check_weights(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickled:
        logger.warning("loading pickle-based weights %s from %s; prefer safetensors "
                       "(model.save_pretrained(..., safe_serialization=True))", pickled, path)
        return
    raise ConfigError(f"no model weights (*.safetensors, *.bin) in {path} (found: {listing(path)})")


def load_pretrained(source: ModelSource, config: ModelConfig, plan: DevicePlan) -> ModelRunner:
    """Load a save_pretrained folder with the task's AutoModel class."""
    import transformers

    if not (source.path / "config.json").exists():
        raise ConfigError(f"save_mode pretrained needs config.json in {source.path} (found: {listing(source.path)})")
    _check_weights(source.path)
    handler = config.handler
    auto_class = getattr(transformers, _AUTO_CLASSES[handler.mode])
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": plan.dtype,
                              "trust_remote_code": handler.trust_remote_code}
    if plan.device_map:
        kwargs["device_map"] = plan.device_map
    if attn := attention_implementation(handler.better_transformer, plan):
        kwargs["attn_implementation"] = attn
        logger.info("BetterTransformer: attention implementation %s", attn)
    try:
        model = auto_class.from_pretrained(source.path, **kwargs)
    except Exception as exc:  # a corrupt file raises whatever its format's reader raises
        if isinstance(exc, ConfigError):
            raise
        weights = sorted(p.name for p in source.path.iterdir() if p.suffix in (".safetensors", ".bin"))
        raise ConfigError(f"cannot load {handler.mode.value} model from {source.path} (weights: "
                          f"{', '.join(weights) or 'none'}): {exc}") from exc
    if not plan.device_map:
        model.to(plan.device)
    model.eval()
    model.requires_grad_(False)  # explanations take gradients of activations, never of weights
    return ModelRunner(model, torchscript=False, device=plan.device, config=model.config)


def torchscript_file(source: ModelSource, serialized_file: str | None) -> Path:
    """The TorchScript file: named by the config or the .mar manifest, else the single *.pt in the folder."""
    name = serialized_file or source.serialized_file
    if name:
        path = (source.path / name).resolve()
        if not path.is_relative_to(source.path.resolve()):
            raise ConfigError(f"handler.serialized_file: {name!r} is outside the model directory")
        if not path.is_file():
            raise ConfigError(f"handler.serialized_file: {name!r} not found in {source.path} "
                              f"(found: {listing(source.path)})")
        return path
    candidates = [p for p in sorted(source.path.iterdir()) if p.suffix in _TORCHSCRIPT_SUFFIXES]
    if len(candidates) != 1:
        raise ConfigError(f"save_mode torchscript: expected one {'/'.join(_TORCHSCRIPT_SUFFIXES)} file in "
                          f"{source.path} or handler.serialized_file, found: {listing(source.path)}")
    return candidates[0]


def load_torchscript(source: ModelSource, config: ModelConfig, plan: DevicePlan) -> ModelRunner:
    """Load a TorchScript model (encoder modes only)."""
    if config.handler.mode is TaskName.TEXT_GENERATION:
        raise ConfigError("handler.save_mode: torchscript is not supported for text_generation "
                          "(generation needs the model's generate()); use pretrained")
    path = torchscript_file(source, config.handler.serialized_file)
    logger.warning("loading TorchScript %s: it runs code stored in the file; load only trusted models", path.name)
    try:
        module = torch.jit.load(str(path), map_location=plan.device)
    except RuntimeError as exc:
        raise ConfigError(f"cannot load TorchScript model {path}: {exc}") from exc
    module.eval()
    hf_config = None
    if (source.path / "config.json").exists():
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(source.path, local_files_only=True)
    return ModelRunner(module, torchscript=True, device=plan.device, config=hf_config)


_COMPILED_BACKENDS = {Backend.ONNX: "ONNX Runtime", Backend.OPENVINO: "OpenVINO"}


def _compiled(runner: ModelRunner, config: ModelConfig, plan: DevicePlan, source: ModelSource,
              cache_dir: Path) -> Any:
    """The forced `onnx` or `openvino` backend; eager when it does not apply or the export fails."""
    backend = config.handler.backend
    if plan.is_cuda or runner.torchscript or config.handler.mode is TaskName.TEXT_GENERATION:
        logger.info("backend %s applies to eager encoder models on CPU; running eager", backend.value)
        return runner
    if backend is Backend.ONNX:
        from predictor.onnx_backend import load_onnx as load
    else:
        from predictor.openvino_backend import load_openvino as load
    try:
        compiled = load(runner, source.path, cache_dir)
    except ConfigError:
        raise
    except Exception as exc:  # exporter limits vary by architecture: serve eager rather than not at all
        logger.warning("backend %s unavailable for this model (%s: %s); running eager", backend.value,
                       type(exc).__name__, exc)
        return runner
    logger.info("backend %s: %s on CPU", backend.value, _COMPILED_BACKENDS[backend])
    return compiled


def apply_optimizations(runner: ModelRunner, config: ModelConfig, plan: DevicePlan, source: ModelSource,
                        cache_dir: Path) -> Any:
    """The configured backend (auto's choice, ONNX Runtime, OpenVINO, int8), then torch.compile; fall back
    with a log line."""
    backend = config.handler.backend
    if backend in _COMPILED_BACKENDS:
        return _compiled(runner, config, plan, source, cache_dir)
    if backend is Backend.AUTO:
        from predictor.backend_choice import eager_only_reason, select_backend

        if reason := eager_only_reason(runner, config, plan):
            logger.info("backend auto: serving eager (%s)", reason)
        else:
            return select_backend(runner, config, source.path, cache_dir)
    if config.handler.backend is Backend.INT8:
        if plan.is_cuda or runner.torchscript:
            logger.info("backend int8 applies to eager models on CPU; running unquantised")
        else:
            from torch.ao.quantization import quantize_dynamic

            runner.module = quantize_dynamic(runner.module, {torch.nn.Linear}, dtype=torch.qint8)
            runner.backend = "int8"
            # Quantisation changes some labels (figures: predictor/bench/README.md), hence a warning.
            logger.warning("backend int8: dynamic quantisation of Linear layers; it can change answers: "
                           "check label agreement on your own data (python -m predictor bench) before serving")
    pt2 = config.compile
    if pt2.enable:
        if runner.torchscript:
            logger.info("pt2.compile ignored for TorchScript models")
        else:
            try:
                runner.module.compile(backend=pt2.backend, mode=pt2.mode, dynamic=True)
            except Exception as exc:  # torch rejects unknown backends/modes only here
                raise ConfigError(f"pt2.compile: backend {pt2.backend!r} / mode {pt2.mode!r} rejected by "
                                  f"torch.compile: {exc}") from exc
            runner.backend += "+compile"
            logger.info("pt2.compile: torch.compile(backend=%s, mode=%s)", pt2.backend, pt2.mode)
    return runner


def load_model(source: ModelSource, config: ModelConfig, plan: DevicePlan, cache_dir: Path) -> Any:
    """Load the model as save_mode says and apply the configured optimisations (local files only)."""
    if config.handler.save_mode is SaveMode.TORCHSCRIPT:
        runner = load_torchscript(source, config, plan)
    else:
        runner = load_pretrained(source, config, plan)
    return apply_optimizations(runner, config, plan, source, cache_dir)
