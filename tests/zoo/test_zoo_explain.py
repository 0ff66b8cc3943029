"""Explanations for every zoo model and mode: one importance per word, TorchServe's own QA body accepted."""

from __future__ import annotations

import pytest
from zoo_models import ALL, QA_EXPLAIN_BODY, Zoo, ids

STEPS = 8
TEXT = "Ada Lovelace worked with Charles Babbage in London."


@pytest.mark.parametrize("key", ALL, ids=ids(ALL))
def test_zoo_explanation_has_one_importance_per_word(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    if key[1] == "question_answering":
        raw = {"question": "Who worked with Babbage?", "context": TEXT, "n_steps": STEPS}
    elif key[1] == "text_generation":
        raw = {"text": "Once upon a time", "n_steps": STEPS}
    elif key[1] == "token_classification":  # one (position, label) target: every entity would cost minutes
        raw = {"text": TEXT, "target": [1, 1], "n_steps": STEPS}
    else:
        raw = {"text": TEXT, "n_steps": STEPS}
    explanation = handler.explain(handler.parse(raw))
    words = explanation["words"]
    assert words
    names = ("importances_answer_start", "importances_answer_end") if key[1] == "question_answering" \
        else ("importances",)
    for name in names:
        assert len(explanation[name]) == len(words), name
        assert all(isinstance(v, float) for v in explanation[name])


QA = [k for k in ALL if k[1] == "question_answering"]


@pytest.mark.parametrize("key", QA, ids=ids(QA))
def test_zoo_qa_explanation_accepts_torchserves_request_body(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    explanation = handler.explain(handler.parse(dict(QA_EXPLAIN_BODY)))
    words = explanation["words"]
    assert len(explanation["importances_answer_start"]) == len(words)
    assert len(explanation["importances_answer_end"]) == len(words)
