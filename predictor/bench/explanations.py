"""Explanation speed (issue #4): the predictor's Integrated Gradients next to the seed handler's way.

The seed (TorchServe's generalized handler) built a new LayerIntegratedGradients on
`model.bert.embeddings` per request, attributed the input padded to max_length against a
[CLS] [PAD]... [SEP] baseline padded the same way, with Captum's defaults (n_steps 50, every
step in one batch), and ran question answering as two passes (start, then end).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from predictor.bench.corpus import spread

QUESTIONS = ("What happened?", "Who is involved?", "Where did this take place?", "What was the result?",
             "Why does it matter?")


def explanation_inputs(texts: Sequence[str], count: int) -> tuple[list[str], list[dict[str, str]]]:
    """Texts for sequence classification and question/context pairs for QA, spread over lengths."""
    contexts = spread([t for t in texts if len(t.split()) >= 15], count)
    pairs = [{"question": QUESTIONS[n % len(QUESTIONS)], "context": c} for n, c in enumerate(contexts)]
    return spread(list(texts), count), pairs


def cosine(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Cosine similarity (None when either vector is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm > 0 else None


def _seed_forward(inputs: torch.Tensor, attention_mask: torch.Tensor | None = None, position: int = 0,
                  model: Any = None) -> torch.Tensor:
    """The seed's captum_sequence_forward: the model's output `position` (logits, or start/end logits)."""
    model.eval()
    model.zero_grad()
    return model(inputs, attention_mask=attention_mask)[position]


def seed_inputs(tokenizer: Any, text: str, pair: str | None, max_length: int) -> dict[str, torch.Tensor]:
    """The seed's preprocess (padded to max_length) and its baseline: special tokens kept, the rest [PAD]."""
    enc = tokenizer(text, pair, max_length=max_length, padding="max_length",
                    truncation="only_second" if pair else True, return_special_tokens_mask=True,
                    return_tensors="pt")
    ids = enc["input_ids"]
    real = enc["attention_mask"].bool()
    keep = enc["special_tokens_mask"].bool() & real
    baseline = torch.where(keep, ids, torch.full_like(ids, tokenizer.pad_token_id))
    return {"input_ids": ids, "attention_mask": enc["attention_mask"], "baseline": baseline,
            "length": int(real.sum())}


def seed_attribute(model: Any, layer: torch.nn.Module, enc: Mapping[str, Any], target: int,
                   position: int) -> list[float]:
    """One attribution pass as the seed ran it; importances as it summarised them (sum, L2-normalise)."""
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(_seed_forward, layer)  # new per call, as the seed did
    attributions, _delta = lig.attribute(inputs=enc["input_ids"], baselines=enc["baseline"], target=target,
                                         additional_forward_args=(enc["attention_mask"], position, model),
                                         return_convergence_delta=True)
    summed = attributions.sum(dim=-1).squeeze(0)
    return (summed / torch.norm(summed)).tolist()


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def compare_sequence_classification(handler: Any, model: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Ours (handler.explain) vs the seed's way, per text: latency and agreement of importances."""
    tokenizer = handler.state.task.tokenizer
    max_length = handler.config.handler.max_length
    _, cold = _timed(handler.explain, handler.parse(texts[0]))  # first call builds the explainer
    rows = []
    for text in texts:
        ours, ours_s = _timed(handler.explain, handler.parse(text))
        enc = seed_inputs(tokenizer, text, None, max_length)
        seed, seed_s = _timed(seed_attribute, model, model.bert.embeddings, enc, int(ours["target"]), 0)
        rows.append(_row(tokenizer, ours, enc, ours_s, seed_s, {"importances": (ours["importances"], seed)}))
    return _summary(rows, handler, cold)


def compare_question_answering(handler: Any, model: Any,
                               pairs: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Ours (start and end in one pass) vs the seed's two passes, on the same predicted span."""
    tokenizer = handler.state.task.tokenizer
    max_length = handler.config.handler.max_length
    _, cold = _timed(handler.explain, handler.parse(dict(pairs[0])))
    rows = []
    for pair in pairs:
        ours, ours_s = _timed(handler.explain, handler.parse(dict(pair)))
        start, end = ours["target"]
        enc = seed_inputs(tokenizer, pair["question"], pair["context"], max_length)
        layer = model.bert.embeddings
        started = time.perf_counter()
        seed_start = seed_attribute(model, layer, enc, int(start), 0)
        seed_end = seed_attribute(model, layer, enc, int(end), 1)
        seed_s = time.perf_counter() - started
        rows.append(_row(tokenizer, ours, enc, ours_s, seed_s, {
            "start": (ours["importances_answer_start"], seed_start),
            "end": (ours["importances_answer_end"], seed_end)}))
    return _summary(rows, handler, cold)


def _row(tokenizer: Any, ours: Mapping[str, Any], enc: Mapping[str, Any], ours_s: float, seed_s: float,
         vectors: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """One input: both latencies, whether both saw the same tokens, and cosine per importance vector."""
    length = len(ours["words"])
    seed_tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0, :enc["length"]].tolist())
    similarity = {name: cosine(mine, theirs[:length]) for name, (mine, theirs) in vectors.items()}
    return {"tokens": length, "ours_s": ours_s, "seed_s": seed_s,
            "tokens_match": seed_tokens == ours["words"], "cosine": similarity}


def _summary(rows: Sequence[Mapping[str, Any]], handler: Any, cold_s: float) -> dict[str, Any]:
    ours = statistics.median(r["ours_s"] for r in rows)
    seed = statistics.median(r["seed_s"] for r in rows)
    cosines = [c for r in rows for c in r["cosine"].values() if c is not None]
    return {"inputs": len(rows), "n_steps": handler.config.handler.n_steps,
            "internal_batch_size": handler.config.handler.internal_batch_size,
            "tokens_median": statistics.median(r["tokens"] for r in rows),
            "ours_ms_median": round(ours * 1000, 1), "ours_first_call_ms": round(cold_s * 1000, 1),
            "seed_ms_median": round(seed * 1000, 1), "speedup": round(seed / ours, 2) if ours else None,
            "cosine_min": round(min(cosines), 4) if cosines else None,
            "cosine_mean": round(statistics.fmean(cosines), 4) if cosines else None,
            "tokens_match": all(r["tokens_match"] for r in rows)}


def load_handler(model_dir: Path, cache_dir: Path) -> Any:
    """The predictor's own handler for a model directory, loaded."""
    from predictor.handler import GeneralizedHandler

    handler = GeneralizedHandler(model_dir, cache_dir=cache_dir)
    handler.load()
    return handler


def load_eager(model_dir: Path, mode: str) -> Any:
    """The same weights as transformers loads them (weights keep requires_grad, as in the seed)."""
    import transformers

    cls = {"sequence_classification": transformers.AutoModelForSequenceClassification,
           "question_answering": transformers.AutoModelForQuestionAnswering}[mode]
    return cls.from_pretrained(model_dir, local_files_only=True).eval()


def measure_explanations(classifier_dir: Path, qa_dir: Path, texts: Sequence[str], count: int,
                         cache_dir: Path) -> dict[str, Any]:
    """Both encoder modes: in-process explanation latency, ours vs the seed's, and their agreement."""
    seq_texts, pairs = explanation_inputs(texts, count)
    results: dict[str, Any] = {}
    handler = load_handler(classifier_dir, cache_dir)
    results["sequence_classification"] = compare_sequence_classification(
        handler, load_eager(classifier_dir, "sequence_classification"), seq_texts)
    handler = load_handler(qa_dir, cache_dir)
    results["question_answering"] = compare_question_answering(
        handler, load_eager(qa_dir, "question_answering"), pairs)
    return results
