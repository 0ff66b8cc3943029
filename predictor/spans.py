"""Answer-span search for question answering: the best span of one window, the best window of a context.

transformers 5 has no question-answering pipeline any more, so span selection is written here
(as the old pipeline did it: softmax per window over context tokens, best start*end product with
end >= start and at most max_answer_length tokens, best window wins).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# (probability, start token, end token) of one window's best span; probability -1: window not run.
Span = tuple[float, int, int]


def best_span(start: torch.Tensor, end: torch.Tensor, context: torch.Tensor,
              max_len: int) -> tuple[int, int, float]:
    """Best (start, end, probability) in one window; logits outside the context are ignored."""
    neg = torch.finfo(torch.float32).min
    start_p = torch.softmax(start.float().masked_fill(~context, neg), -1)
    end_p = torch.softmax(end.float().masked_fill(~context, neg), -1)
    scores = start_p[:, None] * end_p[None, :]
    n = scores.shape[0]
    allowed = torch.ones(n, n, dtype=torch.bool).triu().tril(max_len - 1)  # end >= start, span <= max_len
    scores = scores.masked_fill(~allowed, 0.0)
    flat = int(scores.argmax())
    return flat // n, flat % n, float(scores.view(-1)[flat])


def best_window(spans: Sequence[Span]) -> int:
    """The window whose span is served: the most probable (the first of equals)."""
    return max(range(len(spans)), key=lambda w: (spans[w][0], -w))
