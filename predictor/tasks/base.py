"""What every handler mode shares: request values, the Task interface, request parsing helpers."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from predictor.config import ModelConfig, TaskName
from predictor.errors import InvalidRequestError, PayloadTooLargeError

Prediction = Any  # a JSON-able value: a string in TorchServe's shape, a dict when details are asked for
Explanation = dict[str, Any]

TEXT_KEYS = ("text", "data", "body", "input", "inputs", "prompt")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one text-generation request, already bounded by the server caps."""

    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 60
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Instance:
    """One input: the text (the question for QA), QA's context, an explanation target, options."""

    text: str
    context: str | None = None
    target: Any = None
    details: bool = False
    generation: GenerationParams | None = None
    n_steps: int | None = None  # Integrated Gradients steps asked for by an explanation request
    # A generation prompt the server tokenised itself (a chat template's rendering, whose control
    # tokens are special); `text` is then its decoding. None: `text` is tokenised as user text.
    prompt_ids: tuple[int, ...] | None = None
    # Set by the server once nobody waits for the answer (timeout, client gone): long work (generation,
    # explanations) stops at its next step. Not part of the instance's value.
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the server gave up on this instance."""
        return self.cancel is not None and self.cancel.is_set()


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a text-generation stream: why it ended and what it cost."""

    finish_reason: str
    generated_tokens: int
    prompt_tokens: int


@dataclass
class Encoded:
    """One instance tokenised, unpadded: one feature row per window (QA may need several)."""

    instance: Instance
    rows: list[dict[str, list[int]]]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Tokens in the longest row: what padding this instance costs a batch."""
        return max(len(r["input_ids"]) for r in self.rows)


class Task(Protocol):
    """One handler mode, built once at load time around its model and tokenizer."""

    name: ClassVar[TaskName]

    def parse(self, raw: Any) -> Instance:
        """Turn one request item (a string or a JSON object) into an Instance; InvalidRequestError if malformed."""
        ...

    def encode(self, batch: Sequence[Instance]) -> list[Encoded]:
        """Tokenise a batch without padding."""
        ...

    def run(self, batch: Sequence[Encoded]) -> list[Prediction]:
        """Pad, forward and decode one batch: exactly one prediction per item, in order."""
        ...

    def explain(self, instance: Instance) -> Explanation:
        """Attributions for one instance in TorchServe's shape."""
        ...

    def sample_input(self) -> Any:
        """A request item used to warm the model up at load time."""
        ...


def decode_text(raw: Any) -> Any:
    """Bytes -> str (UTF-8) -> JSON value when it parses as JSON, else the text itself. Never eval."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"request body is not valid UTF-8 (byte {exc.start})") from exc
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped[:1] in ('{', '"'):
            try:
                return json.loads(stripped)
            except ValueError:
                return raw
            except RecursionError as exc:
                raise InvalidRequestError("JSON nested too deeply") from exc
    return raw


def text_field(raw: Mapping[str, Any], keys: Sequence[str] = TEXT_KEYS) -> str:
    """The text of a JSON request object, under the first of `keys` present."""
    for key in keys:
        if key in raw:
            value = raw[key]
            if isinstance(value, (bytes, bytearray)):
                value = decode_text(value)
            if not isinstance(value, str):
                raise InvalidRequestError(f"field {key!r}: expected a string, got {type(value).__name__}")
            return value
    raise InvalidRequestError(f"expected a string or an object with one of {list(keys)}; got keys {sorted(raw)}")


def check_text(text: str, max_chars: int, what: str = "text") -> str:
    """Reject empty and absurdly long texts."""
    if not text.strip():
        raise InvalidRequestError(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from JSON escapes like "\ud800"
        raise InvalidRequestError(f"{what} is not valid Unicode (character {exc.start})") from exc
    if len(text) > max_chars:
        raise PayloadTooLargeError(f"{what} has {len(text)} characters; the limit is {max_chars}")
    return text


def details_flag(raw: Mapping[str, Any], default: bool) -> bool:
    """The request's `details` field, else the config default."""
    value = raw.get("details", default)
    if not isinstance(value, bool):
        raise InvalidRequestError(f"field 'details': expected true or false, got {value!r}")
    return value


def n_steps_field(raw: Mapping[str, Any], limit: int) -> int | None:
    """An explanation request's `n_steps`, bounded by handler.max_explain_steps."""
    value = raw.get("n_steps")
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= limit:
        raise InvalidRequestError(f"field 'n_steps': expected an integer in [1, {limit}], got {value!r}")
    return value


def int_target(target: Any, num_classes: int) -> int | None:
    """A class-index explanation target, validated."""
    if target is None:
        return None
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if type(target) is not int or not 0 <= target < num_classes:
        raise InvalidRequestError(f"field 'target': expected a class index 0..{num_classes - 1}, got {target!r}")
    return target


def finite_number(name: str, value: Any, low: float, high: float) -> float:
    """A request parameter that must be a finite number within [low, high]."""
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequestError(f"parameter {name!r}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in float32 (half-precision logits lose too much)."""
    return torch.softmax(logits.float(), dim=-1)


class TaskBase:
    """Construction and the padding step shared by the four modes."""

    name: ClassVar[TaskName]
    # Encoders pad on the right whatever side the tokenizer was saved with: absolute position
    # embeddings (BERT, DeBERTa, ELECTRA) shift under left padding, and answers must not depend
    # on which other inputs share the batch.
    padding_side: ClassVar[str] = "right"

    def __init__(self, model: Any, tokenizer: Any, config: ModelConfig, labels: list[str] | None) -> None:
        self.model = model  # predictor.loading.ModelRunner
        self.tokenizer = tokenizer
        self.config = config
        self.handler = config.handler
        self.labels = labels

    def pad(self, rows: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad rows to the longest of them (never to max_length)."""
        batch = self.tokenizer.pad(list(rows), padding="longest", padding_side=self.padding_side,
                                   return_tensors="pt")
        return {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    def encode_truncated(self, batch: Sequence[Instance], **options: Any) -> list[Encoded]:
        """Tokenise texts to max_length, one row each; `meta` keeps the per-token extras options asked for.

        Overflowing tokens are requested only to learn which texts did not fit (a second window).
        """
        enc = self.tokenizer([i.text for i in batch], truncation=True, max_length=self.handler.max_length,
                             return_overflowing_tokens=True, **options)
        extras = {"offset_mapping": "offsets", "special_tokens_mask": "special"}
        out: list[Encoded] = []
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            if sample < len(out):
                out[sample].truncated = True
                continue
            features = {k: enc[k][row] for k in MODEL_INPUTS if k in enc}
            meta = {name: enc[key][row] for key, name in extras.items() if key in enc}
            out.append(Encoded(instance=batch[sample], rows=[features], meta=meta))
        return out

    def first_row_logits(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """The model's first output for a batch padded to its longest member, as float32 on the CPU."""
        with torch.inference_mode():
            return self.model(self.pad([e.rows[0] for e in batch]))[0].float().cpu()

    def label(self, index: int) -> str:
        """The name of class `index` (the index itself when there is no label map)."""
        if self.labels is None:
            return str(index)
        return self.labels[index]

    def parse_object(self, raw: Any) -> Mapping[str, Any] | str:
        """Decode bytes/JSON text; strings stay strings, objects stay objects, anything else is text."""
        value = decode_text(raw)
        if isinstance(value, (str, Mapping)):
            return value
        if isinstance(raw, (bytes, bytearray, str)):
            return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        raise InvalidRequestError(f"expected a string or a JSON object, got {type(value).__name__}")
