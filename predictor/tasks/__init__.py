"""The TASKS registry: one Task class per handler mode."""

from __future__ import annotations

from typing import Any

from predictor.config import ModelConfig, TaskName
from predictor.tasks.base import Encoded, Explanation, GenerationParams, Instance, Prediction, StreamEnd, Task
from predictor.tasks.question_answering import QuestionAnsweringTask
from predictor.tasks.sequence_classification import SequenceClassificationTask
from predictor.tasks.text_generation import TextGenerationTask
from predictor.tasks.token_classification import TokenClassificationTask

TASKS: dict[TaskName, type[Any]] = {
    TaskName.SEQUENCE_CLASSIFICATION: SequenceClassificationTask,
    TaskName.TOKEN_CLASSIFICATION: TokenClassificationTask,
    TaskName.QUESTION_ANSWERING: QuestionAnsweringTask,
    TaskName.TEXT_GENERATION: TextGenerationTask,
}


def build_task(model: Any, tokenizer: Any, config: ModelConfig, labels: list[str] | None) -> Task:
    """The Task for config.handler.mode, around a loaded model and tokenizer."""
    task: Task = TASKS[config.handler.mode](model, tokenizer, config, labels)
    return task


__all__ = ["TASKS", "Encoded", "Explanation", "GenerationParams", "Instance", "Prediction", "StreamEnd", "Task",
           "build_task"]
