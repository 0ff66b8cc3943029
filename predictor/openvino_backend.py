"""`handler.backend: openvino`: encoder models converted once to OpenVINO IR and compiled for the CPU.

The torch model is converted directly by OpenVINO's PyTorch frontend (dynamic batch and sequence
dimensions); the IR (.xml + .bin) is cached by the model's hash, like the ONNX export.
"""

from __future__ import annotations

import logging
import os
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


def convert(model: torch.nn.Module, path: Path) -> None:
    """Convert to IR with dynamic batch and sequence length, float32 weights; written aside, then renamed."""
    import openvino as ov
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    started = time.perf_counter()
    names = input_names(model)
    # The frontend directly, not openvino.convert_model: that one sends usage telemetry over the network
    # unless a consent file in $HOME says no, and a server must not phone home.
    decoder = TorchScriptPythonDecoder(TupleOutputs(model), example_input=sample_inputs(model, names))
    frontend = FrontEndManager().load_by_framework("pytorch")
    ir = frontend.convert(frontend.load(decoder))
    for port, name in zip(ir.inputs, names, strict=True):
        port.get_tensor().set_names({name})
        ir.reshape({port: ov.PartialShape([-1, -1])})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = scratch_path(path)
    ov.save_model(ir, str(partial), compress_to_fp16=False)  # fp16 weights would change answers
    partial.with_suffix(".bin").rename(path.with_suffix(".bin"))
    partial.rename(path)
    logger.info("converted the model to OpenVINO IR %s in %.1fs", path, time.perf_counter() - started)


class OpenVinoRunner:
    """A ModelRunner whose forward pass is an OpenVINO compiled model; the torch model stays to explain."""

    torchscript = False
    backend = "openvino"

    def __init__(self, module: torch.nn.Module, path: Path) -> None:
        self.path = path
        self.engines = PerThreadCount(self._compile)
        self.names = input_names(module)
        self.module = module
        self.config = getattr(module, "config", None)
        self.device = torch.device("cpu")
        self.engines.current()  # the loading thread's, compiled now: a broken IR fails the load

    def _compile(self, threads: int) -> Any:
        import openvino as ov

        # One stream per model worker (the workers call side by side), each with the worker's threads,
        # as ONNX Runtime and torch run them; f32: on CPUs with bf16/AMX OpenVINO would otherwise infer
        # in bf16 and change answers.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        streams = max(1, cores // threads)
        return ov.Core().compile_model(str(self.path), "CPU", {
            "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads,
            "INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One forward pass; a fresh infer request per call, so concurrent workers never share one."""
        feeds = {k: inputs[k].cpu().numpy().astype(np.int64) for k in self.names if k in inputs}
        if "token_type_ids" in self.names and "token_type_ids" not in inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        compiled = self.engines.current()
        result = compiled.create_infer_request().infer(feeds)
        return tuple(torch.from_numpy(np.array(result[out])) for out in compiled.outputs)


def load_openvino(runner: Any, model_dir: Path, cache_dir: Path) -> OpenVinoRunner:
    """Swap an eager encoder runner for OpenVINO; raises ConfigError when openvino is missing."""
    try:
        import openvino  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError("handler.backend openvino needs openvino: "
                          "pip install 'predictor[openvino]'") from exc
    path = export_folder(model_dir, cache_dir) / f"model-{weights_digest(model_dir)}.openvino.xml"
    if not path.exists():
        convert(runner.module, path)
    return OpenVinoRunner(runner.module, path)
