"""The official `openai` library against the chat generator: completions and chat, streamed and not."""

from __future__ import annotations

import pytest
import torch
import transformers

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Once upon a time"}]


@pytest.fixture(scope="module")
def client(chat_server):
    with openai.OpenAI(base_url=chat_server.url + "/openai/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def greedy(chat_server):
    """The greedy continuation of a text, by transformers directly: (text, token count, hit eos)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_server.model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_server.model_dir)

    def run(prompt: str, max_new_tokens: int) -> tuple[str, int, bool]:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        eos = tokenizer.eos_token_id in new
        if eos:
            new = new[: new.index(tokenizer.eos_token_id) + 1]
        return tokenizer.decode(new, skip_special_tokens=True), len(new), eos

    run.tokenizer = tokenizer
    return run


def _finish(eos: bool) -> str:
    return "stop" if eos else "length"


def test_models_have_created(client):
    [model] = client.models.list().data
    assert model.id == "chat" and isinstance(model.created, int) and model.created > 0


def test_completion_defaults_to_16_tokens(client, greedy):
    completion = client.completions.create(model="chat", prompt="Once upon a time", temperature=0)
    text, tokens, eos = greedy("Once upon a time", 16)
    assert completion.choices[0].text == text and completion.usage.completion_tokens == tokens <= 16
    assert completion.choices[0].finish_reason == _finish(eos)


def test_chat_uses_the_chat_template(client, greedy):
    prompt = greedy.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    chat = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_completion_tokens=8)
    text, tokens, eos = greedy(prompt, 8)
    [choice] = chat.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", text, _finish(eos))
    assert chat.usage.prompt_tokens == len(greedy.tokenizer(prompt)["input_ids"])
    assert chat.usage.completion_tokens == tokens
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_stream_adds_up_and_reports_usage(client, api):
    if api == "chat":
        whole = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=8)
        stream = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=8,
                                                stream=True, stream_options={"include_usage": True})
        expected = whole.choices[0].message.content
    else:
        whole = client.completions.create(model="chat", prompt="The quick", temperature=0, max_tokens=8)
        stream = client.completions.create(model="chat", prompt="The quick", temperature=0, max_tokens=8,
                                           stream=True, stream_options={"include_usage": True})
        expected = whole.choices[0].text
    chunks = list(stream)
    *content, last = chunks
    pieces = [(c.choices[0].delta.content or "") if api == "chat" else c.choices[0].text for c in content]
    assert "".join(pieces) == expected
    assert content[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in content)


def test_seed_and_n(client):
    sampled = [client.chat.completions.create(model="chat", messages=MESSAGES, seed=7, temperature=1.0, top_p=0.9,
                                              max_tokens=6, n=2) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert [c.index for c in sampled[0].choices] == [0, 1]


@pytest.mark.parametrize("stream", [False, True])
def test_stop(client, stream):
    text = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0,
                                          max_tokens=12).choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 1] if text else pytest.skip("empty greedy text")
    expected = text[:text.find(stop)]
    body = {"model": "chat", "messages": MESSAGES, "temperature": 0, "max_tokens": 12, "stop": [stop]}
    if stream:
        chunks = list(client.chat.completions.create(**body, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**body).choices[0]
        content, finish = choice.message.content, choice.finish_reason
    assert (content, finish) == (expected, "stop")


@pytest.mark.parametrize(("api", "extra", "param"), [
    ("chat", {"presence_penalty": 0.5}, "presence_penalty"),
    ("chat", {"frequency_penalty": 1.0}, "frequency_penalty"),
    ("chat", {"logprobs": True}, "logprobs"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat", {"n": 2, "stream": True}, "n"),
    ("chat", {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role"),
    ("chat", {"max_tokens": 100000}, "max_tokens"),
    ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("completions", {"prompt": ["a", "b"]}, "prompt"),
    ("completions", {"logprobs": 2}, "logprobs"),
    ("completions", {"echo": True, "suffix": "x"}, "suffix"),
    ("completions", {"made_up": 1}, "made_up"),
])
def test_unsupported_parameters_are_400_in_openai_shape(client, api, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        if api == "chat":
            body = {"messages": MESSAGES, **extra}
            client.chat.completions.create(model="chat", **{k: v for k, v in body.items() if k != "made_up"},
                                           extra_body={k: v for k, v in body.items() if k == "made_up"})
        else:
            body = {"prompt": "x", **extra}
            client.completions.create(model="chat", **{k: v for k, v in body.items() if k != "made_up"},
                                      extra_body={k: v for k, v in body.items() if k == "made_up"})
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"].startswith(param.split(".")[0]) and error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
