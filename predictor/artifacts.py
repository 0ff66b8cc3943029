"""Model directory -> where things are, config, tokenizer, labels. Local files only, never the hub.

The model itself is loaded by predictor.loading."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictor.config import ModelConfig, TaskName, load_model_config
from predictor.errors import ConfigError
from predictor.progress import Progress
from predictor.tokenization import PerThreadTokenizer

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model-config.yaml"
LABELS_FILE = "index_to_name.json"
CACHE_DIR_VARIABLE = "PREDICTOR_CACHE_DIR"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")  # fmt: skip


@dataclass(frozen=True)
class ModelSource:
    """A model directory ready to load: unpacked from a .mar archive when there was one."""

    path: Path
    config_path: Path | None
    serialized_file: str | None = None
    version: str | None = None
    archive: Path | None = None


@dataclass(frozen=True)
class ArchiveLimits:
    """What a .mar may unpack to; a larger archive is refused before anything is written.

    Members declare their size, and zipfile never extracts more than that, so the declared sizes
    bound what unpacking writes.
    """

    max_bytes: int = 64 * 2**30  # all members, unpacked
    max_entries: int = 10_000
    max_ratio: int = 200  # unpacked / packed size of a member over RATIO_MIN_BYTES (weights: about 1.1)

    RATIO_MIN_BYTES = 2**20  # small text files compress well and cost little

    def check(self, archive: Path, members: Sequence[zipfile.ZipInfo]) -> None:
        """ConfigError naming the exceeded limit and its flag."""
        if len(members) > self.max_entries:
            raise ConfigError(f"{archive.name}: {len(members)} entries; the limit is {self.max_entries} "
                              "(--mar_max_entries)")
        total = sum(m.file_size for m in members)
        if total > self.max_bytes:
            raise ConfigError(f"{archive.name}: unpacks to {total} bytes; the limit is {self.max_bytes} "
                              "(--mar_max_bytes)")
        for member in members:
            ratio = member.file_size / max(1, member.compress_size)
            if member.file_size > self.RATIO_MIN_BYTES and ratio > self.max_ratio:
                raise ConfigError(f"{archive.name}: member {member.filename!r} expands {ratio:.0f} times "
                                  f"({member.compress_size} -> {member.file_size} bytes); the limit is "
                                  f"{self.max_ratio} (--mar_max_ratio)")


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where .mar archives unpack and ONNX exports go: PREDICTOR_CACHE_DIR, else a predictor-cache in the
    system's temporary directory."""
    return Path(environ.get(CACHE_DIR_VARIABLE) or Path(tempfile.gettempdir()) / "predictor-cache")


def offline_environment(environ: MutableMapping[str, str]) -> None:
    """Never reach for the hub: every model and tokenizer loads from local files (a value already set wins).

    huggingface_hub reads these when first imported, so a process sets them before importing transformers.
    """
    environ.setdefault("HF_HUB_OFFLINE", "1")
    environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def inside(root: Path, name: str, what: str) -> Path:
    """root / name, refused (ConfigError) when it leaves root: absolute, `..` or a symlink out."""
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root.resolve()):
        raise ConfigError(f"{what} {name!r} points outside the archive; it must name a file inside it")
    return path


def listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return ", ".join(names[:30]) or "nothing"


def _unpack_mar(archive: Path, cache_dir: Path, limits: ArchiveLimits) -> Path:
    """Unpack a TorchServe .mar (a zip) once into the cache, refusing paths that escape it and bombs."""
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
            limits.check(archive, members)
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


def resolve_model_source(model_dir: Path, config_path: Path | None, cache_dir: Path,
                         archive_limits: ArchiveLimits | None = None) -> ModelSource:
    """Find the model in model_dir: a save_pretrained folder, a TorchScript file or a .mar archive."""
    if not model_dir.is_dir():
        raise ConfigError(f"model directory {model_dir} does not exist or is not a directory")
    archives = sorted(model_dir.glob("*.mar"))
    if len(archives) > 1:
        raise ConfigError(f"model directory {model_dir}: expected at most one .mar, found "
                          + ", ".join(a.name for a in archives))
    if archives and not (model_dir / "config.json").exists():
        return _source_from_mar(archives[0], config_path, cache_dir, archive_limits or ArchiveLimits())
    local = model_dir / MODEL_CONFIG_FILE
    return ModelSource(path=model_dir, config_path=config_path or (local if local.exists() else None))


def _source_from_mar(archive: Path, config_path: Path | None, cache_dir: Path,
                     limits: ArchiveLimits) -> ModelSource:
    path = _unpack_mar(archive, cache_dir, limits)
    manifest_file = path / "MAR-INF" / "MANIFEST.json"
    try:
        document = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{archive}: cannot read MAR-INF/MANIFEST.json: {exc}") from exc
    manifest = document.get("model", {}) if isinstance(document, Mapping) else None
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"{archive}: MAR-INF/MANIFEST.json: expected {{\"model\": {{...}}}}, "
                          f"got {type(document).__name__}")  # never the file's text
    for key in ("configFile", "serializedFile"):
        named = manifest.get(key)
        if named is not None and not isinstance(named, str):
            raise ConfigError(f"{archive}: MAR-INF/MANIFEST.json model.{key}: expected a file name")
        if named:
            inside(path, named, f"{archive.name}: MAR-INF/MANIFEST.json model.{key}")
    if config_path is None:
        candidate = path / (manifest.get("configFile") or MODEL_CONFIG_FILE)
        config_path = candidate if candidate.is_file() else None
    return ModelSource(
        path=path,
        config_path=config_path,
        serialized_file=manifest.get("serializedFile"),
        version=manifest.get("modelVersion"),
        archive=archive,
    )


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory found (a .mar unpacked) and its config read: done once, before the port opens."""

    source: ModelSource
    config: ModelConfig


def resolve_model(model_dir: Path, config_path: Path | None, cache_dir: Path,
                  archive_limits: ArchiveLimits | None = None) -> ResolvedModel:
    """resolve_model_source, then load_source_config: ConfigError naming the problem."""
    source = resolve_model_source(model_dir, config_path, cache_dir, archive_limits)
    return ResolvedModel(source, load_source_config(source))


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


def load_tokenizer(model_dir: Path, config: ModelConfig) -> PerThreadTokenizer:
    """Load the tokenizer as saved (casing, special tokens, padding side), safe to share between threads.

    `handler.do_lower_case` overrides the saved casing only when the config sets it. Encoder modes pad
    on the right whatever the saved side (see TaskBase.pad); generation pads and truncates on the left.
    """
    from transformers import AutoTokenizer

    handler = config.handler
    source = tokenizer_source(model_dir, handler.model_name)
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": handler.trust_remote_code}
    if handler.do_lower_case is not None:
        options["do_lower_case"] = handler.do_lower_case
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
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
    return PerThreadTokenizer(tokenizer)


def check_label_count(labels: Sequence[str] | None, num_outputs: int | None, where: str) -> None:
    """A label map must name exactly the model's outputs."""
    if labels is not None and num_outputs is not None and len(labels) != num_outputs:
        raise ConfigError(f"{where}: {len(labels)} labels but the model has {num_outputs} outputs")
