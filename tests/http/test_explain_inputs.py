"""Explanations of awkward input: explained when the server can handle it, 400 naming the problem when not;
long QA contexts within limits.max_qa_windows (413 beyond); a model failure is never a retry-me 503."""

from __future__ import annotations

import json

import pytest

from predictor.errors import InferenceError
from predictor.serving.torchserve import torchserve_error

N_STEPS = 4
LONG_PROMPT = " ".join(["Once upon a time there was a small village by the sea."] * 40)  # > 256 positions


@pytest.mark.parametrize("text", ["\u200b", "\u00ad", "\u200b\u00ad \u200b"])
def test_token_classification_input_without_content_tokens_is_400(tok, text, still_healthy):
    for path, body in ((f"/explanations/tok", {"text": text, "n_steps": N_STEPS}),
                       ("/v1/models/tok:explain", {"instances": [{"text": text, "n_steps": N_STEPS}]})):
        response = tok.post(path, json=body)
        assert response.status_code == 400, response.text
        assert "no tokens to explain" in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("text", ["\u200b", "\u00ad"])
def test_sequence_classification_input_without_content_tokens_is_explained(seq, text):
    response = seq.post("/explanations/seq", json={"text": text, "n_steps": N_STEPS})
    assert response.status_code == 200, response.text
    assert response.json()["words"] == ["[CLS]", "[SEP]"]


def test_a_prompt_longer_than_the_context_is_explained_as_generation_sees_it(gen, core, still_healthy):
    prompt_tokens = len(core["gen"].state.task.tokenizer(LONG_PROMPT)["input_ids"])
    context = core["gen"].state.task.context_size
    assert prompt_tokens > context  # the case that failed: more positions than the model has
    response = gen.post("/explanations/gen", json={"text": LONG_PROMPT, "n_steps": N_STEPS})
    assert response.status_code == 200, response.text
    explanation = response.json()
    max_length = core["gen"].config.handler.max_length
    assert 0 < len(explanation["words"]) <= max_length + 2
    assert len(explanation["importances"]) == len(explanation["words"])


def test_a_target_past_the_context_is_400_naming_it(gen, still_healthy):
    target = " the sea" * 120  # past the 256 positions, within max_explain_steps at one step
    for path, body in (("/explanations/gen", {"text": "Once upon a time", "target": target, "n_steps": 1}),
                       ("/v1/models/gen:explain",
                        {"instances": [{"text": "Once upon a time", "target": target, "n_steps": 1}]})):
        response = gen.post(path, json=body)
        assert response.status_code == 400, response.text
        assert "context" in response.text and "Traceback" not in response.text


def test_a_qa_context_over_the_window_limit_is_413(qa, still_healthy):
    context = " ".join(["the handler was written by the team in paris"] * 400)
    item = {"question": "Who wrote it?", "context": context}
    response = qa.post("/predictions/qa", json=item)
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["type"] == "RequestEntityTooLargeException" and "limits.max_qa_windows" in body["message"]
    response = qa.post("/v1/models/qa:explain", json={"instances": [{**item, "n_steps": N_STEPS}]})
    assert response.status_code == 413, response.text


def test_a_qa_context_within_the_limit_is_answered(qa, core):
    context = " ".join(["the handler was written by the team in paris"] * 12)
    item = {"question": "Who wrote it?", "context": context, "details": True}
    response = qa.post("/predictions/qa", json=item)
    assert response.status_code == 200, response.text
    handler = core["qa"]
    expected = handler.predict([handler.parse(item)])[0]
    answer = response.json()
    assert answer["windows"] > 3
    assert (answer["answer"], answer["start"], answer["end"]) == (expected["answer"], expected["start"],
                                                                  expected["end"])


def test_a_model_failure_on_torchserve_routes_is_500_not_a_retry():
    response = torchserve_error(InferenceError("inference failed: IndexError: index out of range"))
    assert response.status_code == 500
    assert "retry-after" not in response.headers
    assert json.loads(response.body)["type"] == "InternalServerException"
