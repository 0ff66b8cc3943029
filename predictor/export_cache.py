"""What the compiled backends (ONNX Runtime, OpenVINO) share: the model's hash, the export folder, inputs.

Exports are named by a hash of the model's files, so a restart (or another process serving the same
weights) finds them instead of exporting again.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import torch

E = TypeVar("E")

_HASHED_SUFFIXES = (".safetensors", ".bin", ".json")
_EXPORT_NAME = re.compile(r"model-[0-9a-f]{16}\.")  # our own exports (an OpenVINO IR's weights are a .bin)


def input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The inputs an export takes: token_type_ids too when the model has them (BERT-style pairs)."""
    accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters
    has_types = getattr(getattr(model, "config", None), "type_vocab_size", 0) or 0
    return ("input_ids", "attention_mask", "token_type_ids") if accepts_types and has_types > 1 \
        else ("input_ids", "attention_mask")


def sample_inputs(model: torch.nn.Module, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Two rows, one padded, in the order of `names`: what the exporters trace (ids within the vocabulary)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or 30522)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]]) % vocab
    tensors = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[n] for n in names)


class TupleOutputs(torch.nn.Module):
    """The model's output tensors as a plain tuple with positional inputs, which the exporters can name."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return tuple(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).to_tuple())


def _file_sha256(path: Path) -> str:
    file_hash = hashlib.sha256()  # hashlib.file_digest is Python >= 3.11; the project supports 3.10
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            file_hash.update(chunk)
    return file_hash.hexdigest()


def weights_digest(model_dir: Path) -> str:
    """A short hash of the contents of the weight, config and tokenizer files.

    Contents, not modification times: the same weights copied or re-saved elsewhere reuse the exports.
    """
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.suffix in _HASHED_SUFFIXES and path.is_file() and not _EXPORT_NAME.match(path.name):
            digest.update(f"{path.name}:{_file_sha256(path)}".encode())
    return digest.hexdigest()[:16]


def export_folder(model_dir: Path, cache_dir: Path) -> Path:
    """Where exports live: $PREDICTOR_BACKEND_CACHE_DIR when set (a volume that outlives the pod),
    else next to the model if that folder is writable, else the predictor cache."""
    if configured := os.environ.get("PREDICTOR_BACKEND_CACHE_DIR"):
        return Path(configured)
    return model_dir if os.access(model_dir, os.W_OK) else cache_dir


def scratch_path(path: Path, kind: str = "partial") -> Path:
    """A name next to `path`, unique to this process: two servers exporting one model never share a file."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{kind}{path.suffix}")


class PerThreadCount(Generic[E]):
    """One engine (an ONNX Runtime session, an OpenVINO compiled model) per torch thread count of the
    calling thread, built on first use.

    torch's thread count is set per thread (each model worker has its own, the all-cores thread all
    cores); a compiled engine fixes its thread count when built, so each count gets its own engine.
    """

    def __init__(self, build: Callable[[int], E]) -> None:
        self._build = build
        self._engines: dict[int, E] = {}
        self._lock = threading.Lock()

    def current(self) -> E:
        """The engine for this thread's torch thread count."""
        threads = torch.get_num_threads()
        engine = self._engines.get(threads)
        if engine is None:
            with self._lock:
                engine = self._engines.get(threads)
                if engine is None:
                    engine = self._engines[threads] = self._build(threads)
        return engine

    @property
    def thread_counts(self) -> list[int]:
        """The thread counts engines have been built for."""
        return sorted(self._engines)
