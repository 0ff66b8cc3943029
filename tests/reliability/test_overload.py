"""Overload and timeouts with a slow model: excess work is refused at once (503 + Retry-After), everything
accepted is answered, and a request that runs past responseTimeout gets 504 without taking the server down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from reliability_servers import GEN_QUEUE_SIZE, ServerProcess, expected_answer

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time"
BURST = 24
BURST_TOKENS = 500  # about a second per batch on one idle core; the burst arrives in a tenth of that
SLOW_TOKENS = 2500  # about 5 s on one idle core: far past responseTimeout 1
QUICK_TOKENS = 8


def generation_item(max_new_tokens: int, prompt: str = PROMPT) -> dict[str, Any]:
    """A greedy generation request item."""
    return {"text": prompt, "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}}


def route_request(route: str, model: str, item: dict[str, Any]) -> dict[str, Any]:
    """httpx request() arguments for one generation item over one route family."""
    if route == "torchserve":
        return {"method": "POST", "url": f"/predictions/{model}", "json": item}
    if route == "v1":
        return {"method": "POST", "url": f"/v1/models/{model}:predict", "json": {"instances": [item]}}
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [json.dumps(item)]}
    return {"method": "POST", "url": f"/v2/models/{model}/infer", "json": {"inputs": [tensor]}}


def generated_text(route: str, response: httpx.Response) -> str:
    """The generated text of a 200 response."""
    if route == "torchserve":
        return response.text
    if route == "v1":
        [text] = response.json()["predictions"]
        return text
    [text] = response.json()["outputs"][0]["data"]
    return text


async def _all_at_once(url: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        return await asyncio.gather(*[client.request(**r) for r in requests])


def _assert_error_shape(route: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    if route == "torchserve":
        assert body["code"] == status and set(body) == {"code", "type", "message"}, body
    else:
        assert set(body) == {"error"}, body
    assert "Traceback" not in response.text


def test_burst_over_a_tiny_queue_is_refused_at_once_and_the_rest_answered(gen_queue_server, gen_core, capsys):
    item = generation_item(BURST_TOKENS)
    expected = expected_answer(gen_core, item)
    routes = [("torchserve", "v1", "v2")[n % 3] for n in range(BURST)]
    requests = [route_request(r, gen_queue_server.name, item) for r in routes]

    started = time.monotonic()
    responses = asyncio.run(_all_at_once(gen_queue_server.url, requests))
    elapsed = time.monotonic() - started

    statuses = Counter(r.status_code for r in responses)
    with capsys.disabled():
        print(f"\noverload burst: {BURST} requests, queue capacity {GEN_QUEUE_SIZE}: {dict(statuses)} "
              f"in {elapsed:.1f}s")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, "a burst six times the queue must overflow it"
    assert statuses[200] > 0
    for route, response in zip(routes, responses, strict=True):
        if response.status_code == 503:
            _assert_error_shape(route, response, 503)
            assert response.headers["retry-after"] == "1"
        else:
            assert generated_text(route, response) == expected
    # refused work is refused at once, not after waiting for the model
    assert all(r.elapsed.total_seconds() < 5 for r in responses if r.status_code == 503)
    assert all(gen_queue_server.health().ready)


def test_past_response_timeout_is_504_and_the_server_recovers(gen_timeout_server, gen_core, capsys):
    server: ServerProcess = gen_timeout_server
    routes = ("v1", "v2", "torchserve")
    slow = [route_request(r, server.name, generation_item(SLOW_TOKENS)) for r in routes]
    started = time.monotonic()
    responses = asyncio.run(_all_at_once(server.url, slow))
    for route, response in zip(routes, responses, strict=True):
        if route == "torchserve":
            _assert_error_shape(route, response, 500)
            assert response.json()["type"] == "InternalServerException"
        else:
            _assert_error_shape(route, response, 504)
        assert "responseTimeout" in response.text
        assert response.elapsed.total_seconds() < 10, "a timeout must answer at responseTimeout, not later"

    # The timed-out generation is cancelled at its next token: the model thread is free again at once,
    # not after the ~5 s the full generation would take. A quick request right away proves it.
    timed_out = time.monotonic()
    first_quick = generation_item(QUICK_TOKENS, "Another day")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.request(**route_request("torchserve", server.name, first_quick))
    freed_after = time.monotonic() - timed_out
    assert response.status_code == 200, response.text
    health = [server.health()]
    recovered = time.monotonic() - started
    with capsys.disabled():
        print(f"\ntimeouts: 504/504/500 in {max(r.elapsed.total_seconds() for r in responses):.1f}s; "
              f"next request answered {freed_after:.2f}s later (work cancelled); healthy {recovered:.1f}s "
              f"after the burst")
    assert freed_after < 2.5, "the timed-out generation kept the model thread busy: it was not cancelled"
    assert all(health[0].ready), health

    quick = generation_item(QUICK_TOKENS, "The quick brown fox")
    expected = expected_answer(gen_core, quick)
    for route in routes:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.request(**route_request(route, server.name, quick))
        assert response.status_code == 200, response.text
        assert generated_text(route, response) == expected
    ping = httpx.get(server.url + "/ping", timeout=10)
    assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})


def test_a_stream_whose_client_leaves_is_cancelled(gen_timeout_server, capsys):
    server: ServerProcess = gen_timeout_server
    item = generation_item(SLOW_TOKENS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", f"/predictions/{server.name}?stream=true", json=item) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())  # the prompt: generation is running
            assert first
        left = time.monotonic()  # the connection is closed here, thousands of tokens before the end
        # responseTimeout is 1 s: a request queued behind a generation that goes on would get a 500/504.
        response = client.request(**route_request("torchserve", server.name, generation_item(QUICK_TOKENS)))
    freed_after = time.monotonic() - left
    with capsys.disabled():
        print(f"\nstream client left: next request answered {freed_after:.2f}s later")
    assert response.status_code == 200, response.text
    assert freed_after < 2.5, "the abandoned stream kept generating"
