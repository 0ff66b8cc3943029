"""Length-aware batch planning: which inputs share a forward pass, and how much padding that costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# One forward pass costs about as much as this many extra padded tokens would (kernel launches,
# Python and tokenizer overhead; the figures are in predictor/bench/README.md). Joining an input to a
# batch is worth it while the padding it adds to the others stays below this.
FORWARD_OVERHEAD_TOKENS = 24


@dataclass(frozen=True)
class BatchItem:
    """The padding-relevant size of one input: its longest row and how many rows it has (a QA input
    has a row per context window)."""

    length: int
    rows: int = 1


@dataclass(frozen=True)
class BatchPlan:
    """Groups of input indices, each run as one padded forward pass, and the tokens they cost."""

    groups: list[list[int]]
    real_tokens: int
    padded_tokens: int


def plan_batches(items: Sequence[BatchItem], max_batch: int, overhead_tokens: int = FORWARD_OVERHEAD_TOKENS,
                 *, max_tokens: int | None = None) -> BatchPlan:
    """Sort by length; cut where a group is full, or would pass `max_tokens` padded tokens, or where the
    padding an input adds would cost more than another forward pass.

    Every index appears in exactly one group; a group never holds more than max_batch inputs, and
    never more than max_tokens padded tokens unless it is a single input (which then runs alone).
    """
    order = sorted(range(len(items)), key=lambda i: items[i].length)
    groups: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    current_rows = 0
    padded = 0
    for i in order:
        item = items[i]
        extra_padding = current_rows * (item.length - current_max)
        over_budget = max_tokens is not None and (current_rows + item.rows) * item.length > max_tokens
        if current and (len(current) >= max_batch or over_budget or extra_padding > overhead_tokens):
            groups.append(current)
            padded += current_rows * current_max
            current, current_max, current_rows = [], 0, 0
        current.append(i)
        current_max = max(current_max, item.length)
        current_rows += item.rows
    if current:
        groups.append(current)
        padded += current_rows * current_max
    real = sum(item.length * item.rows for item in items)
    return BatchPlan(groups=groups, real_tokens=real, padded_tokens=padded)


def next_pass(items: Sequence[BatchItem], max_batch: int, max_tokens: int | None = None,
              overhead_tokens: int = FORWARD_OVERHEAD_TOKENS) -> list[int]:
    """The group of plan_batches(items) that holds items[0], in index order: the oldest waiting input
    runs next, with the inputs that pad well with it."""
    if not items:
        return []
    plan = plan_batches(items, max_batch, overhead_tokens, max_tokens=max_tokens)
    return sorted(next(group for group in plan.groups if 0 in group))
