"""Valid and invalid requests for a sequence-classification server, each with the answer it must get."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from reliability_servers import expected_answer

WORDS = ["the", "food", "was", "good", "bad", "service", "slow", "friendly", "staff", "never", "again",
         "wonderful", "place", "rude", "waiter", "quiet", "evening", "loved", "it", "hated", "price", "fair"]
JSON = {"Content-Type": "application/json"}
ROUTES = ("torchserve", "v1", "v2")


def sample_texts(count: int, seed: int) -> list[str]:
    """Distinct texts of 1 to 80 words (the longest are truncated to handler.max_length tokens)."""
    rng = random.Random(seed)
    texts: set[str] = set()
    while len(texts) < count:
        texts.add(" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 20, 80]))))
    return sorted(texts)


def clear_labels(core: Any, count: int, seed: int = 11) -> dict[str, str]:
    """Texts the in-process core classifies with a clear margin (score > 0.6), and their labels.

    Each text is classified alone. Batching pads, which moves scores by ~1e-5; a clear margin keeps each
    label independent of the batch the server puts the text in.
    """
    labels: dict[str, str] = {}
    for text in sample_texts(4 * count, seed):
        answer = expected_answer(core, {"text": text, "details": True})
        if answer["score"] > 0.6:
            labels[text] = answer["label"]
        if len(labels) == count:
            break
    assert len(labels) == count, f"only {len(labels)} texts with a clear label"
    assert len(set(labels.values())) > 1, "all texts get the same label: a crossed answer would go unseen"
    return labels


@dataclass(frozen=True)
class Probe:
    """One request and what it must get: the label (valid requests) or the status (invalid ones)."""

    kind: str
    path: str
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    status: int = 200

    @property
    def valid(self) -> bool:
        """A request the model must answer."""
        return self.label is not None

    def send_args(self) -> dict[str, Any]:
        """Keyword arguments of httpx's request()."""
        return {"method": "POST", "url": self.path, "content": self.content, "headers": self.headers}


def valid_probe(route: str, model: str, text: str, label: str) -> Probe:
    """`text` over one route family."""
    if route == "torchserve":
        return Probe("torchserve", f"/predictions/{model}", text.encode(), label=label)
    if route == "v1":
        body = json.dumps({"instances": [text]}).encode()
        return Probe("v1", f"/v1/models/{model}:predict", body, JSON, label)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return Probe("v2", f"/v2/models/{model}/infer", json.dumps(body).encode(), JSON, label)


def invalid_probes(model: str) -> list[Probe]:
    """Bad requests of both families, each with the one status it must get."""
    v1, v2, ts = f"/v1/models/{model}:predict", f"/v2/models/{model}/infer", f"/predictions/{model}"

    def v2_body(**tensor: Any) -> bytes:
        return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"],
                                       **tensor}]}).encode()

    return [
        Probe("ts-empty", ts, b"", status=400),
        Probe("ts-not-utf8", ts, b"caf\xe9 \xff\xfe", status=400),
        Probe("ts-bad-field", ts, b'{"text": 5}', JSON, status=400),
        Probe("ts-bad-target", ts, b'{"text": "hi", "target": 99}', JSON, status=400),
        Probe("ts-unknown-model", "/predictions/no-such-model", b"hi", status=404),
        Probe("v1-bad-json", v1, b'{"instances": [', JSON, status=400),
        Probe("v1-not-a-list", v1, b'{"instances": "hi"}', JSON, status=400),
        Probe("v1-empty-list", v1, b'{"instances": []}', JSON, status=400),
        Probe("v1-null-item", v1, b'{"instances": [null]}', JSON, status=400),
        Probe("v1-too-many", v1, json.dumps({"instances": ["hi"] * 65}).encode(), JSON, status=413),
        Probe("v1-unknown-model", "/v1/models/no-such-model:predict", b'{"instances": ["hi"]}', JSON,
              status=404),
        Probe("v2-int-tensor", v2, v2_body(datatype="INT32", data=[1]), JSON, status=400),
        Probe("v2-bad-shape", v2, v2_body(shape=[3]), JSON, status=400),
    ]


def answer_of(probe: Probe, response: httpx.Response) -> Any:
    """The label in a 200 response, as its route family writes it."""
    if probe.kind == "torchserve":
        return response.text
    if probe.kind == "v1":
        return response.json()["predictions"]
    return response.json()["outputs"][0]["data"]


def expected_of(probe: Probe) -> Any:
    """What answer_of() must give for a valid probe."""
    return probe.label if probe.kind == "torchserve" else [probe.label]


def problem(probe: Probe, response: httpx.Response) -> str | None:
    """Why `response` is wrong for `probe` (None when it is right). 503 + Retry-After is always allowed."""
    status = response.status_code
    if "Traceback" in response.text:
        return f"{probe.kind}: traceback in the body: {response.text[:300]!r}"
    if status == 503:
        return None if response.headers.get("retry-after") else f"{probe.kind}: 503 without Retry-After"
    if status != probe.status:
        return f"{probe.kind}: expected {probe.status}, got {status} {response.text[:300]!r}"
    if probe.valid:
        answer = answer_of(probe, response)
        if answer != expected_of(probe):
            return f"{probe.kind}: wrong answer {answer!r}, expected {expected_of(probe)!r}"
        return None
    body = response.json()
    shape = {"code", "type", "message"} if probe.path.startswith("/predictions") else {"error"}
    if set(body) != shape:
        return f"{probe.kind}: error body {body!r} is not of shape {sorted(shape)}"
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def route_path(route: str, model: str) -> str:
    """The predict path of a route family."""
    return {"torchserve": f"/predictions/{model}", "v1": f"/v1/models/{model}:predict",
            "v2": f"/v2/models/{model}/infer"}[route]


def generation_body(route: str, item: str) -> bytes:
    """A body carrying one generation item, given as JSON text (which may hold NaN, Infinity...)."""
    if route == "torchserve":
        return item.encode()
    if route == "v1":
        return f'{{"instances": [{item}]}}'.encode()
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [item]}
    return json.dumps({"inputs": [tensor]}).encode()


def assert_refused(route: str, status: int, code: int, headers: dict[str, str], body: bytes) -> dict:
    """`code` in the route family's error shape, with no traceback."""
    assert status == code, body[:500]
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert b"Traceback" not in body
    document = json.loads(body)
    if route == "torchserve":
        assert set(document) == {"code", "type", "message"} and document["code"] == code, document
    else:
        assert set(document) == {"error"}, document
    return document


def assert_response_refused(route: str, response: httpx.Response, code: int) -> dict:
    """assert_refused for an httpx response."""
    return assert_refused(route, response.status_code, code, dict(response.headers), response.content)
