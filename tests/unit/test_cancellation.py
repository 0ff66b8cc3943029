"""Work nobody waits for stops: a cancelled instance's generation ends at its next token, its explanation
at its next forward pass, and the other rows of a batch are not affected."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest

from predictor.errors import RequestCancelledError
from predictor.handler import GeneralizedHandler
from predictor.tasks import Instance, StreamEnd

LONG = 40  # the tiny GPT-2 has a 64-token context (max_length 64)


def generation(handler: GeneralizedHandler, prompt: str, cancel: threading.Event | None) -> Instance:
    raw = {"text": prompt, "parameters": {"max_new_tokens": LONG, "do_sample": False}, "details": True}
    return dataclasses.replace(handler.parse(raw), cancel=cancel)


def never_ends_early(handler: GeneralizedHandler, prompt: str) -> None:
    """The test is only meaningful if the uncancelled generation runs its whole budget."""
    [full] = handler.predict([generation(handler, prompt, None)])
    assert full["generated_tokens"] == LONG and full["finish_reason"] == "length", full


def test_a_cancelled_generation_stops_at_its_first_token(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    never_ends_early(handler, "Once upon a time")
    cancel = threading.Event()
    cancel.set()
    [stopped] = handler.predict([generation(handler, "Once upon a time", cancel)])
    assert stopped["generated_tokens"] == 1, stopped


def test_cancelling_one_row_leaves_the_others_of_its_batch_whole(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    never_ends_early(handler, "The weather today")
    cancel = threading.Event()
    cancel.set()
    kept, stopped = handler.predict([generation(handler, "The weather today", None),
                                     generation(handler, "Once upon a time", cancel)])
    [alone] = handler.predict([generation(handler, "The weather today", None)])
    assert stopped["generated_tokens"] <= 2  # its one token, then the padding that ended the row
    assert kept == alone


def test_a_stream_whose_client_left_stops_generating(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["text_generation"]
    never_ends_early(handler, "Once upon a time")
    cancel = threading.Event()
    pieces: list[Any] = []
    # A slower model (10 ms a token), so that generation cannot finish before the client leaves.
    slow = handler.state.task.model.module.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    try:
        for item in handler.stream(generation(handler, "Once upon a time", cancel)):
            pieces.append(item)
            if len(pieces) == 1:  # the prompt arrived, then the client goes
                cancel.set()
    finally:
        slow.remove()
    end = pieces[-1]
    assert isinstance(end, StreamEnd)
    assert end.generated_tokens < LONG // 2, end


@pytest.mark.parametrize("mode,raw", [
    ("sequence_classification", "the food was good"),
    ("question_answering", {"question": "Who cooked?", "context": "Anna cooked dinner for everyone."}),
    ("text_generation", {"text": "Once upon a time", "target": " there was"}),
])
def test_a_cancelled_explanation_stops_between_forward_passes(handlers: dict[str, GeneralizedHandler],
                                                              mode: str, raw: Any) -> None:
    handler = handlers[mode]
    instance = handler.parse(raw)
    assert handler.explain(instance)["words"]  # uncancelled: a full answer
    explainer = handler.state.task._explainer
    cancel = threading.Event()
    forwards = 0

    def cancel_after_two(module: Any, args: Any) -> None:
        nonlocal forwards
        forwards += 1
        if forwards == 2:
            cancel.set()  # as the server does when the request times out

    hook = explainer.model.register_forward_pre_hook(cancel_after_two)
    try:
        with pytest.raises(RequestCancelledError):
            handler.explain(dataclasses.replace(instance, cancel=cancel))
    finally:
        hook.remove()
    assert forwards <= 3, f"{forwards} forward passes after the cancellation"
    assert handler.explain(instance)["words"]  # the explainer still works afterwards


def test_cancellation_is_not_part_of_an_instances_value(handlers: dict[str, GeneralizedHandler]) -> None:
    handler = handlers["sequence_classification"]
    instance = handler.parse("the food was good")
    assert dataclasses.replace(instance, cancel=threading.Event()) == instance

