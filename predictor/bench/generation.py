"""Text generation: greedy tokens/s in process vs through the server, and time to the first streamed chunk."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import torch
import uvloop

from predictor.bench.corpus import spread
from predictor.config import load_model_config


def generation_prompts(texts: Sequence[str], count: int, words: int = 8) -> list[str]:
    """The first words of texts spread over the corpus: short prompts that never hit max_length."""
    return [" ".join(t.split()[:words]) for t in spread(list(texts), count)]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Tally:
    """Requests of one side (in process or through the server), pooled over the rounds."""

    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # in process: the time to one token
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Tokens per second over the time spent in requests, medians in milliseconds."""
        out: dict[str, Any] = {"requests": len(self.latencies), "tokens": self.tokens,
                               "tokens_per_s": _round(self.tokens / sum(self.latencies), 1) if self.latencies else None,
                               "latency_ms_median": _ms_median(self.latencies)}
        if self.first:
            out["first_token_ms_median"] = _ms_median(self.first)
        return out


class InProcessGenerator:
    """model.generate alone, greedy, one prompt at a time, truncated as the predictor truncates prompts."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_length = load_model_config(model_dir / "model-config.yaml").handler.max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()

    def generate(self, prompt: str, new_tokens: int) -> int:
        """Tokens generated for one prompt."""
        enc = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
        return int(out.shape[1] - enc["input_ids"].shape[1])

    def measure(self, tally: Tally, prompts: Sequence[str], max_new_tokens: int, duration_s: float) -> None:
        """Every prompt at least once, then until duration_s: the time to one token, then to all of them."""
        self.generate(prompts[0], max_new_tokens)  # warm-up
        deadline = time.perf_counter() + duration_s
        n = 0
        while time.perf_counter() < deadline or n < len(prompts):
            prompt = prompts[n % len(prompts)]
            started = time.perf_counter()
            self.generate(prompt, 1)
            tally.first.append(time.perf_counter() - started)
            started = time.perf_counter()
            tally.tokens += self.generate(prompt, max_new_tokens)
            tally.latencies.append(time.perf_counter() - started)
            n += 1


def server_generation(base_url: str, name: str, prompts: Sequence[str], max_new_tokens: int,
                      duration_s: float, tally: Tally | None = None) -> dict[str, Any]:
    """One client, one request at a time (concurrency 1); tokens counted from the server's details.

    The client is the load generator's (aiohttp on uvloop), the cheapest per request, since it shares
    the server's cores. With `tally`, the requests are added to it (rounds pooled by the caller).
    """
    tally = Tally() if tally is None else tally
    uvloop.run(_server_generation(f"{base_url}/predictions/{name}", prompts, max_new_tokens, duration_s, tally))
    return {**tally.summary(), "errors": len(tally.errors), "error_samples": tally.errors[:3]}


async def _server_generation(url: str, prompts: Sequence[str], max_new_tokens: int, duration_s: float,
                             tally: Tally) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120.0)) as client:

        async def post(prompt: str) -> tuple[int, Any]:
            async with client.post(url, json=_body(prompt, max_new_tokens, details=True)) as response:
                return response.status, await response.json(content_type=None)

        await post(prompts[0])  # warm-up
        deadline = time.perf_counter() + duration_s
        n = 0
        while time.perf_counter() < deadline or n < len(prompts):
            started = time.perf_counter()
            status, answer = await post(prompts[n % len(prompts)])
            elapsed = time.perf_counter() - started
            n += 1
            if status != 200:
                tally.errors.append(f"{status}: {str(answer)[:200]}")
                continue
            tally.tokens += int(answer["generated_tokens"])
            tally.latencies.append(elapsed)


def interleaved(model_dir: Path, base_url: str, name: str, prompts: Sequence[str], max_new_tokens: int,
                duration_s: float, rounds: int) -> dict[str, Any]:
    """In process and through the server, alternating in `rounds` rounds of duration_s / rounds each.

    On a shared 2-core machine the speed of either drifts by several per cent within a minute;
    alternating lets both meet the same drift, so their ratio holds still.
    """
    generator = InProcessGenerator(model_dir)
    rounds = max(1, rounds)
    inprocess, server = Tally(), Tally()
    for _ in range(rounds):
        generator.measure(inprocess, prompts, max_new_tokens, duration_s / rounds)
        served = server_generation(base_url, name, prompts, max_new_tokens, duration_s / rounds, server)
    return {"rounds": rounds, "inprocess": inprocess.summary(), "server": served}  # served: pooled so far


def _body(prompt: str, max_new_tokens: int, *, details: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"text": prompt,
                            "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}}
    if details:
        body["details"] = True
    return body


def server_streaming(base_url: str, name: str, model_dir: Path, prompts: Sequence[str], max_new_tokens: int,
                     requests: int) -> dict[str, Any]:
    """`?stream=true`: time to the first chunk (the prompt echo), to the first generated text, to the end."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    url = f"{base_url}/predictions/{name}?stream=true"
    first_chunk, first_text, total, errors = [], [], [], []
    with httpx.Client(timeout=120.0) as client:
        for n in range(requests + 1):  # the first is a warm-up
            prompt = prompts[n % len(prompts)]
            echo_text = str(tokenizer.decode(tokenizer(prompt)["input_ids"], skip_special_tokens=True))
            echo = len(echo_text.encode("utf-8"))
            times = _stream_once(client, url, json.dumps(_body(prompt, max_new_tokens)).encode(), echo)
            if isinstance(times, str):
                errors.append(times)
            elif n > 0:
                first_chunk.append(times[0])
                if times[1] is not None:
                    first_text.append(times[1])
                total.append(times[2])
    return {"requests": len(total), "errors": len(errors), "error_samples": errors[:3],
            "first_chunk_ms_median": _ms_median(first_chunk),
            "first_generated_text_ms_median": _ms_median(first_text),
            "complete_ms_median": _ms_median(total)}


def _ms_median(values: Sequence[float]) -> float | None:
    return _round(statistics.median(values) * 1000) if values else None


def _stream_once(client: httpx.Client, url: str, body: bytes,
                 echo_bytes: int) -> tuple[float, float | None, float] | str:
    """(first chunk, first byte past the prompt echo, end) in seconds, or an error text."""
    started = time.perf_counter()
    first: float | None = None
    generated: float | None = None
    received = 0
    with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as response:
        if response.status_code != 200:
            return f"{response.status_code}: {response.read()[:200]!r}"
        for chunk in response.iter_raw():
            now = time.perf_counter() - started
            if chunk and first is None:
                first = now
            received += len(chunk)
            if generated is None and received > echo_bytes:
                generated = now
    return (first if first is not None else time.perf_counter() - started, generated,
            time.perf_counter() - started)
