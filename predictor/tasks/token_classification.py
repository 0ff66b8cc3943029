"""token_classification: a label per token; entities with scores and offsets on request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, BertForTokenClassification
from transformers.pipelines.token_classification import AggregationStrategy, TokenClassificationPipeline

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
    softmax,
    text_field,
)
from predictor.tasks.targets import parse_token_target


class EntityGrouper:
    """transformers' own entity grouping (the token-classification pipeline's gather + aggregate steps).

    The pipeline is built through its public constructor around a weightless stand-in model that
    carries only the label map: grouping reads the tokenizer and `id2label`, never the model, and the
    served model may be TorchScript or ONNX, which a pipeline cannot hold.
    """

    def __init__(self, tokenizer: Any, labels: Sequence[str]) -> None:
        config = BertConfig(vocab_size=1, hidden_size=1, num_hidden_layers=0, num_attention_heads=1,
                            intermediate_size=1, id2label=dict(enumerate(labels)))
        with torch.device("meta"):  # no memory, no draw from the random generator
            stand_in = BertForTokenClassification(config)
        self.pipeline = TokenClassificationPipeline(model=stand_in, tokenizer=tokenizer, device=stand_in.device)

    def entities(self, text: str, ids: list[int], scores: np.ndarray, offsets: list[tuple[int, int]],
                 special: list[int], strategy: AggregationStrategy) -> list[dict[str, Any]]:
        """Entities of one text, 'O' dropped, as the token-classification pipeline reports them."""
        pre = self.pipeline.gather_pre_entities(text, np.array(ids), scores, offsets, np.array(special), strategy)
        grouped = self.pipeline.aggregate(pre, strategy)
        return [
            {k: (float(v) if isinstance(v, np.floating) else v) for k, v in e.items()}
            for e in grouped
            if e.get("entity", e.get("entity_group")) != "O"
        ]


class TokenClassificationTask(TaskBase):
    """TorchServe answer: [[token, label], ...] without special tokens. Details: grouped entities."""

    name = TaskName.TOKEN_CLASSIFICATION
    labels: list[str]  # never None here: the label map, else one name per class of the model

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        labels = self.labels or [str(i) for i in range(int(getattr(self.model.config, "num_labels", 2)))]
        self.labels = labels
        self._grouper = EntityGrouper(self.tokenizer, labels)
        self._strategy = AggregationStrategy(self.handler.aggregation_strategy)

    def parse(self, raw: Any) -> Instance:
        """A string, or {"text"|"data": ..., "target": [position, label], "details": bool}."""
        value = self.parse_object(raw)
        limit = self.config.limits.max_text_chars
        if isinstance(value, str):
            return Instance(text=check_text(value, limit), details=self.handler.details)
        return Instance(
            text=check_text(text_field(value), limit),
            target=parse_token_target(value.get("target"), len(self.labels or ())),
            details=details_flag(value, self.handler.details),
            n_steps=n_steps_field(value, self.handler.max_explain_steps),
        )

    def encode(self, batch: Sequence[Instance]) -> list[Encoded]:
        """Tokenise with character offsets and the special-token mask."""
        return self.encode_truncated(batch, return_offsets_mapping=True, return_special_tokens_mask=True)

    def logits(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """Per-token logits, [batch, longest, labels]."""
        return self.first_row_logits(batch)

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """Token/label pairs per item; entities on request."""
        probs = softmax(self.logits(batch))
        results: list[Prediction] = []
        for enc, p in zip(batch, probs, strict=True):
            ids = enc.rows[0]["input_ids"]
            scores = p[: len(ids)].numpy()  # drop the padding rows of this item
            if not enc.instance.details:
                tokens = self.tokenizer.convert_ids_to_tokens(ids)
                best = scores.argmax(-1)
                results.append([[tokens[i], self.label(int(best[i]))]
                                for i in range(len(ids)) if not enc.meta["special"][i]])
                continue
            entities = self._grouper.entities(enc.instance.text, ids, scores, enc.meta["offsets"],
                                              enc.meta["special"], self._strategy)
            results.append({"entities": entities, "truncated": enc.truncated})
        return results

    def explain(self, instance: Instance) -> Explanation:
        """Layer Integrated Gradients for a (token position, label) target."""
        from predictor.explain import explain_token_classification

        return explain_token_classification(self, instance)

    def sample_input(self) -> Any:
        """Warm-up input."""
        return "Ada Lovelace worked with Charles Babbage in London."
