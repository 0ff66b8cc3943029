"""The model's tokenizer, shared safely by every thread, with user text always read as text."""

from __future__ import annotations

import copy
import threading
from typing import Any

# Calls that configure the Rust tokenizer (truncation, padding, special-token splitting) and then
# encode: they run on the calling thread's own copy.
_ENCODING_CALLS = frozenset({"encode", "encode_plus", "batch_encode_plus", "tokenize", "pad", "apply_chat_template"})
# Calls that read user text: special-token strings in it ("[SEP]", "</s>") are split into ordinary tokens.
_TEXT_CALLS = frozenset({"encode", "encode_plus", "batch_encode_plus", "tokenize"})


class PerThreadTokenizer:
    """Wraps a loaded transformers tokenizer: each thread that encodes gets its own copy.

    A fast tokenizer keeps truncation, padding and special-token splitting on its Rust object and
    sets them on every call, so threads encoding at once read each other's settings (an untruncated
    prompt, a window without stride) or fail with "Already borrowed". Decoding and vocabulary
    look-ups change nothing, so they use the one shared tokenizer and cost no copy (a stream's
    short-lived decoding thread stays cheap).

    User text is tokenised as text (`split_special_tokens=True` unless a caller says otherwise), so
    a user cannot inject structure by typing a special token. Configure the tokenizer before
    wrapping it; the wrapper is read-only.
    """

    def __init__(self, tokenizer: Any) -> None:
        object.__setattr__(self, "shared", tokenizer)
        object.__setattr__(self, "_local", threading.local())

    def own(self) -> Any:
        """This thread's copy of the tokenizer, made on first use."""
        mine = getattr(self._local, "tokenizer", None)
        if mine is None:
            mine = copy.deepcopy(self.shared)
            self._local.tokenizer = mine
        return mine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("split_special_tokens", True)
        return self.own()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in _ENCODING_CALLS:
            method = getattr(self.own(), name)
            if name not in _TEXT_CALLS:
                return method

            def text_call(*args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("split_special_tokens", True)
                return method(*args, **kwargs)

            return text_call
        return getattr(self.shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the tokenizer is read-only once loaded (tried to set {name!r})")

    def __len__(self) -> int:
        return len(self.shared)

    def __repr__(self) -> str:
        return f"PerThreadTokenizer({self.shared!r})"
