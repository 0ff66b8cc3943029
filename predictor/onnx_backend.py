"""`handler.backend: onnx`: encoder models exported once to ONNX, fused, and run by ONNX Runtime.

optimum's ONNX exporters (optimum-onnx) pin transformers < 4.58, so the export uses PyTorch's own
exporters. The fused graph comes from the TorchScript-based exporter with eager attention, whose
graph ONNX Runtime's transformer optimizer recognises (attention, LayerNorm, GELU fusion); when that
fails, the plain export (torch.onnx dynamo) is served instead. Files are cached by the model's hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.errors import ConfigError
from predictor.export_cache import (
    PerThreadCount,
    TupleOutputs,
    export_folder,
    input_names,
    sample_inputs,
    scratch_path,
    weights_digest,
)

logger = logging.getLogger(__name__)


def export(model: torch.nn.Module, path: Path) -> None:
    """The plain export (dynamo) with dynamic batch and sequence length; written aside, then renamed."""
    names = input_names(model)
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=8192)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = scratch_path(path)
    started = time.perf_counter()
    torch.onnx.export(TupleOutputs(model), sample_inputs(model, names), str(partial),
                      input_names=list(names), dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                      dynamo=True, external_data=False)
    partial.rename(path)
    logger.info("exported ONNX model to %s in %.1fs", path, time.perf_counter() - started)


def _fusion_type(config: Any) -> str:
    """ONNX Runtime's optimizer type for the model: its own when listed, else BERT's (encoder patterns)."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    model_type = str(getattr(config, "model_type", "bert"))
    return model_type if model_type in MODEL_TYPES else "bert"


def export_fused(model: torch.nn.Module, path: Path) -> None:
    """TorchScript-based export with eager attention, then ONNX Runtime's transformer fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    names = input_names(model)
    config = model.config
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = scratch_path(path, "traced")
    started = time.perf_counter()
    attention = getattr(config, "_attn_implementation", None)
    # The fusions match the attention of the eager implementation, not SDPA's; the served model is restored.
    if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        torch.onnx.export(TupleOutputs(model), sample_inputs(model, names), str(traced),
                          input_names=list(names), dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
                          dynamo=False, opset_version=17)
    finally:
        if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(attention)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    try:
        optimized = optimize_model(str(traced), model_type=_fusion_type(config), num_heads=int(heads),
                                   hidden_size=int(hidden), opt_level=0)
    finally:
        traced.unlink(missing_ok=True)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    partial = scratch_path(path)
    optimized.save_model_to_file(str(partial))
    partial.rename(path)
    logger.info("exported fused ONNX model to %s in %.1fs (fused: %s)", path, time.perf_counter() - started,
                fused or "nothing")


def onnx_file(model: torch.nn.Module, folder: Path, digest: str) -> Path:
    """The cached ONNX file of the model: the fused export, else the plain one; exported when absent."""
    fused = folder / f"model-{digest}.fused.onnx"
    plain = folder / f"model-{digest}.onnx"
    for path in (fused, plain):
        if path.exists():
            return path
    try:
        export_fused(model, fused)
        return fused
    except Exception as exc:  # exporter and fusion coverage vary by architecture: the plain export still runs
        logger.warning("fused ONNX export failed (%s: %s); using the plain export", type(exc).__name__, exc)
    export(model, plain)
    return plain


class OnnxRunner:
    """A ModelRunner whose forward pass is an ONNX Runtime session; the torch model stays for explanations."""

    torchscript = False
    backend = "onnx"

    def __init__(self, module: torch.nn.Module, path: Path) -> None:
        self.path = path
        self.sessions = PerThreadCount(self._session)
        self.names = input_names(module)
        self.module = module
        self.config = getattr(module, "config", None)
        self.device = torch.device("cpu")
        self.sessions.current()  # the loading thread's, built now: a broken file fails the load

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads otherwise spin, stealing the CPU the event loop needs to answer probes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One forward pass through ONNX Runtime, on the session with this thread's torch thread count."""
        feeds = {k: inputs[k].cpu().numpy().astype(np.int64) for k in self.names if k in inputs}
        if "token_type_ids" in self.names and "token_type_ids" not in inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return tuple(torch.from_numpy(out) for out in self.sessions.current().run(None, feeds))


def load_onnx(runner: Any, model_dir: Path, cache_dir: Path) -> OnnxRunner:
    """Swap an eager encoder runner for ONNX Runtime; raises ConfigError when onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError("handler.backend onnx needs onnxruntime: pip install 'predictor[onnx]'") from exc
    path = onnx_file(runner.module, export_folder(model_dir, cache_dir), weights_digest(model_dir))
    return OnnxRunner(runner.module, path)
