"""KServe v1 over a real server per mode: model readiness and :predict, checked against transformers."""

from __future__ import annotations

import json

import httpx
import pytest
from http_checks import assert_kserve_error

TEXTS = ["hello world", "I loved this film", "The service was slow and rude.",
         "Ada Lovelace lived in London."]
QA_ITEMS = [
    {"question": "Who wrote the handler?",
     "context": "The handler was written by the team in Paris last year."},
    {"question": "Where is the tower?",
     "context": "The Eiffel tower stands in Paris, the capital of France."},
]


@pytest.mark.parametrize("name", ["seq", "tok", "qa", "gen"])
def test_model_ready_and_listed(fleet, name):
    server = fleet.ready(name)
    ready = httpx.get(f"{server.url}/v1/models/{name}")
    assert ready.status_code == 200
    assert ready.json() == {"name": name, "ready": True}
    assert httpx.get(f"{server.url}/v1/models").json() == {"models": [name]}


def test_unknown_model_is_404(seq):
    assert "x" in assert_kserve_error(seq.get("/v1/models/x"), 404)
    assert_kserve_error(seq.post("/v1/models/x:predict", json={"instances": ["hi"]}), 404)


def test_strings_give_the_argmax_label(seq, direct):
    response = seq.post("/v1/models/seq:predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [direct["seq"].sequence_label(t) for t in TEXTS]}


def test_data_and_text_objects_equal_strings(seq):
    plain = seq.post("/v1/models/seq:predict", json={"instances": TEXTS}).json()
    wrapped = [{"data": t} if n % 2 else {"text": t} for n, t in enumerate(TEXTS)]
    assert seq.post("/v1/models/seq:predict", json={"instances": wrapped}).json() == plain


def test_details_scores_are_the_softmax(seq, direct):
    """The label alone cannot tell texts apart for a random head; its probabilities can."""
    instances = [{"text": t, "details": True} for t in TEXTS]
    predictions = seq.post("/v1/models/seq:predict", json={"instances": instances}).json()["predictions"]
    for text, prediction in zip(TEXTS, predictions, strict=True):
        probs = direct["seq"].sequence_probabilities(text)
        assert prediction["label"] == direct["seq"].sequence_label(text)
        assert prediction["score"] == pytest.approx(probs[prediction["label"]], abs=1e-5)
        assert {e["label"]: e["score"] for e in prediction["top_k"]} == pytest.approx(probs, abs=1e-5)
        assert prediction["truncated"] is False


def test_token_labels(tok, direct):
    response = tok.post("/v1/models/tok:predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.text
    expected = [direct["tok"].token_labels(t) for t in TEXTS]
    assert response.json() == {"predictions": expected}
    assert len({label for pairs in expected for _, label in pairs}) > 1  # the check can tell labels apart


def test_question_answering_objects_and_json_text(qa, core):
    handler = core["qa"]
    expected = handler.predict([handler.parse(item) for item in QA_ITEMS])
    as_objects = qa.post("/v1/models/qa:predict", json={"instances": QA_ITEMS})
    wrapped = [{"data": json.dumps(i)} for i in QA_ITEMS]
    as_text = qa.post("/v1/models/qa:predict", json={"instances": wrapped})
    for response in (as_objects, as_text):
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": expected}
    for item, answer in zip(QA_ITEMS, expected, strict=True):
        assert answer and answer in item["context"]


def test_generation_greedy_equals_generate(gen, direct):
    prompts = ["Once upon a time", "The quick brown fox"]
    instances = [{"text": p, "parameters": {"do_sample": False, "max_new_tokens": 6}} for p in prompts]
    response = gen.post("/v1/models/gen:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [direct["gen"].greedy(p, 6) for p in prompts]}


def test_many_instances_keep_their_order(tok, direct):
    texts = [f"{name} met {other} in {place}" for name in ("Ada", "Charles", "Grace")
             for other in ("Alan", "Marie") for place in ("London", "Paris", "Rome")]
    response = tok.post("/v1/models/tok:predict", json={"instances": texts})
    assert response.json()["predictions"] == [direct["tok"].token_labels(t) for t in texts]
