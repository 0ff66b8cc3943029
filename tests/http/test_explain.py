"""Explanations over HTTP (KServe :explain and TorchServe /explanations), against the core in-process."""

from __future__ import annotations

import math

import pytest
from http_checks import assert_kserve_error

N_STEPS = 8  # Integrated Gradients steps: few, to keep the suite fast; the shape does not depend on it
TEXT = "Ada Lovelace lived in London."
QA_ITEM = {"question": "Who wrote the handler?", "context": "The handler was written by the team in Paris."}


def _check_importances(words: list, importances: list) -> None:
    assert words and all(isinstance(w, str) for w in words)
    assert len(importances) == len(words)
    assert all(isinstance(v, float) and math.isfinite(v) for v in importances)
    norm = math.sqrt(sum(v * v for v in importances))
    assert norm == pytest.approx(1.0, abs=1e-4) or norm == 0.0  # TorchServe L2-normalises


def _expected(core, name: str, item) -> dict:
    handler = core[name]
    return handler.explain(handler.parse(item))


def test_kserve_explain_sequence_classification(seq, core):
    item = {"text": TEXT, "n_steps": N_STEPS}
    response = seq.post("/v1/models/seq:explain", json={"instances": [item]})
    assert response.status_code == 200, response.text
    [explanation] = response.json()["explanations"]
    assert {"words", "importances", "delta"} <= set(explanation)
    _check_importances(explanation["words"], explanation["importances"])
    assert isinstance(explanation["delta"], float)
    expected = _expected(core, "seq", item)
    assert explanation["words"] == expected["words"]
    assert explanation["words"][0] == "[CLS]" and explanation["words"][-1] == "[SEP]"
    assert explanation["importances"] == pytest.approx(expected["importances"], abs=1e-4)


def test_torchserve_explanations_route(seq, core):
    item = {"text": TEXT, "n_steps": N_STEPS}
    response = seq.post("/explanations/seq", json=item)
    assert response.status_code == 200, response.text
    explanation = response.json()
    _check_importances(explanation["words"], explanation["importances"])
    assert explanation["importances"] == pytest.approx(_expected(core, "seq", item)["importances"], abs=1e-4)


def test_kserve_explain_token_classification(tok):
    response = tok.post("/v1/models/tok:explain", json={"instances": [{"text": TEXT, "n_steps": N_STEPS}]})
    assert response.status_code == 200, response.text
    [explanation] = response.json()["explanations"]
    _check_importances(explanation["words"], explanation["importances"])
    assert isinstance(explanation["delta"], float)


def test_kserve_explain_question_answering(qa, core):
    item = {**QA_ITEM, "n_steps": N_STEPS}
    response = qa.post("/v1/models/qa:explain", json={"instances": [item]})
    assert response.status_code == 200, response.text
    [explanation] = response.json()["explanations"]
    assert {"words", "importances_answer_start", "importances_answer_end", "delta_start", "delta_end"} <= set(
        explanation)
    _check_importances(explanation["words"], explanation["importances_answer_start"])
    _check_importances(explanation["words"], explanation["importances_answer_end"])
    assert isinstance(explanation["delta_start"], float) and isinstance(explanation["delta_end"], float)
    expected = _expected(core, "qa", item)
    assert explanation["words"] == expected["words"]
    for key in ("importances_answer_start", "importances_answer_end"):
        assert explanation[key] == pytest.approx(expected[key], abs=1e-4)


def test_explain_bad_input_is_400(qa, still_healthy):
    assert_kserve_error(qa.post("/v1/models/qa:explain", json={"instances": [{"question": "who?"}]}), 400)
    assert_kserve_error(qa.post("/v1/models/x:explain", json={"instances": [QA_ITEM]}), 404)
