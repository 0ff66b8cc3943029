"""examples/: every build_model.py builds a model the handler loads, and every sample request is valid for it."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from predictor.config import ModelConfig, TaskName
from predictor.handler import GeneralizedHandler

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODES = [mode.value for mode in TaskName]
COMMON_FILES = {"README.md", "build_model.py", "model-config.yaml", "v1_request.json", "v2_request.json",
                "v1_explain_request.json"}
EXPLAIN_STEPS = 4
LABELLED = {TaskName.SEQUENCE_CLASSIFICATION.value, TaskName.TOKEN_CLASSIFICATION.value}


def load_script(mode: str) -> ModuleType:
    """examples/<mode>/build_model.py as a module (the folders are not packages)."""
    spec = importlib.util.spec_from_file_location(f"build_model_{mode}", EXAMPLES / mode / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=MODES)
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[str, GeneralizedHandler]]:
    """(mode, loaded handler) for one example, built by its own script through its command line."""
    mode = request.param
    out = tmp_path_factory.mktemp(mode) / "model"
    assert load_script(mode).main([str(out)]) == 0
    handler = GeneralizedHandler(out, cache_dir=tmp_path_factory.mktemp("cache"))
    handler.load()
    yield mode, handler


def sample_items(path: Path) -> list[Any]:
    """The request items of a sample file, as each protocol delivers them to handler.parse."""
    if path.suffix == ".txt":
        return [path.read_bytes()]  # TorchServe: the raw body is one input
    body = json.loads(path.read_text(encoding="utf-8"))
    if "inputs" in body:  # Open Inference Protocol (v2): one BYTES tensor
        [tensor] = body["inputs"]
        assert tensor["datatype"] == "BYTES" and tensor["shape"] == [len(tensor["data"])], path
        details = body.get("parameters", {}).get("details", False)
        return [{"text": v, "details": True} if details and not v.startswith("{") else v for v in tensor["data"]]
    assert set(body) == {"instances"}, path  # KServe v1
    return list(body["instances"])


def sample_files(mode: str) -> list[Path]:
    return sorted(p for p in (EXAMPLES / mode).iterdir() if p.suffix in (".txt", ".json") and p.name != "index_to_name.json")


def check_prediction(mode: str, handler: GeneralizedHandler, result: Any, detailed: bool) -> None:
    labels = handler.state.labels or []
    if detailed:
        assert isinstance(result, dict)
        if mode == TaskName.SEQUENCE_CLASSIFICATION.value:
            assert result["label"] in labels
        return
    if mode == TaskName.TOKEN_CLASSIFICATION.value:
        assert result and all(isinstance(t, str) and label in labels for t, label in result)
    else:
        assert isinstance(result, str)
        if mode == TaskName.SEQUENCE_CLASSIFICATION.value:
            assert result in labels


def test_example_folders_are_complete() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) == \
        sorted(MODES)
    index = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for mode in MODES:
        names = {p.name for p in (EXAMPLES / mode).iterdir()}
        expected = COMMON_FILES | ({"index_to_name.json"} if mode in LABELLED else set())
        assert expected <= names, f"{mode}: missing {sorted(expected - names)}"
        assert names & {"sample_text.txt", "sample_text_captum_input.txt"}, mode
        readme = (EXAMPLES / mode / "README.md").read_text(encoding="utf-8")
        for sample in sample_files(mode):
            assert sample.name in readme, f"{mode}/README.md never shows {sample.name}"
        assert f"{mode}/" in index


@pytest.mark.parametrize("mode", MODES)
def test_model_config_is_valid_and_has_no_unknown_keys(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="predictor.config"):
        config = ModelConfig.from_yaml(yaml.safe_load((EXAMPLES / mode / "model-config.yaml").read_text()))
    assert config.handler.mode.value == mode
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_every_sample_request_predicts(example: tuple[str, GeneralizedHandler]) -> None:
    mode, handler = example
    for path in sample_files(mode):
        items = sample_items(path)
        instances = [handler.parse(item) for item in items]
        results = handler.predict(instances)
        assert len(results) == len(instances), path.name
        for instance, result in zip(instances, results, strict=True):
            check_prediction(mode, handler, result, instance.details)


def test_every_explain_sample_explains(example: tuple[str, GeneralizedHandler]) -> None:
    pytest.importorskip("captum")
    mode, handler = example
    for path in sample_files(mode):
        if "explain" not in path.name and "captum" not in path.name:
            continue
        for item in sample_items(path):
            instance = handler.parse(item)
            # A few integration steps: this checks the request and the shape, not the attributions.
            explanation = handler.explain(replace(instance, n_steps=EXPLAIN_STEPS))
            words = explanation["words"]
            for key in ("importances", "importances_answer_start", "importances_answer_end"):
                if key in explanation:
                    assert len(explanation[key]) == len(words), (path.name, key)
            if instance.target is not None:
                target = explanation["target"]
                assert (list(target) if isinstance(target, list) else target) == \
                    (list(instance.target) if isinstance(instance.target, tuple) else instance.target), path.name
