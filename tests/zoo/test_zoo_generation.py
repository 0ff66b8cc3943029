"""Text generation of every zoo generator through GeneralizedHandler, against model.generate called directly.

The answer is the whole sequence decoded at once (decoding prompt and continuation apart drops or doubles
spaces with SentencePiece tokenizers); streamed chunks concatenate to it; finish_reason is `eos` when any of
the generation config's end-of-sequence ids ended it; an over-long prompt is echoed as the user wrote it.
"""

from __future__ import annotations

from typing import Any

import pytest
from zoo_models import EOS_CHAIN_PROMPT, FAMILIES, GENERATORS, Direct, Zoo, ids

from predictor.handler import GeneralizedHandler
from predictor.tasks import StreamEnd

N = 8
PROMPTS = [
    "Once upon a time",
    "The quick brown fox",
    "Café déjà vu in Zürich, said José",
    "  Two leading spaces and a trailing one ",
    EOS_CHAIN_PROMPT,  # the Qwen2 model ends this with its second end-of-sequence id
]
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 320)[:20_000]


def greedy(handler: GeneralizedHandler, prompt: str, n: int = N) -> Any:
    return handler.parse({"text": prompt, "parameters": {"do_sample": False, "max_new_tokens": n}, "details": True})


def expected_finish(direct: Direct, new_ids: list[int], n: int = N) -> str:
    return "eos" if new_ids and new_ids[-1] in direct.eos_ids else "length"


@pytest.mark.parametrize("key", GENERATORS, ids=ids(GENERATORS))
def test_zoo_greedy_answer_is_the_whole_sequence_decoded_by_transformers(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    together = handler.predict([greedy(handler, p) for p in PROMPTS])
    for prompt, detail in zip(PROMPTS, together, strict=True):
        text, _, new_ids = direct.generate(prompt, N)
        assert detail["generated_text"] == text, prompt
        assert detail["finish_reason"] == expected_finish(direct, new_ids), prompt
        [plain] = handler.predict([handler.parse({"text": prompt, "parameters": {"do_sample": False,
                                                                                  "max_new_tokens": N}})])
        assert plain == text


@pytest.mark.parametrize("key", GENERATORS, ids=ids(GENERATORS))
def test_zoo_streamed_chunks_concatenate_to_the_answer(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    for prompt in PROMPTS:
        items = list(handler.stream(greedy(handler, prompt)))
        end = items[-1]
        assert isinstance(end, StreamEnd)
        assert all(isinstance(c, str) for c in items[:-1])
        text, _, new_ids = direct.generate(prompt, N)
        assert "".join(items[:-1]) == text, prompt
        assert end.finish_reason == expected_finish(direct, new_ids), prompt


def test_zoo_finish_reason_is_eos_for_a_second_end_of_sequence_id(zoo: Zoo) -> None:
    key = ("qwen2", "text_generation")
    handler, direct = zoo.handler(key), zoo.direct(key)
    text, _, new_ids = direct.generate(EOS_CHAIN_PROMPT, N)
    assert new_ids[-1] in direct.eos_ids and new_ids[-1] != direct.tokenizer.eos_token_id and len(new_ids) < N
    [detail] = handler.predict([greedy(handler, EOS_CHAIN_PROMPT)])
    assert (detail["generated_text"], detail["finish_reason"]) == (text, "eos")
    assert detail["generated_tokens"] == len(new_ids)


@pytest.mark.parametrize("key", GENERATORS, ids=ids(GENERATORS))
def test_zoo_over_long_prompt_is_echoed_as_written(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    assert len(LONG_PROMPT) == 20_000
    [detail] = handler.predict([greedy(handler, LONG_PROMPT, 4)])
    assert detail["truncated"] is True
    assert detail["generated_text"].startswith(LONG_PROMPT)
    assert detail["generated_text"] == LONG_PROMPT + detail["continuation"]
    items = list(handler.stream(greedy(handler, LONG_PROMPT, 4)))
    assert "".join(i for i in items if isinstance(i, str)) == detail["generated_text"]


@pytest.mark.parametrize("key", GENERATORS, ids=ids(GENERATORS))
def test_zoo_special_tokens_typed_in_a_prompt_are_text(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    prompt = f"The tag {FAMILIES[key[0]].special_text} ends a document"
    text, prompt_ids, _ = direct.generate(prompt, N, split_special_tokens=True)
    assert direct.tokenizer.convert_tokens_to_ids(FAMILIES[key[0]].special_text) not in prompt_ids
    [detail] = handler.predict([greedy(handler, prompt)])
    assert detail["generated_text"] == text
    assert detail["generated_text"].startswith(prompt)
