"""Long question-answering contexts: windows in forward passes of bounded size, a window limit, and the
explanation of the window that holds the served answer (the needle model answers its needle anywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from models import build_needle_qa

from predictor.errors import PayloadTooLargeError
from predictor.handler import GeneralizedHandler

NEEDLE = "zebra"
FILLER = ["the", "food", "was", "good", "service", "slow", "friendly", "staff", "quiet", "evening", "price"]
MAX_LENGTH = 48
BATCH_SIZE = 2


@pytest.fixture(scope="module")
def needle(tmp_path_factory: pytest.TempPathFactory) -> GeneralizedHandler:
    path = build_needle_qa(tmp_path_factory.mktemp("needle") / "qa", NEEDLE, max_length=MAX_LENGTH, doc_stride=8)
    config = path / "model-config.yaml"
    config.write_text(config.read_text() + f"batchSize: {BATCH_SIZE}\nlimits:\n  max_qa_windows: 40\n")
    handler = GeneralizedHandler(path, cache_dir=tmp_path_factory.mktemp("cache"))
    handler.load()
    return handler


def context_with_needle(words: int, at: int) -> str:
    text = [FILLER[n % len(FILLER)] for n in range(words)]
    text[at] = NEEDLE
    return " ".join(text)


class PassRecorder:
    """Wraps the task's model runner: the shape of every forward pass."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, inputs: Any) -> Any:
        self.shapes.append(tuple(inputs["input_ids"].shape))
        return self.runner(inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


def test_a_long_context_runs_in_bounded_passes_and_finds_the_needle(needle: GeneralizedHandler,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    task = needle.state.task
    recorder = PassRecorder(task.model)
    monkeypatch.setattr(task, "model", recorder)
    context = context_with_needle(300, 250)
    item = {"question": "which animal", "context": context, "details": True}
    [answer] = needle.predict([needle.parse(item)])
    assert answer["answer"] == NEEDLE
    assert answer["windows"] > 4
    budget = BATCH_SIZE * MAX_LENGTH
    assert len(recorder.shapes) >= answer["windows"] // BATCH_SIZE
    assert all(rows * length <= budget for rows, length in recorder.shapes), recorder.shapes
    assert sum(rows for rows, _ in recorder.shapes) == answer["windows"]


def test_more_windows_than_the_limit_is_413(needle: GeneralizedHandler) -> None:
    instance = needle.parse({"question": "which animal", "context": context_with_needle(3000, 5)})
    with pytest.raises(PayloadTooLargeError, match=r"windows .* the limit is 40 \(limits\.max_qa_windows\)"):
        needle.predict([instance])
    with pytest.raises(PayloadTooLargeError, match="max_qa_windows"):
        needle.explain(instance)


def test_the_explanation_explains_the_window_of_the_served_answer(needle: GeneralizedHandler) -> None:
    pytest.importorskip("captum")
    item = {"question": "which animal", "context": context_with_needle(200, 170), "n_steps": 4}
    instance = needle.parse(item)
    [answer] = needle.predict([needle.parse({**item, "details": True})])
    assert answer["answer"] == NEEDLE and answer["windows"] > 2
    explanation = needle.explain(instance)
    start, end = explanation["target"]
    assert explanation["window"] > 0
    assert explanation["words"][start] == NEEDLE and start == end
    assert len(explanation["words"]) <= MAX_LENGTH
