"""OpenAI-compatible completions on the generation server: JSON, server-sent events, and 400s."""

from __future__ import annotations

import json

import pytest

PROMPT = "Once upon a time"
GREEDY = {"model": "gen", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}


def _events(text: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    events = [block for block in text.split("\n\n") if block.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def _stream(gen, body: dict) -> list[dict]:
    with gen.stream("POST", "/openai/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode("utf-8")
    payloads = _events(text)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_completion_is_the_greedy_continuation(gen, direct):
    response = gen.post("/openai/v1/completions", json=GREEDY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == "gen" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert PROMPT + choice["text"] == direct["gen"].greedy(PROMPT, 6)
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 6
    assert usage["prompt_tokens"] == len(direct["gen"].tokenizer(PROMPT)["input_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_echo_returns_prompt_and_completion(gen):
    plain = gen.post("/openai/v1/completions", json=GREEDY).json()["choices"][0]["text"]
    echoed = gen.post("/openai/v1/completions", json={**GREEDY, "echo": True}).json()["choices"][0]["text"]
    assert echoed == PROMPT + plain


def test_streamed_events_add_up_to_the_completion(gen):
    whole = gen.post("/openai/v1/completions", json=GREEDY).json()["choices"][0]
    chunks = _stream(gen, GREEDY)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "text_completion" and c["model"] == "gen" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_models_lists_the_served_model(gen):
    body = gen.get("/openai/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["gen"]


@pytest.mark.usefixtures("still_healthy")
@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"model": "gen"}', b'{"prompt": "x"}',
                                  b'{"model": "gen", "prompt": "x", "max_tokens": 0}',
                                  b'{"model": "gen", "prompt": "x", "n": 2, "stream": true}',
                                  b'{"model": "gen", "prompt": ["a", "b"]}',
                                  b'{"model": "gen", "prompt": "x", "temperature": -1}',
                                  b'{"model": "gen", "prompt": "   "}'])
def test_bad_bodies_are_400(gen, body):
    response = gen.post("/openai/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


def test_chat_with_a_model_without_a_chat_template_is_400(gen):
    response = gen.post("/openai/v1/chat/completions",
                        json={"model": "gen", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "no chat template" in error["message"] and error["type"] == "invalid_request_error"
    assert gen.get("/ping").status_code == 200


def test_unknown_model_is_404(gen):
    response = gen.post("/openai/v1/completions", json={**GREEDY, "model": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


STOP_PROMPTS = ["Once a", "upon the", "Once upon a time", "The quick brown fox"]


def _continuation(gen, prompt: str) -> str:
    body = {**GREEDY, "prompt": prompt, "max_tokens": 12}
    return gen.post("/openai/v1/completions", json=body).json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def stop_case(gen) -> tuple[dict, str]:
    """A greedy request with a stop string in its continuation (not across the prompt's end)."""
    for prompt in STOP_PROMPTS:
        text = _continuation(gen, prompt)
        for start in range(len(text) // 2, len(text) - 2):
            stop = text[start:start + 3]
            if stop.strip() and (prompt + text).find(stop) >= len(prompt):
                return {**GREEDY, "prompt": prompt, "max_tokens": 12, "stop": stop}, stop
    pytest.fail(f"no greedy continuation of {STOP_PROMPTS} has a usable stop string")


def test_stop_string_finishes_with_stop(gen, stop_case):
    body, stop = stop_case
    choice = gen.post("/openai/v1/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    full = _continuation(gen, body["prompt"])
    assert full.startswith(choice["text"].split(stop)[0])  # an early end of the same greedy text


def test_stop_string_is_not_returned(gen, stop_case):
    body, stop = stop_case
    text = gen.post("/openai/v1/completions", json=body).json()["choices"][0]["text"]
    assert stop not in text
    assert _continuation(gen, body["prompt"]).startswith(text)


def test_streamed_finish_reason_matches_the_completion(gen, stop_case):
    body, _ = stop_case
    whole = gen.post("/openai/v1/completions", json=body).json()["choices"][0]
    assert _stream(gen, body)[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "stop"


def test_stop_string_across_the_prompt_end_does_not_stop(gen):
    prompt = "Once upon a time"
    full = _continuation(gen, prompt)
    stop = prompt[-2:] + full[:1]  # occurs in prompt + continuation, never in the continuation alone
    if stop in full:
        pytest.skip(f"{stop!r} occurs in the continuation {full!r} itself")
    choice = gen.post("/openai/v1/completions", json={**GREEDY, "max_tokens": 12, "stop": stop}).json()
    assert choice["choices"][0]["text"] == full
    assert choice["usage"]["completion_tokens"] == 12 or choice["choices"][0]["finish_reason"] == "stop"
