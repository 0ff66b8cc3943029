"""TorchServe's config.properties -> what maps to this server (model-config.yaml keys, token authorization).

Read by import-mar. Every setting that does not map gets its own WARNING saying what to do instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from predictor.errors import ConfigError

logger = logging.getLogger(__name__)

# config.properties key -> model-config.yaml key (TorchServe's server-wide defaults for every model)
_DEFAULTS = {"default_workers_per_model": "minWorkers", "default_response_timeout": "responseTimeout",
             "job_queue_size": "jobQueueSize"}
# keys of one model's entry in `models={...}` -> model-config.yaml key
_MODEL_ENTRY = {"minWorkers": "minWorkers", "maxWorkers": "maxWorkers", "batchSize": "batchSize",
                "maxBatchDelay": "maxBatchDelay", "responseTimeout": "responseTimeout"}
_ENTRY_IGNORED = {"defaultVersion", "marName"}  # facts import-mar already has from the archive itself
_TOKEN_KEYS = ("disable_token_authorization", "enable_token_authorization")
_HINTS = {
    "inference_address": "the HTTP port is --http_port (the ServingRuntime's containerPort)",
    "management_address": "the management API's port is --ts_management_port",
    "metrics_address": "metrics are on /metrics of the HTTP port (and of --ts_management_port)",
    "grpc_inference_port": "TorchServe's gRPC inference API is on --ts_grpc_port",
    "grpc_management_port": "TorchServe's gRPC management API is not served; use Kubernetes to manage models",
    "cors_allowed_origin": "pass --cors_origins to the server",
    "token_expiration_min": "keys do not expire here; rotate the Secret that --token_file reads",
    "enable_model_api": "this server serves one model; deploy another InferenceService for another model",
    "load_models": "the server serves the model in --model_dir",
    "model_store": "the model comes from the InferenceService's storageUri",
}


@dataclass(frozen=True)
class CarriedSettings:
    """What config.properties says that this server can honour."""

    model_config: dict[str, Any] = field(default_factory=dict)  # top-level model-config.yaml keys
    token_authorization: bool | None = None  # None: config.properties does not say
    not_carried: tuple[str, ...] = ()


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties: `key=value` or `key: value`, `#`/`!` comments, `\\` line continuations.

    Hand-written: the format is a few lines of rules and no maintained Python library reads it well enough
    to be worth a dependency.
    """
    values: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        key, value = (line[:cut], line[cut + 1:]) if cut >= 0 else (line, "")
        values[key.strip()] = value.strip()
    if pending:
        values[pending.strip()] = ""
    return values


def _number(key: str, value: Any) -> int | float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config.properties: {key}={value!r} is not a number") from None
    return int(number) if number.is_integer() else number


def _model_entry(models_json: str, model_name: str, version: str | None) -> Mapping[str, Any]:
    try:
        models = json.loads(models_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config.properties: `models` is not valid JSON ({exc.msg})") from None
    versions = models.get(model_name) if isinstance(models, dict) else None
    if not isinstance(versions, dict) or not versions:
        return {}
    entry = versions.get(version or "") or next((v for v in versions.values()
                                                 if isinstance(v, dict) and v.get("defaultVersion")), None)
    entry = entry or next(iter(versions.values()))
    return entry if isinstance(entry, dict) else {}


def carry_over(properties: Mapping[str, str], model_name: str, version: str | None) -> CarriedSettings:
    """The settings that map (server-wide defaults, then this model's `models` entry); a WARNING for each other."""
    config: dict[str, Any] = {}
    not_carried: list[str] = []
    token: bool | None = None
    for key, value in properties.items():
        if key in _DEFAULTS:
            config[_DEFAULTS[key]] = _number(key, value)
        elif key == "max_request_size":
            config["limits"] = {"max_body_bytes": _number(key, value)}
        elif key == "disable_token_authorization":
            token = value.strip().lower() != "true"
        elif key == "enable_token_authorization":
            token = value.strip().lower() == "true"
        elif key != "models":
            not_carried.append(key)
            logger.warning("config.properties: %s is not carried over%s", key,
                           f" ({_HINTS[key]})" if key in _HINTS else " (no equivalent here)")
    entry = _model_entry(properties["models"], model_name, version) if "models" in properties else {}
    for key, value in entry.items():
        if key in _MODEL_ENTRY:
            config[_MODEL_ENTRY[key]] = _number(f"models.{model_name}.{key}", value)
        elif key not in _ENTRY_IGNORED:
            not_carried.append(f"models.{model_name}.{key}")
            logger.warning("config.properties: models.%s.%s is not carried over (no equivalent here)", model_name, key)
    return CarriedSettings(config, token, tuple(not_carried))
