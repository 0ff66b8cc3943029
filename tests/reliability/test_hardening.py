"""Streams, admission of every kind of work, clients that leave, and failures in the batch loop.

A long stream keeps the pod ready and ends at limits.max_stream_seconds; streams (TorchServe and
OpenAI) and explanations are refused with 503 + Retry-After when the queue is full, before any 200;
work whose client disconnected stops; an unexpected exception in the batch loop answers its whole
batch with 500 at once and logs their request ids.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from reliability_servers import STREAM_LIMIT_S, ServerProcess, expected_answer
from test_overload import generation_item, generated_text, route_request

pytestmark = pytest.mark.slow

LONG_STREAM_TOKENS = 4000  # about 7 s on one idle core: well past max_stream_seconds and responseTimeout
QUICK_TOKENS = 8


def _sample_health(server: ServerProcess, stop: threading.Event, samples: list[Any]) -> None:
    while not stop.is_set():
        samples.append(server.health(timeout=10))
        time.sleep(0.1)


def test_a_long_stream_keeps_the_server_ready_and_ends_at_its_own_deadline(gen_timeout_server, capsys):
    server: ServerProcess = gen_timeout_server  # responseTimeout 1 s, max_stream_seconds STREAM_LIMIT_S
    stop, samples = threading.Event(), []
    item = generation_item(LONG_STREAM_TOKENS)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        started = time.monotonic()
        with client.stream("POST", f"/predictions/{server.name}?stream=true", json=item) as response:
            assert response.status_code == 200
            chunks = response.iter_text()
            first = next(chunks)
            sampler = threading.Thread(target=_sample_health, args=(server, stop, samples))
            sampler.start()
            text = first + "".join(chunks)
        elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    with capsys.disabled():
        print(f"\nlong stream: ended after {elapsed:.1f}s (limit {STREAM_LIMIT_S}s), {len(text)} characters; "
              f"{len(samples)} readiness samples, all ready: {all(all(s.ready) for s in samples)}")
    assert text.startswith(item["text"]) and len(text) > len(item["text"])
    assert elapsed < STREAM_LIMIT_S + 6, "the stream ran past limits.max_stream_seconds"
    assert samples, "no readiness sample was taken while the stream ran"
    assert all(all(s.ready) for s in samples), [s.statuses for s in samples if not all(s.ready)]
    # the server still answers at once afterwards
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.request(**route_request("torchserve", server.name, generation_item(QUICK_TOKENS)))
    assert response.status_code == 200, response.text


async def _streams(url: str, requests: list[dict[str, Any]]) -> list[tuple[int, dict[str, str], float, bytes]]:
    """Each request streamed: status, headers, seconds to the headers, whole body."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        async def one(request: dict[str, Any]) -> tuple[int, dict[str, str], float, bytes]:
            started = time.monotonic()
            async with client.stream(**request) as response:
                waited = time.monotonic() - started
                body = await response.aread()
                return response.status_code, dict(response.headers), waited, body

        return await asyncio.gather(*[one(r) for r in requests])


STREAMS = 10
STREAM_TOKENS = 300


def test_streams_over_a_tiny_queue_are_refused_before_any_200(gen_queue_server, gen_core, capsys):
    server: ServerProcess = gen_queue_server  # jobQueueSize 4, one model worker
    item = generation_item(STREAM_TOKENS)
    expected = expected_answer(gen_core, item)
    openai = {"model": server.name, "prompt": item["text"], "max_tokens": STREAM_TOKENS, "temperature": 0,
              "stream": True}
    kinds = ["torchserve" if n % 2 else "openai" for n in range(STREAMS)]
    requests = [{"method": "POST", "url": f"/predictions/{server.name}?stream=true", "json": item}
                if kind == "torchserve" else {"method": "POST", "url": "/openai/v1/completions", "json": openai}
                for kind in kinds]
    results = asyncio.run(_streams(server.url, requests))
    statuses = Counter(status for status, *_ in results)
    with capsys.disabled():
        print(f"\n{STREAMS} concurrent streams, queue of 4: {dict(statuses)}; "
              f"refusals after {max((w for s, _, w, _ in results if s == 503), default=0):.2f}s at most")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, "ten streams over a queue of four must overflow it"
    for kind, (status, headers, waited, body) in zip(kinds, results, strict=True):
        if status == 503:
            assert headers.get("retry-after") == "1", headers
            assert b"full" in body and b"Traceback" not in body
            assert waited < 5, "a refusal must not wait for the model"
        elif kind == "torchserve":
            assert body.decode() == expected  # never cut off
        else:
            events = [line.removeprefix("data: ") for line in body.decode().split("\n\n") if line]
            assert events[-1] == "[DONE]", events[-3:]
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
            assert item["text"] + text == expected
    assert all(server.health().ready)


EXPLANATIONS = 10


def test_explanations_over_a_tiny_queue_are_refused_at_once(gen_queue_server, capsys):
    server: ServerProcess = gen_queue_server
    body = {"text": "Once upon a time", "n_steps": 2}
    requests = [{"method": "POST", "url": f"/explanations/{server.name}", "json": body}
                for _ in range(EXPLANATIONS)]
    results = asyncio.run(_streams(server.url, requests))
    statuses = Counter(status for status, *_ in results)
    with capsys.disabled():
        print(f"\n{EXPLANATIONS} concurrent explanations, queue of 4: {dict(statuses)}")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, "ten explanations over a queue of four must overflow it"
    assert statuses[200] > 0
    for status, headers, waited, content in results:
        if status == 503:
            assert headers.get("retry-after") == "1" and waited < 5
        else:
            assert set(json.loads(content)) >= {"words", "importances", "target"}


LEFT_TOKENS = 2500  # about 4 s each on one idle core
LEAVERS = 4


async def _leave_after(url: str, requests: list[dict[str, Any]], seconds: float) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=seconds) as client:
        async def one(request: dict[str, Any]) -> str:
            try:
                response = await client.request(**request)
            except httpx.TimeoutException as exc:
                return type(exc).__name__  # the client gave up and closed its connection
            return f"answered {response.status_code}"

        return await asyncio.gather(*[one(r) for r in requests])


def test_work_of_clients_that_left_is_stopped(gen_server, gen_core, capsys):
    server: ServerProcess = gen_server  # one model worker, responseTimeout 120
    routes = ("torchserve", "v1", "v2", "torchserve")
    slow = [route_request(routes[n % len(routes)], server.name, generation_item(LEFT_TOKENS, f"Story {n}"))
            for n in range(LEAVERS)]
    outcomes = asyncio.run(_leave_after(server.url, slow, 0.5))
    assert all(o.endswith("Timeout") for o in outcomes), outcomes
    left = time.monotonic()
    quick = generation_item(QUICK_TOKENS, "The quick brown fox")
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.request(**route_request("v1", server.name, quick))
    waited = time.monotonic() - left
    with capsys.disabled():
        print(f"\n{LEAVERS} clients left their {LEFT_TOKENS}-token generations after 0.5s: the next request "
              f"was answered {waited:.2f}s later")
    assert response.status_code == 200, response.text
    assert generated_text("v1", response) == expected_answer(gen_core, quick)
    assert waited < 3, "the generations of clients that left kept the model worker busy"
    assert "ERROR" not in server.log_text(), "a client that left is not a server error"


def test_an_unexpected_failure_in_the_batch_loop_answers_its_batch_at_once(crash_once_server, seq_labels, capsys):
    server: ServerProcess = crash_once_server  # the first forward pass raises a non-Exception; responseTimeout 60
    texts = list(seq_labels)[:3]

    async def send() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            async def one(n: int, text: str) -> tuple[str, httpx.Response]:
                rid = f"crash-test-{n}"
                return rid, await client.post(f"/predictions/{server.name}", content=text.encode(),
                                              headers={"X-Request-Id": rid})

            return await asyncio.gather(*[one(n, t) for n, t in enumerate(texts)])

    started = time.monotonic()
    answers = asyncio.run(send())
    elapsed = time.monotonic() - started
    statuses = [r.status_code for _, r in answers]
    failed = [rid for rid, r in answers if r.status_code == 500]
    time.sleep(0.2)  # the server logs before it answers; leave its write a moment
    lines = [line for line in server.log_text().splitlines()
             if "ERROR predictor.serving.batcher" in line and "failed unexpectedly" in line]
    with capsys.disabled():
        print(f"\ncrash in the batch loop: statuses {statuses} after {elapsed:.1f}s; log: {lines[:1]}")
    assert set(statuses) <= {200, 500} and failed, statuses
    assert elapsed < 20, "the crashed batch's clients waited for responseTimeout"
    for _, response in answers:
        if response.status_code == 500:
            body = response.json()
            assert body["type"] == "InternalServerException" and "Traceback" not in response.text, body
    assert len(lines) == 1 and all(rid in lines[0] for rid in failed), lines
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(f"/predictions/{server.name}", content=texts[0].encode())
    assert (response.status_code, response.text) == (200, seq_labels[texts[0]])
    assert all(server.health().ready)


def test_a_cancelled_grpc_call_stops_its_work(gen_server, capsys):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    server: ServerProcess = gen_server
    item = json.dumps(generation_item(LEFT_TOKENS, "A story told over gRPC"))

    async def leave_early() -> str:
        client = InferenceGRPCClient(f"127.0.0.1:{server.grpc_port}", timeout=0.5)
        try:
            tensor = InferInput(name="text", shape=[1], datatype="BYTES", data=[item])
            await client.infer(InferRequest(model_name=server.name, infer_inputs=[tensor]))
        except Exception as exc:  # the deadline passed: the client cancelled its call
            return str(getattr(exc, "code", lambda: type(exc).__name__)())
        finally:
            await client.close()
        return "answered"

    outcome = asyncio.run(leave_early())
    assert "DEADLINE_EXCEEDED" in outcome, outcome
    left = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.request(**route_request("torchserve", server.name, generation_item(QUICK_TOKENS)))
    waited = time.monotonic() - left
    with capsys.disabled():
        print(f"\ngRPC call cancelled at its 0.5s deadline: the next request was answered {waited:.2f}s later")
    assert response.status_code == 200, response.text
    assert waited < 3, "the generation of a cancelled gRPC call kept the model worker busy"
