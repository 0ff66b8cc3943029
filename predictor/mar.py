"""Migration from TorchServe: a .mar built for the generalized handler -> a KServe-ready model directory."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from predictor import artifacts
from predictor.config import load_model_config
from predictor.errors import ConfigError
from predictor.properties import CarriedSettings, carry_over, parse_properties

logger = logging.getLogger(__name__)

RUNTIME = "transformers-predictor"
MODEL_FORMAT = "transformers"
STORAGE_PLACEHOLDER = "s3://CHANGE-ME/path/to/this/folder"
_SKIPPED = ("MAR-INF", ".complete", "config.properties")
PROPERTIES_FILE = "config.properties"
TOKEN_DIR = "/etc/predictor/token"


@dataclass(frozen=True)
class ImportedModel:
    """What import-mar wrote."""

    model_dir: Path
    inference_service: Path
    name: str
    version: str | None


def _copy_tokenizer(source: Path, dest: Path) -> None:
    if not artifacts.has_tokenizer(source):
        raise ConfigError(f"--tokenizer {source}: no tokenizer files there (found: {artifacts.listing(source)})")
    for path in source.iterdir():
        if path.is_file() and (path.name in artifacts.TOKENIZER_FILES or path.name == "special_tokens_map.json"):
            shutil.copy2(path, dest / path.name)


def _k8s_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return cleaned[:45] or "model"


def inference_service(name: str, storage_uri: str | None, token_secret: str | None = None) -> dict[str, Any]:
    """An InferenceService for the predictor's ServingRuntime (manifests/runtime); with token_secret,
    token authorization reads the key_file.json of that Secret."""
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
        "spec": {"predictor": {
            "minReplicas": 1,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "model": {
                "modelFormat": {"name": MODEL_FORMAT},
                "runtime": RUNTIME,
                "protocolVersion": "v1",
                "storageUri": storage_uri or STORAGE_PLACEHOLDER,
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            },
        }},
    }
    if token_secret:
        predictor = service["spec"]["predictor"]
        predictor["volumes"] = [{"name": "token", "secret": {"secretName": token_secret}}]
        predictor["model"]["args"] = [f"--token_file={TOKEN_DIR}/key_file.json"]
        predictor["model"]["volumeMounts"] = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
    return service


def import_mar(archive: Path, out_dir: Path, *, tokenizer: Path | None = None, storage_uri: str | None = None,
               name: str | None = None, config_properties: Path | None = None) -> ImportedModel:
    """Unpack the archive into out_dir, check it has what the predictor needs, write inferenceservice.yaml."""
    if not archive.is_file():
        raise ConfigError(f"{archive}: no such .mar file")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty; choose a new folder")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = _import_into(archive, staging, tokenizer, storage_uri, name, config_properties)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind
        raise
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
    logger.info("imported %s into %s (version %s); deploy with kubectl apply -f %s", archive.name, out_dir,
                result.version or "1.0", out_dir / result.inference_service.name)
    return ImportedModel(out_dir, out_dir / result.inference_service.name, result.name, result.version)


def _import_into(archive: Path, out_dir: Path, tokenizer: Path | None, storage_uri: str | None,
                 name: str | None, config_properties: Path | None) -> ImportedModel:
    with tempfile.TemporaryDirectory(prefix="predictor-mar-") as scratch:
        source = artifacts.resolve_model_source(_single_archive_dir(archive, Path(scratch)), None, Path(scratch))
        if source.config_path is None:
            raise ConfigError(f"{archive.name} has no model-config.yaml (found: {artifacts.listing(source.path)}); "
                              "the generalized handler needs one (--extra-files model-config.yaml)")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in source.path.iterdir():
            if path.name not in _SKIPPED:
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, out_dir / path.name)
        manifest = json.loads((source.path / "MAR-INF" / "MANIFEST.json").read_text(encoding="utf-8"))
        properties_text = _properties_text(config_properties, source.path / PROPERTIES_FILE)
    model_name = name or manifest.get("model", {}).get("modelName") or archive.stem
    config_file = out_dir / source.config_path.name
    if config_file.name != artifacts.MODEL_CONFIG_FILE:
        config_file = config_file.rename(out_dir / artifacts.MODEL_CONFIG_FILE)
    _record_manifest_facts(config_file, source.serialized_file, source.version)
    carried = CarriedSettings()
    if properties_text is not None:
        carried = carry_over(parse_properties(properties_text), manifest.get("model", {}).get("modelName")
                             or model_name, source.version)
        _record_properties(config_file, carried)
    config = load_model_config(config_file)
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, out_dir)
    else:
        try:
            artifacts.tokenizer_source(out_dir, config.handler.model_name)
        except ConfigError as exc:
            raise ConfigError(
                f"{archive.name} ships no tokenizer (the TorchServe handler downloaded one from the hub by "
                f"handler.model_name {config.handler.model_name!r}); pass --tokenizer DIR with a local "
                "tokenizer folder (tokenizer.save_pretrained)") from exc
    service_file = out_dir / "inferenceservice.yaml"
    # TorchServe 0.12 enforces token authorization unless config.properties turns it off.
    token = carried.token_authorization is not False and properties_text is not None
    secret = f"{_k8s_name(model_name)}-token" if token else None
    if secret:
        logger.warning("token authorization was on in TorchServe: the InferenceService reads key_file.json from "
                       "the Secret %s; create it with: kubectl create secret generic %s --from-file=key_file.json",
                       secret, secret)
    service = inference_service(_k8s_name(model_name), storage_uri, token_secret=secret)
    service_file.write_text(yaml.safe_dump(service, sort_keys=False))
    return ImportedModel(out_dir, service_file, model_name, source.version)


def _single_archive_dir(archive: Path, scratch: Path) -> Path:
    """resolve_model_source reads a folder holding one .mar: give it one."""
    folder = scratch / "archive"
    folder.mkdir()
    (folder / archive.name).symlink_to(archive.resolve())
    return folder


def _record_manifest_facts(config_file: Path, serialized_file: str | None, version: str | None) -> None:
    """Keep what only the manifest knew (TorchScript file name, version) in model-config.yaml."""
    raw = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    handler = raw.setdefault("handler", {})
    changed = False
    if serialized_file and handler.get("save_mode") == "torchscript" and not handler.get("serialized_file"):
        handler["serialized_file"] = serialized_file
        changed = True
    if version and "modelVersion" not in raw:
        raw["modelVersion"] = str(version)
        changed = True
    if changed:
        config_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def _properties_text(given: Path | None, in_archive: Path) -> str | None:
    """--config_properties, else a config.properties shipped inside the archive, else None."""
    path = given if given is not None else (in_archive if in_archive.is_file() else None)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config_properties {path}: cannot read it ({exc.strerror})") from None


def _record_properties(config_file: Path, carried: CarriedSettings) -> None:
    """Write what config.properties carries into model-config.yaml; the archive's own values win."""
    raw = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    for key, value in carried.model_config.items():
        if isinstance(value, dict):
            section = raw.setdefault(key, {})
            for inner, inner_value in value.items():
                section.setdefault(inner, inner_value)
        elif key in raw and raw[key] != value:
            logger.warning("config.properties: %s=%s ignored: the archive's model-config.yaml says %s",
                           key, value, raw[key])
        else:
            raw[key] = value
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
