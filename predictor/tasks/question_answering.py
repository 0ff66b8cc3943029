"""question_answering: the best answer span of the context, over sliding windows of any length.

The span search itself is in predictor.spans (shared with the explanations of this task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from predictor.config import TaskName
from predictor.errors import InvalidRequestError, PayloadTooLargeError
from predictor.spans import Span, best_span, best_window
from predictor.tasks.targets import parse_span_target
from predictor.tasks.base import (
    Encoded,
    Explanation,
    Instance,
    Prediction,
    TaskBase,
    check_text,
    details_flag,
    n_steps_field,
)

_MIN_CONTEXT_TOKENS = 16


class QuestionAnsweringTask(TaskBase):
    """TorchServe answer: the answer string. Details: answer, score, character start/end."""

    name = TaskName.QUESTION_ANSWERING

    def parse(self, raw: Any) -> Instance:
        """{"question": ..., "context": ..., "target": 0|1, "details": bool}, as JSON text or an object."""
        value = self.parse_object(raw)
        if not isinstance(value, Mapping):
            raise InvalidRequestError('question_answering expects a JSON object {"question": ..., "context": ...}')
        missing = [k for k in ("question", "context") if not isinstance(value.get(k), str)]
        if missing:
            raise InvalidRequestError(f"question_answering: field(s) {missing} missing or not strings")
        limit = self.config.limits.max_text_chars
        question = check_text(value["question"], limit, "question")
        context = check_text(value["context"], limit, "context")
        budget = self.handler.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - _MIN_CONTEXT_TOKENS
        q_tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        if q_tokens > budget:
            raise InvalidRequestError(f"question has {q_tokens} tokens; at most {budget} fit with "
                                      f"handler.max_length {self.handler.max_length}")
        return Instance(text=question, context=context, target=parse_span_target(value.get("target")),
                        details=details_flag(value, self.handler.details),
                        n_steps=n_steps_field(value, self.handler.max_explain_steps))

    def encode(self, batch: Sequence[Instance]) -> list[Encoded]:
        """Windows over the context; each instance alone, so its windows never depend on its batch."""
        return [self._encode_one(i) for i in batch]

    def _encode_one(self, instance: Instance) -> Encoded:
        q_tokens = len(self.tokenizer(instance.text, add_special_tokens=False)["input_ids"])
        room = self.handler.max_length - q_tokens - self.tokenizer.num_special_tokens_to_add(pair=True)
        stride = max(0, min(self.handler.doc_stride, room // 2))
        enc = self.tokenizer(
            instance.text, instance.context, truncation="only_second", max_length=self.handler.max_length,
            stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        )
        limit = self.config.limits.max_qa_windows
        if len(enc["input_ids"]) > limit:
            raise PayloadTooLargeError(f"the context needs {len(enc['input_ids'])} windows of "
                                       f"handler.max_length {self.handler.max_length} tokens; the limit is "
                                       f"{limit} (limits.max_qa_windows)")
        rows, windows = [], []
        for row in range(len(enc["input_ids"])):
            rows.append({k: enc[k][row] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc})
            context_mask = [sid == 1 for sid in enc.sequence_ids(row)]
            windows.append((enc["offset_mapping"][row], context_mask))
        return Encoded(instance=instance, rows=rows, meta={"windows": windows})

    def logits(self, batch: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits of every window of the batch, [windows, longest]."""
        with torch.inference_mode():
            out = self.model(self.pad([row for e in batch for row in e.rows]))
        return out[0].float().cpu(), out[1].float().cpu()

    def window_spans(self, batch: Sequence[Encoded]) -> list[list[Span]]:
        """Best (probability, start token, end token) of every window of every item.

        Windows run in forward passes of at most batchSize x max_length tokens: a long context is
        many ordinary passes, never one giant one. Windows of a cancelled request are skipped
        (probability -1).
        """
        rows = [(n, w) for n, enc in enumerate(batch) for w in range(len(enc.rows))]
        budget = max(1, self.config.batch_size) * self.handler.max_length
        spans: list[list[Span]] = [[(-1.0, 0, 0)] * len(enc.rows) for enc in batch]
        first = 0
        while first < len(rows):
            last, longest = first, 0
            while last < len(rows):
                n, w = rows[last]
                length = max(longest, len(batch[n].rows[w]["input_ids"]))
                if last > first and length * (last - first + 1) > budget:
                    break
                longest, last = length, last + 1
            live = [(n, w) for n, w in rows[first:last] if not batch[n].instance.cancelled]
            first = last
            if not live:
                continue
            with torch.inference_mode():
                out = self.model(self.pad([batch[n].rows[w] for n, w in live]))
            start, end = out[0].float().cpu(), out[1].float().cpu()
            for k, (n, w) in enumerate(live):
                offsets, context_mask = batch[n].meta["windows"][w]
                size = len(offsets)
                s, e, score = best_span(start[k, :size], end[k, :size], torch.tensor(context_mask),
                                        self.handler.max_answer_length)
                spans[n][w] = (score, s, e)
        return spans

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """Best span per item over its windows."""
        results: list[Prediction] = []
        for enc, spans in zip(batch, self.window_spans(batch), strict=True):
            w = best_window(spans)
            score, s, e = spans[w]
            offsets = enc.meta["windows"][w][0]
            char_start, char_end = offsets[s][0], offsets[e][1]
            answer = enc.instance.context[char_start:char_end]  # type: ignore[index]
            if enc.instance.details:
                results.append({"answer": answer, "score": score, "start": char_start, "end": char_end,
                                "windows": len(enc.rows)})
            else:
                results.append(answer)
        return results

    def explain(self, instance: Instance) -> Explanation:
        """Attributions of question and context tokens to the answer's start and end."""
        from predictor.explain import explain_question_answering

        return explain_question_answering(self, instance)

    def sample_input(self) -> Any:
        """Warm-up input."""
        return {"question": "Who wrote the handler?", "context": "The handler was written by the team."}
