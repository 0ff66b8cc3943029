"""Every kind of work at once: predictions, streams (TorchServe and OpenAI), explanations, long QA
contexts, clients that disconnect mid-request, and bad input, on a generation and a QA server.

Every valid request gets its correct answer or 503 + Retry-After (never lost, never another 5xx); every
invalid one gets its 4xx; readiness never fails while the models are healthy; memory stays flat.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_requests import percentile
from reliability_servers import NEEDLE, ServerProcess, expected_answer

pytestmark = pytest.mark.slow

CLIENTS_PER_SERVER = 24
WARM_UP_S = 20.0
MEASURED_S = 40.0
MAX_RSS_GROWTH = 0.05
PROMPTS = ["Once upon a time", "The quick brown fox", "A predictor answers", "Serving models is"]
GEN_TOKENS = 12
FILLER = ["the", "food", "was", "good", "service", "slow", "friendly", "staff", "quiet", "evening", "price"]


def qa_context(words: int, rng: random.Random) -> str:
    text = [rng.choice(FILLER) for _ in range(words)]
    text[rng.randrange(words)] = NEEDLE
    return " ".join(text)


@dataclass
class Tally:
    """What the clients saw, per kind of work."""

    sent: Counter[str] = field(default_factory=Counter)
    correct: Counter[str] = field(default_factory=Counter)
    overloaded: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    left: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)


Check = Callable[[int, dict[str, str], bytes], str | None]  # -> why the answer is wrong, or None


@dataclass(frozen=True)
class Work:
    """One request kind: how to send it, what it must get, and whether its client leaves early."""

    kind: str
    request: Callable[[random.Random], dict[str, Any]]
    check: Check
    status: int = 200
    leave_after_s: float | None = None


def _body_is(expected: str) -> Check:
    return lambda status, headers, body: None if body.decode() == expected else f"{body[:200]!r} != {expected!r}"


def _openai_text_is(continuation: str) -> Check:
    def check(status: int, headers: dict[str, str], body: bytes) -> str | None:
        events = [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e]
        if not events or events[-1] != "[DONE]":
            return f"stream not finished: {events[-2:]}"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        return None if text == continuation else f"{text!r} != {continuation!r}"

    return check


def _has_keys(*keys: str) -> Check:
    return lambda status, headers, body: None if set(keys) <= set(json.loads(body)) else f"keys {body[:200]!r}"


def _needle_explained(status: int, headers: dict[str, str], body: bytes) -> str | None:
    document = json.loads(body)
    start = document["target"][0]
    return None if document["words"][start] == NEEDLE else f"explained {document['words'][start]!r}"


def _error_shape(status: int, headers: dict[str, str], body: bytes) -> str | None:
    document = json.loads(body)
    return None if set(document) == {"code", "type", "message"} and document["code"] == status else repr(document)


def generation_work(name: str, core: Any) -> list[Work]:
    """Predictions, streams (TorchServe, OpenAI), explanations, leavers and bad input for one prompt each."""
    work: list[Work] = []
    for prompt in PROMPTS:
        item = {"text": prompt, "parameters": {"max_new_tokens": GEN_TOKENS, "do_sample": False}}
        expected = expected_answer(core, item)
        openai = {"model": name, "prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0, "stream": True}
        work += [
            Work("gen-predict", lambda r, i=item: {"url": f"/predictions/{name}", "json": i}, _body_is(expected)),
            Work("gen-stream", lambda r, i=item: {"url": f"/predictions/{name}?stream=true", "json": i},
                 _body_is(expected)),
            Work("openai-stream", lambda r, o=openai: {"url": "/openai/v1/completions", "json": o},
                 _openai_text_is(expected[len(prompt):])),
        ]
    long_item = {"text": PROMPTS[0], "parameters": {"max_new_tokens": 200, "do_sample": False}}
    work += [
        Work("gen-explain", lambda r: {"url": f"/explanations/{name}", "json": {"text": r.choice(PROMPTS),
                                                                                "n_steps": 2}},
             _has_keys("words", "importances", "target")),
        Work("gen-leave", lambda r: {"url": f"/predictions/{name}", "json": long_item}, _body_is(""),
             leave_after_s=0.2),
        Work("gen-stream-leave", lambda r: {"url": f"/predictions/{name}?stream=true", "json": long_item},
             _body_is(""), leave_after_s=0.2),
        Work("gen-invalid", lambda r: {"url": f"/predictions/{name}",
                                       "json": {"text": "x", "parameters": {"max_new_tokens": 0}}},
             _error_shape, status=400),
        Work("gen-explain-invalid", lambda r: {"url": f"/explanations/{name}",
                                               "json": {"text": "x", "target": " the sea" * 1500, "n_steps": 1}},
             _error_shape, status=400),
    ]
    return work


def qa_work(name: str) -> list[Work]:
    """Long contexts within and over limits.max_qa_windows, explanations, leavers and bad input."""
    def item(r: random.Random, words: int) -> dict[str, Any]:
        return {"question": "which animal", "context": qa_context(words, r)}

    return [
        Work("qa-long", lambda r: {"url": f"/predictions/{name}", "json": item(r, r.choice([20, 150, 300]))},
             _body_is(NEEDLE)),
        Work("qa-explain", lambda r: {"url": f"/explanations/{name}", "json": {**item(r, 150), "n_steps": 2}},
             _needle_explained),
        Work("qa-too-long", lambda r: {"url": f"/predictions/{name}", "json": item(r, 3000)}, _error_shape,
             status=413),
        Work("qa-leave", lambda r: {"url": f"/predictions/{name}", "json": item(r, 300)}, _body_is(""),
             leave_after_s=0.02),
        Work("qa-invalid", lambda r: {"url": f"/predictions/{name}", "json": {"question": "which animal"}},
             _error_shape, status=400),
    ]


async def _one(client: httpx.AsyncClient, work: Work, rng: random.Random, tally: Tally) -> None:
    tally.sent[work.kind] += 1
    started = time.perf_counter()
    try:
        async with client.stream("POST", **work.request(rng),
                                 timeout=work.leave_after_s or 120.0) as response:
            body = await response.aread()
    except httpx.TimeoutException:
        if work.leave_after_s is not None:
            tally.left[work.kind] += 1
            return
        tally.problems.append(f"{work.kind}: no answer within 120 s")
        return
    except httpx.TransportError as exc:
        tally.problems.append(f"{work.kind}: {type(exc).__name__}")
        return
    tally.latencies_ms.append((time.perf_counter() - started) * 1000)
    status, headers = response.status_code, dict(response.headers)
    tally.statuses[status] += 1
    if b"Traceback" in body:
        tally.problems.append(f"{work.kind}: traceback in the body")
    elif status == 503:
        if headers.get("retry-after") != "1":
            tally.problems.append(f"{work.kind}: 503 without Retry-After")
        tally.overloaded[work.kind] += 1
    elif work.leave_after_s is not None and status == 200:
        tally.correct[work.kind] += 1  # finished before its client left
    elif status != work.status:
        tally.problems.append(f"{work.kind}: expected {work.status}, got {status} {body[:200]!r}")
    elif (why := work.check(status, headers, body)) is not None:
        tally.problems.append(f"{work.kind}: {why}")
    elif status == 200:
        tally.correct[work.kind] += 1
    else:
        tally.rejected[work.kind] += 1


async def _client(url: str, work: list[Work], seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            await _one(client, rng.choice(work), rng, tally)


async def _watch(servers: list[ServerProcess], warm_until: float, end: float, tally: Tally,
                 rss: dict[str, dict[str, int]], timeline: dict[str, list[int]]) -> None:
    """Readiness of every server twice a second; RSS after warm-up and at the end."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        while time.monotonic() < end:
            for server in servers:
                for path in ("/ping", "/v2/health/ready", f"/v1/models/{server.name}"):
                    response = await client.get(server.url + path)
                    if response.status_code != 200:
                        tally.not_ready.append(f"{server.name} {path}: {response.status_code}")
                if time.monotonic() >= warm_until and "warm" not in rss[server.name]:
                    rss[server.name]["warm"] = server.rss()
                timeline[server.name].append(round(server.rss() / 2**20))
            await asyncio.sleep(0.5)
    for server in servers:
        rss[server.name]["end"] = server.rss()


async def _run(plan: list[tuple[ServerProcess, list[Work]]]) -> tuple[Tally, dict[str, dict[str, int]], float]:
    tally, rss = Tally(), {server.name: {} for server, _ in plan}
    timeline: dict[str, list[int]] = {server.name: [] for server, _ in plan}
    start = time.monotonic()
    warm_until, end = start + WARM_UP_S, start + WARM_UP_S + MEASURED_S
    clients: list[Awaitable[None]] = [_client(server.url, work, 1000 * n + c, end, tally)
                                      for n, (server, work) in enumerate(plan) for c in range(CLIENTS_PER_SERVER)]
    await asyncio.gather(_watch([s for s, _ in plan], warm_until, end, tally, rss, timeline), *clients)
    for name, values in timeline.items():
        rss[name]["timeline_mib"] = values[::10]  # every 5 s
    return tally, rss, time.monotonic() - start


def test_every_kind_of_work_at_once(gen_load_server, qa_load_server, gen_core, reliability_workdir: Path, capsys):
    plan = [(gen_load_server, generation_work(gen_load_server.name, gen_core)), (qa_load_server,
                                                                                qa_work(qa_load_server.name))]
    tally, rss, elapsed = asyncio.run(_run(plan))
    growth = {name: round(100 * (r["end"] - r["warm"]) / r["warm"], 2) for name, r in rss.items()}
    figures = {
        "clients": CLIENTS_PER_SERVER * len(plan), "elapsed_s": round(elapsed, 1),
        "sent": dict(sorted(tally.sent.items())), "correct": dict(sorted(tally.correct.items())),
        "overloaded_503": dict(sorted(tally.overloaded.items())), "rejected_4xx": dict(sorted(tally.rejected.items())),
        "left_early": dict(sorted(tally.left.items())), "by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "problems": len(tally.problems), "not_ready_samples": len(tally.not_ready),
        "p50_ms": round(percentile(tally.latencies_ms, 50), 1), "p99_ms": round(percentile(tally.latencies_ms, 99), 1),
        "rss_mib": {name: {k: v if k == "timeline_mib" else round(v / 2**20, 1) for k, v in r.items()}
                    for name, r in rss.items()},
        "rss_growth_pct": growth,
    }
    path = reliability_workdir / "load-mixed-figures.json"
    path.write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print(f"\nmixed load figures ({path}):\n{json.dumps(figures, indent=2)}")
    assert not tally.problems, f"{len(tally.problems)} wrong answers, e.g. {tally.problems[:5]}"
    assert not tally.not_ready, tally.not_ready[:5]
    assert all(s < 500 or s == 503 for s in tally.statuses), tally.statuses
    for kind in tally.sent:
        assert tally.correct[kind] + tally.rejected[kind] + tally.left[kind] > 0, f"no {kind} was answered"
    assert all(g < 100 * MAX_RSS_GROWTH for g in growth.values()), growth
    for server, _ in plan:
        assert all(server.health().ready)
