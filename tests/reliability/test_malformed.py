"""Garbage in: wrong content types, invalid UTF-8, nested garbage, NaN and huge numbers -> 400, never a 5xx,
never a traceback; and the request text never reaches the log at INFO.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from reliability_requests import JSON, assert_response_refused, generation_body, route_path
from reliability_servers import ServerProcess

NOT_UTF8 = b"caf\xe9 \xff\xfe"
DEEP = 5000  # levels of JSON nesting: past Python's recursion limit, far below any size limit


@dataclass(frozen=True)
class Bad:
    """A malformed request: route family, body, headers."""

    route: str
    body: bytes
    headers: dict[str, str]

    def send(self, server: ServerProcess) -> httpx.Response:
        """POST it to the predict path of its route family."""
        with httpx.Client(base_url=server.url, timeout=30) as client:
            request = client.build_request("POST", route_path(self.route, server.name), content=self.body,
                                           headers=self.headers)
            return client.send(request)


def _v2(data: object, datatype: str = "BYTES", shape: object = (1,)) -> bytes:
    tensor = {"name": "text", "datatype": datatype, "shape": list(shape), "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def _deep_object(inner: str = '"x"') -> str:
    return '{"a":' * DEEP + inner + "}" * DEEP


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b0undary"}
DETAILS = {"X-Predictor-Details": "true"}

BAD: dict[str, Bad] = {
    # TorchServe routes: the raw body is the input
    "ts-empty": Bad("torchserve", b"", {}),
    "ts-not-utf8": Bad("torchserve", NOT_UTF8, {}),
    "ts-json-number-field": Bad("torchserve", b'{"text": 5}', JSON),
    "ts-json-no-text-key": Bad("torchserve", b'{"review": "good"}', JSON),
    "ts-json-nested-garbage": Bad("torchserve", b'{"text": {"a": [1, {"b": null}]}, "target": [[]]}', JSON),
    "ts-lone-surrogate": Bad("torchserve", b'"\\ud800 and more"', JSON),
    "ts-bad-target": Bad("torchserve", b'{"text": "hi", "target": "(1, 2"}', JSON),
    "ts-bad-details": Bad("torchserve", b'{"text": "hi", "details": "yes"}', JSON),
    "ts-deep-json": Bad("torchserve", _deep_object().encode(), JSON),
    "ts-deep-json-details": Bad("torchserve", _deep_object().encode(), DETAILS),
    "ts-multipart-no-boundary": Bad("torchserve", b"garbage", {"Content-Type": "multipart/form-data"}),
    "ts-multipart-garbage": Bad("torchserve", b"garbage", MULTIPART),
    "ts-multipart-no-data-field": Bad("torchserve", b"--b0undary--\r\n", MULTIPART),
    # KServe v1
    "v1-truncated-json": Bad("v1", b'{"instances": [', JSON),
    "v1-not-json": Bad("v1", b"instances=hello", JSON),
    "v1-xml": Bad("v1", b"<instances><i>hello</i></instances>", {"Content-Type": "application/xml"}),
    "v1-multipart": Bad("v1", b'--b0undary\r\nContent-Disposition: form-data; name="data"\r\n\r\nhi\r\n'
                              b"--b0undary--\r\n", MULTIPART),
    "v1-not-utf8": Bad("v1", b'{"instances": ["' + NOT_UTF8 + b'"]}', JSON),
    "v1-lone-surrogate": Bad("v1", b'{"instances": ["\\udc00"]}', JSON),
    "v1-nan-top-level": Bad("v1", b'{"instances": ["hi"], "extra": NaN}', JSON),
    "v1-instances-object": Bad("v1", b'{"instances": {"text": "hi"}}', JSON),
    "v1-nested-garbage": Bad("v1", b'{"instances": [{"text": {"a": [1, {"b": null}]}}]}', JSON),
    "v1-list-of-lists": Bad("v1", b'{"instances": [[["hi"]]]}', JSON),
    "v1-wrapped-number": Bad("v1", b'{"instances": [{"data": 5}]}', JSON),
    "v1-deep-json": Bad("v1", ('{"instances": ' + "[" * DEEP + "]" * DEEP + "}").encode(), JSON),
    "v1-deep-text-plain": Bad("v1", _deep_object().encode(), {"Content-Type": "text/plain"}),
    "v1-deep-wrapped": Bad("v1", json.dumps({"instances": [{"data": _deep_object()}]}).encode(), JSON),
    # Open Inference Protocol v2
    "v2-truncated-json": Bad("v2", b'{"inputs": [', JSON),
    "v2-no-inputs": Bad("v2", b'{"id": "1"}', JSON),
    "v2-text-plain": Bad("v2", b"hello", {"Content-Type": "text/plain"}),
    "v2-not-utf8": Bad("v2", _v2(["x"]).replace(b'"x"', b'"' + NOT_UTF8 + b'"'), JSON),
    "v2-null-item": Bad("v2", _v2([None]), JSON),
    "v2-object-item": Bad("v2", _v2([{"a": 1}]), JSON),
    "v2-number-item": Bad("v2", _v2([7]), JSON),
    "v2-fp32": Bad("v2", _v2([1.5], "FP32"), JSON),
    "v2-shape-mismatch": Bad("v2", _v2(["a"], shape=(3,)), JSON),
    "v2-empty": Bad("v2", _v2([], shape=(0,)), JSON),
    "v2-deep-item": Bad("v2", _v2([_deep_object()]), JSON),
    "v2-details-nan": Bad("v2", _v2(["hi"])[:-1] + b', "parameters": {"details": NaN}}', JSON),
}

BROKEN: dict[str, pytest.MarkDecorator] = {}  # cases marked xfail while a server bug is open
WRONG_SHAPE: dict[str, pytest.MarkDecorator] = {}


def _cases(marks: dict[str, pytest.MarkDecorator]) -> list:
    return [pytest.param(name, marks=[marks[name]] if name in marks else [], id=name) for name in BAD]


@pytest.mark.parametrize("name", _cases(BROKEN))
def test_garbage_is_400_never_5xx_never_a_traceback(seq_server: ServerProcess, name):
    response = BAD[name].send(seq_server)
    assert response.status_code == 400, response.text[:500]
    assert "Traceback" not in response.text
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("name", _cases({**BROKEN, **WRONG_SHAPE}))
def test_garbage_gets_its_route_family_error_shape(seq_server: ServerProcess, name):
    assert_response_refused(BAD[name].route, BAD[name].send(seq_server), 400)


def test_the_server_is_healthy_after_the_garbage(seq_server: ServerProcess):
    assert all(seq_server.health().ready)


# ---- numbers in generation parameters ---------------------------------------------------------------------

# JSON texts of parameter values. Python's json (TorchServe routes, v2 BYTES items) reads NaN, Infinity and
# 1e999 as floats; orjson (kserve's v1 body) rejects them as invalid JSON. Either way: 400.
NUMBERS = {
    "temperature": ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "-0.0", "true", '"1.0"',
                    "1" + "0" * 400],
    "top_p": ["NaN", "1e999", "1.0000001", "0", "-1e-320"],
    "top_k": ["1e999", "1" + "0" * 400, "-1", "5.0", "NaN"],
    "max_new_tokens": ["1" + "0" * 400, "1e3", "NaN", "-1", "0", "true", "2.5"],
    "seed": ["1" + "0" * 400, "-1", "9223372036854775808", "NaN", "1.5"],
}
NUMBER_CASES = [(param, value) for param, values in NUMBERS.items() for value in values]


@pytest.mark.parametrize("route", ["torchserve", "v1", "v2"])
def test_nan_infinity_and_huge_numbers_in_generation_parameters_are_400(gen_queue_server: ServerProcess,
                                                                         route, capsys):
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=gen_queue_server.url, timeout=30) as client:
        for param, value in NUMBER_CASES:
            item = f'{{"text": "Once upon a time", "parameters": {{"{param}": {value}}}}}'
            response = client.post(route_path(route, gen_queue_server.name), headers=JSON,
                                   content=generation_body(route, item))
            statuses[f"{param}={value[:12]}"] = response.status_code
            if response.status_code == 400:
                assert_response_refused(route, response, 400)
    with capsys.disabled():
        print(f"\n{route}: {len(NUMBER_CASES)} NaN/Infinity/huge/wrong-type generation parameters -> "
              f"{sorted(set(statuses.values()))}")
    assert {k: v for k, v in statuses.items() if v != 400} == {}
    assert all(gen_queue_server.health().ready)


# ---- the request text is not logged ----------------------------------------------------------------------


def _prompt(text: str, parameters: dict) -> bytes:
    return json.dumps({"text": text, "parameters": parameters}).encode()


def _wait_for_access_lines(server: ServerProcess, request_ids: list[str]) -> str:
    """The log, once it holds the access line of every request (they are written after the response)."""
    deadline = time.monotonic() + 10
    while True:
        log = server.log_text()
        access = [line for line in log.splitlines() if "uvicorn.access" in line]
        logged = {r for line in access for r in request_ids if r in line}
        if len(logged) == len(request_ids):
            return log
        assert time.monotonic() < deadline, f"no access line for {set(request_ids) - logged}"
        time.sleep(0.1)


def test_request_text_never_reaches_the_log(seq_limits_server: ServerProcess,
                                            gen_queue_server: ServerProcess):
    marker = f"secret-{uuid.uuid4().hex}"
    text = f"my {marker} review"
    seq, gen = seq_limits_server, gen_queue_server
    requests = [
        (seq, "/predictions/{n}", text.encode(), {}, 200),
        (seq, "/predictions/{n}", text.encode(), DETAILS, 200),
        (seq, "/v1/models/{n}:predict", json.dumps({"instances": [text]}).encode(), JSON, 200),
        (seq, "/v2/models/{n}/infer", _v2([text]), JSON, 200),
        (seq, "/explanations/{n}", text.encode(), {}, 200),
        (seq, "/predictions/{n}", (text + " padding" * 60).encode(), {}, 413),  # over max_text_chars
        (seq, "/predictions/{n}", json.dumps({"text": text, "target": 7}).encode(), JSON, 400),
        (seq, "/predictions/{n}", json.dumps({"text": text, "details": "maybe"}).encode(), JSON, 400),
        (seq, "/predictions/{n}", text.encode() + NOT_UTF8, {}, 400),
        (seq, "/v1/models/{n}:predict", b'{"instances": ["' + text.encode() + b'"', JSON, 400),
        (seq, "/v1/models/{n}:predict", json.dumps({"instances": [text] * 5}).encode(), JSON, 413),
        (seq, "/v2/models/{n}/infer", _v2([text], "FP32"), JSON, 400),
        (seq, "/v2/models/{n}/infer", _v2([text], shape=(2,)), JSON, 400),
        (gen, "/predictions/{n}", _prompt(text, {"max_new_tokens": 3}), JSON, 200),
        (gen, "/predictions/{n}", _prompt(text, {"temperature": -1}), JSON, 400),
        (gen, "/predictions/{n}", _prompt(text, {"beams": 2}), JSON, 400),
    ]
    ids: dict[str, list[str]] = {seq.name: [], gen.name: []}
    for server, path, body, headers, status in requests:
        request_id = uuid.uuid4().hex
        response = httpx.post(server.url + path.format(n=server.name), content=body,
                              headers={**headers, "X-Request-Id": request_id}, timeout=60)
        assert response.status_code == status, (path, response.text[:300])
        ids[server.name].append(request_id)
    for server in (seq, gen):
        log = _wait_for_access_lines(server, ids[server.name])
        leaked = [line for line in log.splitlines() if marker in line]
        assert not leaked, f"the request text is in {server.log_path}:\n" + "\n".join(leaked[:5])
