"""Explanation targets that need more than a class index, parsed without eval."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from predictor.errors import InvalidRequestError

# TorchServe's handler examples send token targets as a Python tuple literal, "(1, 2)".
_PAIR = re.compile(r"^\s*[\(\[]\s*(\d+)\s*,\s*(\d+)\s*[\)\]]\s*$")


def parse_token_target(target: Any, num_labels: int) -> tuple[int, int] | None:
    """A token-classification target: [position, label], "(position, label)" or {"position", "label"}."""
    if target is None:
        return None
    if isinstance(target, str):
        match = _PAIR.match(target)
        if not match:
            raise InvalidRequestError(f"field 'target': expected [position, label] or \"(position, label)\", "
                                      f"got {target!r}")
        target = [int(match.group(1)), int(match.group(2))]
    if isinstance(target, Mapping):
        target = [target.get("position"), target.get("label")]
    if (
        not isinstance(target, (list, tuple))
        or len(target) != 2
        or not all(type(x) is int and x >= 0 for x in target)
    ):
        raise InvalidRequestError(f"field 'target': expected [position, label] with non-negative integers, "
                                  f"got {target!r}")
    position, label = target
    if num_labels and label >= num_labels:
        raise InvalidRequestError(f"field 'target': label {label} is not a class index 0..{num_labels - 1}")
    return position, label


def parse_span_target(target: Any) -> tuple[int, int] | None:
    """A question-answering target: the answer's [start, end] token positions (default: the predicted span).

    A single class index, as TorchServe's QA example sends (`"target": 0`), means the default: the
    original handler attributes to the predicted start and end whatever its target says.
    """
    if target is None or type(target) is int or (isinstance(target, str) and target.strip().isdigit()):
        return None
    span = parse_token_target(target, 0)
    if span is None or span[1] < span[0]:
        raise InvalidRequestError(f"field 'target': expected [start, end] token positions with end >= start, "
                                  f"got {target!r}")
    return span


def parse_text_target(target: Any) -> str | None:
    """A text-generation target: the continuation to attribute (default: the greedy continuation)."""
    if target is None:
        return None
    if not isinstance(target, str) or not target:
        raise InvalidRequestError(f"field 'target': expected the continuation text, got {target!r}")
    return target
