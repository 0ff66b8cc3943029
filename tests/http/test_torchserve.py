"""TorchServe's inference API on the KServe port, as TorchServe's own clients call it."""

from __future__ import annotations

import json

import httpx
import pytest
from http_checks import assert_torchserve_error

TEXT = "Ada Lovelace lived in London."
TEXTS = ["Ada Lovelace lived in London.", "Grace Hopper worked in Washington.", "hello world"]
GREEDY = {"do_sample": False, "max_new_tokens": 12}
# Prompts whose greedy continuation has spaces, so that a text streamer has words to send one by one.
STREAM_PROMPTS = ["Once a", "upon the", "upon a", "Once upon a time"]


def test_ping_is_healthy(seq):
    response = seq.get("/ping")
    assert (response.status_code, response.json()) == (200, {"status": "Healthy"})


def test_raw_body_without_content_type(tok, direct):
    """`curl --data-binary @file` with the content type removed: the body is the text."""
    request = tok.build_request("POST", "/predictions/tok", content=TEXT.encode())
    assert "content-type" not in request.headers
    response = tok.send(request)
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


def test_put_like_curl_upload(tok, direct):
    response = tok.put("/predictions/tok", content=TEXT.encode())
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain",
                                          "text/plain; charset=utf-8", "application/octet-stream"])
def test_body_content_types(tok, direct, content_type):
    """`curl -d TEXT` sends form-urlencoded; the whole body is still the one input."""
    response = tok.post("/predictions/tok", content=TEXT.encode(), headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


def test_urlencoded_data_field_like_requests_data_dict(tok, direct):
    """`requests.post(url, data={"data": text})`, as TorchServe's Python examples send it."""
    response = tok.post("/predictions/tok", data={"data": TEXT})
    assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


@pytest.mark.parametrize("body", [json.dumps(TEXT), json.dumps({"text": TEXT}), json.dumps({"data": TEXT})])
def test_json_bodies(tok, direct, body):
    response = tok.post("/predictions/tok", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


def test_question_answering_json_body(qa, core):
    item = {"question": "Where did the team work?", "context": "The team worked in Paris on the handler."}
    handler = core["qa"]
    [expected] = handler.predict([handler.parse(item)])
    for headers in ({"Content-Type": "application/json"}, {}):
        response = qa.post("/predictions/qa", content=json.dumps(item).encode(), headers=headers)
        assert response.status_code == 200, response.text
        assert response.text == expected


def test_string_answer_is_raw_utf8_text(qa, core):
    """A string result is the body itself: no JSON quotes, UTF-8, text/plain."""
    item = {"question": "Wo wohnt Jürgen?", "context": "Jürgen wohnt in Zürich, nicht in München."}
    handler = core["qa"]
    [expected] = handler.predict([handler.parse(item)])
    assert any(ord(c) > 127 for c in expected), expected  # the check below is about UTF-8
    response = qa.post("/predictions/qa", json=item)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == expected.encode("utf-8")
    assert not response.text.startswith('"')


def test_structured_answer_is_json(tok, direct):
    response = tok.post("/predictions/tok", content=TEXT)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == direct["tok"].token_labels(TEXT)


def test_multipart_one_data_field(tok, direct):
    response = tok.post("/predictions/tok", files={"data": ("input.txt", TEXT.encode())})
    assert response.status_code == 200, response.text
    assert response.json() == direct["tok"].token_labels(TEXT)


def test_multipart_several_data_fields_answer_a_list_in_order(tok, direct):
    files = [("data", (f"in{n}.txt", t.encode())) for n, t in enumerate(TEXTS)]
    response = tok.post("/predictions/tok", files=files)
    assert response.status_code == 200, response.text
    assert response.json() == [direct["tok"].token_labels(t) for t in TEXTS]


def test_multipart_plain_fields(tok, direct):
    """`curl -F data=TEXT -F data=TEXT` (form fields, not files), several answers in order."""
    boundary = "predictor-test-boundary"
    part = '--{boundary}\r\nContent-Disposition: form-data; name="data"\r\n\r\n{text}\r\n'
    body = "".join(part.format(boundary=boundary, text=t) for t in TEXTS)
    body += f"--{boundary}--\r\n"
    response = tok.post("/predictions/tok", content=body.encode(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200, response.text
    assert response.json() == [direct["tok"].token_labels(t) for t in TEXTS]


def test_details_header_gives_the_detailed_dict(seq, direct):
    response = seq.post("/predictions/seq", content=TEXT, headers={"X-Predictor-Details": "true"})
    assert response.status_code == 200, response.text
    detail = response.json()
    assert set(detail) >= {"label", "score", "top_k", "truncated"}
    assert detail["label"] == direct["seq"].sequence_label(TEXT)
    probs = direct["seq"].sequence_probabilities(TEXT)
    assert {e["label"]: e["score"] for e in detail["top_k"]} == pytest.approx(probs, abs=1e-5)
    plain = seq.post("/predictions/seq", content=TEXT, headers={"X-Predictor-Details": "false"})
    assert plain.text == detail["label"]


def test_versioned_route(seq, direct):
    response = seq.post("/predictions/seq/1.0", content=TEXT)
    assert (response.status_code, response.text) == (200, direct["seq"].sequence_label(TEXT))
    body = assert_torchserve_error(seq.post("/predictions/seq/9.9", content=TEXT), 404,
                                   "ModelVersionNotFoundException")
    assert "9.9" in body["message"]


@pytest.mark.parametrize("route", ["/predictions/x", "/predictions/x/1.0", "/explanations/x"])
def test_unknown_model(seq, route):
    response = seq.post(route, content=TEXT)
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: x"}


# ---- streaming -----------------------------------------------------------------------------------------


def _stream(client: httpx.Client, path: str, body: dict) -> tuple[httpx.Response, list[bytes]]:
    with client.stream("POST", path, json=body) as response:
        chunks = [chunk for chunk in response.iter_raw() if chunk]
    return response, chunks


@pytest.fixture(scope="module")
def wordy_prompt(gen) -> str:
    """A prompt whose greedy continuation has several words (a streamer sends text word by word)."""
    for prompt in STREAM_PROMPTS:
        text = gen.post("/predictions/gen", json={"text": prompt, "parameters": GREEDY}).text
        if text[len(prompt):].count(" ") >= 2:
            return prompt
    pytest.fail(f"no prompt of {STREAM_PROMPTS} has a multi-word greedy continuation with this tiny model")


def test_stream_query_sends_chunks_that_add_up(gen, direct, wordy_prompt):
    body = {"text": wordy_prompt, "parameters": GREEDY}
    whole = gen.post("/predictions/gen", json=body)
    assert whole.text == direct["gen"].greedy(wordy_prompt, GREEDY["max_new_tokens"])
    assert "transfer-encoding" not in whole.headers
    response, chunks = _stream(gen, "/predictions/gen?stream=true", body)
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"].startswith("text/plain")
    assert len(chunks) >= 3, chunks
    assert b"".join(chunks).decode("utf-8") == whole.text


def test_stream_with_seed_equals_the_seeded_answer(gen, wordy_prompt):
    body = {"text": wordy_prompt, "parameters": {"do_sample": True, "seed": 1234, "max_new_tokens": 12}}
    whole = gen.post("/predictions/gen", json=body).text
    assert gen.post("/predictions/gen", json=body).text == whole  # the seed makes sampling reproducible
    response, chunks = _stream(gen, "/predictions/gen?stream=true", body)
    assert response.headers["transfer-encoding"] == "chunked"
    assert b"".join(chunks).decode("utf-8") == whole


def test_handler_stream_config_streams_by_default(gen_stream_server, wordy_prompt):
    """handler.stream: true in model-config.yaml; `?stream=false` still gets one body."""
    body = {"text": wordy_prompt, "parameters": GREEDY}
    with httpx.Client(base_url=gen_stream_server.url, timeout=60) as client:
        response, chunks = _stream(client, "/predictions/gen-stream", body)
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert len(chunks) >= 3, chunks
        whole = client.post("/predictions/gen-stream?stream=false", json=body)
        assert "transfer-encoding" not in whole.headers
        assert whole.headers["content-length"] == str(len(whole.content))
        assert b"".join(chunks).decode("utf-8") == whole.text


def test_stream_query_is_refused_for_other_modes(seq):
    response = seq.post("/predictions/seq?stream=true", content=TEXT)
    assert_torchserve_error(response, 400, "BadRequestException")
