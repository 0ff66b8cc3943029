"""64 concurrent requests, batched together by the server, each get the answer they get alone."""

from __future__ import annotations

import asyncio
import random
import re

import httpx
import pytest

CONCURRENT = 64
DISTINCT = 16  # distinct inputs among the 64, each also sent alone first
WORDS = ["Ada", "Lovelace", "Charles", "Babbage", "met", "in", "London", "and", "Paris", "with", "Grace",
         "Hopper", "near", "the", "river", "on", "a", "quiet", "sunday", "morning"]


def _texts(count: int, seed: int, longest: int = 24) -> list[str]:
    """Texts of 1..longest words, of different lengths so that batches need padding."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


async def _all_at_once(url: str, requests: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        return await asyncio.gather(*[client.post(**r) for r in requests])


def _forward_passes(client: httpx.Client) -> tuple[float, float]:
    """(forward passes, inputs) so far, from the batch-size histogram of /metrics."""
    text = client.get("/metrics").text
    count = re.search(r"^predictor_batch_size_count (\S+)$", text, re.MULTILINE)
    total = re.search(r"^predictor_batch_size_sum (\S+)$", text, re.MULTILINE)
    return float(count.group(1)), float(total.group(1))


def test_token_classification(tok_server, tok, direct):
    texts = _texts(DISTINCT, seed=1)
    alone = [tok.post("/predictions/tok", content=t.encode()).json() for t in texts]
    assert alone == [direct["tok"].token_labels(t) for t in texts]
    order = [n % DISTINCT for n in range(CONCURRENT)]
    passes_before, inputs_before = _forward_passes(tok)
    requests = [{"url": "/predictions/tok", "content": texts[n].encode()} for n in order]
    together = asyncio.run(_all_at_once(tok_server.url, requests))
    passes_after, inputs_after = _forward_passes(tok)
    assert [r.status_code for r in together] == [200] * CONCURRENT
    assert [r.json() for r in together] == [alone[n] for n in order]
    assert inputs_after - inputs_before == CONCURRENT
    # the check is about batching: at least one forward pass held several requests
    assert passes_after - passes_before < CONCURRENT


def test_sequence_scores_over_both_route_families(seq_server, seq):
    """Half TorchServe, half KServe v1, mixed in the same batches; probabilities equal to 1e-5."""
    texts = _texts(DISTINCT, seed=2)
    details = {"X-Predictor-Details": "true"}
    alone = [seq.post("/predictions/seq", content=t.encode(), headers=details).json() for t in texts]
    order = [n % DISTINCT for n in range(CONCURRENT)]
    requests = [
        {"url": "/predictions/seq", "content": texts[n].encode(), "headers": details} if i % 2 == 0
        else {"url": "/v1/models/seq:predict", "json": {"instances": [{"text": texts[n], "details": True}]}}
        for i, n in enumerate(order)
    ]
    together = asyncio.run(_all_at_once(seq_server.url, requests))
    assert [r.status_code for r in together] == [200] * CONCURRENT
    answers = [r.json() if i % 2 == 0 else r.json()["predictions"][0] for i, r in enumerate(together)]
    for n, answer in zip(order, answers, strict=True):
        assert answer["label"] == alone[n]["label"]
        assert answer["score"] == pytest.approx(alone[n]["score"], abs=1e-5)
    # the texts must be told apart by the check: their scores differ by more than the tolerance
    assert max(a["score"] for a in alone) - min(a["score"] for a in alone) > 1e-5


def test_greedy_generation(gen_server, gen, direct):
    """Greedy decoding batched with left padding equals decoding each prompt alone."""
    prompts = _texts(8, seed=3, longest=5)  # within handler.max_length tokens: no prompt is truncated
    body = {"do_sample": False, "max_new_tokens": 5}
    alone = {p: gen.post("/predictions/gen", json={"text": p, "parameters": body}).text for p in prompts}
    assert alone == {p: direct["gen"].greedy(p, 5) for p in prompts}
    order = [prompts[n % len(prompts)] for n in range(CONCURRENT)]
    together = asyncio.run(_all_at_once(gen_server.url, [
        {"url": "/predictions/gen", "json": {"text": p, "parameters": body}} for p in order]))
    assert [r.status_code for r in together] == [200] * CONCURRENT
    assert [r.text for r in together] == [alone[p] for p in order]


def test_seeded_sampling(gen_server, gen):
    prompts = _texts(4, seed=4, longest=5)
    bodies = [{"text": p, "parameters": {"do_sample": True, "seed": 100 + n, "max_new_tokens": 5}}
              for n, p in enumerate(prompts)]
    alone = [gen.post("/predictions/gen", json=b).text for b in bodies]
    order = [n % len(bodies) for n in range(16)]
    together = asyncio.run(_all_at_once(gen_server.url, [{"url": "/predictions/gen", "json": bodies[n]}
                                                         for n in order]))
    assert [r.text for r in together] == [alone[n] for n in order]
