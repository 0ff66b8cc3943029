"""Model directory -> model, tokenizer, labels. Local files only, never the hub."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from predictor.config import Backend, ModelConfig, SaveMode, TaskName, load_model_config
from predictor.devices import DevicePlan, attention_implementation
from predictor.errors import ConfigError
from predictor.progress import Progress

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model-config.yaml"
LABELS_FILE = "index_to_name.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")  # fmt: skip
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")


@dataclass(frozen=True)
class ModelSource:
    """A model directory ready to load: unpacked from a .mar archive when there was one."""

    path: Path
    config_path: Path | None
    serialized_file: str | None = None
    version: str | None = None
    archive: Path | None = None


def listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return ", ".join(names[:30]) or "nothing"


def _unpack_mar(archive: Path, cache_dir: Path) -> Path:
    """Unpack a TorchServe .mar (a zip) once into the cache, refusing paths that escape it."""
    digest = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"{archive.stem}-{digest}"
    if (target / ".complete").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=cache_dir))
    try:
        with zipfile.ZipFile(archive) as zf, Progress(
            sum(m.file_size for m in zf.infolist()), f"unpacking {archive.name}", unit="B"
        ) as progress:
            members = zf.infolist()
            logger.info("unpacking %s (%d files) into %s", archive.name, len(members), target)
            for member in members:
                dest = (partial / member.filename).resolve()
                if not dest.is_relative_to(partial.resolve()):
                    raise ConfigError(f"{archive}: member {member.filename!r} escapes the archive")
                zf.extract(member, partial)
                progress.update(member.file_size)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, zipfile.BadZipFile):
            raise ConfigError(f"{archive}: not a valid .mar (zip) archive: {exc}") from exc
        raise
    (partial / ".complete").touch()
    try:
        partial.rename(target)
    except OSError:  # another process unpacked the same archive first
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / ".complete").exists():
            raise
    return target


def resolve_model_source(model_dir: Path, config_path: Path | None, cache_dir: Path) -> ModelSource:
    """Find the model in model_dir: a save_pretrained folder, a TorchScript file or a .mar archive."""
    if not model_dir.is_dir():
        raise ConfigError(f"model directory {model_dir} does not exist or is not a directory")
    archives = sorted(model_dir.glob("*.mar"))
    if len(archives) > 1:
        raise ConfigError(f"model directory {model_dir}: expected at most one .mar, found "
                          + ", ".join(a.name for a in archives))
    if archives and not (model_dir / "config.json").exists():
        return _source_from_mar(archives[0], config_path, cache_dir)
    local = model_dir / MODEL_CONFIG_FILE
    return ModelSource(path=model_dir, config_path=config_path or (local if local.exists() else None))


def _source_from_mar(archive: Path, config_path: Path | None, cache_dir: Path) -> ModelSource:
    path = _unpack_mar(archive, cache_dir)
    manifest_file = path / "MAR-INF" / "MANIFEST.json"
    try:
        document = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{archive}: cannot read MAR-INF/MANIFEST.json: {exc}") from exc
    manifest = document.get("model", {}) if isinstance(document, Mapping) else None
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"{archive}: MAR-INF/MANIFEST.json: expected {{\"model\": {{...}}}}, got {document!r:.200}")
    if config_path is None:
        named = manifest.get("configFile")
        candidate = path / (named or MODEL_CONFIG_FILE)
        config_path = candidate if candidate.exists() else None
    return ModelSource(
        path=path,
        config_path=config_path,
        serialized_file=manifest.get("serializedFile"),
        version=manifest.get("modelVersion"),
        archive=archive,
    )


def load_source_config(source: ModelSource) -> ModelConfig:
    """The model's config: --model_config, else model-config.yaml in the model dir or the .mar."""
    if source.config_path is None:
        raise ConfigError(
            f"no {MODEL_CONFIG_FILE} in {source.path} (found: {listing(source.path)}); "
            "pass --model_config or add the file next to the model"
        )
    return load_model_config(source.config_path)


def parse_labels(raw: Any) -> list[str]:
    """index_to_name.json in TorchServe's formats: {"0": name, ...}, {"label_list": "[O, B-X]"}, or a list."""
    if isinstance(raw, Mapping) and "label_list" in raw:
        raw = raw["label_list"]
        if isinstance(raw, str):
            raw = [item.strip().strip("'\"") for item in raw.strip().strip("[]").split(",") if item.strip()]
    if isinstance(raw, list):
        if not raw or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"{LABELS_FILE}: expected a non-empty list of strings, got {raw!r}")
        return list(raw)
    if isinstance(raw, Mapping):
        if not raw:
            raise ConfigError(f"{LABELS_FILE}: no labels in {raw!r}")
        try:
            indexed = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{LABELS_FILE}: keys must be class indices, got {sorted(raw)!r}") from exc
        if sorted(indexed) != list(range(len(indexed))) or not all(isinstance(v, str) for v in indexed.values()):
            raise ConfigError(f"{LABELS_FILE}: expected string names for indices 0..{len(indexed) - 1}, "
                              f"got {raw!r}")
        return [indexed[i] for i in range(len(indexed))]
    raise ConfigError(f"{LABELS_FILE}: expected an object or a list, got {raw!r}")


def load_labels(model_dir: Path, id2label: Mapping[int, str] | None) -> list[str] | None:
    """Labels from index_to_name.json, else the model config's id2label, else None."""
    path = model_dir / LABELS_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        return parse_labels(raw)
    if id2label:
        return [str(id2label[i]) for i in sorted(id2label)]
    return None


def has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in TOKENIZER_FILES)


def tokenizer_source(model_dir: Path, model_name: str | None) -> Path:
    """The folder the tokenizer loads from: the model dir, else handler.model_name when it is a local folder."""
    if has_tokenizer(model_dir):
        return model_dir
    looked = [str(model_dir)]
    if model_name:
        candidate = Path(model_name).expanduser()
        if not candidate.is_absolute():
            candidate = model_dir / candidate  # relative to the model, never to the working directory
        if has_tokenizer(candidate):
            return candidate
        looked.append(str(candidate))
    raise ConfigError(
        "no tokenizer files (" + ", ".join(TOKENIZER_FILES[:4]) + "...) found; looked in "
        + " and ".join(looked) + f" (model dir holds: {listing(model_dir)}). Save the tokenizer next to the "
        "model (tokenizer.save_pretrained) or set handler.model_name to a local tokenizer folder"
    )


def load_tokenizer(model_dir: Path, config: ModelConfig) -> Any:
    """Load the tokenizer from local files, set up for the task's padding side."""
    from transformers import AutoTokenizer

    handler = config.handler
    source = tokenizer_source(model_dir, handler.model_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=True, do_lower_case=handler.do_lower_case,
            trust_remote_code=handler.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer from {source}: {exc}") from exc
    if handler.mode is TaskName.TEXT_GENERATION:
        tokenizer.padding_side = "left"  # generation continues from the last token of every row
        tokenizer.truncation_side = "left"  # keep the end of an over-long prompt
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    elif handler.mode in (TaskName.QUESTION_ANSWERING, TaskName.TOKEN_CLASSIFICATION) and not tokenizer.is_fast:
        raise ConfigError(f"{handler.mode.value} needs a fast tokenizer (character offsets); {source} has none")
    logger.info("tokenizer %s from %s", type(tokenizer).__name__, source)
    return tokenizer


class ModelRunner:
    """Calls an eager, compiled or TorchScript model the same way and returns its outputs as a tuple."""

    def __init__(self, module: Any, *, torchscript: bool, device: str, config: Any | None) -> None:
        self.module = module
        self.torchscript = torchscript
        self.device = torch.device(device)
        self.config = config  # transformers PretrainedConfig, or None for a bare TorchScript file

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


def _onnx(runner: ModelRunner, config: ModelConfig, plan: DevicePlan, source: ModelSource, cache_dir: Path) -> Any:
    if plan.is_cuda or runner.torchscript or config.handler.mode is TaskName.TEXT_GENERATION:
        logger.info("backend onnx applies to eager encoder models on CPU; running eager")
        return runner
    from predictor.onnx_backend import load_onnx

    try:
        onnx_runner = load_onnx(runner, source.path, cache_dir)
    except ConfigError:
        raise
    except Exception as exc:  # exporter limits vary by architecture: serve eager rather than not at all
        logger.warning("backend onnx unavailable for this model (%s: %s); running eager", type(exc).__name__, exc)
        return runner
    logger.info("backend onnx: ONNX Runtime on CPU")
    return onnx_runner


def apply_optimizations(runner: ModelRunner, config: ModelConfig, plan: DevicePlan, source: ModelSource,
                        cache_dir: Path) -> Any:
    """ONNX Runtime, int8 dynamic quantisation (CPU) or torch.compile, as configured; fall back with a log line."""
    if config.handler.backend is Backend.ONNX:
        return _onnx(runner, config, plan, source, cache_dir)
    if config.handler.backend is Backend.INT8:
        if plan.is_cuda or runner.torchscript:
            logger.info("backend int8 applies to eager models on CPU; running unquantised")
        else:
            from torch.ao.quantization import quantize_dynamic

            runner.module = quantize_dynamic(runner.module, {torch.nn.Linear}, dtype=torch.qint8)
            logger.info("backend int8: dynamic quantisation of Linear layers")
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
            logger.info("pt2.compile: torch.compile(backend=%s, mode=%s)", pt2.backend, pt2.mode)
    return runner


def load_model(source: ModelSource, config: ModelConfig, plan: DevicePlan, cache_dir: Path) -> Any:
    """Load the model as save_mode says and apply the configured optimisations."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if config.handler.save_mode is SaveMode.TORCHSCRIPT:
        runner = load_torchscript(source, config, plan)
    else:
        runner = load_pretrained(source, config, plan)
    return apply_optimizations(runner, config, plan, source, cache_dir)


def check_label_count(labels: Sequence[str] | None, num_outputs: int | None, where: str) -> None:
    """A label map must name exactly the model's outputs."""
    if labels is not None and num_outputs is not None and len(labels) != num_outputs:
        raise ConfigError(f"{where}: {len(labels)} labels but the model has {num_outputs} outputs")
