"""The fixed benchmark corpus: about 200 English texts of 5 to 100 words, one per line."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

CORPUS_FILE = Path(__file__).with_name("corpus.txt")


def load_corpus(path: Path = CORPUS_FILE) -> list[str]:
    """The texts in file order; blank lines and `#` comments are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def describe(texts: list[str]) -> dict[str, Any]:
    """How many texts and how long they are, in words."""
    words = [len(t.split()) for t in texts]
    return {"texts": len(texts), "words_min": min(words), "words_median": statistics.median(words),
            "words_max": max(words)}


def spread(texts: list[str], count: int) -> list[str]:
    """`count` texts spread over the range of lengths (shortest to longest), in a fixed order."""
    by_length = sorted(texts, key=lambda t: (len(t.split()), t))
    if count >= len(by_length):
        return by_length
    if count == 1:
        return [by_length[len(by_length) // 2]]
    return [by_length[round(i * (len(by_length) - 1) / (count - 1))] for i in range(count)]
