"""The TASKS registry: one Task class per handler mode."""

from __future__ import annotations

import importlib
from typing import Any

from predictor.config import ModelConfig, TaskName
from predictor.tasks.base import Encoded, Explanation, GenerationParams, Instance, Prediction, StreamEnd, Task

# Imported when a model of that mode loads: token classification pulls in transformers.pipelines,
# slow to import, which the other modes never need.
TASKS: dict[TaskName, tuple[str, str]] = {
    TaskName.SEQUENCE_CLASSIFICATION: ("predictor.tasks.sequence_classification", "SequenceClassificationTask"),
    TaskName.TOKEN_CLASSIFICATION: ("predictor.tasks.token_classification", "TokenClassificationTask"),
    TaskName.QUESTION_ANSWERING: ("predictor.tasks.question_answering", "QuestionAnsweringTask"),
    TaskName.TEXT_GENERATION: ("predictor.tasks.text_generation", "TextGenerationTask"),
}


def task_class(mode: TaskName) -> type[Any]:
    """The Task class of a handler mode."""
    module, name = TASKS[mode]
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def build_task(model: Any, tokenizer: Any, config: ModelConfig, labels: list[str] | None) -> Task:
    """The Task for config.handler.mode, around a loaded model and tokenizer."""
    task: Task = task_class(config.handler.mode)(model, tokenizer, config, labels)
    return task


__all__ = ["TASKS", "Encoded", "Explanation", "GenerationParams", "Instance", "Prediction", "StreamEnd", "Task",
           "build_task", "task_class"]
