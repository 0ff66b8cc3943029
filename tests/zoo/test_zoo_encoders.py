"""Encoder modes of every zoo family through GeneralizedHandler, against transformers called directly.

Classification: argmax label and softmax scores. Token classification: the saved tokenizer's own tokens
(case kept) with per-token argmax labels. QA: a brute-force span search over every window. Mixed-length
batches must answer as each input alone (the zoo has a left-padding tokenizer). Special tokens typed by a
user are text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from zoo_models import (
    DOC_STRIDE,
    ENCODERS,
    FAMILIES,
    MAX_ANSWER_LENGTH,
    Direct,
    Zoo,
    approx_nested,
    ids,
)

from predictor.handler import GeneralizedHandler

TEXTS = [
    "Ada Lovelace worked with Charles Babbage in London.",
    "Paris",
    "Café déjà vu: a naïve façade in the Champs-Élysées, said José Martínez.",
    "THE END OF THE CHAPTER was in Zürich on 14 March 2022 at 9:30 a.m.!",
    " ".join(["Marie Curie was born in Warsaw in 1867 and moved to Paris in 1891."] * 6),  # over max_length
]
QA_CASES = [
    ("Who worked with Babbage?", "Ada Lovelace worked with Charles Babbage in London."),
    ("Where was Marie Curie born?", "Marie Curie was born in Warsaw in 1867 and moved to Paris in 1891."),
    ("Which river?", " ".join(["The Danube passes Vienna, Bratislava, Budapest and Belgrade."] * 8)),
]
SEQ = [k for k in ENCODERS if k[1] == "sequence_classification"]
TOK = [k for k in ENCODERS if k[1] == "token_classification"]
QA = [k for k in ENCODERS if k[1] == "question_answering"]


def detailed(handler: GeneralizedHandler, raw: Any) -> Any:
    item = {"text": raw} if isinstance(raw, str) else dict(raw)
    return handler.parse({**item, "details": True})


def direct_tokens(direct: Direct, text: str, **kwargs: Any) -> list[list[str]]:
    """[[token, label]] of the saved tokenizer's tokens (special tokens dropped) and the per-token argmax."""
    enc = direct.encode(text, return_special_tokens_mask=True, **kwargs)
    logits = direct.forward(enc).logits[0]
    tokens = direct.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    special = enc["special_tokens_mask"][0].tolist()
    return [[t, direct.id2label[int(i)]] for t, i, s in zip(tokens, logits.argmax(-1), special, strict=True)
            if not s]


# ---- sequence classification ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", SEQ, ids=ids(SEQ))
def test_zoo_sequence_label_and_scores_equal_transformers(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    labels = handler.predict([handler.parse(t) for t in TEXTS])
    details = handler.predict([detailed(handler, t) for t in TEXTS])
    for text, label, detail in zip(TEXTS, labels, details, strict=True):
        probs = torch.softmax(direct.forward(direct.encode(text)).logits[0].float(), -1)
        assert label == direct.id2label[int(probs.argmax())], text
        scores = {e["label"]: e["score"] for e in detail["top_k"]}
        assert scores == pytest.approx({direct.id2label[i]: float(p) for i, p in enumerate(probs)}, abs=1e-4), text


# ---- token classification ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", TOK, ids=ids(TOK))
def test_zoo_token_pairs_are_the_saved_tokenizers_tokens_with_argmax_labels(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    room = direct.zoo.max_length - direct.tokenizer.num_special_tokens_to_add()
    for text in TEXTS:
        [pairs] = handler.predict([handler.parse(text)])
        assert [t for t, _ in pairs] == direct.tokenizer.tokenize(text)[:room], text
        assert pairs == direct_tokens(direct, text), text
    if FAMILIES[key[0]].cased:
        [pairs] = handler.predict([handler.parse("Paris")])
        assert pairs[0][0].lstrip("▁Ġ").startswith("P")


ENCODER_BATCH = [k for k in ENCODERS if k[1] != "question_answering"]


@pytest.mark.parametrize("key", ENCODER_BATCH, ids=ids(ENCODER_BATCH))
def test_zoo_mixed_length_batch_answers_as_each_input_alone(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    for make in (handler.parse, lambda t: detailed(handler, t)):
        together = handler.predict([make(t) for t in TEXTS])
        alone = [handler.predict([make(t)])[0] for t in TEXTS]
        assert together == approx_nested(alone)


# ---- question answering ------------------------------------------------------------------------------
def brute_force_span(direct: Direct, question: str, context: str) -> tuple[float, int, int, int]:
    """(probability, char start, char end, windows): every start <= end < start + max_answer_length over
    the context tokens of every window, probability = softmax(start) * softmax(end) over context tokens."""
    tokenizer = direct.tokenizer
    q_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    room = direct.zoo.max_length - q_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    enc = tokenizer(question, context, truncation="only_second", max_length=direct.zoo.max_length,
                    stride=min(DOC_STRIDE, room // 2), return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    best = (-1.0, 0, 0)
    windows = len(enc["input_ids"])
    for w in range(windows):
        inputs = {k: torch.tensor([enc[k][w]]) for k in tokenizer.model_input_names if k in enc}
        with torch.no_grad():
            out = direct.model(**inputs)
        ctx = [i for i, sid in enumerate(enc.sequence_ids(w)) if sid == 1]
        p_start = torch.softmax(out.start_logits[0, ctx].float(), -1).tolist()
        p_end = torch.softmax(out.end_logits[0, ctx].float(), -1).tolist()
        for a in range(len(ctx)):
            for b in range(a, min(a + MAX_ANSWER_LENGTH, len(ctx))):
                if p_start[a] * p_end[b] > best[0]:
                    offsets = enc["offset_mapping"][w]
                    best = (p_start[a] * p_end[b], offsets[ctx[a]][0], offsets[ctx[b]][1])
    return (*best, windows)


@pytest.mark.parametrize("key", QA, ids=ids(QA))
def test_zoo_qa_best_span_over_all_windows_equals_a_brute_force_search(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    items = [{"question": q, "context": c} for q, c in QA_CASES]
    answers = handler.predict([handler.parse(json.dumps(i)) for i in items])
    details = handler.predict([handler.parse({**i, "details": True}) for i in items])
    for (question, context), answer, detail in zip(QA_CASES, answers, details, strict=True):
        score, start, end, windows = brute_force_span(direct, question, context)
        assert answer == context[start:end], question
        assert (detail["start"], detail["end"], detail["windows"]) == (start, end, windows), question
        assert detail["score"] == pytest.approx(score, rel=1e-3, abs=1e-6)
    assert details[-1]["windows"] > 1  # the long context really was read in several windows


@pytest.mark.parametrize("key", QA, ids=ids(QA))
def test_zoo_qa_batch_answers_as_each_question_alone(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    raws = [{"question": q, "context": c, "details": True} for q, c in QA_CASES]
    together = handler.predict([handler.parse(r) for r in raws])
    assert together == approx_nested([handler.predict([handler.parse(r)])[0] for r in raws])


# ---- special tokens typed by a user are text -----------------------------------------------------------
@pytest.mark.parametrize("key", TOK, ids=ids(TOK))
def test_zoo_special_tokens_typed_by_a_user_are_text(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    special = FAMILIES[key[0]].special_text
    text = f"Ada wrote {special} to Charles in London."
    expected = direct_tokens(direct, text, split_special_tokens=True)
    assert len(expected) > len(direct_tokens(direct, text))  # split, the marker is several text tokens
    [pairs] = handler.predict([handler.parse(text)])
    assert pairs == expected


@pytest.mark.parametrize("key", SEQ, ids=ids(SEQ))
def test_zoo_special_tokens_typed_by_a_user_do_not_change_the_input(zoo: Zoo, key: tuple[str, str]) -> None:
    handler, direct = zoo.handler(key), zoo.direct(key)
    text = f"first part {FAMILIES[key[0]].special_text} second part"
    probs = torch.softmax(direct.forward(direct.encode(text, split_special_tokens=True)).logits[0], -1)
    [detail] = handler.predict([detailed(handler, text)])
    scores = {e["label"]: e["score"] for e in detail["top_k"]}
    assert scores == pytest.approx({direct.id2label[i]: float(p) for i, p in enumerate(probs)}, abs=1e-4)
