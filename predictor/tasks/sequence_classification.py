"""sequence_classification: one label per text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from predictor.config import TaskName
from predictor.tasks.base import (
    Encoded,
    Explanation,
    Instance,
    Prediction,
    TaskBase,
    check_text,
    details_flag,
    n_steps_field,
    int_target,
    softmax,
    text_field,
)


class SequenceClassificationTask(TaskBase):
    """TorchServe answer: the label string. Details: label, score, top-k scores, truncation."""

    name = TaskName.SEQUENCE_CLASSIFICATION

    @property
    def num_classes(self) -> int:
        """How many classes the model scores."""
        if self.labels is not None:
            return len(self.labels)
        return int(getattr(self.model.config, "num_labels", 2))

    def parse(self, raw: Any) -> Instance:
        """A string, or {"text"|"data": ..., "target": class, "details": bool}."""
        value = self.parse_object(raw)
        limit = self.config.limits.max_text_chars
        if isinstance(value, str):
            return Instance(text=check_text(value, limit), details=self.handler.details)
        return Instance(
            text=check_text(text_field(value), limit),
            target=int_target(value.get("target"), self.num_classes),
            details=details_flag(value, self.handler.details),
            n_steps=n_steps_field(value, self.handler.max_explain_steps),
        )

    def encode(self, batch: Sequence[Instance]) -> list[Encoded]:
        """Tokenise, truncating to max_length; remembers which inputs were truncated."""
        return self.encode_truncated(batch)

    def logits(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """The classifier's logits for a batch padded to its longest member."""
        return self.first_row_logits(batch)

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """Label per item; details on request."""
        probs = softmax(self.logits(batch))
        results: list[Prediction] = []
        k = min(self.handler.top_k, probs.shape[-1])
        for enc, p in zip(batch, probs, strict=True):
            best = int(p.argmax())
            if not enc.instance.details:
                results.append(self.label(best))
                continue
            scores, indices = p.topk(k)
            results.append({
                "label": self.label(best),
                "score": float(p[best]),
                "top_k": [{"label": self.label(int(i)), "score": float(s)} for s, i in zip(scores, indices)],
                "truncated": enc.truncated,
            })
        return results

    def explain(self, instance: Instance) -> Explanation:
        """Layer Integrated Gradients for the target class (default: the predicted class)."""
        from predictor.explain import explain_sequence_classification

        return explain_sequence_classification(self, instance)

    def sample_input(self) -> Any:
        """Warm-up input."""
        return "The predictor is warming up."
