"""The shared tokenizer: encodes on several threads at once stay independent; user text is text."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from models import minilm_dir
from transformers import AutoTokenizer

from predictor.tokenization import PerThreadTokenizer

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)


def _race(tokenizer: Any, rounds: int = 1500) -> list[str]:
    """Two threads encode the same text, one truncating with a stride and one not; returns what went wrong."""
    full = len(tokenizer(LONG)["input_ids"])
    problems: list[str] = []
    start = threading.Barrier(2)

    def truncating() -> None:
        start.wait()
        for _ in range(rounds):
            try:
                enc = tokenizer(LONG, truncation=True, max_length=16, stride=4, return_overflowing_tokens=True)
            except Exception as exc:  # "Already borrowed" when the other thread reconfigures mid-call
                problems.append(f"truncating: {type(exc).__name__}: {exc}")
                continue
            if len(enc["input_ids"][0]) != 16:
                problems.append(f"truncating: {len(enc['input_ids'][0])} tokens")

    def whole() -> None:
        start.wait()
        for _ in range(rounds):
            try:
                n = len(tokenizer(LONG)["input_ids"])
            except Exception as exc:
                problems.append(f"whole: {type(exc).__name__}: {exc}")
                continue
            if n != full:
                problems.append(f"whole: {n} of {full} tokens")

    threads = [threading.Thread(target=truncating), threading.Thread(target=whole)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return problems


@pytest.fixture(scope="module")
def raw_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(minilm_dir())


def test_threads_encoding_at_once_see_only_their_own_settings(raw_tokenizer: Any) -> None:
    assert _race(PerThreadTokenizer(raw_tokenizer)) == []


@pytest.mark.slow
def test_the_race_is_real_on_a_bare_tokenizer(raw_tokenizer: Any) -> None:
    """The failure the wrapper prevents: without it the same loop mixes settings up (or fails)."""
    problems: list[str] = []
    for _ in range(5):
        problems += _race(raw_tokenizer)
        if problems:
            break
    if not problems:
        pytest.skip("no interleaving happened on this machine in 5 tries (the race needs two busy threads)")
    assert problems


def test_special_token_strings_typed_by_a_user_are_text(raw_tokenizer: Any) -> None:
    tokenizer = PerThreadTokenizer(raw_tokenizer)
    ids = tokenizer("hello [SEP] world [PAD]")["input_ids"]
    assert ids.count(raw_tokenizer.sep_token_id) == 1  # only the one the template appends
    assert raw_tokenizer.pad_token_id not in ids
    assert ids == raw_tokenizer("hello [SEP] world [PAD]", split_special_tokens=True)["input_ids"]
    assert tokenizer.tokenize("a [CLS] b") == raw_tokenizer.tokenize("a [CLS] b", split_special_tokens=True)
    assert tokenizer.encode("[MASK]") == raw_tokenizer.encode("[MASK]", split_special_tokens=True)


def test_decoding_uses_the_shared_tokenizer_and_the_wrapper_is_read_only(raw_tokenizer: Any) -> None:
    tokenizer = PerThreadTokenizer(raw_tokenizer)
    assert tokenizer.decode([7592, 2088]) == "hello world"
    assert tokenizer.shared is raw_tokenizer
    assert len(tokenizer) == len(raw_tokenizer)
    with pytest.raises(AttributeError, match="read-only"):
        tokenizer.padding_side = "left"


def test_each_thread_gets_one_copy_of_its_own() -> None:
    tokenizer = PerThreadTokenizer(AutoTokenizer.from_pretrained(minilm_dir()))
    mine = tokenizer.own()
    assert tokenizer.own() is mine and mine is not tokenizer.shared
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(tokenizer.own()))
    thread.start()
    thread.join()
    assert other[0] is not mine
