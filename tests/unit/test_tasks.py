"""The four modes through GeneralizedHandler, checked against the same models called directly.

Each answer is compared with an independent computation through transformers (or the TorchScript file
called by hand): argmax labels, per-token labels, a brute-force span search for QA, model.generate for
text generation. Pretrained and TorchScript models, both index_to_name.json formats.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from models import SEQ_LABELS, TOKEN_LABELS, build_encoder, build_needle_qa, write_model_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from predictor.config import Limits
from predictor.errors import InvalidRequestError, PayloadTooLargeError
from predictor.handler import GeneralizedHandler
from predictor.tasks import StreamEnd, build_task

Forward = Callable[[Mapping[str, torch.Tensor]], tuple[torch.Tensor, ...]]

SEQ_TEXTS = [
    "The movie was absolutely wonderful.",
    "Terrible food, never again!",
    "Ada Lovelace worked with Charles Babbage in London.",
    "Café déjà vu: a naïve façade.",
    "ok",
]
LONG_TEXT = " ".join(["everything is fine and nothing is broken"] * 20)  # far more than max_length tokens
TOKEN_TEXTS = [
    "Ada Lovelace worked with Charles Babbage in London.",
    "Hello world",
    "Café déjà vu: naïve, façade!",
]
QA_CASES = [
    ("Who leads?", "Elon Musk is the CEO of Tesla."),
    ("Where?", "The handler was written in Paris by a small team of engineers."),
    ("Which river?", " ".join(["The old town sits on the bank of a wide river near the hills."] * 12)),
]
FILLER = "the cat sat on a mat while birds sang in old trees near the river bank"
PROMPTS = ["Once upon a time", "The quick brown fox", "A"]


@dataclass(frozen=True)
class Case:
    """A loaded handler and an independent way to run the same model."""

    handler: GeneralizedHandler
    tokenizer: Any
    forward: Forward
    labels: list[str] | None


def pretrained_forward(auto_class: Any, model_dir: Path) -> Forward:
    model = auto_class.from_pretrained(model_dir).eval()

    def forward(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(model(**inputs).to_tuple())

    return forward


def torchscript_forward(model_dir: Path) -> Forward:
    module = torch.jit.load(str(model_dir / "traced_model.pt")).eval()

    def forward(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():  # traced as TorchServe's examples trace: (input_ids, attention_mask)
            return tuple(module(inputs["input_ids"], inputs["attention_mask"]))

    return forward


def load(model_dir: Path, cache: Path, **kwargs: Any) -> GeneralizedHandler:
    handler = GeneralizedHandler(model_dir, cache_dir=cache, **kwargs)
    handler.load()
    return handler


@pytest.fixture(scope="module")
def ts_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Traced models; label formats swapped relative to the session's pretrained ones."""
    root = tmp_path_factory.mktemp("ts-models")
    return {
        "sequence_classification": build_encoder(
            root / "seq", "sequence_classification", torchscript=True, label_format="list"
        ),
        "token_classification": build_encoder(
            root / "tok", "token_classification", torchscript=True, label_format="index"
        ),
        "question_answering": build_encoder(
            root / "qa", "question_answering", torchscript=True, max_length=48, doc_stride=16
        ),
    }


@pytest.fixture(scope="module")
def ts_handlers(
    ts_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, GeneralizedHandler]:
    cache = tmp_path_factory.mktemp("ts-cache")
    return {mode: load(path, cache) for mode, path in ts_dirs.items()}


_AUTO = {"sequence_classification": AutoModelForSequenceClassification,
         "token_classification": AutoModelForTokenClassification,
         "question_answering": AutoModelForQuestionAnswering}  # fmt: skip
_LABELS = {
    "sequence_classification": SEQ_LABELS,
    "token_classification": TOKEN_LABELS,
    "question_answering": None,
}


def make_case(
    mode: str,
    variant: str,
    handlers: dict[str, GeneralizedHandler],
    model_dirs: dict[str, Path],
    ts_handlers: dict[str, GeneralizedHandler],
    ts_dirs: dict[str, Path],
) -> Case:
    if variant == "pretrained":
        model_dir, handler = model_dirs[mode], handlers[mode]
        forward = pretrained_forward(_AUTO[mode], model_dir)
    else:
        model_dir, handler = ts_dirs[mode], ts_handlers[mode]
        forward = torchscript_forward(model_dir)
    return Case(handler, AutoTokenizer.from_pretrained(model_dir), forward, _LABELS[mode])


@pytest.fixture(scope="module", params=["pretrained", "torchscript"])
def seq_case(
    request: pytest.FixtureRequest, handlers: Any, model_dirs: Any, ts_handlers: Any, ts_dirs: Any
) -> Case:
    return make_case("sequence_classification", request.param, handlers, model_dirs, ts_handlers, ts_dirs)


@pytest.fixture(scope="module", params=["pretrained", "torchscript"])
def tok_case(
    request: pytest.FixtureRequest, handlers: Any, model_dirs: Any, ts_handlers: Any, ts_dirs: Any
) -> Case:
    return make_case("token_classification", request.param, handlers, model_dirs, ts_handlers, ts_dirs)


@pytest.fixture(scope="module", params=["pretrained", "torchscript"])
def qa_case(
    request: pytest.FixtureRequest, handlers: Any, model_dirs: Any, ts_handlers: Any, ts_dirs: Any
) -> Case:
    return make_case("question_answering", request.param, handlers, model_dirs, ts_handlers, ts_dirs)


def encode_one(case: Case, *texts: str, **kwargs: Any) -> Any:
    max_length = case.handler.config.handler.max_length
    return case.tokenizer(*texts, truncation=True, max_length=max_length, return_tensors="pt", **kwargs)


def with_details(handler: GeneralizedHandler, raw: Any) -> Any:
    item = {"text": raw} if isinstance(raw, str) else dict(raw)
    return handler.parse({**item, "details": True})


# ---- sequence classification --------------------------------------------------------------------
def test_sequence_answer_is_the_argmax_label(seq_case: Case) -> None:
    handler = seq_case.handler
    predictions = handler.predict([handler.parse(t) for t in SEQ_TEXTS])
    detailed = handler.predict([with_details(handler, t) for t in SEQ_TEXTS])
    for text, label, details in zip(SEQ_TEXTS, predictions, detailed, strict=True):
        logits = seq_case.forward(dict(encode_one(seq_case, text)))[0][0]
        probs = torch.softmax(logits.float(), -1)
        assert isinstance(label, str)
        assert label == SEQ_LABELS[int(logits.argmax())]
        by_label = {e["label"]: e["score"] for e in details["top_k"]}
        assert by_label == pytest.approx(
            {name: float(p) for name, p in zip(SEQ_LABELS, probs, strict=True)}, abs=1e-4
        )


def test_sequence_details(seq_case: Case) -> None:
    handler = seq_case.handler
    short, long = handler.predict(
        [with_details(handler, "A short review."), with_details(handler, LONG_TEXT)]
    )
    for result in (short, long):
        assert set(result) == {"label", "score", "top_k", "truncated"}
        scores = [e["score"] for e in result["top_k"]]
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # top_k (5) covers both classes
        assert scores == sorted(scores, reverse=True)
        assert {e["label"] for e in result["top_k"]} == set(SEQ_LABELS)
        assert (result["label"], result["score"]) == (
            result["top_k"][0]["label"],
            result["top_k"][0]["score"],
        )
    assert short["truncated"] is False
    assert long["truncated"] is True
    assert len(seq_case.tokenizer(LONG_TEXT)["input_ids"]) > handler.config.handler.max_length


def test_sequence_details_and_top_k_from_the_config(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    state = handler.state
    config = dataclasses.replace(
        state.config, handler=dataclasses.replace(state.config.handler, details=True, top_k=1)
    )
    task = build_task(state.task.model, state.task.tokenizer, config, state.labels)
    [result] = task.run(task.encode([task.parse("plain text, no details field")]))
    assert len(result["top_k"]) == 1 and result["top_k"][0]["label"] == result["label"]
    [plain] = task.run(task.encode([task.parse({"text": "plain", "details": False})]))
    assert plain in SEQ_LABELS


def test_truncation_keeps_the_first_max_length_tokens(seq_case: Case) -> None:
    handler = seq_case.handler
    [result] = handler.predict([with_details(handler, LONG_TEXT)])
    logits = seq_case.forward(dict(encode_one(seq_case, LONG_TEXT)))[0][0]
    assert result["score"] == pytest.approx(float(torch.softmax(logits, -1).max()), abs=1e-4)


# ---- token classification -------------------------------------------------------------------------
def test_token_answer_is_token_label_pairs_without_special_tokens(tok_case: Case) -> None:
    handler = tok_case.handler
    max_length = handler.config.handler.max_length
    texts = [*TOKEN_TEXTS, LONG_TEXT]
    predictions = handler.predict([handler.parse(t) for t in texts])
    for text, pairs in zip(texts, predictions, strict=True):
        tokens = tok_case.tokenizer.tokenize(text)[: max_length - 2]
        logits = tok_case.forward(dict(encode_one(tok_case, text)))[0][0]
        assert logits.shape[0] == len(tokens) + 2  # [CLS] tokens [SEP]
        expected = [
            [token, TOKEN_LABELS[int(i)]] for token, i in zip(tokens, logits[1:-1].argmax(-1), strict=True)
        ]
        assert pairs == expected
        assert json.loads(json.dumps(pairs)) == pairs  # plain JSON lists of strings


def normalised(text: str) -> str:
    """Lower case, no accents (the uncased tokenizer strips them), no spaces, no WordPiece markers."""
    plain = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return plain.lower().replace(" ", "").replace("##", "")


def test_token_details_entities_index_the_original_text(tok_case: Case) -> None:
    handler = tok_case.handler
    for text in TOKEN_TEXTS:
        [result] = handler.predict([with_details(handler, text)])
        assert result["truncated"] is False
        assert result["entities"], "a random model tags something in every sentence here"
        for entity in result["entities"]:
            assert 0 <= entity["start"] < entity["end"] <= len(text)
            assert normalised(text[entity["start"] : entity["end"]]) == normalised(entity["word"])
            assert 0.0 < entity["score"] <= 1.0
            assert entity["entity_group"] in {label.split("-")[-1] for label in TOKEN_LABELS if label != "O"}
    [long] = handler.predict([with_details(handler, LONG_TEXT)])
    assert long["truncated"] is True


def test_token_details_match_the_transformers_pipeline(
    model_dirs: dict[str, Path], handlers: dict[str, GeneralizedHandler]
) -> None:
    from transformers import pipeline

    model = AutoModelForTokenClassification.from_pretrained(model_dirs["token_classification"]).eval()
    model.config.id2label = dict(enumerate(TOKEN_LABELS))
    model.config.label2id = {name: i for i, name in enumerate(TOKEN_LABELS)}
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["token_classification"])
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    handler = handlers["token_classification"]
    for text in TOKEN_TEXTS:
        [result] = handler.predict([with_details(handler, text)])
        expected = [{**e, "score": float(e["score"])} for e in ner(text)]
        assert [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in result["entities"]] == [
            {k: e[k] for k in ("entity_group", "word", "start", "end")} for e in expected
        ]
        assert [e["score"] for e in result["entities"]] == pytest.approx(
            [e["score"] for e in expected], abs=1e-4
        )


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_entities_of_every_aggregation_strategy_match_the_transformers_pipeline(
    tok_case: Case, model_dirs: dict[str, Path], strategy: str
) -> None:
    """The grouping is the pipeline's own, for eager and TorchScript models alike."""
    from transformers import pipeline

    model = AutoModelForTokenClassification.from_pretrained(model_dirs["token_classification"]).eval()
    model.config.id2label = dict(enumerate(TOKEN_LABELS))
    ner = pipeline("token-classification", model=model, tokenizer=tok_case.tokenizer, aggregation_strategy=strategy)
    state = tok_case.handler.state
    config = dataclasses.replace(
        state.config, handler=dataclasses.replace(state.config.handler, aggregation_strategy=strategy, details=True)
    )
    task = build_task(state.task.model, state.task.tokenizer, config, state.labels)
    results = task.run(task.encode([task.parse(text) for text in TOKEN_TEXTS]))
    for text, result in zip(TOKEN_TEXTS, results, strict=True):
        expected = ner(text)
        keys = [k for k in ("entity", "entity_group", "word", "start", "end", "index") if expected and k in expected[0]]
        assert [{k: e[k] for k in keys} for e in result["entities"]] == [{k: e[k] for k in keys} for e in expected]
        assert [e["score"] for e in result["entities"]] == pytest.approx([float(e["score"]) for e in expected],
                                                                         abs=1e-4)


# ---- question answering -------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    score: float
    window: int
    start: int
    end: int
    windows: int


def brute_force_span(case: Case, question: str, context: str, max_answer_length: int | None = None) -> Span:
    """Every (start <= end < start + max_answer_length) over the context tokens of every window."""
    cfg = case.handler.config.handler
    longest = max_answer_length or cfg.max_answer_length
    enc = case.tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=cfg.max_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    best: Span | None = None
    windows = len(enc["input_ids"])
    for w in range(windows):
        ids = torch.tensor([enc["input_ids"][w]])
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.tensor([enc["token_type_ids"][w]]),
        }
        start_logits, end_logits = (t[0].float() for t in case.forward(inputs)[:2])
        ctx = [i for i, sid in enumerate(enc.sequence_ids(w)) if sid == 1]
        p_start = torch.softmax(start_logits[ctx], -1).tolist()
        p_end = torch.softmax(end_logits[ctx], -1).tolist()
        for a in range(len(ctx)):
            for b in range(a, min(a + longest, len(ctx))):
                score = p_start[a] * p_end[b]
                if best is None or score > best.score:
                    offsets = enc["offset_mapping"][w]
                    best = Span(score, w, offsets[ctx[a]][0], offsets[ctx[b]][1], windows)
    assert best is not None
    return best


def test_qa_answer_is_the_best_span_over_all_windows(qa_case: Case) -> None:
    handler = qa_case.handler
    items = [{"question": q, "context": c} for q, c in QA_CASES]
    answers = handler.predict([handler.parse(json.dumps(i)) for i in items])
    detailed = handler.predict([handler.parse({**i, "details": True}) for i in items])
    windows_seen = set()
    for (question, context), answer, details in zip(QA_CASES, answers, detailed, strict=True):
        span = brute_force_span(qa_case, question, context)
        assert isinstance(answer, str)
        assert answer == context[span.start : span.end]
        assert (details["start"], details["end"], details["windows"]) == (span.start, span.end, span.windows)
        assert details["answer"] == answer == context[details["start"] : details["end"]]
        assert details["score"] == pytest.approx(span.score, rel=1e-3, abs=1e-6)
        windows_seen.add(span.windows)
    assert max(windows_seen) > 2  # the long context really was split


def test_qa_spans_respect_max_answer_length(
    handlers: dict[str, GeneralizedHandler], model_dirs: dict[str, Path]
) -> None:
    handler = handlers["question_answering"]
    case = make_case("question_answering", "pretrained", handlers, model_dirs, {}, {})
    state = handler.state
    differs = 0
    for limit in (1, 3):
        config = dataclasses.replace(
            state.config, handler=dataclasses.replace(state.config.handler, max_answer_length=limit)
        )
        task = build_task(state.task.model, state.task.tokenizer, config, None)
        for question, context in QA_CASES:
            [result] = task.run(
                task.encode([task.parse({"question": question, "context": context, "details": True})])
            )
            span = brute_force_span(case, question, context, max_answer_length=limit)
            assert (result["start"], result["end"]) == (span.start, span.end)
            assert result["answer"] == context[span.start : span.end]
            unconstrained = brute_force_span(case, question, context, max_answer_length=10_000)
            differs += (unconstrained.start, unconstrained.end) != (span.start, span.end)
    assert differs, "the limit changed no answer: the test would not notice it being ignored"


@pytest.fixture(scope="module")
def needle_handler(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneralizedHandler, Case]:
    model_dir = build_needle_qa(tmp_path_factory.mktemp("needle") / "qa", max_length=48, doc_stride=16)
    handler = load(model_dir, tmp_path_factory.mktemp("needle-cache"))
    case = Case(
        handler,
        AutoTokenizer.from_pretrained(model_dir),
        pretrained_forward(AutoModelForQuestionAnswering, model_dir),
        None,
    )
    return handler, case


@pytest.mark.parametrize("position", ["late", "middle", "early"])
def test_qa_finds_an_answer_in_any_window_of_a_long_context(
    needle_handler: tuple[GeneralizedHandler, Case], position: str
) -> None:
    handler, case = needle_handler
    before = {"late": 7, "middle": 3, "early": 0}[position]
    context = " ".join([FILLER] * before + ["A zebra appeared."] + [FILLER] * (7 - before))
    assert len(case.tokenizer(context)["input_ids"]) > 2 * handler.config.handler.max_length
    [result] = handler.predict(
        [handler.parse({"question": "Which animal?", "context": context, "details": True})]
    )
    span = brute_force_span(case, "Which animal?", context)
    assert result["answer"] == "zebra" == context[span.start : span.end]
    assert context[result["start"] : result["end"]] == "zebra"
    assert result["windows"] == span.windows > 3
    if position == "late":
        assert span.window >= span.windows - 2  # the winning window is near the end, not the first


@pytest.mark.parametrize("as_", ["json-text", "json-bytes", "object"])
def test_qa_accepts_json_text_or_an_object(handlers: dict[str, GeneralizedHandler], as_: str) -> None:
    handler = handlers["question_answering"]
    item = {"question": "Who leads?", "context": "Elon Musk is the CEO of Tesla."}
    raw = {"json-text": json.dumps(item), "json-bytes": json.dumps(item).encode(), "object": item}[as_]
    assert handler.predict([handler.parse(raw)]) == handler.predict([handler.parse(item)])


def test_qa_question_longer_than_the_window_is_refused(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["question_answering"]
    with pytest.raises(InvalidRequestError, match="question"):
        handler.parse({"question": "why " * 60, "context": "Because."})


# ---- batch independence -----------------------------------------------------------------------
def test_sequence_logits_do_not_depend_on_the_batch(seq_case: Case) -> None:
    task = seq_case.handler.state.task
    encoded = task.encode([seq_case.handler.parse(t) for t in SEQ_TEXTS])
    batched = task.logits(encoded)
    assert len({e.length for e in encoded}) > 1  # the batch really pads
    for n, item in enumerate(encoded):
        torch.testing.assert_close(batched[n], task.logits([item])[0], atol=1e-4, rtol=0)


def test_token_logits_do_not_depend_on_the_batch(tok_case: Case) -> None:
    task = tok_case.handler.state.task
    encoded = task.encode([tok_case.handler.parse(t) for t in TOKEN_TEXTS])
    batched = task.logits(encoded)
    for n, item in enumerate(encoded):
        alone = task.logits([item])[0]
        assert alone.shape[0] == item.length
        torch.testing.assert_close(batched[n, : item.length], alone, atol=1e-4, rtol=0)


def test_qa_logits_do_not_depend_on_the_batch(qa_case: Case) -> None:
    task = qa_case.handler.state.task
    encoded = task.encode([qa_case.handler.parse({"question": q, "context": c}) for q, c in QA_CASES])
    start, end = task.logits(encoded)
    row = 0
    for item in encoded:
        alone_start, alone_end = task.logits([item])
        for r, features in enumerate(item.rows):
            n = len(features["input_ids"])
            torch.testing.assert_close(start[row, :n], alone_start[r, :n], atol=1e-4, rtol=0)
            torch.testing.assert_close(end[row, :n], alone_end[r, :n], atol=1e-4, rtol=0)
            row += 1
    assert row == start.shape[0]


@pytest.mark.parametrize("mode", ["sequence_classification", "token_classification", "question_answering"])
def test_predictions_in_a_mixed_batch_equal_predictions_alone(
    handlers: dict[str, GeneralizedHandler], mode: str
) -> None:
    handler = handlers[mode]
    raws: list[Any]
    if mode == "question_answering":
        raws = [{"question": q, "context": c, "details": True} for q, c in QA_CASES]
    else:
        raws = [{"text": t, "details": True} for t in [LONG_TEXT, *SEQ_TEXTS]]
    together = handler.predict([handler.parse(r) for r in raws])
    alone = [handler.predict([handler.parse(r)])[0] for r in raws]
    assert together == approx_nested(alone)


def approx_nested(value: Any) -> Any:
    """pytest.approx that recurses into lists and dicts of floats (abs 1e-4)."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-4)
    if isinstance(value, list):
        return [approx_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: approx_nested(v) for k, v in value.items()}
    return value


# ---- text generation ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_direct(model_dirs: dict[str, Path]) -> tuple[Any, Any]:
    path = model_dirs["text_generation"]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def direct_generate(gen_direct: tuple[Any, Any], prompt: str, seed: int | None = None, **kwargs: Any) -> str:
    model, tokenizer = gen_direct
    inputs = tokenizer(prompt, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, pad_token_id=tokenizer.eos_token_id, **kwargs)
    return str(tokenizer.decode(out[0], skip_special_tokens=True))


def gen(handler: GeneralizedHandler, prompt: str, details: bool = False, **params: Any) -> Any:
    return handler.parse({"text": prompt, "parameters": params, "details": details})


def test_greedy_generation_equals_model_generate(
    handlers: dict[str, GeneralizedHandler], gen_direct: tuple[Any, Any]
) -> None:
    handler = handlers["text_generation"]
    together = handler.predict([gen(handler, p, do_sample=False, max_new_tokens=12) for p in PROMPTS])
    for prompt, text in zip(PROMPTS, together, strict=True):
        expected = direct_generate(gen_direct, prompt, do_sample=False, max_new_tokens=12)
        assert text == expected  # also shows left padding in the batch changes nothing
        assert text.startswith(prompt) and len(text) > len(prompt)


@pytest.mark.parametrize("seed", [0, 1234])
def test_seeded_default_sampling_equals_model_generate_with_torchserve_defaults(
    handlers: dict[str, GeneralizedHandler], gen_direct: tuple[Any, Any], seed: int
) -> None:
    handler = handlers["text_generation"]
    [text] = handler.predict([gen(handler, "Once upon a time", seed=seed)])
    expected = direct_generate(
        gen_direct,
        "Once upon a time",
        seed=seed,
        do_sample=True,
        top_p=0.95,
        top_k=60,
        temperature=1.0,
        max_new_tokens=handler.config.handler.max_new_tokens,
    )
    assert text == expected


def test_plain_prompt_answer_is_prompt_plus_continuation(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    [text] = handler.predict([handler.parse("Once upon a time")])
    assert isinstance(text, str) and text.startswith("Once upon a time")
    [details] = handler.predict([gen(handler, "Once upon a time", details=True, seed=3)])
    assert details["generated_text"] == "Once upon a time" + details["continuation"]
    assert 1 <= details["generated_tokens"] <= handler.config.handler.max_new_tokens
    assert details["finish_reason"] in {"length", "eos"}
    assert details["truncated"] is False


def test_seed_makes_sampling_reproducible_and_batch_independent(
    handlers: dict[str, GeneralizedHandler],
) -> None:
    handler = handlers["text_generation"]
    first = handler.predict([gen(handler, "The quick", seed=42, temperature=1.5)])[0]
    again = handler.predict([gen(handler, "The quick", seed=42, temperature=1.5)])[0]
    assert first == again
    others = {handler.predict([gen(handler, "The quick", seed=s, temperature=1.5)])[0] for s in (1, 2, 3)}
    assert others - {first}, "other seeds give other samples"
    batch = handler.predict(
        [
            gen(handler, "A much longer prompt that is in the same batch", seed=7),
            gen(handler, "The quick", seed=42, temperature=1.5),
            handler.parse("unseeded"),
        ]
    )
    assert batch[1] == first
    # Identical parameters, seed included, must not make two requests share one sampling run.
    other = handler.predict([gen(handler, "Once upon a time", seed=42, temperature=1.5)])[0]
    twins = handler.predict(
        [
            gen(handler, "Once upon a time", seed=42, temperature=1.5),
            gen(handler, "The quick", seed=42, temperature=1.5),
        ]
    )
    assert twins == [other, first]


def test_over_long_prompt_keeps_its_end(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    prompt = " ".join(["Serving models is fun."] * 40) + " The end"
    [result] = handler.predict([gen(handler, prompt, details=True, do_sample=False, max_new_tokens=3)])
    assert result["truncated"] is True
    assert result["prompt_tokens"] == handler.config.handler.max_length
    assert result["generated_text"].endswith("The end" + result["continuation"])


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 10**12}, "max_new_tokens"), ({"max_new_tokens": 2.0}, "max_new_tokens"),
        ({"max_new_tokens": "5"}, "max_new_tokens"), ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": None}, "max_new_tokens"),
        ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
        ({"temperature": -1.0}, "temperature"), ({"temperature": 0}, "temperature"),
        ({"temperature": 1e9}, "temperature"), ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": float("nan")}, "top_p"),
        ({"top_p": [0.9]}, "top_p"),
        ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_k": 10**9}, "top_k"),
        ({"do_sample": "true"}, "do_sample"), ({"do_sample": 1}, "do_sample"),
        ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"seed": 1.0}, "seed"), ({"seed": "42"}, "seed"),
        ({"stop": ""}, "stop"), ({"stop": [""]}, "stop"), ({"stop": 5}, "stop"), ({"stop": [1]}, "stop"),
        ({"stop": ["x"] * 9}, "stop"), ({"stop": ["y" * 65]}, "stop"),
        ({"max_tokens": 5}, "max_tokens"), ({"temprature": 0.5}, "temprature"),
    ],
)  # fmt: skip
def test_bad_generation_parameters_are_rejected_by_name(
    handlers: dict[str, GeneralizedHandler], params: dict[str, Any], name: str
) -> None:
    handler = handlers["text_generation"]
    with pytest.raises(InvalidRequestError) as err:
        handler.parse({"text": "Hello", "parameters": params})
    assert name in str(err.value)


def test_non_finite_numbers_in_json_text_are_rejected(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    for literal in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(InvalidRequestError, match="temperature"):
            handler.parse('{"text": "Hello", "parameters": {"temperature": ' + literal + "}}")


@pytest.mark.parametrize("parameters", [[], "fast", 3])
def test_parameters_must_be_an_object(handlers: dict[str, GeneralizedHandler], parameters: Any) -> None:
    with pytest.raises(InvalidRequestError, match="parameters"):
        handlers["text_generation"].parse({"text": "Hello", "parameters": parameters})


def test_valid_parameters_are_accepted(handlers: dict[str, GeneralizedHandler]) -> None:
    instance = handlers["text_generation"].parse(
        {
            "text": "Hello",
            "parameters": {
                "max_new_tokens": 3,
                "do_sample": True,
                "temperature": 0.7,
                "top_p": 0.5,
                "top_k": 0,
                "seed": 2**63 - 1,
                "stop": "\n",
            },
        }
    )
    params = instance.generation
    assert params is not None
    assert (
        params.max_new_tokens,
        params.do_sample,
        params.temperature,
        params.top_p,
        params.top_k,
        params.seed,
        params.stop,
    ) == (3, True, 0.7, 0.5, 0, 2**63 - 1, ("\n",))


@pytest.fixture(scope="module")
def capped_gen(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> GeneralizedHandler:
    """The session GPT-2 with max_new_tokens 5 and max_new_tokens_limit 8 in its model-config.yaml."""
    config_dir = tmp_path_factory.mktemp("capped-config")
    write_model_config(
        config_dir,
        {"mode": "text_generation", "max_length": 64, "max_new_tokens": 5, "max_new_tokens_limit": 8},
    )
    return load(
        model_dirs["text_generation"],
        tmp_path_factory.mktemp("capped-cache"),
        config_path=config_dir / "model-config.yaml",
    )


def test_max_new_tokens_is_capped_by_the_config(capped_gen: GeneralizedHandler) -> None:
    with pytest.raises(InvalidRequestError) as err:
        capped_gen.parse({"text": "Hello", "parameters": {"max_new_tokens": 9}})
    assert "max_new_tokens" in str(err.value) and "8" in str(err.value)
    [default, at_cap] = capped_gen.predict(
        [
            gen(capped_gen, "Hello", details=True, do_sample=False),
            gen(capped_gen, "Hello", details=True, do_sample=False, max_new_tokens=8),
        ]
    )
    assert default["generated_tokens"] <= 5 and at_cap["generated_tokens"] <= 8
    if default["finish_reason"] == "length":
        assert default["generated_tokens"] == 5


# ---- streaming --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"do_sample": False, "max_new_tokens": 15},
        {"seed": 0},
        {"seed": 99, "temperature": 0.8},
        {"seed": 5, "top_k": 5},
    ],
)
def test_stream_concatenates_to_the_answer(
    handlers: dict[str, GeneralizedHandler], params: dict[str, Any]
) -> None:
    handler = handlers["text_generation"]
    for prompt in ("Once upon a time", "The quick brown fox jumps"):
        *chunks, end = list(handler.stream(gen(handler, prompt, **params)))
        [answer] = handler.predict([gen(handler, prompt, details=True, **params)])
        assert all(isinstance(c, str) for c in chunks) and len(chunks) > 1
        assert chunks[0] == prompt
        assert "".join(chunks) == answer["generated_text"]
        assert isinstance(end, StreamEnd)
        assert (end.finish_reason, end.generated_tokens) == (answer["finish_reason"], answer["generated_tokens"])


def test_stop_strings_end_the_answer_and_the_stream_alike(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    [free] = handler.predict([gen(handler, "Once", details=True, do_sample=False, max_new_tokens=20)])
    continuation = free["continuation"]
    stop = next(
        (
            continuation[i : i + 2]
            for i in range(4, len(continuation) - 4)
            if continuation[i : i + 2].isascii() and continuation[i : i + 2].strip()
        ),
        None,
    )
    if stop is None:
        pytest.skip("the tiny model's greedy continuation has no ASCII pair to stop on")
    params = {"do_sample": False, "max_new_tokens": 20, "stop": [stop]}
    [stopped] = handler.predict([gen(handler, "Once", details=True, **params)])
    assert stopped["finish_reason"] == "stop"
    assert stop in stopped["continuation"]
    assert free["generated_text"].startswith(stopped["generated_text"])
    assert stopped["generated_tokens"] < free["generated_tokens"]
    *chunks, end = handler.stream(gen(handler, "Once", **params))
    assert "".join(chunks) == stopped["generated_text"]
    assert isinstance(end, StreamEnd) and end.finish_reason == "stop"


@pytest.mark.parametrize("mode", ["sequence_classification", "token_classification", "question_answering"])
def test_streaming_is_only_for_text_generation(handlers: dict[str, GeneralizedHandler], mode: str) -> None:
    handler = handlers[mode]
    raw = {"question": "q?", "context": "some context"} if mode == "question_answering" else "some text"
    with pytest.raises(InvalidRequestError, match="stream"):
        list(handler.stream(handler.parse(raw)))


# ---- request parsing, shared by every mode ------------------------------------------------------
MODES = ["sequence_classification", "token_classification", "question_answering", "text_generation"]


def sample(mode: str, text: str = "Ada Lovelace lived in London.") -> Any:
    return {"question": "Who lived there?", "context": text} if mode == "question_answering" else text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b"caf\xc3", b'{"text": "\xc3\x28"}'])
def test_invalid_utf8_is_an_invalid_request(
    handlers: dict[str, GeneralizedHandler], mode: str, raw: bytes
) -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        handlers[mode].parse(raw)


@pytest.mark.parametrize("mode", ["sequence_classification", "token_classification", "text_generation"])
@pytest.mark.parametrize("raw", ["", "   \n\t", b"", {"text": ""}, {"data": "  "}, '{"text": ""}'])
def test_empty_text_is_an_invalid_request(
    handlers: dict[str, GeneralizedHandler], mode: str, raw: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        handlers[mode].parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"question": "q?"},
        {"context": "c"},
        {"question": 1, "context": "c"},
        {"question": "q?", "context": None},
        {"question": "", "context": "c"},
        {"question": "q?", "context": "   "},
        "just a sentence",
        "{'question': 'q?', 'context': 'a python literal, not JSON'}",
        '["q?", "c"]',
        42,
    ],
)
def test_malformed_qa_requests(handlers: dict[str, GeneralizedHandler], raw: Any) -> None:
    with pytest.raises(InvalidRequestError):
        handlers["question_answering"].parse(raw)


@pytest.mark.parametrize(
    ("mode", "raw"),
    [
        ("sequence_classification", {"text": 5}),
        ("sequence_classification", {"text": "x", "details": "yes"}),
        ("sequence_classification", {"text": "x", "target": 7}),
        ("sequence_classification", {"nothing": "here"}),
        ("token_classification", {"text": "x", "target": "(1, 99)"}),
        ("token_classification", {"text": ["a", "list"]}),
        ("text_generation", {"prompt": None}),
        ("sequence_classification", 3.5),
    ],
)
def test_malformed_fields_are_invalid_requests(
    handlers: dict[str, GeneralizedHandler], mode: str, raw: Any
) -> None:
    with pytest.raises(InvalidRequestError):
        handlers[mode].parse(raw)


def test_requests_are_never_evaluated(handlers: dict[str, GeneralizedHandler], tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    seq = handlers["sequence_classification"]
    [label] = seq.predict([seq.parse(code)])
    assert label in SEQ_LABELS  # just text to classify
    with pytest.raises(InvalidRequestError):
        handlers["question_answering"].parse(code)
    with pytest.raises(InvalidRequestError):
        handlers["question_answering"].parse(code.encode())
    assert not marker.exists()


def test_text_fields_and_json_text_are_equivalent(handlers: dict[str, GeneralizedHandler]) -> None:
    seq = handlers["sequence_classification"]
    forms = [
        "I love it",
        b"I love it",
        '{"text": "I love it"}',
        b'{"data": "I love it"}',
        {"body": "I love it"},
        '"I love it"',
        {"inputs": b"I love it"},
    ]
    instances = [seq.parse(f) for f in forms]
    assert {i.text for i in instances} == {"I love it"}


def limited_task(handler: GeneralizedHandler, max_text_chars: int) -> Any:
    state = handler.state
    config = dataclasses.replace(state.config, limits=Limits(max_text_chars=max_text_chars))
    return build_task(state.task.model, state.task.tokenizer, config, state.labels)


@pytest.mark.parametrize("mode", MODES)
def test_texts_over_the_limit_are_payload_too_large(
    handlers: dict[str, GeneralizedHandler], mode: str
) -> None:
    task = limited_task(handlers[mode], max_text_chars=20)
    if mode == "question_answering":
        task.parse({"question": "q" * 20, "context": "c" * 20})
        too_long = [{"question": "q" * 21, "context": "c"}, {"question": "q?", "context": "c" * 21}]
    else:
        task.parse("x" * 20)
        too_long = ["x" * 21, {"text": "y" * 5000}]
    for raw in too_long:
        with pytest.raises(PayloadTooLargeError) as err:
            task.parse(raw)
        assert "20" in str(err.value)


@pytest.mark.parametrize("mode", MODES)
def test_lone_surrogates_are_an_invalid_request(handlers: dict[str, GeneralizedHandler], mode: str) -> None:
    handler = handlers[mode]
    raw = json.dumps(sample(mode, "broken \ud800 text"))  # JSON escapes it as \ud800, as a client may send
    with pytest.raises(InvalidRequestError):
        handler.predict([handler.parse(raw)])


def test_the_stream_hands_out_each_tokens_text_without_waiting_for_a_space(
        model_dirs: dict[str, Any]) -> None:
    import torch
    from transformers import AutoTokenizer

    from predictor.tasks.text_generation import TokenStreamer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["text_generation"])
    text = "naïve😀café,no-spaces-here"  # multi-byte characters split across byte-level tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    streamer = TokenStreamer(tokenizer)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped
    arrived = []
    for token in ids:
        streamer.put(torch.tensor([token]))
        while not streamer.text_queue.empty():
            arrived.append(streamer.text_queue.get_nowait())
    streamer.end()
    rest = [streamer.text_queue.get_nowait() for _ in range(streamer.text_queue.qsize())]
    assert rest[-1] is streamer.stop_signal
    pieces = [p for p in arrived + rest[:-1] if p]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces), pieces
    assert len([p for p in arrived if p]) >= len(text) // 2, "text was held back instead of streamed"
