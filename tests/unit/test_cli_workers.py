"""The worker plan the CLI serves: minWorkers keeps TorchServe's meaning, --model_workers forces a layout."""

from __future__ import annotations

import logging

import pytest

from predictor.config import ModelConfig
from predictor.serving.cli import build_parser, worker_plan
from predictor.serving.cpu import plan_workers


def config(**top: object) -> ModelConfig:
    return ModelConfig.from_yaml({"handler": {"mode": "sequence_classification", "device": "cpu"}, **top})


@pytest.mark.parametrize("min_workers", [1, 2, 4])
def test_min_workers_selects_the_default_plan(min_workers: int, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("PREDICTOR_MODEL_WORKERS", raising=False)
    args = build_parser().parse_args(["serve", "--model_name", "m"])
    with caplog.at_level(logging.INFO, logger="predictor.serving.cli"):
        plan = worker_plan(args, config(minWorkers=min_workers), cores=2)
    assert plan == plan_workers(2)  # two one-thread workers on two cores, not one worker of two threads
    assert plan.workers == 2 and plan.reason == "default"
    messages = [r.getMessage() for r in caplog.records]
    assert any("minWorkers" in m and "TorchServe's meaning" in m for m in messages), messages


def test_model_workers_forces_a_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREDICTOR_MODEL_WORKERS", raising=False)
    args = build_parser().parse_args(["serve", "--model_name", "m", "--model_workers", "1"])
    assert worker_plan(args, config(minWorkers=2), cores=2) == plan_workers(2, workers=1)


def test_the_environment_forces_a_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTOR_MODEL_WORKERS", "1")
    args = build_parser().parse_args(["serve", "--model_name", "m"])
    plan = worker_plan(args, config(), cores=2)
    assert (plan.workers, plan.threads, plan.reason) == (1, 2, "requested")
