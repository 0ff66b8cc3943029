"""Property tests of every request parser: arbitrary JSON values, bytes and text raise nothing but
InvalidRequestError (or its subclass PayloadTooLargeError), nothing is ever evaluated, and valid input
gives Instances that carry it.

Parsers: predictor.serving.payloads (v1_items, v2_items, unwrap_item, torchserve_items, with_details,
form_fields), predictor.tasks.base.decode_text, the explanation-target parsers, and each task's parse
(the Task itself, and GeneralizedHandler.parse in front of it).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from kserve.protocol.infer_type import InferInput, InferRequest

from predictor.config import Limits
from predictor.errors import InvalidRequestError, PayloadTooLargeError
from predictor.serving import payloads
from predictor.tasks import Instance
from predictor.tasks.base import decode_text
from predictor.tasks.targets import parse_span_target, parse_text_target, parse_token_target

MODES = ["sequence_classification", "token_classification", "question_answering", "text_generation"]
LIMITS = Limits(max_body_bytes=4096, max_instances=4, max_text_chars=300)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- no eval: an audit hook sees every compile() and exec() of source text --------------------------------

_recording = threading.local()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record compile/exec of code from a string (eval, exec, ast.literal_eval), not from a file."""
    events = getattr(_recording, "events", None)
    if events is None:
        return
    if event == "compile" and len(args) > 1 and not str(args[1]).endswith(".py"):
        events.append(f"compile({args[0]!r:.60}, {args[1]!r})")
    elif event == "exec" and args and str(getattr(args[0], "co_filename", "")).startswith("<"):
        events.append(f"exec({args[0]!r:.60})")


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records inside never_evaluated()


@contextmanager
def never_evaluated() -> Iterator[None]:
    """Fail if the code inside compiles or executes source text (eval, exec, literal_eval, compile)."""
    _recording.events = []
    try:
        yield
    finally:
        events, _recording.events = _recording.events, None
    assert events == [], f"the parser evaluated request text: {events}"


def test_the_eval_detector_detects_literal_eval_and_eval():
    import ast

    for evaluate in (lambda: ast.literal_eval("(1, 2)"), lambda: eval("1 + 1")):
        with pytest.raises(AssertionError, match="evaluated"), never_evaluated():
            evaluate()


def only_invalid_request(parse: Callable[[], Any]) -> Any:
    """Call a parser: its result, or None when it raised InvalidRequestError; anything else fails."""
    with never_evaluated():
        try:
            return parse()
        except InvalidRequestError:
            return None


# ---- strategies --------------------------------------------------------------------------------------------

# Text with everything Python strings can hold, lone surrogates included (JSON "\ud800" makes them).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
huge_ints = st.integers(min_value=-(2**70), max_value=2**70)
scalars = st.none() | st.booleans() | huge_ints | st.floats() | any_text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12)
FIELDS = ["text", "data", "body", "input", "inputs", "prompt", "question", "context", "target", "details",
          "parameters", "n_steps", "instances"]
PARAMS = ["max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "seed", "stop", "beams"]
# Objects with the field names the parsers look for, holding anything: reaches deeper than random keys.
field_objects = st.dictionaries(st.sampled_from(FIELDS), json_values | any_text, max_size=5)
request_objects = field_objects | st.fixed_dictionaries(
    {"text": any_text},
    optional={"parameters": st.dictionaries(st.sampled_from(PARAMS), json_values, max_size=4),
              "target": json_values, "details": json_values, "n_steps": json_values})
json_texts = (json_values | request_objects).map(lambda v: json.dumps(v, ensure_ascii=False))
json_bytes = json_texts.map(lambda s: s.encode("utf-8", "surrogatepass"))
raw_items = json_values | request_objects | json_texts | json_bytes | st.binary(max_size=60) | any_text


# ---- payloads ----------------------------------------------------------------------------------------------


@PROPERTY
@given(raw_items)
def test_decode_text_only_raises_invalid_request(raw):
    only_invalid_request(lambda: decode_text(raw))


@PROPERTY
@given(json_values | request_objects | json_texts | st.binary(max_size=60) | any_text)
@example({"instances": ["a"] * 5})
@example(b'{"instances": ["a", "b"]}')
def test_v1_items_only_raises_invalid_request(body):
    items = only_invalid_request(lambda: payloads.v1_items(body, LIMITS))
    assert items is None or (isinstance(items, list) and 1 <= len(items) <= LIMITS.max_instances)


@PROPERTY
@given(st.lists(json_values | request_objects, min_size=LIMITS.max_instances + 1, max_size=10))
def test_v1_items_over_max_instances_is_payload_too_large(instances):
    with pytest.raises(PayloadTooLargeError):
        payloads.v1_items({"instances": instances}, LIMITS)


@PROPERTY
@given(raw_items | st.dictionaries(st.sampled_from(["data", "body", "target", "details", "parameters"]),
                                   json_values | json_texts, max_size=4))
def test_unwrap_item_only_raises_invalid_request(item):
    only_invalid_request(lambda: payloads.unwrap_item(item))


@PROPERTY
@given(raw_items)
def test_with_details_only_raises_invalid_request(item):
    value = only_invalid_request(lambda: payloads.with_details(item))
    assert value is None or "details" in value  # the item's own `details` wins; the task validates it


@PROPERTY
@given(st.binary(max_size=200), st.none() | st.lists(st.binary(max_size=20) | any_text, max_size=8))
def test_torchserve_items_only_raises_invalid_request(body, parts):
    items = only_invalid_request(lambda: payloads.torchserve_items(body, parts, LIMITS))
    assert items is None or 1 <= len(items) <= LIMITS.max_instances


@PROPERTY
@given(st.binary(max_size=200) | any_text.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_form_fields_never_raises(body):
    with never_evaluated():
        fields = payloads.form_fields(body)
    assert fields is None or all(isinstance(f, str) for f in fields)


@PROPERTY
@given(st.lists(st.sampled_from(["data", "body"]), min_size=1, max_size=4).flatmap(
    lambda keys: st.tuples(st.just(keys),
                           st.lists(st.text(max_size=20), min_size=len(keys), max_size=len(keys)))))
def test_form_fields_reads_data_fields(keys_values):
    keys, values = keys_values
    assert payloads.form_fields(urlencode(list(zip(keys, values, strict=True))).encode()) == values


tensors = st.builds(
    lambda name, shape, datatype, data: (name, shape, datatype, data),
    any_text, st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=3),
    st.sampled_from(["BYTES", "FP32", "INT64", "BOOL"]) | any_text, st.lists(json_values, max_size=6),
)


@PROPERTY
@given(st.lists(tensors, max_size=2),
       st.none() | st.dictionaries(st.sampled_from(["details", "x"]), json_values))
@example([("text", [2], "BYTES", ["a", "b"])], {"details": True})
def test_v2_items_only_raises_invalid_request(inputs, parameters):
    try:
        tensors_in = [InferInput(name=n, shape=s, datatype=d, data=v) for n, s, d, v in inputs]
        request = InferRequest("m", tensors_in, parameters=parameters)
    except Exception:  # noqa: BLE001 (kserve refused to build it: not an input our parser can ever see)
        assume(False)
    result = only_invalid_request(lambda: payloads.v2_items(request, LIMITS))
    if result is not None:
        items, details = result
        assert 1 <= len(items) <= LIMITS.max_instances and isinstance(details, bool)


# ---- explanation targets ----------------------------------------------------------------------------------


@PROPERTY
@given(json_values | json_texts | st.from_regex(r"\s*[\(\[]\s*-?\d{1,30}\s*,\s*-?\d{1,30}\s*[\)\]]\s*",
                                                fullmatch=True),
       st.integers(min_value=0, max_value=10))
def test_target_parsers_only_raise_invalid_request(target, labels):
    only_invalid_request(lambda: parse_token_target(target, labels))
    only_invalid_request(lambda: parse_span_target(target))
    only_invalid_request(lambda: parse_text_target(target))


# ---- each task's parse, through the session's loaded handlers ----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@PROPERTY
@given(raw=raw_items)
def test_task_parse_only_raises_invalid_request(handlers, mode, raw):
    handler = handlers[mode]
    for parse in (handler.state.task.parse, handler.parse):
        instance = only_invalid_request(lambda parse=parse: parse(raw))
        assert instance is None or isinstance(instance, Instance)


# Plain texts: no surrogates, not blank, not starting like JSON (a '{' or '"' text is read as JSON).
plain_texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=120).filter(
    lambda t: t.strip() and t.strip()[0] not in '{"')


@pytest.mark.parametrize("mode", ["sequence_classification", "token_classification", "text_generation"])
@PROPERTY
@given(text=plain_texts, form=st.sampled_from(["str", "bytes", "object", "json", "wrapped"]))
def test_valid_texts_give_instances_that_carry_them(handlers, mode, text, form):
    raw: Any = {"str": text, "bytes": text.encode(), "object": {"text": text},
                "json": json.dumps({"text": text}), "wrapped": json.dumps({"data": text}).encode()}[form]
    with never_evaluated():
        instance = handlers[mode].parse(raw)
    assert isinstance(instance, Instance)
    assert instance.text == text


QUESTION_WORDS = st.lists(st.sampled_from(["who", "wrote", "the", "handler", "where", "is", "it", "when"]),
                          min_size=1, max_size=8).map(" ".join)


@PROPERTY
@given(question=QUESTION_WORDS, context=plain_texts, details=st.booleans(),
       target=st.none() | st.tuples(st.integers(0, 50), st.integers(0, 50)).map(sorted))
def test_valid_qa_requests_give_instances(handlers, question, context, details, target):
    raw = {"question": question, "context": context, "details": details}
    if target is not None:
        raw["target"] = list(target)
    with never_evaluated():
        instance = handlers["question_answering"].parse(json.dumps(raw).encode())
    assert (instance.text, instance.context, instance.details) == (question, context, details)
    assert instance.target == (None if target is None else tuple(target))


generation_params = st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(1, 150), "do_sample": st.booleans(),
    "temperature": st.floats(1e-3, 100.0), "top_p": st.floats(1e-6, 1.0), "top_k": st.integers(0, 10_000),
    "seed": st.integers(0, 2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=64), min_size=1, max_size=8)})


@PROPERTY
@given(prompt=plain_texts, params=generation_params)
def test_valid_generation_parameters_are_kept(handlers, prompt, params):
    with never_evaluated():
        instance = handlers["text_generation"].parse({"text": prompt, "parameters": params})
    assert instance.text == prompt and instance.generation is not None
    for key, value in params.items():
        expected = tuple(value) if key == "stop" else value
        assert getattr(instance.generation, key) == expected, key


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400, "-1e-320"])
@pytest.mark.parametrize("key", ["temperature", "top_p", "top_k", "max_new_tokens", "seed"])
def test_non_finite_and_huge_generation_numbers_are_invalid(handlers, key, value):
    """Python's json reads NaN, Infinity and 1e999 as floats: the task must still refuse them."""
    raw = f'{{"text": "Once upon a time", "parameters": {{"{key}": {value}}}}}'
    with pytest.raises(InvalidRequestError):
        handlers["text_generation"].parse(raw)


# ---- nesting past the recursion limit ----------------------------------------------------------------------

DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000
@pytest.mark.parametrize("parse", [
    pytest.param(lambda: decode_text(DEEP_OBJECT), id="decode_text"),
    pytest.param(lambda: payloads.v1_items(DEEP_OBJECT.encode(), LIMITS), id="v1_items"),
    pytest.param(lambda: payloads.unwrap_item({"data": DEEP_OBJECT}), id="unwrap_item"),
    pytest.param(lambda: payloads.with_details(DEEP_OBJECT.encode()), id="with_details"),
])
def test_json_nested_past_the_recursion_limit_is_invalid_request(parse):
    with pytest.raises(InvalidRequestError):
        parse()


@pytest.mark.parametrize("mode", MODES)
def test_handler_parse_refuses_deep_nesting_as_invalid_request(handlers, mode):
    with pytest.raises(InvalidRequestError):
        handlers[mode].parse(DEEP_OBJECT.encode())
