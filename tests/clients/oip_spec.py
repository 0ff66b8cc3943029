"""The Open Inference Protocol's own REST document (../shared/oip-spec/rest_predict_v2.yaml), made usable.

The upstream file spells path parameters `${MODEL_NAME}` and lists only the `/versions/${MODEL_VERSION}`
forms although the protocol marks that segment optional: both are fixed here, in memory, and the file is
left as it is. Tests skip when the shared folder is absent.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

SPEC_PATH = Path(__file__).resolve().parents[2] / ".." / "shared" / "oip-spec" / "rest_predict_v2.yaml"


def load_spec() -> dict[str, Any]:
    """The document as published; skips the test when ../shared is not there."""
    if not SPEC_PATH.is_file():
        pytest.skip(f"the OIP OpenAPI document is not at {SPEC_PATH} (../shared relative to the repository)")
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def usable_spec() -> dict[str, Any]:
    """`${NAME}` -> `{NAME}`, and each versioned model route also without its version segment."""
    spec = load_spec()
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        fixed = path.replace("${", "{")
        paths[fixed] = item
        if "/versions/{MODEL_VERSION}" in fixed:
            unversioned = copy.deepcopy(item)
            unversioned["parameters"] = [p for p in unversioned.get("parameters", []) if p["name"] != "MODEL_VERSION"]
            for operation in unversioned.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += "-unversioned"
            paths[fixed.replace("/versions/{MODEL_VERSION}", "")] = unversioned
    return {**spec, "paths": paths}


def validate(instance: Any, component: str) -> None:
    """jsonschema.ValidationError unless `instance` is a valid `component` of the document."""
    from openapi_schema_validator import OAS30Validator

    schema = {"$ref": f"#/components/schemas/{component}", "components": load_spec()["components"]}
    OAS30Validator(schema).validate(instance)


def nulls(value: Any, where: str = "$") -> list[str]:
    """Where a JSON document holds null."""
    if value is None:
        return [where]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in nulls(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in nulls(v, f"{where}[{i}]")]
    return []
