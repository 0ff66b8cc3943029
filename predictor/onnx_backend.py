"""`handler.backend: onnx`: encoder models exported once to ONNX and run by ONNX Runtime.

optimum's ONNX exporters (optimum-onnx) pin transformers < 4.58, so the export uses PyTorch's own
exporter (torch.onnx, dynamo) with dynamic batch and sequence axes; the file is cached by a hash of
the weights, next to the model when that folder is writable, else in the predictor cache.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.errors import ConfigError

logger = logging.getLogger(__name__)



def input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The inputs the export takes: token_type_ids too when the model has them (BERT-style pairs)."""
    accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters
    has_types = getattr(getattr(model, "config", None), "type_vocab_size", 0) or 0
    return ("input_ids", "attention_mask", "token_type_ids") if accepts_types and has_types > 1 \
        else ("input_ids", "attention_mask")


class _TupleOutputs(torch.nn.Module):
    """The model's output tensors as a plain tuple, which the exporter can name."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return tuple(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).to_tuple())


def weights_digest(model_dir: Path) -> str:
    """A short hash of the weight and config files (size + mtime + name: cheap on multi-GB weights)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def onnx_path(model_dir: Path, cache_dir: Path) -> Path:
    """Where the export lives: next to the model if that folder is writable, else in the cache."""
    name = f"model-{weights_digest(model_dir)}.onnx"
    folder = model_dir if os.access(model_dir, os.W_OK) else cache_dir
    return folder / name


def export(model: torch.nn.Module, path: Path) -> None:
    """Export with dynamic batch and sequence length; written to a temp name, then renamed."""
    names = input_names(model)
    sample = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    tensors = {"input_ids": sample, "attention_mask": (sample != 0).long(), "token_type_ids": torch.zeros_like(sample)}
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=8192)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.onnx")
    started = time.perf_counter()
    torch.onnx.export(_TupleOutputs(model), tuple(tensors[n] for n in names), str(partial),
                      input_names=list(names), dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                      dynamo=True, external_data=False)
    partial.rename(path)
    logger.info("exported ONNX model to %s in %.1fs", path, time.perf_counter() - started)


class OnnxRunner:
    """A ModelRunner whose forward pass is an ONNX Runtime session; the torch model stays for explanations."""

    torchscript = False

    def __init__(self, module: torch.nn.Module, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads otherwise spin, stealing the CPU the event loop needs to answer probes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = input_names(module)
        self.module = module
        self.config = getattr(module, "config", None)
        self.device = torch.device("cpu")

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One forward pass through ONNX Runtime."""
        feeds = {k: inputs[k].cpu().numpy().astype(np.int64) for k in self.names if k in inputs}
        if "token_type_ids" in self.names and "token_type_ids" not in inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feeds))


def load_onnx(runner: Any, model_dir: Path, cache_dir: Path) -> Any:
    """Swap an eager encoder runner for ONNX Runtime; raises ConfigError when the backend cannot run."""
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError("handler.backend onnx needs onnxruntime: pip install 'predictor[onnx]'") from exc
    path = onnx_path(model_dir, cache_dir)
    if not path.exists():
        export(runner.module, path)
    return OnnxRunner(runner.module, path, threads=torch.get_num_threads())
